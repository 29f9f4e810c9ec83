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
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal
from typing import NamedTuple

from dp_accounting import dp_event
from dp_accounting.rdp import rdp_privacy_accountant

from .errors import InvalidPrivacyParameter
from .noise import calibrate_gaussian_sigma

__all__ = [
    "PrivacyEvent",
    "PrivacySpent",
    "calibrate_gaussian_sigma",
    "charge",
    "gaussian_event",
    "total_spent",
]

RDP_EPSILON_PLACES = Decimal("1e-9")


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


def _float_at_most(amount: Decimal) -> float:
    """The largest float <= amount (so an RDP conversion never uses more δ than is left)."""
    value = float(amount)
    if Decimal(value) > amount:
        value = math.nextafter(value, -math.inf)
    return value


def _rdp_epsilon(multipliers: Counter[float], delta: Decimal) -> Decimal:
    accountant = rdp_privacy_accountant.RdpAccountant()
    for multiplier, count in sorted(multipliers.items()):
        accountant.compose(dp_event.GaussianDpEvent(multiplier), count)
    epsilon = float(accountant.get_epsilon(_float_at_most(delta)))
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
