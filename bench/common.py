"""Shared helpers for benchmarks: temporary databases and a plain table printer."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from cryptography.fernet import Fernet
from sqlalchemy import create_engine, text

# Benchmarks print tables; the service's per-request JSON logs would drown them.
os.environ.setdefault("PRIVACY_API_LOG_LEVEL", "WARNING")

PG_URL = os.environ.get("PRIVACY_API_BENCH_POSTGRES_URL",
                        os.environ.get("PRIVACY_API_TEST_POSTGRES_URL",
                                       "postgresql://postgres@127.0.0.1:5432/test"))


def pg_available() -> bool:
    try:
        engine = create_engine(PG_URL.replace("postgresql://", "postgresql+psycopg://"))
        with engine.connect() as conn:
            conn.execute(text("select 1"))
        engine.dispose()
        return True
    except Exception:  # noqa: BLE001 - any failure: report PostgreSQL as unavailable
        return False


@contextmanager
def database(kind: str) -> Iterator[str]:
    """A fresh migrated database URL of `kind` ('sqlite' or 'postgresql'), dropped afterwards."""
    from privacy_api.storage.migrate import upgrade

    if kind == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            url = f"sqlite:///{tmp}/bench.sqlite3"
            upgrade(url)
            yield url
        return
    schema = f"bench_{os.getpid()}"
    base = PG_URL.replace("postgresql://", "postgresql+psycopg://")
    engine = create_engine(base)
    with engine.begin() as conn:
        conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = f"{base}?options=-csearch_path%3D{schema}"
    upgrade(url)
    try:
        yield url
    finally:
        with engine.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        engine.dispose()


def make_app(url: str, **overrides: Any) -> Any:
    from privacy_api import create_app

    cfg: dict[str, Any] = {"database_url": url, "master_keys": [Fernet.generate_key()]}
    cfg.update(overrides)
    return create_app(cfg)


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    print(f"\n## {title}\n")
    print("| " + " | ".join(c.ljust(w) for c, w in zip(cells[0], widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in cells[1:]:
        print("| " + " | ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) + " |")


def _fmt(c: Any) -> str:
    if isinstance(c, float):
        if c >= 1000:
            return f"{c:,.0f}"
        if c >= 10:
            return f"{c:.1f}"
        return f"{c:.3g}"
    if isinstance(c, int):
        return f"{c:,}"
    return str(c)
