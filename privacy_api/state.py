"""What one app instance holds: settings, database, master keyring and column cache."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from flask import current_app
from sqlalchemy.orm import Session

from .columns import ColumnCache, DatasetColumns
from .config import Settings
from .crypto.keyring import MasterKeyring
from .db import Database
from .models import Dataset
from .services.datasets import data_cipher, schema_of


@dataclass
class AppState:
    settings: Settings
    db: Database
    keyring: MasterKeyring
    cache: ColumnCache

    def columns_for(self, session: Session, dataset: Dataset) -> DatasetColumns:
        keys: Sequence[bytes] = data_cipher(session, self.keyring, dataset.id).keys
        return self.cache.get(dataset.id, dataset.version, schema_of(dataset), keys)


def state() -> AppState:
    s: AppState = current_app.extensions["privacy_api"]
    return s
