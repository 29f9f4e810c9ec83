"""privacy-api: differentially private analytics over Fernet-encrypted records.

The app factory lives in `privacy_api.app.factory` and is imported on first call, not here: the
decryption pool's processes import `privacy_api.storage.pool_tasks` through this package and must not
pay for Flask, SciPy and scikit-learn (~140 MiB per process, docs/scaling.md).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from apiflask import APIFlask

__version__ = "0.1.0"


def create_app(config: dict[str, Any] | None = None, *,
               clock: Callable[[], dt.datetime] | None = None) -> APIFlask:
    """Application factory. `config` overrides settings fields (tests pass database_url etc.);
    `clock` replaces the wall clock the ledger reads (tests cross renewal periods with it)."""
    from .app.factory import create_app as factory

    return factory(config, clock=clock)
