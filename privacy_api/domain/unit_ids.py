"""Stable ids of privacy units: a keyless 63-bit BLAKE2b of the unit's value.

Its own module (standard library and NumPy only) so the decryption pool's processes can hash
units without importing the schema module and, through it, `mechanisms` (SciPy, diffprivlib).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np


def unit_hash(value: str) -> int:
    """Stable 63-bit id of a privacy unit (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.blake2b(value.encode(), digest_size=8).digest(), "big") >> 1


def unit_hashes(values: Iterable[str]) -> np.ndarray:
    """unit_hash of each value, as an int64 array (one bytes join instead of an int per value)."""
    blake2b = hashlib.blake2b
    digests = b"".join([blake2b(v.encode(), digest_size=8).digest() for v in values])
    return (np.frombuffer(digests, dtype=">u8") >> 1).astype(np.int64)
