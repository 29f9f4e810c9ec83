"""One entry point per use: release an aggregate, release it per public group, say what it
will cost, and say how accurate it will be, all from the aggregate's name.

The service calls ``privacy_events_for`` to charge the ledger *before* anything is drawn, then
``release_aggregate``/``release_grouped``; the /estimate endpoint calls ``accuracy_for``, which
needs no data and draws nothing.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from functools import partial
from typing import Literal, TypeAlias

import numpy as np
from numpy.typing import ArrayLike

from .accounting import PrivacyEvent, gaussian_event
from .counting import CountNoise, release_count
from .errors import InvalidDomain, InvalidPrivacyParameter
from .moments import (
    COUNT_GRID,
    COUNT_UNITS,
    MEAN_SHARES,
    VARIANCE_SHARES,
    MomentStats,
    moment_grid,
    release_mean,
    release_sum,
    release_variance,
)
from .noise import grid_noise
from .quantile import (
    POINT_SHARE,
    IntervalKind,
    calibrated_rank_offset,
    confidence_rank_slack,
    release_quantile,
)
from .randomness import RandomSource, resolve_rng
from .release import GroupedRelease, Release
from .validation import (
    NoiseKind,
    Number,
    check_bounds,
    check_epsilon,
    check_max_rows,
    check_mechanism_delta,
)

Aggregate: TypeAlias = Literal["count", "sum", "mean", "variance", "std", "quantile"]
AGGREGATES: tuple[Aggregate, ...] = ("count", "sum", "mean", "variance", "std", "quantile")

# How each aggregate splits (ε, δ) between its noisy components. Kept beside the releases'
# own constants so the ledger and the mechanisms cannot disagree.
_SHARES: dict[str, dict[str, float]] = {
    "count": {"count": 1.0},
    "sum": {"sum": 1.0},
    "mean": MEAN_SHARES,
    "variance": VARIANCE_SHARES,
    "std": VARIANCE_SHARES,
}


def release_aggregate(
    aggregate: Aggregate,
    values: ArrayLike | MomentStats,
    *,
    epsilon: Number,
    delta: Number = 0.0,
    mechanism: NoiseKind = "laplace",
    max_rows: int = 1,
    lower: Number | None = None,
    upper: Number | None = None,
    q: Number | None = None,
    quantile_interval: IntervalKind = "calibrated",
    random_state: RandomSource = None,
) -> Release:
    """Release ``aggregate`` of ``values`` (the matching rows of one column).

    For "count" only the number of values matters. "sum", "mean", "variance", "std" and
    "quantile" need the public ``lower``/``upper``; "quantile" also ``q`` and the Laplace
    choice (it is the exponential mechanism, pure ε-DP). ``quantile_interval`` picks the
    quantile's ci95 ("calibrated", "worst_case" or "none"; see ``release_quantile``: use
    "worst_case" for integer-valued or heavily tied columns). Guarantees as the named
    functions.
    """
    if aggregate == "count":
        return release_count(
            values.count if isinstance(values, MomentStats) else len(np.asarray(values)),
            epsilon=epsilon,
            delta=delta,
            mechanism=mechanism,
            max_rows=max_rows,
            random_state=random_state,
        )
    if lower is None or upper is None:
        raise InvalidDomain(f"{aggregate} needs the column's public lower and upper bounds")
    if aggregate == "quantile":
        if q is None:
            raise InvalidDomain("quantile needs q in [0, 1]")
        if isinstance(values, MomentStats):
            raise InvalidDomain("a quantile needs the values, not their moments")
        check_mechanism_delta(mechanism, delta)
        if mechanism != "laplace":
            raise InvalidPrivacyParameter(
                "quantile uses the exponential mechanism (pure epsilon-DP); "
                "mechanism must be 'laplace' and delta 0"
            )
        return release_quantile(
            values,
            q=q,
            lower=lower,
            upper=upper,
            epsilon=epsilon,
            max_rows=max_rows,
            interval=quantile_interval,
            random_state=random_state,
        )
    if aggregate == "sum":
        release = release_sum
    elif aggregate == "mean":
        release = release_mean
    elif aggregate in ("variance", "std"):
        release = partial(release_variance, std=aggregate == "std")
    else:
        raise InvalidDomain(f"unknown aggregate {aggregate!r}; expected one of {AGGREGATES}")
    return release(
        values,
        lower=lower,
        upper=upper,
        epsilon=epsilon,
        delta=delta,
        mechanism=mechanism,
        max_rows=max_rows,
        random_state=random_state,
    )


def release_grouped(
    aggregate: Aggregate,
    groups: Sequence[ArrayLike | MomentStats],
    *,
    epsilon: Number,
    delta: Number = 0.0,
    mechanism: NoiseKind = "laplace",
    max_rows: int = 1,
    lower: Number | None = None,
    upper: Number | None = None,
    q: Number | None = None,
    quantile_interval: IntervalKind = "calibrated",
    random_state: RandomSource = None,
) -> GroupedRelease:
    """Release ``aggregate`` for each public group; ``groups[i]`` holds group i's values.

    Pass every key of the public domain, empty ones as empty arrays: each gets a noisy answer.

    Cost: (epsilon, delta) for the whole group-by, whatever the number of groups and whatever
    ``max_rows``, provided a unit has at most ``max_rows`` rows *in total* (contribution
    bounding before grouping). Each group's mechanism is calibrated to a unit's total
    contribution; if a unit has k_g rows in group g, its privacy loss there is at most
    ε·k_g/max_rows (Laplace and exponential mechanisms are linear in the utility change), and
    Σ k_g <= max_rows. For the Gaussian, each component's vector over groups has L2
    sensitivity at most the scalar one. With max_rows = 1 this is parallel composition.

    Caveat (discrete Gaussian, max_rows > 1): a unit's rows spread over several groups move a
    vector, and CKS Theorem 7, which calibrates each cell, is one-dimensional; the discrete
    Gaussian is not rotation invariant, so the per-query (ε, δ) for that case rests on the
    vector's zCDP bound ρ = Δ²/(2σ²) (CKS), which the ledger's RDP accounting composes, rather
    than on the one-dimensional curve. With max_rows = 1 a unit touches one cell: exact.
    """
    if not groups:
        raise InvalidDomain("a group-by needs at least one public group")
    rng = resolve_rng(random_state)  # one stream for all groups: their noises are independent
    cells = tuple(
        release_aggregate(
            aggregate,
            values,
            epsilon=epsilon,
            delta=delta,
            mechanism=mechanism,
            max_rows=max_rows,
            lower=lower,
            upper=upper,
            q=q,
            quantile_interval=quantile_interval,
            random_state=rng,
        )
        for values in groups
    )
    return GroupedRelease(cells=cells, epsilon=cells[0].epsilon, delta=cells[0].delta)


def privacy_events_for(
    aggregate: Aggregate | Literal["histogram"],
    *,
    epsilon: Decimal,
    delta: Decimal = Decimal(0),
    mechanism: NoiseKind = "laplace",
) -> tuple[PrivacyEvent, ...]:
    """The ledger events of one query (single, grouped or histogram: the cost is the same).

    Laplace-type and exponential mechanisms give one pure event (epsilon, 0). A Gaussian
    aggregate gives one Gaussian event per budget share, with the noise multiplier its
    components use, so the RDP accountant composes exactly what was run. Shares are dyadic,
    so the events' ε and δ add up to the request's exactly.
    """
    check_epsilon(epsilon)
    check_mechanism_delta(mechanism, delta)
    if aggregate == "quantile" and mechanism != "laplace":
        raise InvalidPrivacyParameter("quantile supports only mechanism='laplace'")
    if mechanism == "laplace":
        return (PrivacyEvent(epsilon, Decimal(0)),)
    # Components with equal shares have equal noise multipliers: one event, counted.
    shares = Counter(_SHARES["count" if aggregate == "histogram" else aggregate].values())
    return tuple(
        gaussian_event(epsilon * Decimal(share), delta * Decimal(share), count=count)
        for share, count in sorted(shares.items())
    )


@dataclass(frozen=True, slots=True)
class Accuracy:
    """What a query's noise will be, known before any data is touched.

    Attributes:
        noise_scale: standard deviation of the noise on the released value, in its units, when
            it does not depend on the data (count, sum, histogram/group-by counts); else None.
        ci95_halfwidth: half-width of the 95% interval when data-independent; else None.
        components: standard deviation of each noisy component in its own units (rows for
            "count", the column's units for "sum", squared units for "sum_of_squares"; for a
            quantile, "rank": the point's rank-error scale 2Δ/ε in rows, "interval_rank_slack":
            how many ranks beyond the quantile the calibrated CI bounds aim, and
            "worst_case_rank_slack": the same for the worst-case bounds). A mean's
            error is about sqrt(sum² + mean²·count²)/n, which needs the private n.
        grid: the public grid the released value lies on (1 for counts; None for quantiles).
    """

    noise_scale: float | None
    ci95_halfwidth: float | None
    components: dict[str, float] = field(default_factory=dict)
    grid: float | None = None


def accuracy_for(
    aggregate: Aggregate | Literal["histogram"],
    *,
    epsilon: Number,
    delta: Number = 0.0,
    mechanism: NoiseKind = "laplace",
    max_rows: int = 1,
    lower: Number | None = None,
    upper: Number | None = None,
) -> Accuracy:
    """The accuracy of a query from its public parameters only; draws no noise.

    Histogram and group-by counts: the same as one count, per cell. Raises the same errors as
    the corresponding release.
    """
    eps = check_epsilon(epsilon)
    rows = check_max_rows(max_rows)
    dlt = check_mechanism_delta(mechanism, delta)
    # Checked here, before any charge: a calibration that overflows would otherwise fail (or
    # answer Infinity) after the budget is spent.
    try:
        accuracy = _accuracy_for(aggregate, eps, dlt, mechanism, rows, lower, upper)
        numbers = [accuracy.noise_scale, accuracy.ci95_halfwidth, *accuracy.components.values()]
        finite = all(math.isfinite(x) for x in numbers if x is not None)
    except OverflowError:
        finite = False
    if not finite:
        raise InvalidPrivacyParameter(
            "this epsilon is too small for these bounds: the noise would not be a finite number"
        )
    return accuracy


def _accuracy_for(
    aggregate: str, eps: float, dlt: float, mechanism: NoiseKind, rows: int,
    lower: Number | None, upper: Number | None,
) -> Accuracy:
    if aggregate in ("count", "histogram"):
        count = CountNoise(epsilon=eps, delta=dlt, mechanism=mechanism, max_rows=rows)
        return Accuracy(count.std, float(count.halfwidth), {"count": count.std}, grid=1.0)
    if lower is None or upper is None:
        raise InvalidDomain(f"{aggregate} needs the column's public lower and upper bounds")
    if aggregate == "quantile":
        check_bounds(lower, upper)
        if mechanism != "laplace":
            raise InvalidPrivacyParameter("quantile supports only mechanism='laplace'")
        bound_eps = eps * (1.0 - POINT_SHARE) / 2.0
        return Accuracy(
            None,
            None,
            {
                "rank": 2.0 * rows / (eps * POINT_SHARE),
                "interval_rank_slack": calibrated_rank_offset(bound_eps, rows),
                "worst_case_rank_slack": confidence_rank_slack(bound_eps, rows),
            },
        )
    if aggregate not in _SHARES:
        raise InvalidDomain(f"unknown aggregate {aggregate!r}; expected one of {AGGREGATES}")
    grid = moment_grid(lower, upper)
    units = {
        "count": (COUNT_GRID, COUNT_UNITS),
        "sum": ((grid.total, grid.total_units) if aggregate == "sum"
                else (grid.shift, grid.shift_units)),
        "sum_of_squares": (grid.square, grid.square_units),
    }
    noises = {
        name: grid_noise(mechanism, epsilon=eps * share, delta=dlt * share,
                         unit_sensitivity=rows * units[name][1], grid=units[name][0])
        for name, share in _SHARES[aggregate].items()
    }
    components = {name: noise.std for name, noise in noises.items()}
    released_grid = {"sum": grid.total, "mean": grid.shift, "variance": grid.square,
                     "std": grid.shift}[aggregate]
    if aggregate == "sum":
        return Accuracy(noises["sum"].std, noises["sum"].ci95_halfwidth(), components,
                        grid=released_grid)
    return Accuracy(None, None, components, grid=released_grid)
