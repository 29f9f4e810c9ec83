"""Renewal periods of a budget: calendar days, ISO weeks or months, in UTC.

Calendar periods rather than "30 days from the grant": an admin reading "monthly" expects the
spend to reset on the 1st, and every budget renewing on the same schedule resets at once.
"""

from __future__ import annotations

import datetime as dt

RENEWAL_PERIODS = ("daily", "weekly", "monthly")


def period_start(period: str, now: dt.datetime) -> dt.datetime:
    """The start (UTC, aware) of the `period` that contains `now`."""
    now = now.astimezone(dt.UTC) if now.tzinfo else now.replace(tzinfo=dt.UTC)
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "daily":
        return day
    if period == "weekly":  # ISO weeks start on Monday
        return day - dt.timedelta(days=day.weekday())
    if period == "monthly":
        return day.replace(day=1)
    raise ValueError(f"unknown renewal period {period!r}")


def period_end(period: str, start: dt.datetime) -> dt.datetime:
    """The end (exclusive) of the period that starts at `start`."""
    if period == "daily":
        return start + dt.timedelta(days=1)
    if period == "weekly":
        return start + dt.timedelta(days=7)
    if period == "monthly":
        return (start.replace(day=28) + dt.timedelta(days=4)).replace(day=1)
    raise ValueError(f"unknown renewal period {period!r}")


def as_utc(value: dt.datetime) -> dt.datetime:
    """SQLite gives stored times back naive (they are UTC); PostgreSQL aware."""
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)
