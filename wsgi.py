"""Production entry point: `gunicorn wsgi:app` (see docs/operations.md)."""

from privacy_api.wsgi import app

__all__ = ["app"]
