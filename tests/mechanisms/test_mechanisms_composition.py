"""The O(1) composition (basic sums + the Gaussian RDP slope rho) equals full recomposition."""

from __future__ import annotations

from decimal import Decimal, localcontext

from hypothesis import given, settings
from hypothesis import strategies as st

from mechanisms import Composition, PrivacyEvent, PrivacySpent, gaussian_event, total_spent
from mechanisms.accounting import RDP_EPSILON_PLACES, RHO_QUANTUM, gaussian_rho

D = Decimal

_eps = st.decimals(min_value=D("0.001"), max_value=D("2"), places=4)
_delta = st.sampled_from([D("1e-10"), D("1e-8"), D("3e-7"), D("1e-6"), D("1e-5")])
_gaussian = st.builds(lambda e, d, c: gaussian_event(e, d, count=c), _eps, _delta,
                      st.integers(1, 3))
_pure = st.builds(lambda e, c: PrivacyEvent(e, D(0), count=c), _eps, st.integers(1, 2))
_history = st.lists(st.one_of(_gaussian, _pure), min_size=1, max_size=60)
_budget = st.sampled_from([D("1e-6"), D("1e-5"), D("1e-4"), D("1e-3")])


@settings(max_examples=150, deadline=None)
@given(_history, _budget)
def test_incremental_composition_gives_the_full_recompositions_epsilon(history, delta_budget):
    # Added one event at a time (as the ledger does, one charge at a time), every prefix's
    # spend is the full recomposition's, chained through `at_least` exactly as charges are.
    composition = Composition()
    charged_full = charged_fast = None
    for i, event in enumerate(history):
        composition = composition.plus([event])
        full = total_spent(history[: i + 1], delta_budget=delta_budget, at_least=charged_full)
        fast = composition.spent(delta_budget=delta_budget, at_least=charged_fast)
        # ρ's terms are rounded up to 1e-30 and its float up: never cheaper, and at most
        # one 9-place rounding step dearer (in practice: identical).
        assert full.delta == fast.delta
        assert D(0) <= fast.epsilon - full.epsilon <= RDP_EPSILON_PLACES
        charged_full, charged_fast = full, fast


def test_many_events_at_once_equal_one_at_a_time_and_the_mixed_example():
    one = gaussian_event(D("0.1"), D("1e-7"))
    laplace = PrivacyEvent(D("0.3"), D(0))
    events = [one] * 40 + [laplace]
    stepwise = Composition()
    for e in events:
        stepwise = stepwise.plus([e])
    assert stepwise == Composition().plus(events)
    fast = stepwise.spent(delta_budget=D("1e-5"))
    assert fast == total_spent(events, delta_budget=D("1e-5"))
    assert fast.epsilon == total_spent([one] * 40, delta_budget=D("1e-5")).epsilon + D("0.3")


def test_rho_is_count_over_two_sigma_squared_rounded_up():
    event = gaussian_event(D("0.5"), D("1e-6"), count=3)
    sigma = D(event.noise_multiplier)
    with localcontext() as ctx:
        ctx.prec = 80
        exact = 3 / (2 * sigma * sigma)
        rho = gaussian_rho(event)
        assert rho == rho.quantize(RHO_QUANTUM) and D(0) <= rho - exact < RHO_QUANTUM
    assert gaussian_rho(PrivacyEvent(D("0.5"), D(0))) == 0


def test_when_pure_delta_leaves_no_delta_for_rdp_only_basic_composition_is_valid():
    one = gaussian_event(D("0.1"), D("1e-7"))
    greedy = PrivacyEvent(D("0.1"), D("1e-5"))
    composition = Composition().plus([one] * 40 + [greedy])
    assert composition.spent(delta_budget=D("1e-5")) == PrivacySpent(D("4.1"), D("1e-5") + D("4e-6"))
    assert composition.spent(delta_budget=D("1e-5")) == total_spent([one] * 40 + [greedy],
                                                                    delta_budget=D("1e-5"))
