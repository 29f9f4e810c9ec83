"""Exact budget units: epsilon in 1e-12 quanta, delta in 1e-18 quanta, stored as integers.

Floats never accumulate a budget: requests arrive as decimal strings/numbers, are converted
once to integer quanta (rounding charges *up*), and every sum afterwards is integer arithmetic.
"""

from __future__ import annotations

from decimal import ROUND_CEILING, Decimal

EPSILON_QUANTUM = Decimal("1e-12")
DELTA_QUANTUM = Decimal("1e-18")


def _to_units(value: Decimal | float | int | str, quantum: Decimal) -> int:
    d = value if isinstance(value, Decimal) else Decimal(str(value))
    return int((d / quantum).to_integral_value(rounding=ROUND_CEILING))


def eps_units(value: Decimal | float | int | str) -> int:
    return _to_units(value, EPSILON_QUANTUM)


def delta_units(value: Decimal | float | int | str) -> int:
    return _to_units(value, DELTA_QUANTUM)


def eps_value(units: int) -> Decimal:
    return (Decimal(units) * EPSILON_QUANTUM).normalize() if units else Decimal(0)


def delta_value(units: int) -> Decimal:
    return (Decimal(units) * DELTA_QUANTUM).normalize() if units else Decimal(0)


def as_number(d: Decimal) -> float:
    """JSON numbers: a float that round-trips the decimal string for display."""
    return float(d)
