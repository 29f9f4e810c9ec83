"""Where the randomness for noise comes from.

By default every draw comes from ``secrets.SystemRandom`` (the operating system's CSPRNG), as in
diffprivlib when ``random_state=None``. Tests inject a seeded ``numpy.random.RandomState`` (or
an int seed) to make statistical checks reproducible. A seeded source is NOT private: never pass
one in production.
"""

from __future__ import annotations

from secrets import SystemRandom
from typing import TypeAlias

from diffprivlib.utils import check_random_state
from numpy.random import RandomState

RandomSource: TypeAlias = int | RandomState | SystemRandom | None
"""What callers may pass as ``random_state``: None (CSPRNG), a seed, or a generator."""

Rng: TypeAlias = RandomState | SystemRandom
"""A resolved generator; diffprivlib mechanisms accept it as their ``random_state``."""


def resolve_rng(random_state: RandomSource) -> Rng:
    """Turn ``random_state`` into one generator to share across every draw of a release.

    Resolving once matters: handing the same int seed to two mechanisms would give them the same
    stream, so their noises would be equal and could cancel in a difference.
    """
    rng: Rng = check_random_state(random_state, secure=True)
    return rng


def uniform(rng: Rng) -> float:
    """One uniform draw in [0, 1) from ``rng``."""
    return float(rng.random())
