"""Exact privacy accounting for a budget: basic composition, or RDP for Gaussian queries.

Amounts are ``decimal.Decimal``; nothing here accumulates floats. An event is a mechanism run
``count`` times at (ε, δ); a Gaussian one also records its noise multiplier σ/Δ₂.

Two bounds are valid for any sequence of events (all adaptive compositions):

* basic composition: (Σ ε_i, Σ δ_i) over all events;
* RDP: non-Gaussian events by basic composition, plus the Gaussian ones composed in Rényi DP
  (``dp_accounting``'s ``RdpAccountant``, add/remove neighbours) and converted to ε at
  δ_rdp = delta_budget - Σ δ_non-Gaussian, the δ budget that is left. It reports
  (Σ ε_non-Gaussian + ε_rdp, delta_budget). ε_rdp is rounded *up* to 9 decimal places so the
  Decimal is exact and conservative.

``total_spent`` charges the bound with the smaller ε among those whose δ fits the δ budget.

O(1) form. ``total_spent`` recomposes a whole history; a budget instead keeps a
``Composition``: the sums basic composition needs and, for the Gaussian events, their composed
RDP curve. The Gaussian mechanism's RDP at order α is α/(2σ²) (σ = noise multiplier), linear
in α, so the composed curve of any number of Gaussian runs is α·ρ with ρ = Σ count/(2σ²) (its
zCDP parameter): one number holds the whole per-order vector, over every order, whatever the
multipliers. ρ is kept as an exact Decimal, each term rounded *up* to a multiple of 1e-30,
and ε is computed from it in O(orders) by the same conversion (``dp_accounting``'s RDP → (ε, δ))
with ρ's float rounded up: the result is never below the full recomposition's and equal to it
after the 9-place rounding up (tests/mechanisms/test_mechanisms_accounting.py).

Monotonicity: ε of each bound never decreases as events are added, so neither does their
minimum. δ can: the RDP bound reports the whole δ budget, basic composition only Σ δ_i, so
if a later event made basic composition tighter again δ would drop. Pass the amount already
charged as ``at_least``: the result is then the componentwise maximum, still a valid bound
(weakening a guarantee is always safe), and never below what was charged. The service charges
a query ``charge(...)`` = total after - total before, which is therefore never negative.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, replace
from decimal import ROUND_CEILING, Decimal, localcontext
from typing import NamedTuple

from dp_accounting import dp_event
from dp_accounting.rdp import rdp_privacy_accountant

from .errors import InvalidPrivacyParameter
from .noise import calibrate_gaussian_sigma

__all__ = [
    "Composition",
    "PrivacyEvent",
    "PrivacySpent",
    "calibrate_gaussian_sigma",
    "charge",
    "gaussian_event",
    "total_spent",
]

RDP_EPSILON_PLACES = Decimal("1e-9")
RHO_QUANTUM = Decimal("1e-30")
"""Each ρ term is rounded up to a multiple of this: ρ's sums are then exact fixed-point
additions (the same in any order) and the rounding sits far below what ε's 9 places show."""
_RHO_PRECISION = 72  # digits: exact for any ρ below 1e42


@dataclass(frozen=True, slots=True)
class PrivacyEvent:
    """``count`` runs of a mechanism, each (epsilon, delta)-DP.

    ``noise_multiplier`` is σ/Δ₂ for a Gaussian mechanism (L2 sensitivity Δ₂), None otherwise.
    Raises InvalidPrivacyParameter for non-Decimal or out-of-range amounts.
    """

    epsilon: Decimal
    delta: Decimal
    noise_multiplier: float | None = None
    count: int = 1

    def __post_init__(self) -> None:
        for name, amount in (("epsilon", self.epsilon), ("delta", self.delta)):
            if not isinstance(amount, Decimal) or not amount.is_finite() or amount < 0:
                raise InvalidPrivacyParameter(f"{name} must be a finite Decimal >= 0")
        if self.delta >= 1:
            raise InvalidPrivacyParameter("delta must be < 1")
        if self.noise_multiplier is not None and not (
            math.isfinite(self.noise_multiplier) and self.noise_multiplier > 0
        ):
            raise InvalidPrivacyParameter("noise_multiplier must be finite and > 0")
        if isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 1:
            raise InvalidPrivacyParameter("count must be an integer >= 1")


