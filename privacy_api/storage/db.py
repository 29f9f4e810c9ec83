"""Engine and session lifecycle. Services receive a Session; the request owns its transaction."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, make_url
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.pool import NullPool

IMMEDIATE = {"sqlite_immediate": True}


class Base(DeclarativeBase):
    pass


def make_engine(url: str, **kwargs: Any) -> Engine:
    if url.startswith("sqlite"):
        kwargs.setdefault("connect_args", {"timeout": 60, "check_same_thread": False})
        if url in ("sqlite://", "sqlite:///:memory:"):
            raise ValueError("in-memory SQLite cannot be shared between threads; use a file")
        _create_private_file(url)
        engine = create_engine(url, **kwargs)
        _configure_sqlite(engine)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return create_engine(url, **kwargs)


def _create_private_file(url: str) -> None:
    """Create a new SQLite database file as 0600 before SQLite does (it would honour the umask,
    typically 0644: readable by every local user). SQLite gives the -wal and -shm files the
    database file's mode, so they are 0600 too. An existing file is left as its operator set it."""
    path = make_url(url).database
    if not path or path == ":memory:" or path.startswith("file:"):
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    except OSError:
        return  # e.g. a missing directory: let SQLite report it as it would
    os.close(fd)


def _configure_sqlite(engine: Engine) -> None:
    # pysqlite does not emit BEGIN itself, so row locks and write intent are invisible to it.
    # We take over transaction control: BEGIN (deferred) by default, BEGIN IMMEDIATE when a
    # unit of work asks for the write lock up front (the ledger), so check-then-write is atomic.
    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=60000")
        # Deleted content is overwritten with zeros, not left in free space: an erased
        # record's token must not stay readable in the file (services/erasure.py).
        cur.execute("PRAGMA secure_delete=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        immediate = conn.get_execution_options().get("sqlite_immediate")
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


class Database:
    def __init__(self, url: str, **engine_kwargs: Any) -> None:
        self.url = url
        self.engine = make_engine(url, **engine_kwargs)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @contextmanager
    def transaction(self, *, immediate: bool = False) -> Iterator[Session]:
        """One short unit of work, committed on success and rolled back on any error."""
        session = self.sessions()
        try:
            if immediate:
                session.connection(execution_options=IMMEDIATE)
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    @contextmanager
    def core_transaction(self, *, immediate: bool = False) -> Iterator[Connection]:
        """Like `transaction`, on a bare Connection: for hot paths that issue a few Core
        statements and need no identity map (an ORM Session costs ~0.3 ms per statement)."""
        with self.engine.connect() as conn:
            if immediate:
                conn.execution_options(**IMMEDIATE)
            with conn.begin():
                yield conn

    def dispose(self) -> None:
        self.engine.dispose()


def fork_safe_engine(url: str) -> Engine:
    """An engine for a child process: no pooled connections shared across fork."""
    return make_engine(url, poolclass=NullPool)
