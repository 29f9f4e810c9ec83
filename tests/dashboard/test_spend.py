"""The spend chart geometry and the exhaustion projection (pure functions)."""

from __future__ import annotations

import datetime as dt

import pytest

from privacy_api.dashboard.spend import SeriesInput, project_exhaustion, spend_chart
from privacy_api.domain.units import eps_units

NOW = dt.datetime(2026, 3, 1, 12, tzinfo=dt.UTC)


def daily(days: int, eps: str, *, end: dt.datetime = NOW) -> list[tuple[dt.datetime, int]]:
    return [(end - dt.timedelta(days=days - i), eps_units(eps)) for i in range(days)]


def test_steady_spend_projects_the_date_the_remaining_epsilon_runs_out():
    p = project_exhaustion(daily(10, "0.5"), eps_units(5), NOW)
    assert p.status == "projected" and p.epsilon_per_day == pytest.approx(0.5)
    assert p.exhausts_at == pytest.approx(NOW + dt.timedelta(days=10), abs=dt.timedelta(minutes=1))
    assert p.describe() == "2026-03-11 12:00 UTC (at ~0.5 ε/day)"


def test_the_fit_follows_the_recent_pace_not_old_history():
    old = daily(10, "2", end=NOW - dt.timedelta(days=100))  # outside the 30-day window
    p = project_exhaustion(old + daily(5, "0.1"), eps_units(1), NOW)
    assert p.epsilon_per_day == pytest.approx(0.1)
    assert project_exhaustion(old, eps_units(1), NOW).describe() == "no recent spend"


def test_projection_edge_cases():
    assert project_exhaustion([], eps_units(1), NOW).describe() == "no recent spend"
    assert project_exhaustion(daily(3, "1"), 0, NOW).describe() == "ε budget exhausted"
    assert project_exhaustion(daily(1, "1"), eps_units(1), NOW).status == "too_few"
    same_instant = [(NOW, eps_units(1)), (NOW, eps_units(1))]
    assert project_exhaustion(same_instant, eps_units(1), NOW).status == "too_few"
    tiny = project_exhaustion(daily(3, "0.000000000001"), eps_units(1000), NOW)
    assert tiny.status == "beyond_horizon" and tiny.describe().startswith("not within 100 years")
    burst = project_exhaustion([(NOW - dt.timedelta(seconds=2), eps_units(1)),
                                (NOW - dt.timedelta(seconds=1), eps_units(1))], eps_units(5), NOW)
    assert burst.describe() == f"{NOW:%Y-%m-%d} 12:00 UTC (at ~86,400 ε/day)"
    naive = [(t.replace(tzinfo=None), u) for t, u in daily(4, "1")]  # as SQLite returns them
    assert project_exhaustion(naive, eps_units(2), NOW).status == "projected"


def test_chart_draws_cumulative_steps_per_dataset_with_the_budget_line():
    assert spend_chart([SeriesInput("a", [])], NOW) is None
    chart = spend_chart([SeriesInput("a", daily(4, "0.25"), eps_units(2)),
                         SeriesInput("b", daily(2, "1"))], NOW)
    assert chart is not None and chart.charges == 6
    a, b = chart.lines
    assert (a.final, b.final) == (1, 2) and a.css_class != b.css_class
    ys = [float(p.split(",")[1]) for p in a.points.split()]
    assert ys == sorted(ys, reverse=True)  # cumulative: never goes down (SVG y grows downwards)
    assert a.budget_y is not None and b.budget_y is None
    assert chart.y_ticks[0].label == "0" and float(chart.y_ticks[-1].label) >= 2
    assert "a: 1 ε over 4 charged queries" in chart.summary()


def test_chart_stays_small_for_a_long_ledger():
    start = NOW - dt.timedelta(days=30)
    charges = [(start + dt.timedelta(seconds=20 * i), eps_units("0.0001")) for i in range(100_000)]
    chart = spend_chart([SeriesInput("a", charges)], NOW)
    assert chart is not None and chart.charges == 100_000
    assert len(chart.lines[0].points.split()) <= 2 * chart.width + 2
