"""Domain errors: what services raise on purpose, each with its HTTP status and code.

The one place that turns them (and any other failure) into the contract's JSON shape is
`privacy_api.http.error_responses`; this module stays free of Flask so every layer may raise them.
"""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    """Base of every error a service raises on purpose."""

    status = 400
    code = "invalid_request"

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}


class InvalidRequest(DomainError):
    status, code = 422, "invalid_request"


class BadRequest(DomainError):
    status, code = 400, "invalid_request"


class Unauthorized(DomainError):
    status, code = 401, "unauthorized"


class Forbidden(DomainError):
    status, code = 403, "forbidden"


class NotFound(DomainError):
    status, code = 404, "not_found"


class Conflict(DomainError):
    status, code = 409, "conflict"


class PayloadTooLarge(DomainError):
    status, code = 413, "payload_too_large"


class UnsupportedMediaType(DomainError):
    status, code = 415, "unsupported_media_type"


class MasterKeyMismatch(DomainError):
    """The configured master keys cannot unwrap the data keys stored in the database."""

    status, code = 503, "unavailable"


class BudgetExhausted(DomainError):
    status, code = 403, "budget_exhausted"
