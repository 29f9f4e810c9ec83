"""The SDK's exception tree. Every API error carries the HTTP status and the contract's code."""

from __future__ import annotations

from typing import Any


class PrivacyApiError(Exception):
    """Base class: `status` (HTTP), `code` (snake_case), `message`, `details`."""

    def __init__(self, status: int, code: str, message: str,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details or {}


class InvalidRequest(PrivacyApiError):
    """400/422: the request was malformed or failed validation (see `details`)."""


class Unauthorized(PrivacyApiError):
    """401: missing, unknown or revoked API key."""


class Forbidden(PrivacyApiError):
    """403: the key's role may not do this."""


class BudgetExhausted(Forbidden):
    """403 budget_exhausted: the query would exceed the budget; nothing was charged."""


class NotFound(PrivacyApiError):
    """404: no such object, or not visible to this key."""


class Conflict(PrivacyApiError):
    """409: the object's state forbids this (e.g. a second update in a round)."""


class PayloadTooLarge(PrivacyApiError):
    """413: the body is over the server's size limit."""


class RateLimited(PrivacyApiError):
    """429: slow down; retry after the `Retry-After` header."""


class ServerError(PrivacyApiError):
    """5xx: the server failed; the request may be retried."""


class TransportError(PrivacyApiError):
    """The server could not be reached (status 0)."""


class UploadFailed(PrivacyApiError):
    """A batch of an upload failed. Batches before it are stored; resume with
    `upload_records(..., resume_from=err.rows_done)`."""

    def __init__(self, cause: PrivacyApiError, rows_done: int) -> None:
        super().__init__(cause.status, cause.code,
                         f"{cause.message} (first {rows_done} rows stored; "
                         f"resume with resume_from={rows_done})", cause.details)
        self.cause = cause
        self.rows_done = rows_done


_BY_CODE: dict[str, type[PrivacyApiError]] = {
    "budget_exhausted": BudgetExhausted,
    "rate_limited": RateLimited,
}
_BY_STATUS: dict[int, type[PrivacyApiError]] = {
    400: InvalidRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound, 409: Conflict,
    413: PayloadTooLarge, 422: InvalidRequest, 429: RateLimited,
}


def error_for(status: int, body: Any) -> PrivacyApiError:
    if isinstance(body, dict):
        code = str(body.get("code", "error"))
        message = str(body.get("message", ""))
        details = body.get("details") if isinstance(body.get("details"), dict) else {}
    else:
        code, message, details = "error", str(body)[:200], {}
    cls = _BY_CODE.get(code) or _BY_STATUS.get(status) or (
        ServerError if status >= 500 else PrivacyApiError)
    return cls(status, code, message, details)
