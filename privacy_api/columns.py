"""The decrypted column cache the query engine reads.

A dataset version is decrypted once, in parallel over the cores (each worker process reads and
decrypts its own id range straight from the database), into NumPy columns. Entries are keyed by
(dataset id, version), so an upload — which bumps the version — makes the old entry unreachable;
the least recently used entries are evicted to stay under a byte bound.
"""

from __future__ import annotations

import gc
import multiprocessing
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from sqlalchemy import Connection, Engine, func, select

from .crypto import fernet_batch
from .crypto.fernet_batch import InvalidToken
from .dataset_schema import Column, DatasetSchema, unit_hashes
from .models import Record

# Below this many records, forking workers costs more than it saves.
PARALLEL_THRESHOLD = 50_000
# Records decoded in one pass (a worker's task, or a step of an inline load).
RANGE_ROWS = 125_000


class CorruptRecord(Exception):
    """A stored token failed authentication: tampering or a lost key. Never decoded silently."""


@dataclass
class DatasetColumns:
    dataset_id: int
    version: int
    schema: DatasetSchema
    columns: dict[str, np.ndarray]
    n_rows: int
    nbytes: int = 0
    # Rows dropped by contribution bounding (a privacy unit above max_rows).
    bounded_away: int = 0
    # Arrays derived from this version's columns and public parameters only (clamped and
    # shifted values, group orderings), built on first use: they hold for the whole version.
    derived: dict[tuple[Any, ...], tuple[np.ndarray, ...]] = field(default_factory=dict)

    def column(self, name: str) -> np.ndarray:
        return self.columns[name]

    def memoized(self, key: tuple[Any, ...],
                 build: Callable[[], tuple[np.ndarray, ...]]) -> tuple[np.ndarray, ...]:
        """`build()` once per version and key; its bytes count against the cache's bound."""
        cached = self.derived.get(key)
        if cached is None:
            cached = build()
            self.derived[key] = cached
            self.nbytes += sum(a.nbytes for a in cached)
        return cached

    def shifted(self, name: str, lower: float, upper: float) -> tuple[np.ndarray, np.ndarray]:
        """(clip(x, lower, upper) - midpoint, its square) for column `name` (cached)."""
        def build() -> tuple[np.ndarray, np.ndarray]:
            shifted = np.clip(self.columns[name].astype(np.float64), lower, upper)
            shifted -= (lower + upper) / 2.0
            return shifted, shifted * shifted

        shifted, squares = self.memoized(("shifted", name, lower, upper), build)
        return shifted, squares


def _dtype(col: Column) -> type:
    if col.type == "float":
        return np.float64
    if col.type == "int":
        return np.int64
    if col.type == "bool":
        return np.bool_
    if col.type == "category":
        return np.int32
    return np.int64  # id: stable hash


