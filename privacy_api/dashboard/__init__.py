"""Server-rendered admin dashboard at /admin: budgets, spend, federations, users, audit log.

Plain HTML from Jinja templates plus one stylesheet and one small script served by the app,
so it works offline and under a strict Content-Security-Policy (no inline script or style).
"""

from __future__ import annotations

from flask import Flask

from .security import SchemeAwareSessionInterface, csrf


def init_dashboard(app: Flask) -> None:
    """Register the dashboard blueprint and its cookie/CSRF settings on `app`."""
    # CSRFProtect must not guard the JSON API (bearer keys, no cookies): check nothing by
    # default; the dashboard's before_request calls csrf.protect() itself.
    app.config["WTF_CSRF_CHECK_DEFAULT"] = False
    # Flask-WTF's HTTPS referrer check cannot pass: the dashboard sends Referrer-Policy
    # no-referrer, so browsers omit Referer (and send Origin: null). The token plus the
    # SameSite=Strict session cookie are the CSRF defence.
    app.config["WTF_CSRF_SSL_STRICT"] = False
    csrf.init_app(app)
    app.session_interface = SchemeAwareSessionInterface()

    from .views import bp

    app.register_blueprint(bp)
