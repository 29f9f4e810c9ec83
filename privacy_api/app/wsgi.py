"""WSGI entry point: `gunicorn privacy_api.app.wsgi:app`."""

from .factory import create_app

app = create_app()
