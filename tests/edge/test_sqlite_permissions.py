"""A new SQLite database, its -wal and its -shm files are created 0600 (owner only)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from privacy_api.storage.migrate import upgrade
from tests.helpers import Api, patient_rows


@pytest.fixture
def common_umask() -> Iterator[None]:
    old = os.umask(0o022)  # the usual default, under which SQLite alone would create 0644
    yield
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_database_and_wal_files_are_private(tmp_path: Path, common_umask: None, make: Any) -> None:
    db = tmp_path / "fresh.sqlite3"
    url = f"sqlite:///{db}"
    upgrade(url)  # what `privacy-api db upgrade` (and `serve`) do on a first start
    assert _mode(db) == 0o600
    api = Api(make(url))
    _, owner = api.user("o", "owner")
    api.dataset(owner, rows=patient_rows(10))  # writes: WAL mode makes -wal and -shm
    for suffix in ("", "-wal", "-shm"):
        path = Path(f"{db}{suffix}")
        assert path.exists(), suffix
        assert _mode(path) == 0o600, (suffix, oct(_mode(path)))


def test_the_app_alone_creates_it_private_too(tmp_path: Path, common_umask: None, make: Any) -> None:
    db = tmp_path / "app-made.sqlite3"
    make(f"sqlite:///{db}")
    assert _mode(db) == 0o600


def test_an_existing_file_keeps_the_mode_its_operator_chose(tmp_path: Path, common_umask: None) -> None:
    db = tmp_path / "existing.sqlite3"
    db.touch(mode=0o640)
    os.chmod(db, 0o640)
    upgrade(f"sqlite:///{db}")
    assert _mode(db) == 0o640
