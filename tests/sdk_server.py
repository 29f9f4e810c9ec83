"""A served app for the SDK's own tests (privacy_client/tests), which never import privacy_api.

`python -m tests.sdk_server` (from the repository root, in the server's environment) migrates a
fresh SQLite database, creates an admin, serves the app under gunicorn on a free loopback port
and prints one JSON line `{"url": ..., "admin_key": ...}`. It serves until its stdin closes, so
it cannot outlive the test process that started it.
"""

from __future__ import annotations

import json
import signal
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

from privacy_api.services.users import create_user
from privacy_api.storage.migrate import upgrade
from tests.conftest import close_app, make_app
from tests.server import gunicorn


class Served(NamedTuple):
    url: str
    admin_key: str


@contextmanager
def served_for_sdk(workdir: Path) -> Iterator[Served]:
    db_url = f"sqlite:///{workdir / 'sdk.sqlite3'}"
    upgrade(db_url)
    app = make_app(db_url)
    try:
        with app.extensions["privacy_api"].db.transaction() as session:
            _, admin_key = create_user(session, "sdk-tests-admin", "admin")
    finally:
        close_app(app)  # gunicorn serves the database from here on
    # one worker: SQLite, and the SDK's tests are sequential
    with gunicorn(db_url, workers=1, threads=4) as server:
        yield Served(server.url, admin_key)


def main() -> None:
    # SIGTERM unwinds the context managers, which stop gunicorn
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with tempfile.TemporaryDirectory(prefix="sdk-server-") as tmp, served_for_sdk(Path(tmp)) as served:
        print(json.dumps(served._asdict()), flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    main()
