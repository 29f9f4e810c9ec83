"""What answering a query needs from the running app, as the query services see it.

The app's state (`privacy_api.runtime.state.AppState`) provides it; the views pass it down. Declared
here, below the app wiring, so that services never import the layer that calls them.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Protocol

from sqlalchemy.orm import Session

from ..crypto.keyring import DataCipher, MasterKeyring
from ..storage.columns import ColumnCache, DatasetColumns
from ..storage.db import Database
from ..storage.models import Dataset


class QueryResources(Protocol):
    @property
    def db(self) -> Database: ...

    @property
    def keyring(self) -> MasterKeyring: ...

    @property
    def cache(self) -> ColumnCache: ...

    @property
    def max_query_epsilon(self) -> Decimal:
        """The largest ε one query may ask for on this service."""
        ...

    def clock(self) -> dt.datetime:
        """Now, in UTC: the ledger stamps entries with it and renewal periods follow it."""
        ...

    def columns_for(self, session: Session, dataset: Dataset,
                    cipher: DataCipher | None = None) -> DatasetColumns:
        """The dataset's decrypted columns; pass `cipher` if the caller already holds it."""
        ...
