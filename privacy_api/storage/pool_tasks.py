"""What the decryption pool's processes run: read, decrypt and decode a range of records, or
encrypt one upload chunk.

Deliberately light: NumPy, orjson, cryptography (via fernet_batch) and SQLAlchemy only. A pool
process imports this module, not the app: importing the app (Flask, SciPy, scikit-learn,
pandas through `mechanisms`) cost ~140 MiB of private memory per process, paid by every pool
process of every server worker (measured with /proc/<pid>/smaps_rollup, docs/scaling.md).
tests/services/test_pool_tasks.py checks what a pool process imports.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import orjson
from sqlalchemy import Connection, Engine, select

from ..crypto import fernet_batch
from ..crypto.fernet_batch import InvalidToken
from ..domain.unit_ids import unit_hashes
from .memory import release_freed_memory
from .models import Record

# (column name, NumPy dtype string, whether it holds privacy-unit ids to hash), per column:
# plain data, so a pool process needs no schema classes.
Layout = tuple[tuple[str, str, bool], ...]


class CorruptRecord(Exception):
    """A stored token failed authentication: tampering or a lost key. Never decoded silently."""


def encrypt_plaintexts(key: bytes, plaintexts: Sequence[bytes]) -> list[bytes]:
    return fernet_batch.encrypt(key, plaintexts)


def _decrypt(keys: Sequence[bytes], tokens: Sequence[bytes]) -> fernet_batch.Plaintexts:
    try:
        return fernet_batch.decrypt(keys, tokens)
    except InvalidToken:
        raise CorruptRecord("a record failed authentication (tampered or wrong key)") from None


def decrypt_tokens(keys: Sequence[bytes], tokens: Sequence[bytes]) -> list[bytes]:
    return _decrypt(keys, tokens).tolist()


def columns_from_rows(layout: Layout, rows: list[list[Any]]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for i, (name, dtype, is_id) in enumerate(layout):
        values = [r[i] for r in rows]
        out[name] = unit_hashes(values) if is_id else np.asarray(values, dtype=np.dtype(dtype))
    return out


def read_tokens(conn: Connection, dataset_id: int, lo: int, hi: int) -> list[bytes]:
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


def decode_range(conn: Connection, dataset_id: int, lo: int, hi: int, keys: Sequence[bytes],
                 layout: Layout) -> tuple[int, dict[str, np.ndarray]]:
    """Read, decrypt and decode the records with lo <= id < hi: (row count, columns)."""
    with _gc_paused():
        plain = _decrypt(keys, read_tokens(conn, dataset_id, lo, hi))
        if not len(plain):
            return 0, columns_from_rows(layout, [])
        # the plaintexts are JSON lists: join them into one JSON array in place of their padding
        rows = orjson.loads(b"[" + plain.join(b",", b"]"))
        return len(rows), columns_from_rows(layout, rows)


_engines: dict[str, Engine] = {}


def decrypt_range(url: str, dataset_id: int, lo: int, hi: int, keys: Sequence[bytes],
                  layout: Layout) -> tuple[int, dict[str, np.ndarray]]:
    """Pool task: read records with lo <= id < hi, decrypt, and return (row count, columns)."""
    from .db import fork_safe_engine

    engine = _engines.get(url)
    if engine is None:
        engine = _engines[url] = fork_safe_engine(url)
    try:
        with engine.connect() as conn:
            return decode_range(conn, dataset_id, lo, hi, keys, layout)
    finally:
        # the range's tokens, plaintexts and row lists are freed by now; without a trim glibc
        # keeps their pages, and the process's resident set would grow to its largest range
        release_freed_memory()
