"""The SDK's tests run over real HTTP against a served app, and never import privacy_api.

With PRIVACY_CLIENT_TEST_URL and PRIVACY_CLIENT_TEST_ADMIN_KEY set, they use that app (this is
how tests/sdk/test_standalone_install.py runs them from a clean venv holding only the SDK).
Otherwise, inside the repository's environment, they start one: `python -m tests.sdk_server`
in a subprocess (a fresh SQLite database under gunicorn). Each test makes its own users and
datasets, so the tests share the app but no state.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sdk_support import Served

URL_ENV = "PRIVACY_CLIENT_TEST_URL"
ADMIN_KEY_ENV = "PRIVACY_CLIENT_TEST_ADMIN_KEY"
REPO = Path(__file__).resolve().parents[2]

@pytest.fixture(scope="session")
def served() -> Iterator[Served]:
    url = os.environ.get(URL_ENV)
    if url:
        yield Served(url.rstrip("/"), os.environ[ADMIN_KEY_ENV])
        return
    if importlib.util.find_spec("privacy_api") is None or not (REPO / "tests" / "sdk_server.py").exists():
        pytest.skip(f"no app to test against: set {URL_ENV} and {ADMIN_KEY_ENV}")
    proc = subprocess.Popen([sys.executable, "-m", "tests.sdk_server"], cwd=REPO,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        served = None
        for line in proc.stdout:  # the server's one JSON line; anything before it is noise
            if line.startswith("{"):
                served = Served(**json.loads(line))
                break
        if served is None:
            raise RuntimeError(f"tests.sdk_server exited ({proc.wait()}) without serving")
        yield served
    finally:
        proc.stdin.close()  # the server stops when its stdin closes
        proc.stdout.close()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.terminate()
            proc.wait()
