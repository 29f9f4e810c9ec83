"""Where an instance's decrypted column copies live on this host, and how long they live.

The copies are plaintext (tmpfs files, `shared_arrays`), so they must not outlive the service:
the gunicorn master holds an `InstanceLease` for its lifetime (privacy_api/app/gunicorn_conf.py).
It removes the directory when the master exits, and on start removes whatever a master that
died without exiting (SIGKILL, OOM) left behind, unless a live server of the same instance
still holds the lease. A SIGKILLed master's copies therefore stay on tmpfs (RAM) until the
next start or a reboot (docs/security.md).

Standard library only: the gunicorn master imports this, and stays small.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
from pathlib import Path

LEASE_SUFFIX = ".lease"


def is_tmpfs(path: Path) -> bool:
    """True when `path` is on a RAM-backed filesystem (tmpfs / ramfs)."""
    try:
        with open("/proc/self/mounts", encoding="utf-8") as mounts:
            best, fstype = "", ""
            real = os.path.realpath(path)
            for line in mounts:
                parts = line.split()
                if len(parts) < 3:
                    continue
                point = parts[1].replace("\\040", " ")
                if (real == point or real.startswith(point.rstrip("/") + "/")) and \
                        len(point) >= len(best):
                    best, fstype = point, parts[2]
            return fstype in ("tmpfs", "ramfs")
    except OSError:
        return False


def shared_cache_dir(parent: str, database_url: str) -> Path | None:
    """The instance's directory under `parent` (None: sharing off, or an in-memory database
    that no other process could read anyway)."""
    if not parent or parent.lower() in ("off", "none", "0", "false"):
        return None
    if database_url.startswith("sqlite") and (":memory:" in database_url
                                               or database_url.rstrip("/") == "sqlite:"):
        return None
    digest = hashlib.sha256(database_url.encode()).hexdigest()[:16]
    return Path(parent) / f"privacy-api-{os.getuid()}-{digest}"


class InstanceLease:
    """A shared flock on `<directory>.lease`, held by each live server of the instance.

    Taking it exclusively means no other server holds it: the directory's contents are then
    stale (their server died) on start, or nobody's any more on exit, and are removed. The
    empty lease file stays (removing it would let two starters lock different files)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._fd: int | None = os.open(str(directory) + LEASE_SUFFIX,
                                       os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        if self._exclusive():
            self._remove()
        fcntl.flock(self._fd, fcntl.LOCK_SH)

    def release(self) -> None:
        """On exit: remove the directory unless another live server of the instance uses it."""
        if self._fd is None:
            return
        try:
            if self._exclusive():
                self._remove()
        finally:
            os.close(self._fd)
            self._fd = None

    def _exclusive(self) -> bool:
        assert self._fd is not None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _remove(self) -> None:
        if self.directory.is_symlink():
            self.directory.unlink()
        elif self.directory.exists():
            shutil.rmtree(self.directory, ignore_errors=True)


def lease_for(parent: str, database_url: str) -> InstanceLease | None:
    """The lease of the instance's directory, or None when there is no shared directory."""
    directory = shared_cache_dir(parent, database_url)
    if directory is None or not directory.parent.is_dir() or not is_tmpfs(directory.parent):
        return None
    return InstanceLease(directory)