def _columns_from_rows(schema: DatasetSchema, rows: list[list[Any]]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for i, col in enumerate(schema.columns):
        values = [r[i] for r in rows]
        if col.type == "id":
            out[col.name] = unit_hashes(values)
        else:
            out[col.name] = np.asarray(values, dtype=_dtype(col))
    return out


def encrypt_plaintexts(key: bytes, plaintexts: Sequence[bytes]) -> list[bytes]:
    return fernet_batch.encrypt(key, plaintexts)


def _decrypt(keys: Sequence[bytes], tokens: Sequence[bytes]) -> fernet_batch.Plaintexts:
    try:
        return fernet_batch.decrypt(keys, tokens)
    except InvalidToken:
        raise CorruptRecord("a record failed authentication (tampered or wrong key)") from None


def decrypt_tokens(keys: Sequence[bytes], tokens: Sequence[bytes]) -> list[bytes]:
    return _decrypt(keys, tokens).tolist()


def _read_tokens(conn: Connection, dataset_id: int, lo: int, hi: int) -> list[bytes]:
    """Tokens of the records with lo <= id < hi, in id (upload) order.

    Straight from the driver's cursor: SQLAlchemy's per-row result handling costs more than the
    read itself. On PostgreSQL in binary format, so bytea arrives without hex decoding.
    """
    raw = conn.connection.dbapi_connection
    dialect = conn.dialect.name
    if raw is None or dialect not in ("sqlite", "postgresql"):
        return [bytes(t) for t in conn.scalars(
            select(Record.token)
            .where(Record.dataset_id == dataset_id, Record.id >= lo, Record.id < hi)
            .order_by(Record.id)
        )]
    mark = "?" if dialect == "sqlite" else "%s"
    cursor = raw.cursor(binary=True) if dialect == "postgresql" else raw.cursor()
    try:
        cursor.execute(
            f"SELECT token FROM {Record.__tablename__} WHERE dataset_id = {mark} "
            f"AND id >= {mark} AND id < {mark} ORDER BY id",
            (dataset_id, lo, hi),
        )
        rows = cursor.fetchall()
    finally:
        cursor.close()
    return [r[0] for r in rows]


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Decoding creates millions of short-lived, acyclic objects (row lists, tuples): the cyclic
    collector would rescan them over and over (~20% of a decode) and can free none of them."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _decode_range(conn: Connection, dataset_id: int, lo: int, hi: int, keys: Sequence[bytes],
                  schema: DatasetSchema) -> tuple[int, dict[str, np.ndarray]]:
    """Read, decrypt and decode the records with lo <= id < hi: (row count, columns)."""
    with _gc_paused():
        plain = _decrypt(keys, _read_tokens(conn, dataset_id, lo, hi))
        if not len(plain):
            return 0, _columns_from_rows(schema, [])
        # the plaintexts are JSON lists: join them into one JSON array in place of their padding
        rows = orjson.loads(b"[" + plain.join(b",", b"]"))
        return len(rows), _columns_from_rows(schema, rows)


_worker_engines: dict[str, Engine] = {}


def _decrypt_range(url: str, dataset_id: int, lo: int, hi: int, keys: Sequence[bytes],
                   schema: DatasetSchema) -> tuple[int, dict[str, np.ndarray]]:
    """Worker: read records with lo <= id < hi, decrypt, and return (row count, columns)."""
    from .db import fork_safe_engine

    engine = _worker_engines.get(url)
    if engine is None:
        engine = _worker_engines[url] = fork_safe_engine(url)
    with engine.connect() as conn:
        return _decode_range(conn, dataset_id, lo, hi, keys, schema)


