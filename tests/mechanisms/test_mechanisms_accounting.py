"""The accountant: exact Decimal sums, the tighter of two valid bounds, monotone charges."""

from __future__ import annotations

from decimal import Decimal

import pytest

from mechanisms import (
    GaussianNoise,
    InvalidPrivacyParameter,
    PrivacyEvent,
    PrivacySpent,
    calibrate_gaussian_sigma,
    charge,
    gaussian_event,
    privacy_events_for,
    total_spent,
)

D = Decimal


def test_basic_composition_is_exact_decimal_arithmetic() -> None:
    events = [PrivacyEvent(D("0.1"), D("0"))] * 10
    assert total_spent(events, delta_budget=D("1e-5")) == (D("1.0"), D("0"))
    assert total_spent([PrivacyEvent(D("0.1"), D("1e-7"), count=10)],
                       delta_budget=D("1e-5")).delta == D("1e-6")
    spent = total_spent([], delta_budget=D("1e-5"))
    assert spent == PrivacySpent(D(0), D(0))


def _queries_that_fit(event: PrivacyEvent, cap: PrivacySpent, *, rdp: bool) -> int:
    history: list[PrivacyEvent] = []
    spent = PrivacySpent(D(0), D(0))
    for _ in range(50):
        if rdp:
            after = total_spent([*history, event], delta_budget=cap.delta, at_least=spent)
        else:
            after = PrivacySpent(spent.epsilon + event.epsilon, spent.delta + event.delta)
        if after.epsilon > cap.epsilon or after.delta > cap.delta:
            break
        history.append(event)
        spent = after
    return len(history)


def test_rdp_fits_at_least_one_and_a_half_times_as_many_gaussian_queries() -> None:
    cap = PrivacySpent(D("1.0"), D("1e-5"))
    event = gaussian_event(D("0.1"), D("1e-7"))
    basic = _queries_that_fit(event, cap, rdp=False)
    accountant = _queries_that_fit(event, cap, rdp=True)
    assert basic == 10
    assert accountant >= 1.5 * basic  # measured: all 50 fit, against 10


def test_the_cheaper_valid_bound_is_charged() -> None:
    one = gaussian_event(D("0.1"), D("1e-7"))
    # One Gaussian query with little δ to spare: basic composition is the tighter bound.
    assert total_spent([one], delta_budget=D("2e-7")) == (D("0.1"), D("1e-7"))
    # With more δ left, RDP converts the same noise into a smaller ε at the whole δ budget.
    assert total_spent([one], delta_budget=D("1e-5")).epsilon < D("0.1")
    # Many: RDP wins, spends the δ budget, and its ε is rounded up to 9 places.
    many = total_spent([one] * 40, delta_budget=D("1e-5"))
    assert many.delta == D("1e-5") and many.epsilon < D("4.0")
    assert many.epsilon == many.epsilon.quantize(D("1e-9"))
    # Non-Gaussian events add by basic composition on top of the RDP part.
    laplace = PrivacyEvent(D("0.3"), D(0))
    mixed = total_spent([one] * 40 + [laplace], delta_budget=D("1e-5"))
    assert mixed.epsilon == many.epsilon + D("0.3")
    # When non-Gaussian δ leaves no δ for RDP, only basic composition is valid.
    greedy = PrivacyEvent(D("0.1"), D("1e-5"))
    assert total_spent([one] * 40 + [greedy], delta_budget=D("1e-5")).epsilon == D("4.1")


def test_totals_never_decrease_and_charges_are_never_negative() -> None:
    budget = D("1e-5")
    sequence = [
        gaussian_event(D("0.1"), D("1e-7")),
        *[gaussian_event(D("0.05"), D("1e-8"))] * 30,
        PrivacyEvent(D("0.2"), D("4e-6")),  # pushes δ_rdp down: RDP ε jumps
        gaussian_event(D("2.0"), D("1e-9")),  # a loud query: basic may win back
        PrivacyEvent(D("0.01"), D(0), count=5),
    ]
    history: list[PrivacyEvent] = []
    spent = PrivacySpent(D(0), D(0))
    for event in sequence:
        increment = charge(history, [event], delta_budget=budget, spent=spent)
        assert increment.epsilon >= 0 and increment.delta >= 0
        history.append(event)
        total = total_spent(history, delta_budget=budget, at_least=spent)
        assert total == PrivacySpent(spent.epsilon + increment.epsilon,
                                     spent.delta + increment.delta)
        assert total.epsilon >= spent.epsilon and total.delta >= spent.delta
        spent = total


def test_gaussian_events_carry_the_multiplier_the_mechanism_uses() -> None:
    event = gaussian_event(D("0.5"), D("1e-6"), count=2)
    noise = GaussianNoise(epsilon=0.5, delta=1e-6, sensitivity=7.0)
    # The mechanism is a discrete Gaussian on a grid: its σ/Δ is never below the analytic
    # multiplier the accountant composes (so the ledger is conservative), and within 1e-6 of it.
    assert event.noise_multiplier is not None
    assert event.noise_multiplier <= noise.noise_multiplier
    assert noise.noise_multiplier == pytest.approx(event.noise_multiplier, rel=1e-6)
    assert calibrate_gaussian_sigma(0.5, 1e-6, 7.0) == pytest.approx(noise.std, rel=1e-6)


def test_query_events_split_the_budget_exactly() -> None:
    assert privacy_events_for("count", epsilon=D("0.3")) == (PrivacyEvent(D("0.3"), D(0)),)
    for aggregate in ("count", "sum", "mean", "variance", "std", "histogram"):
        events = privacy_events_for(aggregate, epsilon=D("0.3"), delta=D("1e-6"),
                                    mechanism="gaussian")
        assert sum((e.epsilon * e.count for e in events), D(0)) == D("0.3")
        assert sum((e.delta * e.count for e in events), D(0)) == D("1e-6")
        assert all(e.noise_multiplier for e in events)
    variance = privacy_events_for("variance", epsilon=D("0.4"), delta=D("1e-6"),
                                  mechanism="gaussian")
    assert [(e.epsilon, e.count) for e in variance] == [(D("0.1"), 2), (D("0.2"), 1)]
    assert privacy_events_for("quantile", epsilon=D("1")) == (PrivacyEvent(D("1"), D(0)),)


def test_events_refuse_floats_and_nonsense() -> None:
    with pytest.raises(InvalidPrivacyParameter):
        PrivacyEvent(0.1, D(0))  # type: ignore[arg-type]
    with pytest.raises(InvalidPrivacyParameter):
        PrivacyEvent(D("0.1"), D("1"))
    with pytest.raises(InvalidPrivacyParameter):
        PrivacyEvent(D("0.1"), D(0), noise_multiplier=0.0)
    with pytest.raises(InvalidPrivacyParameter):
        PrivacyEvent(D("0.1"), D(0), count=0)
