"""What a release hands back: the noisy value and how far to trust it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Release:
    """One differentially private answer.

    Attributes:
        value: the released value (an int for counts, a float otherwise), in the column's units.
        noise_scale: standard error of ``value`` in the same units. Exact noise standard deviation
            for count and sum; a delta-method estimate from the released components for mean,
            variance and std; for a quantile (no additive noise) ``ci95`` width / (2·1.96).
        ci95: (low, high), a 95% confidence interval for the true value of the query on the
            clamped data, computed only from released quantities (so it costs no budget).
            Count, sum, histogram and mean: exact, coverage >= 95% for every dataset (95.0-95.7%
            measured). Variance/std and quantile (default): calibrated, ~95% on typical data
            but not for every dataset; see ``ci95_worst_case`` and the functions' docstrings.
        epsilon, delta: the privacy parameters this answer consumed.
        ci95_worst_case: None when ``ci95`` itself covers with probability >= 95% for every
            dataset. Otherwise an interval that does: for variance/std the union-bound profile
            interval (free: same released values); for a quantile released with the default
            calibrated interval, only the public bounds (lower, upper), since a worst-case
            interval needs its own budget (``release_quantile(interval="worst_case")``).
            Variance and std always carry it (equal to ``ci95`` when that is already valid for
            every dataset), so an answer's shape never depends on the data.
        grid: the public grid every released real value (and interval end) is a multiple of
            (float safety, see ``noise``): 1 for counts; None where no additive noise is
            released (quantiles).
    """

    value: float
    noise_scale: float
    ci95: tuple[float, float]
    epsilon: float
    delta: float
    ci95_worst_case: tuple[float, float] | None = None
    grid: float | None = None


@dataclass(frozen=True, slots=True)
class GroupedRelease:
    """Answers for public cells (histogram bins or group-by keys), in the caller's order.

    Every cell has an answer, empty cells included (omitting one would reveal it is empty).
    ``epsilon``/``delta`` are the cost of the whole release, which equals the cost of one cell:
    the cells' mechanisms are calibrated to a unit's total contribution, so they compose in
    parallel (see ``release_grouped``). Do not add up the cells' own ``epsilon``.
    """

    cells: tuple[Release, ...]
    epsilon: float
    delta: float

    @property
    def values(self) -> list[float]:
        """The cells' released values, in order."""
        return [cell.value for cell in self.cells]
