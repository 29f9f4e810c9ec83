"""Decrypted copies on tmpfs do not outlive the service (privacy_api/storage/instance_dir.py).

A served instance (the shipped gunicorn config) stopped with SIGTERM leaves no instance
directory; on start it removes what a dead server left; a live server's copies are never
removed by another server of the same instance starting or stopping.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from privacy_api.storage.instance_dir import InstanceLease, is_tmpfs, shared_cache_dir
from tests.conftest import make_app
from tests.helpers import Api, patient_rows
from tests.server import gunicorn

pytestmark = pytest.mark.skipif(not Path("/dev/shm").is_dir() or not is_tmpfs(Path("/dev/shm")),
                                reason="needs a tmpfs /dev/shm")


@pytest.fixture
def shm_parent() -> Iterator[Path]:
    parent = Path(tempfile.mkdtemp(prefix="lifetime_", dir="/dev/shm"))
    yield parent
    shutil.rmtree(parent, ignore_errors=True)


def test_sigterm_leaves_no_plaintext_and_start_clears_a_dead_servers_copies(sqlite_url,
                                                                            shm_parent):
    # Set up in-process with sharing off: only the served instance writes copies.
    app = make_app(sqlite_url, shared_cache_dir="off")
    api = Api(app)
    admin_id, admin = api.user("adm", "admin")
    _, owner = api.user("o", "owner")
    analyst_id, analyst = api.user("a", "analyst")
    ds = api.dataset(owner, rows=patient_rows(300))
    assert api.as_(admin).put(f"/v1/budgets/{analyst_id}/{ds}",
                              json={"epsilon": 10}).status_code == 200
    directory = shared_cache_dir(str(shm_parent), sqlite_url)
    assert directory is not None
    # What a SIGKILLed server leaves: a copy nobody holds the lease of.
    directory.mkdir(mode=0o700)
    stale = directory / "1-1-0123456789abcdef.arr"
    stale.write_bytes(b"plaintext of a dead server")

    env = {"PRIVACY_API_SHARED_CACHE_DIR": str(shm_parent)}
    with gunicorn(sqlite_url, workers=2, env=env, served_config=True) as server:
        assert not stale.exists()
        resp = httpx.post(f"{server.url}/v1/datasets/{ds}/query", timeout=120,
                          headers={"Authorization": f"Bearer {analyst}"},
                          json={"aggregate": "mean", "column": "cost", "epsilon": 1})
        assert resp.status_code == 200, resp.text
        assert [p for p in directory.iterdir() if p.suffix == ".arr"]  # the copy is there
    # leaving the block sends SIGTERM to the server's process group and waits for it
    assert server.proc.returncode == 0  # a graceful exit, not the SIGKILL fallback
    assert not directory.exists()


def test_a_live_servers_copies_survive_another_server_starting_and_stopping(shm_parent):
    directory = shm_parent / "privacy-api-instance"
    live = InstanceLease(directory)  # a running server of the instance
    directory.mkdir()
    (directory / "copy.arr").write_bytes(b"x")
    other = InstanceLease(directory)
    assert (directory / "copy.arr").exists()
    other.release()
    assert (directory / "copy.arr").exists()
    live.release()  # the last server stops
    assert not directory.exists()
    InstanceLease(directory).release()  # nothing to remove: no error