class PrivacySpent(NamedTuple):
    """An (ε, δ) guarantee, exact."""

    epsilon: Decimal
    delta: Decimal


def gaussian_event(epsilon: Decimal, delta: Decimal, *, count: int = 1) -> PrivacyEvent:
    """The event for ``count`` analytic-Gaussian releases, each at (epsilon, delta).

    The noise multiplier is the analytic σ at sensitivity 1, which is σ/Δ₂ at any sensitivity.
    """
    multiplier = calibrate_gaussian_sigma(epsilon, delta, 1.0)
    return PrivacyEvent(epsilon, delta, noise_multiplier=multiplier, count=count)


def float_at_most(amount: Decimal) -> float:
    """The largest float <= amount: an RDP conversion never uses more δ than is left, and a
    mechanism handed the charged ε/δ never runs at more than was charged (float(Decimal("0.1"))
    rounds to nearest, which is above 0.1)."""
    value = float(amount)
    if Decimal(value) > amount:
        value = math.nextafter(value, -math.inf)
    return value


def _rdp_epsilon(multipliers: Counter[float], delta: Decimal) -> Decimal:
    accountant = rdp_privacy_accountant.RdpAccountant()
    for multiplier, count in sorted(multipliers.items()):
        accountant.compose(dp_event.GaussianDpEvent(multiplier), count)
    epsilon = float(accountant.get_epsilon(float_at_most(delta)))
    if not math.isfinite(epsilon):
        return Decimal("Infinity")
    return Decimal(epsilon).quantize(RDP_EPSILON_PLACES, rounding=ROUND_CEILING)


def total_spent(
    events: Iterable[PrivacyEvent],
    *,
    delta_budget: Decimal,
    at_least: PrivacySpent | None = None,
) -> PrivacySpent:
    """The (ε, δ) guarantee of all ``events`` together, by the tighter valid bound.

    ``delta_budget`` is the δ cap the RDP bound may use. ``at_least`` (the total charged
    before) makes the result monotone; see the module docstring.
    """
    events = list(events)
    basic = PrivacySpent(
        sum((e.epsilon * e.count for e in events), Decimal(0)),
        sum((e.delta * e.count for e in events), Decimal(0)),
    )
    best = basic
    gaussian: Counter[float] = Counter()
    for event in events:
        if event.noise_multiplier is not None:
            gaussian[event.noise_multiplier] += event.count
    if gaussian:
        others = [e for e in events if e.noise_multiplier is None]
        other_eps = sum((e.epsilon * e.count for e in others), Decimal(0))
        other_delta = sum((e.delta * e.count for e in others), Decimal(0))
        rdp_delta = delta_budget - other_delta
        if rdp_delta > 0:
            rdp = PrivacySpent(other_eps + _rdp_epsilon(gaussian, rdp_delta), delta_budget)
            if rdp.epsilon < basic.epsilon or basic.delta > delta_budget:
                best = rdp
    if at_least is not None:
        best = PrivacySpent(max(best.epsilon, at_least.epsilon), max(best.delta, at_least.delta))
    return best


def charge(
    history: Iterable[PrivacyEvent],
    new_events: Iterable[PrivacyEvent],
    *,
    delta_budget: Decimal,
    spent: PrivacySpent | None = None,
) -> PrivacySpent:
    """What adding ``new_events`` to ``history`` costs: total after - total before, both >= 0.

    ``spent`` is the amount already charged for ``history`` (defaults to its total).
    """
    history = list(history)
    before = spent or total_spent(history, delta_budget=delta_budget)
    after = total_spent([*history, *new_events], delta_budget=delta_budget, at_least=before)
    return PrivacySpent(after.epsilon - before.epsilon, after.delta - before.delta)


