"""The `privacy-api` command line: migrate, create users, rotate keys, demo data."""

from __future__ import annotations

from pathlib import Path

import httpx
from click.testing import CliRunner
from cryptography.fernet import Fernet

from privacy_api.app.cli import main


def run(args, env):
    result = CliRunner().invoke(main, args, env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def test_cli_end_to_end(tmp_path: Path):
    key = Fernet.generate_key().decode()
    env = {"PRIVACY_API_DATABASE_URL": f"sqlite:///{tmp_path}/cli.sqlite3",
           "PRIVACY_API_MASTER_KEYS": key, "PRIVACY_API_MASTER_KEY_FILE": ""}
    run(["db", "upgrade"], env)
    out = run(["create-user", "--name", "boss", "--role", "admin"], env)
    api_key = out.stdout.strip().splitlines()[-1]
    assert api_key.startswith("pa_")
    run(["demo-data", "--records", "500"], env)
    run(["rotate-dataset-key", "--dataset", "1", "--batch-size", "200"], env)
    new = Fernet.generate_key().decode()
    run(["rotate-master-key"], {**env, "PRIVACY_API_MASTER_KEYS": f"{new},{key}"})
    # after rewrapping, the new key alone reads everything, and the admin key works
    from privacy_api import create_app
    app = create_app({"database_url": env["PRIVACY_API_DATABASE_URL"], "master_keys": new})
    client = httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://t",
                          headers={"Authorization": f"Bearer {api_key}"})
    ds = client.get("/v1/datasets/1").json()
    assert ds["rows"] == 500
    st = app.extensions["privacy_api"]
    from sqlalchemy import select

    from privacy_api.storage.models import Dataset
    with st.db.sessions() as s:
        assert st.columns_for(s, s.scalar(select(Dataset))).n_rows <= 500
    st.db.dispose()


def test_generate_key_and_dev_key_file(tmp_path: Path):
    out = CliRunner().invoke(main, ["generate-key"])
    Fernet(out.stdout.strip().encode())
    path = tmp_path / "k" / "master.key"
    res = CliRunner().invoke(main, ["init-dev-key", "--path", str(path)])
    assert res.exit_code == 0 and oct(path.stat().st_mode & 0o777) == "0o600"


def test_production_refuses_to_start_without_keys(tmp_path: Path, monkeypatch):
    import pytest

    from privacy_api import create_app
    from privacy_api.runtime.config import ConfigError
    monkeypatch.delenv("PRIVACY_API_MASTER_KEYS", raising=False)
    monkeypatch.delenv("PRIVACY_API_MASTER_KEY_FILE", raising=False)
    with pytest.raises(ConfigError):
        create_app({"database_url": f"sqlite:///{tmp_path}/x.db", "environment": "production"})
    with pytest.raises(ConfigError):
        create_app({"database_url": f"sqlite:///{tmp_path}/x.db", "master_keys": "not-a-key"})
