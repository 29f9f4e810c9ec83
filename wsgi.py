"""Production entry point: `gunicorn wsgi:app` (see docs/operations.md)."""

from privacy_api.app.wsgi import app

__all__ = ["app"]