class ColumnCache:
    def __init__(self, engine: Engine, url: str, *, max_bytes: int, workers: int) -> None:
        self.engine = engine
        self.url = url
        self.max_bytes = max_bytes
        self.workers = max(1, workers)
        self._entries: OrderedDict[tuple[int, int], DatasetColumns] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[tuple[int, int], threading.Lock] = {}
        self._pool: Executor | None = None

    # -- public ------------------------------------------------------------------------------
    def get(self, dataset_id: int, version: int, schema: DatasetSchema,
            keys: Sequence[bytes]) -> DatasetColumns:
        key = (dataset_id, version)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                return entry
            load_lock = self._loading.setdefault(key, threading.Lock())
        with load_lock:  # one decryption per version, however many requests wait for it
            with self._lock:
                entry = self._entries.get(key)
                if entry is not None:
                    return entry
            entry = self._load(dataset_id, version, schema, keys)
            with self._lock:
                self._drop_older(dataset_id, version)
                self._entries[key] = entry
                self._evict()
                self._loading.pop(key, None)
            return entry

    def peek(self, dataset_id: int, version: int) -> DatasetColumns | None:
        """The cached entry of exactly this version, or None: never loads."""
        with self._lock:
            entry = self._entries.get((dataset_id, version))
            if entry is not None:
                self._entries.move_to_end((dataset_id, version))
            return entry

    def encrypt_chunk(self, key: bytes, plaintexts: Sequence[bytes]) -> Future[list[bytes]]:
        """Start encrypting one upload chunk on a worker process; the caller keeps parsing."""
        if self.workers == 1:
            done: Future[list[bytes]] = Future()
            done.set_result(encrypt_plaintexts(key, plaintexts))
            return done
        return self._executor().submit(encrypt_plaintexts, key, plaintexts)

    def invalidate(self, dataset_id: int) -> None:
        with self._lock:
            for key in [k for k in self._entries if k[0] == dataset_id]:
                del self._entries[key]

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self._entries.values())

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    # -- internals ---------------------------------------------------------------------------
    def _drop_older(self, dataset_id: int, version: int) -> None:
        for key in [k for k in self._entries if k[0] == dataset_id and k[1] < version]:
            del self._entries[key]

    def _evict(self) -> None:
        while len(self._entries) > 1 and self.nbytes > self.max_bytes:
            self._entries.popitem(last=False)

    def _executor(self) -> Executor:
        if self._pool is None:
            # forkserver: forking a threaded server process directly is unsafe.
            ctx = multiprocessing.get_context("forkserver")
            self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=ctx)
        return self._pool

    def _load(self, dataset_id: int, version: int, schema: DatasetSchema,
              keys: Sequence[bytes]) -> DatasetColumns:
        with self.engine.connect() as conn:
            lo, hi, count = conn.execute(
                select(func.min(Record.id), func.max(Record.id), func.count())
                .where(Record.dataset_id == dataset_id)
            ).one()
        parts: list[tuple[int, dict[str, np.ndarray]]]
        if not count:
            parts = [(0, _columns_from_rows(schema, []))]
        elif count < PARALLEL_THRESHOLD or self.workers == 1 or self.url.startswith("sqlite:///:"):
            with self.engine.connect() as conn:
                parts = [_decode_range(conn, dataset_id, a, b, keys, schema)
                         for a, b in _id_ranges(lo, hi + 1, count, 1)]
        else:
            futures = [
                self._executor().submit(_decrypt_range, self.url, dataset_id, a, b, list(keys),
                                        schema)
                for a, b in _id_ranges(lo, hi + 1, count, self.workers * 4)
            ]
            parts = [f.result() for f in futures]
        columns = {c.name: np.concatenate([p[1][c.name] for p in parts]) for c in schema.columns}
        entry = DatasetColumns(dataset_id, version, schema, columns, sum(p[0] for p in parts))
        _bound_contributions(entry)
        entry.nbytes = sum(a.nbytes for a in entry.columns.values())
        return entry


def _id_ranges(lo: int, hi: int, count: int, at_least: int) -> list[tuple[int, int]]:
    """Split ids lo <= id < hi into at least `at_least` ranges of about RANGE_ROWS records or
    fewer: a decode's arrays then stay cache-sized (one 1M-row pass costs ~30% more per row)."""
    n = max(at_least, -(-count // RANGE_ROWS))
    edges = np.linspace(lo, hi, n + 1).astype(np.int64).tolist()
    return [(a, b) for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a]


def _bound_contributions(entry: DatasetColumns) -> None:
    """Keep at most max_rows rows per privacy unit (the earliest uploaded ones).

    This is what makes a unit's influence bounded by max_rows: the DP sensitivities assume it.
    The choice of rows depends only on upload order, never on values.
    """
    unit = entry.schema.privacy_unit_column
    if unit is None or entry.n_rows == 0:
        return
    max_rows = entry.schema.privacy_unit_max_rows
    units = entry.columns[unit]
    order = np.argsort(units, kind="stable")  # stable: keeps upload order within a unit
    sorted_units = units[order]
    starts = np.r_[0, np.flatnonzero(sorted_units[1:] != sorted_units[:-1]) + 1]
    run_lengths = np.diff(np.r_[starts, len(sorted_units)])
    rank = np.arange(len(sorted_units)) - np.repeat(starts, run_lengths)
    keep_sorted = rank < max_rows
    if keep_sorted.all():
        return
    keep = np.zeros(entry.n_rows, dtype=bool)
    keep[order[keep_sorted]] = True
    entry.bounded_away = int(entry.n_rows - keep.sum())
    entry.columns = {k: v[keep] for k, v in entry.columns.items()}
    entry.n_rows = int(keep.sum())


