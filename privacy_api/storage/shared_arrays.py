"""Named NumPy arrays in files on a RAM-backed directory, mapped read-only by every worker.

One file holds one bundle of arrays (a dataset version's columns, or one derived artefact).
Layout: a 64-byte header (magic, manifest offset and length), the arrays (64-byte aligned),
then a JSON manifest (names, dtypes, shapes, offsets, metadata). A bundle is written under a
temporary name and renamed into place only once complete, header last: a reader that finds
the name finds a whole file. A writer that dies leaves only its temporary file, which readers
never open and `clean_stale` removes. `loading` (fcntl.flock on a lock file) lets one process
per host build a bundle while the others wait for it.

The directory must be on tmpfs (RAM): the plaintext must never reach a disk-backed file.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import mmap
import os
import secrets
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from .instance_dir import is_tmpfs

log = logging.getLogger(__name__)

MAGIC = b"PAPIARR1"
HEADER = 64
ALIGN = 64
SUFFIX = ".arr"
TEMP_PREFIX = ".tmp."
LOCK_SUFFIX = ".lock"
TMPFS_MAGIC = 0x01021994


class NotRamBacked(RuntimeError):
    """The directory is not on tmpfs: plaintext there could reach a disk."""


@dataclass
class Bundle:
    """A mapped bundle: read-only arrays over the file's pages, and its metadata."""

    path: Path
    inode: int
    arrays: dict[str, np.ndarray]
    meta: dict[str, Any]
    nbytes: int


def _align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


