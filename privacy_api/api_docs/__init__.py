"""``/docs``: Swagger UI served from assets vendored by a PyPI package, under a strict CSP.

APIFlask's own ``/docs`` page loads an unpinned Swagger UI from a public CDN and starts it with
an inline script. That page is on the same origin as ``/admin``, so a compromised CDN bundle
would run with an admin's session cookie, and it cannot render offline (where such services
usually run). Here the bundle comes from the installed ``flask-swagger-ui`` wheel (Swagger UI
pinned by the wheel's version, see its ``dist/VERSION``); the page starts it from our own
script file, so ``script-src 'self'`` holds and nothing is fetched from another host.

``PRIVACY_API_DOCS=off`` removes ``/docs`` (404); ``/openapi.json`` stays.
"""

from __future__ import annotations

from pathlib import Path

import flask_swagger_ui
from flask import Blueprint, Flask, Response, abort, render_template, send_from_directory, url_for

from ..http.security_headers import apply_security_headers

_VENDOR = Path(flask_swagger_ui.__file__).resolve().parent / "dist"
_OWN = Path(__file__).resolve().parent / "static"
# Only these files are served: never a directory listing or any other file of the wheel.
ASSETS: dict[str, Path] = {
    "swagger-ui.css": _VENDOR,
    "swagger-ui-bundle.js": _VENDOR,
    "favicon-32x32.png": _VENDOR,
    "docs-init.js": _OWN,
}
SWAGGER_UI_VERSION = (_VENDOR / "VERSION").read_text().strip() if (_VENDOR / "VERSION").exists() else "?"

# Swagger UI styles elements through the DOM (allowed by style-src 'self') and uses data: URIs
# for a few icons in its stylesheet; it fetches only the spec, from this origin.
DOCS_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            "connect-src 'self'; font-src 'self'; object-src 'none'; frame-ancestors 'none'; "
            "form-action 'self'; base-uri 'none'")

bp = Blueprint("api_docs", __name__, template_folder="templates")


@bp.get("/docs")
def docs() -> str:
    return render_template("api_docs/docs.html", spec_url=url_for("openapi.spec"),
                           swagger_ui_version=SWAGGER_UI_VERSION)


@bp.get("/docs/assets/<name>")
def asset(name: str) -> Response:
    folder = ASSETS.get(name)
    if folder is None:
        abort(404)
    # Pinned by the installed package, so a day of caching is safe.
    return send_from_directory(folder, name, max_age=86400)


@bp.after_request
def _headers(response: Response) -> Response:
    apply_security_headers(response, cacheable=True)
    response.headers["Content-Security-Policy"] = DOCS_CSP
    return response


def init_api_docs(app: Flask, *, enabled: bool) -> None:
    if enabled:
        app.register_blueprint(bp)