def gaussian_rho(event: PrivacyEvent) -> Decimal:
    """ρ = count/(2σ²) of a Gaussian event (its RDP curve is α·ρ), rounded up; 0 otherwise.

    σ is a float, which Decimal represents exactly; only the division rounds, upwards.
    """
    if event.noise_multiplier is None:
        return Decimal(0)
    with localcontext() as ctx:
        ctx.prec, ctx.rounding = _RHO_PRECISION, ROUND_CEILING
        sigma = Decimal(event.noise_multiplier)
        return (Decimal(event.count) / (2 * sigma * sigma)).quantize(RHO_QUANTUM)


def add_rho(total: Decimal, term: Decimal) -> Decimal:
    """total + term, exactly (Decimal's default 28 digits would round)."""
    with localcontext() as ctx:
        ctx.prec, ctx.rounding = _RHO_PRECISION, ROUND_CEILING
        return total + term


def _float_at_least(amount: Decimal) -> float:
    """The smallest float >= amount (a ρ that never understates the composed curve)."""
    value = float(amount)
    if Decimal(value) < amount:
        value = math.nextafter(value, math.inf)
    return value


def _zcdp_epsilon(rho: Decimal, delta: Decimal) -> Decimal:
    """ε at ``delta`` of the RDP curve α·ρ over dp_accounting's default orders, rounded up."""
    accountant = rdp_privacy_accountant.RdpAccountant()
    accountant.compose(dp_event.ZCDpEvent(_float_at_least(rho)))
    epsilon = float(accountant.get_epsilon(float_at_most(delta)))
    if not math.isfinite(epsilon):
        return Decimal("Infinity")
    return Decimal(epsilon).quantize(RDP_EPSILON_PLACES, rounding=ROUND_CEILING)


@dataclass(frozen=True, slots=True)
class Composition:
    """What ``total_spent`` needs of a history, in O(1) space: add events, ask for the spend.

    ``basic_*``: Σ ε·count and Σ δ·count over every event (basic composition).
    ``pure_*``: the same over the non-Gaussian events only (added on top of the RDP part).
    ``gaussian_rho``: Σ count/(2σ²) over the Gaussian events (their composed RDP curve is α·ρ).
    ``spent`` equals ``total_spent`` of the same events (up to one 1e-9 rounding step, never
    below it); a caller storing the sums in coarser units must round them up.
    """

    basic_epsilon: Decimal = Decimal(0)
    basic_delta: Decimal = Decimal(0)
    pure_epsilon: Decimal = Decimal(0)
    pure_delta: Decimal = Decimal(0)
    gaussian_rho: Decimal = Decimal(0)

    def plus(self, events: Iterable[PrivacyEvent]) -> Composition:
        out = self
        with localcontext() as ctx:  # sums exact (or rounded up), never to nearest
            ctx.prec, ctx.rounding = _RHO_PRECISION, ROUND_CEILING
            for e in events:
                eps, delta = e.epsilon * e.count, e.delta * e.count
                out = replace(out, basic_epsilon=out.basic_epsilon + eps,
                              basic_delta=out.basic_delta + delta)
                if e.noise_multiplier is None:
                    out = replace(out, pure_epsilon=out.pure_epsilon + eps,
                                  pure_delta=out.pure_delta + delta)
                else:
                    out = replace(out, gaussian_rho=out.gaussian_rho + gaussian_rho(e))
        return out

    def spent(self, *, delta_budget: Decimal, at_least: PrivacySpent | None = None
              ) -> PrivacySpent:
        """The tighter valid (ε, δ) bound, as ``total_spent``; O(number of RDP orders)."""
        basic = PrivacySpent(self.basic_epsilon, self.basic_delta)
        best = basic
        if self.gaussian_rho > 0:
            rdp_delta = delta_budget - self.pure_delta
            if rdp_delta > 0:
                rdp = PrivacySpent(self.pure_epsilon + _zcdp_epsilon(self.gaussian_rho, rdp_delta),
                                   delta_budget)
                if rdp.epsilon < basic.epsilon or basic.delta > delta_budget:
                    best = rdp
        if at_least is not None:
            best = PrivacySpent(max(best.epsilon, at_least.epsilon),
                                max(best.delta, at_least.delta))
        return best
