"""Spend over time: the analyst page's SVG chart geometry and the exhaustion projection.

Pure functions over (time, epsilon units) pairs, so they are tested without a database or a
browser. Budget arithmetic stays in integer units; floats appear only as pixel coordinates
and as the fitted spend rate, which is an estimate anyway.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from ..domain.units import EPSILON_QUANTUM, eps_value

# One charge: when it was committed and how many epsilon units it cost (> 0).
Charge = tuple[dt.datetime, int]

PROJECTION_WINDOW = dt.timedelta(days=30)
PROJECTION_MAX_QUERIES = 500
# A projection further out than this says nothing useful (and would overflow datetime).
PROJECTION_HORIZON = dt.timedelta(days=365 * 100)
SERIES_CLASSES = 6  # series-0 .. series-5 in dashboard.css; more datasets reuse colours


def as_utc(value: dt.datetime) -> dt.datetime:
    # SQLite hands back naive datetimes for timezone-aware columns; they were written in UTC.
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


# --- projection ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Projection:
    status: Literal["exhausted", "projected", "beyond_horizon", "no_recent_spend", "too_few"]
    recent_queries: int = 0
    # Fitted spend rate in epsilon per day (an estimate; never used for accounting).
    epsilon_per_day: float | None = None
    exhausts_at: dt.datetime | None = None

    def describe(self) -> str:
        if self.status == "exhausted":
            return "ε budget exhausted"
        if self.status == "no_recent_spend":
            return "no recent spend"
        if self.status == "too_few":
            return "too little recent spend to project (1 charged query in the last 30 days)"
        assert self.epsilon_per_day is not None
        per_day = self.epsilon_per_day
        rate = f"(at ~{per_day:,.0f} ε/day)" if per_day >= 100 else f"(at ~{per_day:.3g} ε/day)"
        if self.status == "beyond_horizon":
            return f"not within 100 years {rate}"
        assert self.exhausts_at is not None
        return f"{self.exhausts_at:%Y-%m-%d %H:%M} UTC {rate}"


def project_exhaustion(
    charges: Sequence[Charge], remaining_units: int, now: dt.datetime, *,
    window: dt.timedelta = PROJECTION_WINDOW, max_queries: int = PROJECTION_MAX_QUERIES,
) -> Projection:
    """When the remaining epsilon hits zero if the recent pace continues.

    The pace is the least-squares slope of cumulative spend against time over the charged
    queries of the last `window` (at most `max_queries` of them): it follows how the analyst
    actually queries, unlike "spend / window", which under-reads an analyst who started
    yesterday. `charges` must be in time order.
    """
    if remaining_units <= 0:
        return Projection("exhausted")
    since = now - window
    recent = [(as_utc(t), u) for t, u in charges if as_utc(t) >= since and u > 0][-max_queries:]
    if not recent:
        return Projection("no_recent_spend")
    if len(recent) < 2:
        return Projection("too_few", recent_queries=1)
    t0 = recent[0][0]
    xs = [(t - t0).total_seconds() for t, _ in recent]
    ys: list[float] = []
    cumulative = 0
    for _, units in recent:
        cumulative += units
        ys.append(float(eps_value(cumulative)))
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    var_x = sum((x - mean_x) ** 2 for x in xs)
    if var_x == 0:
        # Every recent charge in the same instant: no time trend to extrapolate.
        return Projection("too_few", recent_queries=len(recent))
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / var_x
    if slope <= 0:
        return Projection("no_recent_spend", recent_queries=len(recent))
    per_day = slope * 86400
    seconds_left = float(eps_value(remaining_units)) / slope
    if seconds_left > PROJECTION_HORIZON.total_seconds():
        return Projection("beyond_horizon", len(recent), per_day)
    return Projection("projected", len(recent), per_day, now + dt.timedelta(seconds=seconds_left))


# --- chart ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SeriesInput:
    label: str
    charges: Sequence[Charge]  # time order
    total_units: int | None = None  # the budget, drawn as a dashed line


@dataclass(frozen=True)
class ChartLine:
    label: str
    css_class: str
    points: str  # SVG polyline points
    final: Decimal  # cumulative epsilon at the end
    charges: int
    budget_y: float | None


@dataclass(frozen=True)
class Tick:
    pos: float
    label: str


@dataclass(frozen=True)
class SpendChart:
    width: int
    height: int
    left: int
    right: int
    top: int
    bottom: int
    lines: list[ChartLine]
    y_ticks: list[Tick]
    x_ticks: list[Tick]

    @property
    def charges(self) -> int:
        return sum(line.charges for line in self.lines)

    def summary(self) -> str:
        parts = [f"{line.label}: {line.final:f} ε over {line.charges} charged queries"
                 for line in self.lines]
        return "Cumulative ε spent. " + "; ".join(parts)


def _nice_step(span: float, ticks: int) -> float:
    raw = span / ticks
    magnitude = 10.0 ** math.floor(math.log10(raw))
    for factor in (1, 2, 2.5, 5, 10):
        if factor * magnitude >= raw:
            return factor * magnitude
    return 10 * magnitude


def spend_chart(
    series: Sequence[SeriesInput], now: dt.datetime, *, width: int = 720, height: int = 260,
) -> SpendChart | None:
    """Cumulative epsilon per dataset as step lines; None when nothing was ever charged."""
    left, right, top, bottom = 64, width - 16, 14, height - 34
    active = [s for s in series if any(u > 0 for _, u in s.charges)]
    if not active:
        return None
    now = as_utc(now)
    start = min(as_utc(t) for s in active for t, u in s.charges if u > 0)
    if now <= start:
        now = start + dt.timedelta(minutes=1)
    span_s = (now - start).total_seconds()
    finals = {s.label: sum(u for _, u in s.charges if u > 0) for s in active}
    y_max_units = max([*finals.values(), *(s.total_units or 0 for s in active)])
    y_max = float(eps_value(y_max_units)) or float(EPSILON_QUANTUM)
    step = _nice_step(y_max, 4)
    y_top = step * math.ceil(y_max / step)

    def x_of(t: dt.datetime) -> float:
        return left + (right - left) * (as_utc(t) - start).total_seconds() / span_s

    def y_of(units: int) -> float:
        return bottom - (bottom - top) * float(eps_value(units)) / y_top

    lines: list[ChartLine] = []
    for i, s in enumerate(active):
        # One point per pixel column at most: a ledger of 100k queries stays a small SVG.
        columns: dict[int, int] = {}
        cumulative, count = 0, 0
        for t, units in s.charges:
            if units <= 0:
                continue
            cumulative += units
            count += 1
            columns[round(x_of(t))] = cumulative
        pts: list[tuple[float, float]] = []
        previous = 0
        first_x = min(columns)
        pts.append((first_x, y_of(0)))
        for x, cum in sorted(columns.items()):
            pts += [(x, y_of(previous)), (x, y_of(cum))]
            previous = cum
        pts.append((right, y_of(previous)))
        budget_y = y_of(s.total_units) if s.total_units else None
        lines.append(ChartLine(
            s.label, f"series-{i % SERIES_CLASSES}",
            " ".join(f"{x:.1f},{y:.1f}" for x, y in pts), eps_value(cumulative), count, budget_y,
        ))

    y_ticks = []
    value = 0.0
    while value <= y_top + step / 2:
        y_ticks.append(Tick(bottom - (bottom - top) * value / y_top, f"{value:g}"))
        value += step
    fmt = "%Y-%m-%d" if span_s > 2 * 86400 else "%m-%d %H:%M" if span_s > 3600 else "%H:%M:%S"
    x_ticks = [Tick(left + (right - left) * f, (start + (now - start) * f).strftime(fmt))
               for f in (0.0, 0.5, 1.0)]
    return SpendChart(width, height, left, right, top, bottom, lines, y_ticks, x_ticks)


def series_for(charges_by_dataset: Mapping[int, Sequence[Charge]], labels: Mapping[int, str],
               totals: Mapping[int, int]) -> list[SeriesInput]:
    return [SeriesInput(labels.get(ds, f"dataset {ds}"), charges, totals.get(ds))
            for ds, charges in sorted(charges_by_dataset.items())]
