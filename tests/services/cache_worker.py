"""A server-like worker process for the shared column cache tests: its own app on the same
database and shared directory, driven over a pipe (spawned, so nothing is inherited but the
environment)."""

from __future__ import annotations

import gc
import multiprocessing
import os
from multiprocessing.connection import Connection
from typing import Any

from sqlalchemy import select


def _mappings(marker: str) -> list[dict[str, Any]]:
    """This process's mappings of files whose path contains `marker`, with Rss and Pss (kB)."""
    out: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    with open("/proc/self/smaps", encoding="utf-8") as smaps:
        for line in smaps:
            parts = line.split()
            if not parts:
                continue
            if "-" in parts[0] and len(parts) >= 5 and not parts[0].endswith(":"):
                path = parts[5] if len(parts) > 5 else ""
                current = {"path": path, "deleted": line.rstrip().endswith("(deleted)")} \
                    if marker in path else None
                if current is not None:
                    out.append(current)
            elif current is not None and parts[0] in ("Rss:", "Pss:"):
                current[parts[0][:-1].lower()] = int(parts[1])
    return out


def serve(conn: Connection, url: str, master_key: bytes, env: dict[str, str]) -> None:
    os.environ.update(env)
    from privacy_api import create_app
    from privacy_api.services import release
    from privacy_api.storage.models import Dataset

    app = create_app({"database_url": url, "master_keys": [master_key], "decrypt_workers": 1})
    st = app.extensions["privacy_api"]
    while True:
        cmd, arg = conn.recv()
        reply: Any = None
        if cmd == "load":
            with st.db.sessions() as s:
                ds = s.scalar(select(Dataset).where(Dataset.id == arg))
                data = st.columns_for(s, ds)
            reply = {"n_rows": data.n_rows, "version": data.version,
                     "cost_sum": float(data.columns["cost"].astype("float64").sum()),
                     # reads every page of every column
                     "checksum": [float(c.astype("float64").sum()) for c in data.columns.values()],
                     "path": str(data.bundles[0].path) if data.bundles else None,
                     "inode": data.bundles[0].inode if data.bundles else None,
                     "stats": dict(st.cache.stats)}
            del data
        elif cmd == "quantile_index":  # a derived artefact, memoized per version
            data = st.cache.peek(*arg)
            assert data is not None
            release._quantile_index(data, "cost", 0.0, 10000.0)
            reply = [str(b.path) for b in data.bundles]
            del data
        elif cmd == "peek":
            reply = st.cache.peek(*arg) is not None
        elif cmd == "maps":
            gc.collect()
            reply = _mappings(arg)
        elif cmd == "stop":
            conn.send(None)
            return
        conn.send(reply)


class Worker:
    """One spawned worker; `call` sends a command and waits for its reply."""

    def __init__(self, url: str, master_key: bytes, env: dict[str, str] | None = None) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=serve, args=(child, url, master_key, env or {}),
                                   daemon=True)
        self.process.start()

    def call(self, cmd: str, arg: Any = None, timeout: float = 300) -> Any:
        self.conn.send((cmd, arg))
        if not self.conn.poll(timeout):
            raise TimeoutError(cmd)
        return self.conn.recv()

    def send(self, cmd: str, arg: Any = None) -> None:
        self.conn.send((cmd, arg))

    def stop(self) -> None:
        if self.process.is_alive():
            try:
                self.call("stop", timeout=30)
            except (TimeoutError, OSError, EOFError):
                pass
        self.process.join(10)
        if self.process.is_alive():
            self.process.kill()
