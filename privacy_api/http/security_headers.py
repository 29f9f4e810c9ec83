"""Response headers that every browser-facing page gets: CSP, no framing, no sniffing, HSTS.

Shared by the dashboard and the API docs page, so it sits at the HTTP edge below both.
"""

from __future__ import annotations

from flask import Flask, Response

# `style-src`/`script-src` fall back to default-src 'self': no inline script or style can run,
# so injected markup is inert. form-action and base-uri are not covered by default-src.
CSP = "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"


def apply_security_headers(response: Response, *, cacheable: bool) -> Response:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "no-referrer"
    if not cacheable:
        # Pages carry budgets, names and sometimes a new key: never keep them in any cache.
        response.headers["Cache-Control"] = "no-store"
        response.headers["Pragma"] = "no-cache"
    return response


def init_strict_transport_security(app: Flask, max_age: int) -> None:
    """Send ``Strict-Transport-Security`` on every response when ``max_age`` > 0.

    Sent whatever the request's scheme: browsers ignore it over plain HTTP (RFC 6797 §8.1), and
    behind a TLS proxy that gunicorn does not trust, ``request.is_secure`` would be False and
    the header would silently never go out.
    """
    if max_age <= 0:
        return
    value = f"max-age={max_age}; includeSubDomains"

    @app.after_request
    def _hsts(response: Response) -> Response:
        response.headers["Strict-Transport-Security"] = value
        return response
