"""`privacy-api` command line: migrations, users, key rotation, demo data, serve."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click
from flask import Flask, current_app
from flask.cli import FlaskGroup, NoAppException, with_appcontext

from ..runtime.config import create_dev_key_file, default_instance_path


def _app_factory() -> Flask:
    from ..runtime.config import ConfigError
    from .factory import create_app

    try:
        return create_app()
    except ConfigError as exc:
        # Flask prints this as one line (`--help` still lists every command), not a traceback.
        raise NoAppException(str(exc)) from None


def _state() -> Any:
    return current_app.extensions["privacy_api"]


@click.group(cls=FlaskGroup, create_app=_app_factory, add_default_commands=False,
             add_version_option=False)
def main() -> None:
    """privacy-api: differentially private analytics service."""


@main.group("db")
def db_group() -> None:
    """Database migrations."""


@db_group.command("upgrade")
@click.argument("revision", default="head")
@with_appcontext
def db_upgrade(revision: str) -> None:
    """Migrate the database to REVISION (default: head)."""
    from ..storage.migrate import upgrade

    upgrade(_state().db.url, revision)
    click.echo(f"database at {revision}")


@main.command("create-user")
@click.option("--name", required=True)
@click.option("--role", required=True, type=click.Choice(["admin", "owner", "analyst", "client"]))
@with_appcontext
def create_user(name: str, role: str) -> None:
    """Create a user; the API key is the last line printed (shown once)."""
    from ..services.users import create_user as create

    with _state().db.transaction() as session:
        user, key = create(session, name, role)
        click.echo(f"created {role} {name!r} (id {user.id}); API key (shown once):", err=True)
    click.echo(key)


@main.command("generate-key", with_appcontext=False)
def generate_key() -> None:
    """Print a new Fernet master key (prepend it to PRIVACY_API_MASTER_KEYS to rotate)."""
    from cryptography.fernet import Fernet

    click.echo(Fernet.generate_key().decode())


@main.command("init-dev-key", with_appcontext=False)
@click.option("--path", type=click.Path(path_type=Path), default=None)
def init_dev_key(path: Path | None) -> None:
    """Create a development master key file (0600) in the instance folder if none exists."""
    path = path or Path(_instance_path()) / "master.key"
    if path.exists():
        click.echo(f"{path} exists")
        return
    create_dev_key_file(path)
    click.echo(f"created development master key {path}")


@main.command("rotate-master-key")
@with_appcontext
def rotate_master_key() -> None:
    """Rewrap every dataset key under the newest master key (the first configured)."""
    from ..services.datasets import rewrap_dataset_keys

    with _state().db.transaction() as session:
        n = rewrap_dataset_keys(session, _state().keyring)
    click.echo(f"rewrapped {n} dataset key(s) under the newest master key; "
               "older master keys may now be removed")


@main.command("rotate-dataset-key")
@click.option("--dataset", "dataset_id", required=True, type=int)
@click.option("--batch-size", default=5000, show_default=True)
@click.option("--resume", is_flag=True, help="continue an interrupted rotation without a new key")
@with_appcontext
def rotate_dataset_key(dataset_id: int, batch_size: int, resume: bool) -> None:
    """Re-encrypt a dataset under a new data key, in resumable batches, while serving."""
    from tqdm import tqdm

    from ..services import datasets as ds

    st = _state()
    if not resume:
        with st.db.transaction(immediate=True) as session:
            version = ds.start_dataset_key_rotation(session, st.keyring, dataset_id)
        click.echo(f"dataset {dataset_id}: new data key version {version}", err=True)
    with st.db.transaction() as session:
        stale = ds.stale_record_count(session, dataset_id)
    with tqdm(total=stale, unit="rec", disable=None, file=sys.stderr) as bar:
        while True:
            with st.db.transaction(immediate=True) as session:
                done = ds.reencrypt_batch(session, st.keyring, dataset_id, batch_size)
            if not done:
                break
            bar.update(done)
    click.echo(f"dataset {dataset_id}: all records under the newest key; old keys destroyed")


@main.command("demo-data")
@click.option("--records", default=100_000, show_default=True)
@with_appcontext
def demo_data(records: int) -> None:
    """Create the synthetic patient demo dataset if it does not exist."""
    from .demo import ensure_demo_dataset

    with _state().db.transaction() as session:
        ds, created = ensure_demo_dataset(session, _state().keyring, records)
    click.echo(f"demo dataset {ds.id} ({ds.rows} records) {'created' if created else 'exists'}")


def _read_pins(path: Path | None) -> list[tuple[str, int, str]]:
    """Pin lines as `verify-ledger --heads` prints them: CHAIN COUNT HEAD."""
    if path is None:
        return []
    pins = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts or line.startswith("#"):
            continue
        if len(parts) != 3 or not parts[1].isdigit() or len(parts[2]) != 64:
            raise click.UsageError(f"{path}:{number}: expected 'CHAIN COUNT HEAD'")
        pins.append((parts[0], int(parts[1]), parts[2]))
    return pins


@main.command("verify-ledger", with_appcontext=False)
@click.option("--export", "export_file", type=click.Path(exists=True, dir_okay=False,
                                                         path_type=Path),
              help="verify an NDJSON export (GET /v1/ledger/export) offline, with no database")
@click.option("--pinned", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="a file of heads printed earlier by --heads: each must still be in its chain")
@click.option("--heads", is_flag=True, help="print each chain's length and head hash (to pin)")
def verify_ledger(export_file: Path | None, pinned: Path | None, heads: bool) -> None:
    """Recompute every budget's ledger hash chain and check the budget rows against it.

    Exit 0 with a summary when the ledger is intact; exit 1 naming each problem (budget chain,
    entry, mismatch) otherwise."""
    import orjson

    from ..domain.ledger_chain import pin_line
    from ..services.ledger_audit import verify_database, verify_export

    pins = _read_pins(pinned)
    if export_file is not None:
        with export_file.open("rb") as lines:
            try:
                report = verify_export((orjson.loads(line) for line in lines if line.strip()),
                                       pins)
            except (orjson.JSONDecodeError, ValueError, KeyError, TypeError) as exc:
                raise click.ClickException(f"{export_file}: not a valid ledger export: {exc}") from None
    else:
        app = _app_factory()
        with app.app_context():
            st = app.extensions["privacy_api"]
            report = verify_database(st.db, pins)
        st.cache.close()
        st.db.dispose()
    if heads:
        for anchor in report.heads:
            click.echo(pin_line(anchor.chain, anchor.count, anchor.head))
    for problem in report.problems:
        click.echo(f"ledger check failed: {problem}", err=True)
    if not report.ok:
        click.echo(f"{len(report.problems)} problem(s) in {report.entries} entries of "
                   f"{report.chains} chains", err=True)
        sys.exit(1)
    click.echo(f"ledger verified: {report.entries} entries in {report.chains} chains; every "
               "hash, link, head and spent matches", err=heads)


SERVE_KEY_ACTION = "serve.admin_key"


def _serve_admin_key(session: Any, *, new_key: bool) -> tuple[str | None, int]:
    """The development admin's key: minted on the first start only, or with `new_key`, after
    revoking every key an earlier `serve` minted. Returns (new plaintext key or None, admin id).

    Keys `serve` minted are found through their audit event, so keys an admin issued by hand
    (API, dashboard, create-user) are never touched.
    """
    from sqlalchemy import select

    from ..services.audit import record_action
    from ..services.users import create_user, issue_key, revoke_key
    from ..storage.models import AuditEvent, User

    admin = session.scalar(select(User).where(User.name == "admin"))
    if admin is None:
        admin, plaintext = create_user(session, "admin", "admin")
    elif new_key:
        minted = session.scalars(select(AuditEvent).where(
            AuditEvent.action == SERVE_KEY_ACTION, AuditEvent.target == f"user:{admin.id}")).all()
        for event in minted:
            revoke_key(session, str(event.details["key_id"]))
        _, plaintext = issue_key(session, admin, audit=False)
    else:
        return None, admin.id
    key_id = plaintext.split("_")[1]
    record_action(session, None, SERVE_KEY_ACTION, f"user:{admin.id}", key_id=key_id)
    return plaintext, admin.id


@main.command("serve", with_appcontext=False)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True)
@click.option("--workers", default=2, show_default=True)
@click.option("--demo-records", default=100_000, show_default=True)
@click.option("--new-admin-key", is_flag=True,
              help="revoke the admin key an earlier `serve` printed and print a new one")
def serve(host: str, port: int, workers: int, demo_records: int, new_admin_key: bool) -> None:
    """Migrate, seed demo data, print an admin key on the first start, and serve with gunicorn."""
    if not (os.environ.get("PRIVACY_API_MASTER_KEYS") or os.environ.get("PRIVACY_API_MASTER_KEY_FILE")):
        key = Path(_instance_path()) / "master.key"
        if not key.exists():
            create_dev_key_file(key)
            click.echo(f"created development master key {key}", err=True)
    from ..storage.migrate import upgrade
    from .demo import ensure_demo_dataset
    from .factory import create_app

    app = create_app()
    st = app.extensions["privacy_api"]
    upgrade(st.db.url, "head")
    with st.db.transaction() as session:
        admin_key, admin_id = _serve_admin_key(session, new_key=new_admin_key)
        ds, created = ensure_demo_dataset(session, st.keyring, demo_records)
    st.db.dispose()
    click.echo(f"database: {st.db.url}")
    click.echo(f"demo dataset id {ds.id}: {ds.rows} records ({'created' if created else 'kept'})")
    click.echo(f"dashboard: http://{host}:{port}/admin   API docs: http://{host}:{port}/docs")
    if admin_key:
        click.echo(f"admin API key (shown once): {admin_key}")
    else:
        click.echo(f"admin (user {admin_id}): keeps the key printed when it was minted; "
                   "`privacy-api serve --new-admin-key` revokes it and prints a new one")
    sys.stdout.flush()
    os.execvp(sys.executable, [
        sys.executable, "-m", "gunicorn", "--bind", f"{host}:{port}", "--workers", str(workers),
        "--threads", "4", "--config", "python:privacy_api.app.gunicorn_conf", "privacy_api.app.wsgi:app",
    ])


def _instance_path() -> str:
    return default_instance_path()


def register_cli(app: Flask) -> None:
    """Hook for `flask --app privacy_api` users; the console script is `main`."""
    for name, cmd in main.commands.items():
        app.cli.add_command(cmd, name)
