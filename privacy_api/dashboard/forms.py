"""Parsing of the dashboard's form fields and query strings into typed values.

Bad input raises InvalidRequest with the field name, so the page can show the message next to
the form it came from. The CSRF token is checked before any of this runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal, InvalidOperation

from ..domain.errors import InvalidRequest
from .queries import LogFilter

# Same ceiling as the JSON API's budget schema.
MAX_EPSILON = Decimal(1_000_000)


def text(form: Mapping[str, str], name: str, label: str) -> str:
    value = (form.get(name) or "").strip()
    if not value:
        raise InvalidRequest(f"{label} is required.", {name: ["required"]})
    return value


def integer(form: Mapping[str, str], name: str, label: str) -> int:
    raw = text(form, name, label)
    try:
        return int(raw)
    except ValueError:
        raise InvalidRequest(f"{label} must be a whole number.", {name: [raw]}) from None


def decimal(form: Mapping[str, str], name: str, label: str, *, maximum: Decimal | None = None,
            default: Decimal | None = None) -> Decimal:
    raw = (form.get(name) or "").strip()
    if not raw and default is not None:
        return default
    if not raw:
        raise InvalidRequest(f"{label} is required.", {name: ["required"]})
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise InvalidRequest(f"{label} must be a number, e.g. 1.5 or 1e-6.", {name: [raw]}) from None
    if not value.is_finite() or value < 0:
        raise InvalidRequest(f"{label} must be a finite number ≥ 0.", {name: [raw]})
    if maximum is not None and value > maximum:
        raise InvalidRequest(f"{label} must be at most {maximum}.", {name: [raw]})
    return value


def page_number(args: Mapping[str, str]) -> int:
    try:
        return max(1, int(args.get("page", "1")))
    except ValueError:
        return 1


def log_filter(args: Mapping[str, str]) -> LogFilter:
    """Filters from the query log's GET form; unknown values mean "any", never an error."""
    dataset = args.get("dataset", "")
    replayed = {"yes": True, "no": False}.get(args.get("replayed", ""))
    return LogFilter(
        dataset_id=int(dataset) if dataset.isdigit() else None,
        aggregate=(args.get("aggregate") or "").strip() or None,
        replayed=replayed,
    )
