"""Structured logs: one JSON object per line, and one access line per request.

The access line holds the request id, method, route rule (not the raw path), status,
duration, user id and role. By construction it never holds a body, a query string, a header
value, a key, a token, a record value or an update: none of those is ever read here.

The formatter also keeps exception *messages* out of the log (they can quote a value, e.g.
"could not convert 'x' to float"): an error is logged as its type and stack frames only.

Environment: ``PRIVACY_API_LOG_LEVEL`` (default INFO). The JSON handler is installed on the
root logger only when nothing has configured logging yet (gunicorn, `privacy-api serve`);
a host that set up its own handlers keeps them and can use :class:`JsonFormatter`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
import traceback
import uuid
from datetime import UTC, datetime
from typing import Any

from flask import Flask, Response, g, has_request_context, request
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.exc import NoInspectionAvailable

from ..http.metrics import HTTP_METHODS as _METHODS
from ..http.metrics import route_label

ACCESS_LOGGER = "privacy_api.access"
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{8,64}")
# LogRecord attributes that are not `extra=` fields.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """Render a record as one JSON line: time, level, logger, message, request id, extras."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id is None and has_request_context():
            request_id = g.get("request_id")
        if request_id:
            out["request_id"] = request_id
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key != "request_id" and not key.startswith("_"):
                out[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            exc_type, _, tb = record.exc_info
            out["exc_type"] = exc_type.__name__
            out["stack"] = [f"{f.filename}:{f.lineno} in {f.name}" for f in traceback.extract_tb(tb)]
        return json.dumps(out, default=str, ensure_ascii=False)


def configure_logging() -> None:
    """Install the JSON handler on the root logger unless logging is already configured."""
    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root.addHandler(handler)
    root.setLevel(os.environ.get("PRIVACY_API_LOG_LEVEL", "INFO").upper())


def _user_fields() -> tuple[int | None, str | None]:
    # Flask-HTTPAuth keeps the API key's user on g; the dashboard keeps its signed-in admin.
    # Read only what is already loaded: after a rollback the object is expired and detached,
    # and touching an attribute would raise (or query) while logging.
    user = g.get("flask_httpauth_user") or g.get("admin")
    if user is None:
        return None, None
    try:
        state = sa_inspect(user)
    except NoInspectionAvailable:
        return None, None
    identity = state.identity
    role = state.dict.get("role")
    return (identity[0] if identity else None), (role if isinstance(role, str) else None)


def init_request_logging(app: Flask) -> None:
    """Give every request an id (X-Request-ID, echoed back) and log one access line."""
    access = logging.getLogger(ACCESS_LOGGER)

    @app.before_request
    def _request_id() -> None:
        incoming = request.headers.get("X-Request-ID", "")
        g.request_id = incoming if _REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex
        g.log_started = time.perf_counter()

    @app.after_request
    def _access_line(response: Response) -> Response:
        request_id = g.get("request_id")
        if request_id is None:
            return response
        response.headers["X-Request-ID"] = request_id
        user_id, role = _user_fields()
        started = g.get("log_started")
        access.info(
            "request",
            extra={
                "request_id": request_id,
                "method": request.method if request.method in _METHODS else "OTHER",
                "route": route_label(),
                "status": response.status_code,
                "duration_ms": round((time.perf_counter() - started) * 1000, 2) if started else None,
                "user_id": user_id,
                "role": role,
            },
        )
        return response
