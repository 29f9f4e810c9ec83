"""The served gunicorn configuration never writes a query string (or a key) to its logs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import MASTER_KEY
from tests.helpers import PATIENTS_SCHEMA
from tests.server import ROOT, free_port, wait_ready

SECRET = "pa_00112233445566aa_QUERYSTRINGSECRETdoNotLog"


@pytest.mark.slow
@pytest.mark.xdist_group("servers")
# The served worker class, and gunicorn's own gthread workers (whose access line is gunicorn's
# access_log_format); PRIVACY_API_WORKER_CLASS selects it where the config supports the choice.
@pytest.mark.parametrize("worker_class", ["default", "gthread"])
def test_access_log_has_paths_but_no_query_strings(sqlite_url: str, tmp_path: Path,
                                                   worker_class: str) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "gunicorn.log"
    env = {**os.environ, "PRIVACY_API_DATABASE_URL": sqlite_url,
           "PRIVACY_API_MASTER_KEYS": MASTER_KEY.decode(), "PRIVACY_API_ENV": "development"}
    env.pop("PRIVACY_API_MASTER_KEY_FILE", None)
    env.pop("PRIVACY_API_WORKER_CLASS", None)
    if worker_class != "default":
        env["PRIVACY_API_WORKER_CLASS"] = worker_class
    with log_path.open("ab") as log:
        # The production command from docs/operations.md, with a loopback port.
        proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--config", "python:privacy_api.app.gunicorn_conf",
             "--workers", "1", "--threads", "2", "--bind", f"127.0.0.1:{port}",
             "privacy_api.app.wsgi:app"],
            cwd=ROOT, env=env, start_new_session=True, stdout=log, stderr=log)
        try:
            wait_ready(url)
            assert httpx.get(f"{url}/v1/me?api_key={SECRET}&x=1", timeout=10).status_code == 401
            assert httpx.get(f"{url}/v1/me", params={"token": SECRET},
                             headers={"Authorization": f"Bearer {SECRET}"}, timeout=10).status_code == 401
            assert httpx.post(f"{url}/v1/datasets?api_key={SECRET}", json=PATIENTS_SCHEMA,
                              timeout=10).status_code == 401
            assert httpx.get(f"{url}/openapi.json?marker=visible", timeout=10).status_code == 200
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
    text = log_path.read_text()
    # Requests are logged (gunicorn's access line, or the app's JSON access line with the
    # route rule), by path.
    assert '"GET /v1/me HTTP/1.1" 401' in text or '"route": "/v1/me", "status": 401' in text
    assert ('"POST /v1/datasets HTTP/1.1" 401' in text
            or '"route": "/v1/datasets", "status": 401' in text)
    assert SECRET not in text and "QUERYSTRINGSECRET" not in text
    assert "api_key" not in text and "marker=visible" not in text
