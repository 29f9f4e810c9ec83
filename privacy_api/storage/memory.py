"""Give freed heap back to the operating system after a large request or a cold load, and
keep few malloc arenas.

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

# glibc's mallopt parameter (malloc.h): the most malloc arenas the process may create.
_M_ARENA_MAX = -8
# Two: the main thread's arena and one the request threads share. Python allocates under the
# GIL, so more arenas buy no parallelism; each one kept ~2-3 MiB of freed pages per waitress
# thread that malloc_trim could not give back (measured with /proc/<pid>/smaps: a worker's
# anonymous memory grew 8-11 MiB after its first queries with the default of 8 per core, 0
# with MALLOC_ARENA_MAX=1; issue 14, docs/scaling.md).
MALLOC_ARENAS = 2


@cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas for this process (call before its request threads start);
    False where the C library has no mallopt (not glibc) or refuses."""
    libc = _libc()
    mallopt = getattr(libc, "mallopt", None) if libc is not None else None
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_ARENA_MAX, arenas))


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    libc = _libc()
    trim = getattr(libc, "malloc_trim", None) if libc is not None else None
    if trim is None:  # not glibc
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    function: Callable[[int], int] = trim
    return function


def release_freed_memory() -> bool:
    """Return freed heap pages to the OS; False where the C library cannot."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
