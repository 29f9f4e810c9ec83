"""WSGI entry point: `gunicorn privacy_api.wsgi:app`."""

from . import create_app

app = create_app()
