"""The single place that turns any failure into the contract's JSON shape `{code, message, details}`."""

from __future__ import annotations

import logging
import traceback
from typing import Any

from apiflask import APIFlask
from apiflask.exceptions import HTTPError
from flask import Response, jsonify
from sqlalchemy.exc import OperationalError
from werkzeug.exceptions import HTTPException

from ..domain.errors import DomainError

log = logging.getLogger(__name__)

STATUS_CODES: dict[int, str] = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "rate_limited",
    500: "internal_error",
    503: "unavailable",
}


def error_body(status: int, code: str, message: str, details: Any = None) -> Response:
    resp = jsonify({"code": code, "message": message, "details": details or {}})
    resp.status_code = status
    return resp


MAX_DETAIL_ITEMS = 50


def bounded_details(value: Any) -> Any:
    """At most MAX_DETAIL_ITEMS entries per level: one error per element of a huge list would
    turn a 1 MB request into a 20 MB answer."""
    if isinstance(value, dict):
        out = {str(k): bounded_details(v) for k, v in list(value.items())[:MAX_DETAIL_ITEMS]}
        if len(value) > MAX_DETAIL_ITEMS:
            out["_truncated"] = f"{len(value) - MAX_DETAIL_ITEMS} more"
        return out
    if isinstance(value, list):
        items = [bounded_details(v) for v in value[:MAX_DETAIL_ITEMS]]
        if len(value) > MAX_DETAIL_ITEMS:
            items.append(f"{len(value) - MAX_DETAIL_ITEMS} more")
        return items
    return value


def database_unavailable() -> Response:
    """503: the database went away (restart, failover); the client should retry."""
    log.warning("database unavailable")
    resp = error_body(503, "unavailable", "the database is unavailable; retry shortly")
    resp.headers["Retry-After"] = "2"
    return resp


def register_error_handlers(app: APIFlask) -> None:
    @app.error_processor
    def _apiflask_error(error: HTTPError) -> tuple[dict[str, Any], int, Any]:
        # Validation errors and abort() calls from APIFlask land here.
        code = STATUS_CODES.get(error.status_code, "error")
        detail = bounded_details(error.detail if isinstance(error.detail, dict)
                                 else {"detail": error.detail})
        return (
            {"code": code, "message": str(error.message), "details": detail or {}},
            error.status_code,
            error.headers,
        )

    @app.errorhandler(DomainError)
    def _domain_error(error: DomainError) -> Response:
        return error_body(error.status, error.code, error.message, error.details)

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException) -> Response:
        status = error.code or 500
        resp = error_body(status, STATUS_CODES.get(status, "error"), error.description or "")
        if status == 405 and error.get_response().headers.get("Allow"):
            resp.headers["Allow"] = error.get_response().headers["Allow"]
        return resp

    @app.errorhandler(RecursionError)
    def _too_deep(_: RecursionError) -> Response:
        return error_body(400, "invalid_request", "request body is nested too deeply")

    @app.errorhandler(OperationalError)
    def _database_unavailable(_: OperationalError) -> Response:
        return database_unavailable()

    @app.errorhandler(Exception)
    def _unexpected(error: Exception) -> Response:
        # Never a stack trace to the caller; the log keeps the type, not request data.
        log.exception("unhandled error: %s", type(error).__name__)
        return error_body(500, "internal_error", "internal error")

    @app.errorhandler(ValueError)
    def _undecodable_json(error: ValueError) -> Response:
        # json.loads raises a plain ValueError, not JSONDecodeError, for some bodies (an integer
        # of more than 4300 digits); webargs lets those through. Anything else is a bug: 500.
        frames = traceback.extract_tb(error.__traceback__)
        if frames and frames[-1].filename.endswith(("json/decoder.py", "json/__init__.py")):
            return error_body(400, "invalid_request", "request body is not valid JSON")
        return _unexpected(error)
