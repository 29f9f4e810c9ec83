"""`privacy-api serve` mints the demo admin key once; `--new-admin-key` revokes it for a new one.

Runs the real command (migrations, demo data, gunicorn with the served config) on a loopback
port, three times over one instance folder.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.server import ROOT, free_port, wait_ready

KEY_LINE = re.compile(r"admin API key \(shown once\): (pa_\S+)")


@contextmanager
def served(instance: Path, log: Path, *extra: str) -> Iterator[tuple[str, list[str], str]]:
    """`privacy-api serve` running: (its URL, the keys it printed, its output so far)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRIVACY_API_")}
    env["PRIVACY_API_INSTANCE_PATH"] = str(instance)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", "from privacy_api.app.cli import main; main()", "serve",
             "--port", str(port), "--workers", "1", "--demo-records", "200", *extra],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_ready(url, timeout=120)
            text = log.read_text()
            yield url, KEY_LINE.findall(text), text
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)


def _status(url: str, key: str) -> int:
    return httpx.get(f"{url}/v1/me", headers={"Authorization": f"Bearer {key}"}, timeout=10).status_code


@pytest.mark.slow
@pytest.mark.xdist_group("servers")
def test_serve_mints_the_admin_key_once(tmp_path: Path) -> None:
    instance = tmp_path / "instance"
    with served(instance, tmp_path / "1.log") as (url, keys, _):
        assert len(keys) == 1 and _status(url, keys[0]) == 200
        first = keys[0]
    with served(instance, tmp_path / "2.log") as (url, keys, text):
        assert keys == []  # a restart mints (and prints) nothing
        assert _status(url, first) == 200
        assert "--new-admin-key" in text  # and says how to get a new one
    with served(instance, tmp_path / "3.log", "--new-admin-key") as (url, keys, _):
        assert len(keys) == 1 and keys[0] != first
        assert _status(url, keys[0]) == 200
        assert _status(url, first) == 401  # the key an earlier serve printed is revoked
