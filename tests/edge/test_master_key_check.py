"""A wrong but well-formed master key: the service refuses to start, and never wraps a new
data key under a keyring that cannot read the stored ones."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import func, select

from privacy_api.runtime.config import ConfigError
from privacy_api.services import datasets as ds_service
from privacy_api.storage.models import DatasetKey
from tests.conftest import MASTER_KEY
from tests.helpers import PATIENTS_SCHEMA, Api, patient_rows
from tests.server import ROOT


def _seed(make: Any, db_url: str) -> tuple[Any, str]:
    app = make(db_url)
    api = Api(app)
    _, owner = api.user("o", "owner")
    api.dataset(owner, rows=patient_rows(20))
    app.extensions["privacy_api"].db.dispose()
    return app, owner


def _key_count(app: Any) -> int:
    with app.extensions["privacy_api"].db.transaction() as s:
        return int(s.scalar(select(func.count()).select_from(DatasetKey)))


def test_a_wrong_master_key_refuses_to_start(make: Any, db_url: str) -> None:
    app, _ = _seed(make, db_url)
    wrong = Fernet.generate_key()
    with pytest.raises(ConfigError, match="cannot unwrap 1 of the 1 dataset keys"):
        make(db_url, master_keys=[wrong])
    # The right key, alone or behind a new one (mid-rotation), starts; nothing was written.
    make(db_url, master_keys=[MASTER_KEY])
    make(db_url, master_keys=[wrong, MASTER_KEY])
    assert _key_count(app) == 1


def test_an_empty_database_starts_with_any_key(make: Any, db_url: str) -> None:
    app = make(db_url, master_keys=[Fernet.generate_key()])
    assert app.extensions["privacy_api"].keyring.verified


def test_no_new_data_key_is_wrapped_by_an_unverified_keyring(make: Any, db_url: str) -> None:
    """If start-up could not check (database down), the first new dataset checks instead."""
    app, _ = _seed(make, db_url)
    good = make(db_url)
    st = good.extensions["privacy_api"]
    from privacy_api.crypto.keyring import MasterKeyring

    st.keyring = MasterKeyring([Fernet.generate_key()])  # as if started while the DB was down
    assert not st.keyring.verified
    api = Api(good)
    _, owner = api.user("o2", "owner")
    resp = api.as_(owner).post("/v1/datasets", json={**PATIENTS_SCHEMA, "name": "second"})
    assert resp.status_code == 503 and resp.get_json()["code"] == "unavailable"
    assert "cannot unwrap" in resp.get_json()["message"]
    assert _key_count(app) == 1  # nothing wrapped, the dataset rolled back
    names = [d["name"] for d in api.as_(owner).get("/v1/datasets").get_json()]
    assert "second" not in names
    with st.db.transaction() as s:
        with pytest.raises(Exception, match="cannot unwrap"):
            ds_service.start_dataset_key_rotation(s, st.keyring, 1)


def test_the_cli_says_so_in_one_line(make: Any, sqlite_url: str) -> None:
    _seed(make, sqlite_url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRIVACY_API_")}
    env.update(PRIVACY_API_DATABASE_URL=sqlite_url,
               PRIVACY_API_MASTER_KEYS=Fernet.generate_key().decode())
    out = subprocess.run([sys.executable, "-c", "from privacy_api.app.cli import main; main()",
                          "create-user", "--name", "x", "--role", "admin"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "cannot unwrap 1 of the 1 dataset keys" in out.stderr
    assert "Traceback" not in out.stderr and "pa_" not in out.stdout


@pytest.mark.slow
def test_gunicorn_with_the_served_config_exits_instead_of_serving(make: Any, sqlite_url: str) -> None:
    from tests.server import free_port

    _seed(make, sqlite_url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRIVACY_API_")}
    env.update(PRIVACY_API_DATABASE_URL=sqlite_url,
               PRIVACY_API_MASTER_KEYS=Fernet.generate_key().decode())
    out = subprocess.run([sys.executable, "-m", "gunicorn", "--config",
                          "python:privacy_api.app.gunicorn_conf", "--workers", "1",
                          "--bind", f"127.0.0.1:{free_port()}", "privacy_api.app.wsgi:app"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "cannot unwrap 1 of the 1 dataset keys" in out.stdout + out.stderr
