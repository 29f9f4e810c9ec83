"""Give freed heap back to the operating system after a large request or a cold load.

glibc keeps memory a thread freed in that thread's malloc arena for reuse; after an upload
(tens of thousands of short-lived row objects per chunk, on a waitress worker thread) the
worker's resident set would otherwise stay at the request's peak until the same thread needs
it again. `malloc_trim(0)` returns the free pages of every arena (measured in
bench/bench_scale.py and tests/hardening/test_upload_memory.py). Elsewhere (musl, macOS)
this is a no-op.

In storage (the lowest layer that needs it): a decoding range's Python temporaries, in a pool
process or in a worker decoding inline, are freed the same way (columns.py, pool_tasks.py).
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable
from functools import cache


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def release_freed_memory() -> bool:
    """Return freed heap pages to the OS; False where the C library cannot."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
