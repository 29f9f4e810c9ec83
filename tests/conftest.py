"""Shared fixtures: every app test runs on real SQLite and, when reachable, real PostgreSQL.

PostgreSQL comes from PRIVACY_API_TEST_POSTGRES_URL (`.ci/run` and `make test` set it to the
local server). Each xdist worker migrates its own PostgreSQL schema once; each test starts
from empty tables. SQLite tests copy a migrated template file.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from privacy_api import create_app
from privacy_api.storage.db import Base
from privacy_api.storage.migrate import upgrade

PG_URL = os.environ.get("PRIVACY_API_TEST_POSTGRES_URL", "")
# The shared column cache of every app (and served instance) of this test process lives in
# one RAM-backed directory, removed when the process ends: no test leaves plaintext behind.
if "PRIVACY_API_SHARED_CACHE_DIR" not in os.environ and os.path.isdir("/dev/shm"):
    _shared_root = tempfile.mkdtemp(prefix="privacy-api-tests-", dir="/dev/shm")
    os.environ["PRIVACY_API_SHARED_CACHE_DIR"] = _shared_root
    atexit.register(shutil.rmtree, _shared_root, True)
MASTER_KEY = Fernet.generate_key()
_pg_problem: str | None = None


def _pg_reason() -> str | None:
    global _pg_problem
    if not PG_URL:
        return "PostgreSQL tests skipped: PRIVACY_API_TEST_POSTGRES_URL is not set"
    if _pg_problem is None:
        try:
            engine = create_engine(_sa_url(PG_URL))
            with engine.connect() as conn:
                conn.execute(text("select 1"))
            engine.dispose()
            _pg_problem = ""
        except Exception as exc:  # noqa: BLE001 - any failure means: skip, and say why
            _pg_problem = f"PostgreSQL tests skipped: cannot connect to {PG_URL}: {type(exc).__name__}"
    return _pg_problem or None


def _sa_url(url: str) -> str:
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return url


def pytest_report_header(config: pytest.Config) -> list[str]:
    reason = _pg_reason()
    return [reason or f"PostgreSQL tests enabled: {PG_URL}"]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    reason = _pg_reason()
    if reason:
        terminalreporter.write_line(f"NOTE: {reason}", yellow=True, bold=True)


@pytest.fixture(scope="session")
def worker_id_safe(request: pytest.FixtureRequest) -> str:
    wid = getattr(request.config, "workerinput", {}).get("workerid", "main")
    return str(wid).replace("-", "_")


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.sqlite3"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def pg_schema_url(worker_id_safe: str) -> Iterator[str]:
    reason = _pg_reason()
    if reason:
        pytest.skip(reason)
    # one schema per test process: concurrent local runs must not truncate each other's tables
    schema = f"t_{worker_id_safe}_{os.getpid()}"
    base = _sa_url(PG_URL)
    engine = create_engine(base)
    with engine.begin() as conn:
        conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    engine.dispose()
    sep = "&" if "?" in base else "?"
    # A lock wait of minutes on this suite is a blocked test, never a slow one: make it an
    # error that names itself instead of a run that stalls until CI's limit.
    url = f"{base}{sep}options=-csearch_path%3D{schema}%20-clock_timeout%3D120s"
    upgrade(url)
    yield url
    engine = create_engine(base)
    with engine.begin() as conn:
        conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    engine.dispose()


# Sessions of this schema that hold a lock on its tables (other than the asking one).
_LOCK_HOLDERS = text("""
    SELECT DISTINCT a.pid, a.state, left(a.query, 300) AS query
    FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
    JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_stat_activity a ON a.pid = l.pid
    WHERE n.nspname = current_schema() AND a.pid <> pg_backend_pid()""")


def _truncate_pg(url: str) -> None:
    """Empty every table. A connection that an earlier test left open in a transaction would
    make TRUNCATE wait for ever: after `lock_timeout` the holders are named, terminated (so the
    rest of the run goes on) and this test errors with their last statements."""
    engine = create_engine(url)
    names = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    try:
        with engine.begin() as conn:
            conn.execute(text("SET LOCAL lock_timeout = '60s'"))
            conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    except OperationalError as exc:
        if "lock timeout" not in str(exc):
            raise
        with engine.begin() as conn:
            holders = [dict(r._mapping) for r in conn.execute(_LOCK_HOLDERS)]
            for h in holders:
                conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": h["pid"]})
        raise RuntimeError(f"an earlier test left these sessions holding locks: {holders}") from exc
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path) -> str:
    if request.param == "sqlite":
        path = tmp_path / "db.sqlite3"
        shutil.copy(sqlite_template, path)
        return f"sqlite:///{path}"
    url: str = request.getfixturevalue("pg_schema_url")
    _truncate_pg(url)
    return url


@pytest.fixture
def sqlite_url(tmp_path: Path, sqlite_template: Path) -> str:
    path = tmp_path / "db.sqlite3"
    shutil.copy(sqlite_template, path)
    return f"sqlite:///{path}"


# Every app a test builds, closed after the test: an engine left to the garbage collector
# closes its PostgreSQL connections in `__del__`, which psycopg reports as a ResourceWarning
# in whichever test happens to run next.
_open_apps: list[Any] = []


def make_app(url: str, **overrides: Any) -> Any:
    cfg: dict[str, Any] = {"database_url": url, "master_keys": [MASTER_KEY], "decrypt_workers": 1}
    cfg.update(overrides)
    app = create_app(cfg)
    app.config["TESTING"] = True
    _open_apps.append(app)
    return app


def close_app(app: Any) -> None:
    app.extensions["privacy_api"].cache.close()
    app.extensions["privacy_api"].db.dispose()


@pytest.fixture(autouse=True)
def _close_apps_after_each_test() -> Iterator[None]:
    # apps of wider-scoped fixtures were built before this snapshot and outlive the test
    before = len(_open_apps)
    yield
    while len(_open_apps) > before:
        close_app(_open_apps.pop())


@pytest.fixture
def app(db_url: str) -> Iterator[Any]:
    yield make_app(db_url)


@pytest.fixture
def api(app: Any) -> Any:
    from tests.helpers import Api

    return Api(app)
