"""Give freed heap back to the operating system after a large request (storage/memory.py)."""

from __future__ import annotations

from ..storage.memory import MALLOC_ARENAS, limit_malloc_arenas, release_freed_memory

__all__ = ["MALLOC_ARENAS", "limit_malloc_arenas", "release_freed_memory"]
