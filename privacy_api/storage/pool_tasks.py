"""What the decryption pool's processes run: read, decrypt and decode a range of records, or
encrypt one upload chunk.

Deliberately light: NumPy, orjson, cryptography (via fernet_batch) and the database driver
only. A pool process imports this module, not the app: importing the app (Flask, SciPy,
scikit-learn, pandas through `mechanisms`) cost ~140 MiB of private memory per process, paid by
every pool process of every server worker (measured with /proc/<pid>/smaps_rollup,
docs/scaling.md). Nor SQLAlchemy: its core, ORM and our models were ~26 MiB of each pool
process's ~52 (issue 14, a cold load's peak), for one SELECT a range that `read_tokens` already
sends through the bare driver. So the parent hands a pool task the driver's connect arguments
(`source_of`), and SQLAlchemy is imported here only by the functions the serving process calls.
tests/services/test_pool_tasks.py checks what a pool process imports.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from ..crypto import fernet_batch
from ..crypto.fernet_batch import InvalidToken
from ..domain.unit_ids import unit_hashes
from .memory import release_freed_memory

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine

# (column name, NumPy dtype string, whether it holds privacy-unit ids to hash), per column:
# plain data, so a pool process needs no schema classes.
Layout = tuple[tuple[str, str, bool], ...]
# How a pool process reaches the database: (driver, connect args, connect kwargs) for SQLite and
# PostgreSQL (psycopg), ("url", (url,), {}) for anything else (then through SQLAlchemy).
Source = tuple[str, tuple[Any, ...], dict[str, Any]]
# models.Record.__tablename__ (tests/services/test_pool_tasks.py checks they agree): a pool
# process does not import the models.
RECORDS_TABLE = "records"
# The sqlite3.connect keywords a pool process passes on (SQLAlchemy adds a Connection factory
# class of its own, which would import SQLAlchemy in the child).
_SQLITE_KWARGS = ("timeout", "detect_types", "isolation_level", "check_same_thread",
                  "cached_statements", "uri")


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
        from sqlalchemy import select

        from .models import Record

        return [bytes(t) for t in conn.scalars(
            select(Record.token)
            .where(Record.dataset_id == dataset_id, Record.id >= lo, Record.id < hi)
            .order_by(Record.id)
        )]
    return _read_raw(raw, dialect, dataset_id, lo, hi)


def _read_raw(raw: Any, dialect: str, dataset_id: int, lo: int, hi: int) -> list[bytes]:
    mark = "?" if dialect == "sqlite" else "%s"
    cursor = raw.cursor(binary=True) if dialect == "postgresql" else raw.cursor()
    try:
        cursor.execute(
            f"SELECT token FROM {RECORDS_TABLE} WHERE dataset_id = {mark} "
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
        return _decode(read_tokens(conn, dataset_id, lo, hi), keys, layout)


def _decode(tokens: list[bytes], keys: Sequence[bytes],
            layout: Layout) -> tuple[int, dict[str, np.ndarray]]:
    plain = _decrypt(keys, tokens)
    del tokens[:]  # the caller's list too: the tokens are not needed once decrypted
    if not len(plain):
        return 0, columns_from_rows(layout, [])
    # the plaintexts are JSON lists: join them into one JSON array in place of their padding
    joined = b"[" + plain.join(b",", b"]")
    del plain
    rows = orjson.loads(joined)
    del joined
    return len(rows), columns_from_rows(layout, rows)


def source_of(engine: Engine) -> Source:
    """What a pool process needs to open its own connection to the engine's database."""
    dialect = engine.dialect.name
    if dialect not in ("sqlite", "postgresql") or engine.dialect.driver not in (
            "pysqlite", "psycopg"):
        return ("url", (engine.url.render_as_string(hide_password=False),), {})
    cargs, cparams = engine.dialect.create_connect_args(engine.url)
    if dialect == "sqlite":
        cparams = {k: v for k, v in cparams.items() if k in _SQLITE_KWARGS}
        cparams.setdefault("timeout", 60)  # as db.make_engine: wait out a writer
    else:
        cparams = {k: v for k, v in cparams.items() if k != "context"}  # psycopg adapters
    return (dialect, tuple(cargs), cparams)


# A pool process's connection per source, kept between its tasks (in autocommit: it holds no
# transaction, nor a lock, between reads).
_connections: dict[str, Any] = {}


def _connect(source: Source) -> Any:
    driver, cargs, cparams = source
    if driver == "sqlite":
        import sqlite3

        conn = sqlite3.connect(*cargs, **cparams)
        conn.isolation_level = None
        return conn
    import psycopg

    return psycopg.connect(*cargs, **cparams, autocommit=True)


def _read_source(source: Source, dataset_id: int, lo: int, hi: int) -> list[bytes]:
    if source[0] == "url":
        from .db import fork_safe_engine

        engine = fork_safe_engine(source[1][0])
        try:
            with engine.connect() as conn:
                return read_tokens(conn, dataset_id, lo, hi)
        finally:
            engine.dispose()
    key = repr(source)
    raw = _connections.pop(key, None)
    if raw is not None:
        try:
            tokens = _read_raw(raw, source[0], dataset_id, lo, hi)
        except Exception:  # e.g. the server restarted since the last task: a read may be redone
            _close(raw)
        else:
            _connections[key] = raw
            return tokens
    raw = _connect(source)
    try:
        tokens = _read_raw(raw, source[0], dataset_id, lo, hi)
    except BaseException:
        _close(raw)
        raise
    _connections[key] = raw
    return tokens


def _close(raw: Any) -> None:
    try:
        raw.close()
    except Exception:  # already broken
        pass


def decrypt_range(source: Source, dataset_id: int, lo: int, hi: int, keys: Sequence[bytes],
                  layout: Layout) -> tuple[int, dict[str, np.ndarray]]:
    """Pool task: read records with lo <= id < hi, decrypt, and return (row count, columns)."""
    try:
        with _gc_paused():
            return _decode(_read_source(source, dataset_id, lo, hi), keys, layout)
    finally:
        # the range's tokens, plaintexts and row lists are freed by now; without a trim glibc
        # keeps their pages, and the process's resident set would grow to its largest range
        release_freed_memory()