class SharedArrays:
    """A directory of bundles shared by the processes of one instance on this host."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        parent = directory.parent
        if not parent.is_dir():
            raise NotRamBacked(f"{parent} does not exist")
        if not is_tmpfs(parent):
            raise NotRamBacked(f"{parent} is not RAM-backed (tmpfs)")
        directory.mkdir(mode=0o700, exist_ok=True)
        st = directory.lstat()
        # Owner-only, and ours: another local user must not read or plant bundles.
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
            raise NotRamBacked(f"{directory} is not a directory owned by this user")
        if stat.S_IMODE(st.st_mode) != 0o700:
            os.chmod(directory, 0o700)

    # -- reading -------------------------------------------------------------------------------
    def open(self, name: str) -> Bundle | None:
        """Map the complete bundle `name` read-only, or None if there is none."""
        path = self.dir / (name + SUFFIX)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return None
        try:
            st = os.fstat(fd)
            if st.st_size < HEADER:
                return None
            mm = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        finally:
            os.close(fd)
        if mm[:8] != MAGIC:
            return None
        m_off = int.from_bytes(mm[8:16], "little")
        m_len = int.from_bytes(mm[16:24], "little")
        manifest = orjson.loads(mm[m_off:m_off + m_len])
        arrays: dict[str, np.ndarray] = {}
        for entry in manifest["arrays"]:
            shape = tuple(entry["shape"])
            count = int(np.prod(shape)) if shape else 1
            arr = np.frombuffer(mm, dtype=np.dtype(entry["dtype"]), count=count,
                                offset=entry["offset"]).reshape(shape)
            arrays[entry["name"]] = arr  # read-only: the mapping is PROT_READ
        return Bundle(path, st.st_ino, arrays, manifest["meta"], st.st_size)

    def exists(self, bundle: Bundle) -> bool:
        """The bundle's file is still the one in place (not removed or replaced)."""
        try:
            return os.stat(bundle.path).st_ino == bundle.inode
        except FileNotFoundError:
            return False

    # -- writing -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def loading(self, name: str) -> Iterator[None]:
        """Hold the host-wide lock of bundle `name`: one builder per bundle per host. The
        kernel drops the lock when its holder dies, so a killed builder blocks nobody."""
        fd = os.open(self.dir / (name + LOCK_SUFFIX), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW,
                     0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def writer(self, name: str, specs: Mapping[str, tuple[tuple[int, ...], np.dtype[Any]]]
               ) -> BundleWriter:
        return BundleWriter(self, name, specs)

    def write(self, name: str, arrays: Mapping[str, np.ndarray],
              meta: Mapping[str, Any] | None = None) -> None:
        """Write whole arrays as bundle `name` (atomically)."""
        with self.writer(name, {k: (a.shape, a.dtype) for k, a in arrays.items()}) as w:
            for k, a in arrays.items():
                w.arrays[k][...] = a
            w.meta.update(meta or {})

    # -- housekeeping --------------------------------------------------------------------------
    def remove(self, prefix: str) -> int:
        """Remove every bundle (and lock) whose name starts with `prefix`; returns how many
        bundles. Processes that mapped one keep their pages until they drop it."""
        removed = 0
        for path in list(self.dir.iterdir()):
            if path.name.startswith(prefix):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed += path.name.endswith(SUFFIX)
        return removed

    def clean_stale(self) -> int:
        """Remove temporary files whose writer is dead (killed mid-write)."""
        removed = 0
        for path in list(self.dir.iterdir()):
            if not path.name.startswith(TEMP_PREFIX):
                continue
            try:
                pid = int(path.name.rsplit(".", 2)[-2])
            except (ValueError, IndexError):
                continue
            if not _alive(pid):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed += 1
        return removed

    def usage(self) -> list[tuple[str, int, float]]:
        """(name, bytes, last use) of every complete bundle."""
        out = []
        for path in self.dir.iterdir():
            if path.name.endswith(SUFFIX) and not path.name.startswith(TEMP_PREFIX):
                with contextlib.suppress(FileNotFoundError):
                    st = path.stat()
                    out.append((path.name[:-len(SUFFIX)], st.st_size, st.st_mtime))
        return out

    def touch(self, bundle: Bundle) -> None:
        """Mark a bundle used now (the host-wide LRU order is by mtime)."""
        with contextlib.suppress(FileNotFoundError):
            os.utime(bundle.path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class BundleWriter:
    """Preallocated, writable arrays in a temporary file; `commit` (on a clean exit of the
    `with` block) writes the manifest and header and renames the file into place.

    Arrays may be shrunk along their first axis before commit (`shrink`): the file keeps the
    preallocated room, the manifest records the shorter shape.
    """

    def __init__(self, store: SharedArrays, name: str,
                 specs: Mapping[str, tuple[tuple[int, ...], np.dtype[Any]]]) -> None:
        self.store, self.name = store, name
        self.meta: dict[str, Any] = {}
        self.temp = store.dir / f"{TEMP_PREFIX}{name}.{os.getpid()}.{secrets.token_hex(4)}"
        layout: list[dict[str, Any]] = []
        offset = HEADER
        for key, (shape, dtype) in specs.items():
            dtype = np.dtype(dtype)
            nbytes = int(np.prod(shape)) * dtype.itemsize if shape else dtype.itemsize
            layout.append({"name": key, "dtype": dtype.str, "shape": list(shape),
                           "offset": offset})
            offset = _align(offset + max(nbytes, 1))
        self.layout, self.data_end = layout, offset
        self.fd = os.open(self.temp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.ftruncate(self.fd, offset)
            self._mm = mmap.mmap(self.fd, offset, access=mmap.ACCESS_WRITE)
        except BaseException:
            os.close(self.fd)
            self.temp.unlink()
            raise
        self.arrays: dict[str, np.ndarray] = {}
        for entry in layout:
            shape = tuple(entry["shape"])
            count = int(np.prod(shape)) if shape else 1
            self.arrays[entry["name"]] = np.frombuffer(
                self._mm, dtype=np.dtype(entry["dtype"]), count=count,
                offset=entry["offset"]).reshape(shape)

    def shrink(self, key: str, rows: int) -> None:
        for entry in self.layout:
            if entry["name"] == key:
                entry["shape"][0] = rows
                self.arrays[key] = self.arrays[key][:rows]

    def __enter__(self) -> BundleWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.arrays.clear()
        try:
            if exc_type is None:
                self._commit()
        finally:
            with contextlib.suppress(BufferError):
                self._mm.close()
            os.close(self.fd)
            if self.temp.exists():
                self.temp.unlink()

    def _commit(self) -> None:
        self._mm.flush()
        manifest = orjson.dumps({"arrays": self.layout, "meta": self.meta},
                                option=orjson.OPT_SERIALIZE_NUMPY)
        os.pwrite(self.fd, manifest, self.data_end)
        header = MAGIC + self.data_end.to_bytes(8, "little") + len(manifest).to_bytes(8, "little")
        os.pwrite(self.fd, header, 0)  # last: a file with the magic is complete
        os.rename(self.temp, self.store.dir / (self.name + SUFFIX))
