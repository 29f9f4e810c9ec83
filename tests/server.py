"""Run the real service under gunicorn on a free loopback port, for multi-process tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.conftest import MASTER_KEY

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, proc: subprocess.Popen[bytes], url: str) -> None:
        self.proc = proc
        self.url = url

    def worker_pids(self) -> list[int]:
        """PIDs of the gunicorn workers (children of the master)."""
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        try:
            return [int(p) for p in children.read_text().split()]
        except FileNotFoundError:
            return []


def wait_ready(url: str, timeout: float = 180.0) -> None:
    # generous: on a loaded 2-core machine importing the app alone has taken 30-50 s
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/openapi.json", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"server at {url} did not start in {timeout}s")


@contextmanager
def gunicorn(db_url: str, *, workers: int = 2, threads: int = 4,
             env: dict[str, str] | None = None, port: int | None = None,
             served_config: bool = False) -> Iterator[Server]:
    """`served_config=True` runs the documented production set-up (privacy_api/app/gunicorn_conf.py:
    the waitress worker, its timeouts); otherwise gunicorn's own defaults (gthread)."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    full_env = {
        **os.environ,
        "PRIVACY_API_DATABASE_URL": db_url,
        "PRIVACY_API_MASTER_KEYS": MASTER_KEY.decode(),
        "PRIVACY_API_ENV": "development",
        **(env or {}),
    }
    full_env.pop("PRIVACY_API_MASTER_KEY_FILE", None)
    # Server logs go to a file (test-output/) rather than flooding the test report.
    log_dir = ROOT / "test-output" / "servers"
    log_dir.mkdir(parents=True, exist_ok=True)
    log_file = open(log_dir / f"gunicorn-{port}.log", "ab")  # noqa: SIM115 - closed below
    config = ["--config", "python:privacy_api.app.gunicorn_conf"] if served_config else []
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", *config, "--workers", str(workers), "--threads", str(threads),
         "--bind", f"127.0.0.1:{port}", "--graceful-timeout", "5", "--log-level", "warning",
         "privacy_api.app.wsgi:app"],
        cwd=ROOT, env=full_env, start_new_session=True, stdout=log_file, stderr=log_file,
    )
    try:
        wait_ready(url)
        yield Server(proc, url)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log_file.close()
