"""Formatting helpers handed to the dashboard's templates (not registered app-wide)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from .spend import as_utc


def eps(value: Decimal) -> str:
    # Exact: budgets are exact, and an admin comparing totals should see every digit.
    return f"{value.normalize():f}" if value else "0"


def delta(value: Decimal) -> str:
    # Exact and compact: 0.00001, 1e-7, 1.5e-9.
    return f"{value.normalize():g}" if value else "0"


def when(value: dt.datetime | None) -> str:
    return "—" if value is None else f"{as_utc(value):%Y-%m-%d %H:%M:%S} UTC"


def percent(fraction: float | None) -> str:
    return "—" if fraction is None else f"{fraction * 100:.1f}%"


def bar_width(fraction: float | None) -> str:
    return f"{min(1.0, max(0.0, fraction or 0.0)) * 100:.2f}"


def template_helpers() -> dict[str, Any]:
    return {"eps": eps, "delta": delta, "when": when, "percent": percent, "bar_width": bar_width}
