"""What one app instance holds: settings, database, master keyring and column cache.

It is the `services.query_resources.QueryResources` the query services are handed."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal

from flask import current_app
from sqlalchemy.orm import Session

from ..crypto.keyring import DataCipher, MasterKeyring
from ..services.datasets import data_cipher, schema_of
from ..storage.columns import ColumnCache, DatasetColumns
from ..storage.db import Database
from ..storage.models import Dataset, utcnow
from .config import Settings


@dataclass
class AppState:
    settings: Settings
    db: Database
    keyring: MasterKeyring
    cache: ColumnCache
    # The time the ledger stamps entries with and renewal periods are decided by; tests pass
    # their own to create_app to cross a period boundary without waiting.
    wall_clock: Callable[[], dt.datetime] = field(default=utcnow)

    def clock(self) -> dt.datetime:
        """The wall clock's time, in UTC (SQLite stores times without their offset)."""
        now = self.wall_clock()
        return now.astimezone(dt.UTC) if now.tzinfo else now.replace(tzinfo=dt.UTC)

    @property
    def max_query_epsilon(self) -> Decimal:
        return self.settings.max_query_epsilon

    def columns_for(self, session: Session, dataset: Dataset,
                    cipher: DataCipher | None = None) -> DatasetColumns:
        """The dataset's decrypted columns; pass `cipher` if the caller already holds it."""
        cipher = cipher or data_cipher(session, self.keyring, dataset.id)
        return self.cache.get(dataset.id, dataset.version, schema_of(dataset), cipher.keys)


def state() -> AppState:
    s: AppState = current_app.extensions["privacy_api"]
    return s
