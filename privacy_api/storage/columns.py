"""The decrypted column cache the query engine reads.

A dataset version is decrypted once per host, in parallel over the cores (each worker process
reads and decrypts its own id range straight from the database), straight into preallocated
NumPy columns. With a shared directory (tmpfs, `shared_arrays`) those columns live in a file
that every server worker of the instance maps read-only: one copy and one cold load per host
whatever the worker count, one loader per version (a file lock). Without one (no /dev/shm,
an in-memory database) each process keeps its own copy, as before.

Entries are keyed by (dataset id, version), so an upload — which bumps the version — makes
the old entry unreachable. A version recorded as a pure append of the previous one
(models.DatasetVersion) is built from the previous version's columns plus the new records
only. The least recently used versions are evicted to stay under a byte bound (host-wide for
shared copies); a worker drops a mapping whose file is gone at its next query.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import orjson
from sqlalchemy import Engine, func, select

from .dataset_schema import Column, DatasetSchema
from .idle_pool import IdlePool
from .memory import release_freed_memory
from .models import Dataset, DatasetVersion, Record
from .pool_tasks import CorruptRecord as CorruptRecord  # re-exported
from .pool_tasks import (
    Layout,
    columns_from_rows,
    decode_range,
    decrypt_range,
    encrypt_plaintexts,
    source_of,
)
from .pool_tasks import decrypt_tokens as decrypt_tokens  # re-exported
from .shared_arrays import Bundle, NotRamBacked, SharedArrays

log = logging.getLogger(__name__)

# Below this many records, starting the pool costs more than it saves.
PARALLEL_THRESHOLD = 50_000
# Records whose columns take fewer bytes than this are decoded inline too: the pool's spawned
# interpreters cost ~25-50 MiB of private memory each while they run, more than such a
# version's columns, and a cold load's peak is meant to stay within twice the columns plus one
# range (issue 14). Above it the pool's parallelism is worth its memory.
INLINE_MAX_BYTES = 32 * 2**20
# Records decoded in one pass (a worker's task, or a step of an inline load). A pass's Python
# objects (tokens, plaintexts, row lists: ~100 bytes a record) are the decoding process's peak
# beyond the columns (~3 MiB at 8k records); they are freed and trimmed after each pass.
RANGE_ROWS = 8_192
# Tests only: a file path; a loader touches it after its first decoded range and sleeps, so a
# test can kill it mid-load.
PAUSE_ENV = "PRIVACY_API_TEST_PAUSE_LOAD"


@dataclass
class DatasetColumns:
    dataset_id: int
    version: int
    schema: DatasetSchema
    columns: dict[str, np.ndarray]
    n_rows: int
    nbytes: int = 0
    # Rows dropped by contribution bounding (a privacy unit above max_rows).
    bounded_away: int = 0
    # Arrays derived from this version's columns and public parameters only (clamped and
    # shifted values, group orderings), built on first use: they hold for the whole version.
    derived: dict[tuple[Any, ...], tuple[np.ndarray, ...]] = field(default_factory=dict)
    # Records decoded into this version (before bounding) and the id range they came from:
    # a later append version continues from max_record_id. `exact` when they are known to be
    # exactly the version's records (its DatasetVersion row agrees), so it may be a base.
    records: int = 0
    max_record_id: int = 0
    exact: bool = False
    # Shared copies: the store, the bundle name prefix of this version, the mapped bundles.
    store: SharedArrays | None = None
    name: str = ""
    bundles: list[Bundle] = field(default_factory=list)
    # Called after this process wrote a derived bundle: keeps the host under the byte bound.
    after_write: Callable[[], None] | None = None

    def column(self, name: str) -> np.ndarray:
        return self.columns[name]

    def memoized(self, key: tuple[Any, ...],
                 build: Callable[[], tuple[np.ndarray, ...]]) -> tuple[np.ndarray, ...]:
        """`build()` once per version and key; its bytes count against the cache's bound.

        Shared copies share these too (they are deterministic from the version's columns and
        public parameters): built once per host under a file lock, mapped read-only."""
        cached = self.derived.get(key)
        if cached is None:
            cached = build() if self.store is None else self._shared_build(key, build)
            self.derived[key] = cached
            self.nbytes += sum(a.nbytes for a in cached)
        return cached

    def _shared_build(self, key: tuple[Any, ...],
                      build: Callable[[], tuple[np.ndarray, ...]]) -> tuple[np.ndarray, ...]:
        assert self.store is not None
        name = f"{self.name}-{hashlib.sha256(repr(key).encode()).hexdigest()[:16]}"
        bundle = self.store.open(name)
        if bundle is None:
            with self.store.loading(name):
                bundle = self.store.open(name)
                if bundle is None:
                    arrays = build()
                    self.store.write(name, {f"a{i}": a for i, a in enumerate(arrays)},
                                     {"count": len(arrays)})
                    bundle = self.store.open(name)
                    if self.after_write is not None:
                        self.after_write()
        if bundle is None:  # removed meanwhile (the dataset deleted, evicted): keep ours
            return build()
        self.bundles.append(bundle)
        return tuple(bundle.arrays[f"a{i}"] for i in range(int(bundle.meta["count"])))

    def shifted(self, name: str, lower: float, upper: float) -> tuple[np.ndarray, np.ndarray]:
        """(clip(x, lower, upper) - midpoint, its square) for column `name` (cached)."""
        def build() -> tuple[np.ndarray, np.ndarray]:
            shifted = np.clip(self.columns[name].astype(np.float64), lower, upper)
            shifted -= (lower + upper) / 2.0
            return shifted, shifted * shifted

        shifted, squares = self.memoized(("shifted", name, lower, upper), build)
        return shifted, squares


def _dtype(col: Column) -> type:
    if col.type == "float":
        return np.float64
    if col.type == "int":
        return np.int64
    if col.type == "bool":
        return np.bool_
    if col.type == "category":
        return np.int32
    return np.int64  # id: stable hash


def _layout(schema: DatasetSchema) -> Layout:
    return tuple((c.name, np.dtype(_dtype(c)).str, c.type == "id") for c in schema.columns)


def _columns_from_rows(schema: DatasetSchema, rows: list[list[Any]]) -> dict[str, np.ndarray]:
    return columns_from_rows(_layout(schema), rows)


class _Raced(Exception):
    """More records arrived in the id range than were counted (a concurrent commit): retry."""


class _Target(Protocol):
    arrays: dict[str, np.ndarray]
    meta: dict[str, Any]

    def shrink(self, key: str, rows: int) -> None: ...

    def __enter__(self) -> _Target: ...

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None: ...


class _LocalTarget:
    """Preallocated columns in this process's own memory (no shared directory)."""

    def __init__(self, specs: dict[str, tuple[tuple[int, ...], np.dtype[Any]]]) -> None:
        self.arrays = {k: np.empty(shape, dtype) for k, (shape, dtype) in specs.items()}
        self.meta: dict[str, Any] = {}

    def shrink(self, key: str, rows: int) -> None:
        self.arrays[key] = self.arrays[key][:rows]

    def __enter__(self) -> _LocalTarget:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        return None


@dataclass(frozen=True)
class _Plan:
    """What to decode for a version: the records with after_id < id <= upto_id (None: no
    upper bound), `count` of them now, on top of `base`'s columns (None: a full load)."""

    base: DatasetColumns | None
    after_id: int
    upto_id: int | None
    count: int
    lo: int
    hi: int
    expected_records: int | None


def _maybe_pause() -> None:
    marker = os.environ.get(PAUSE_ENV)
    if marker:
        Path(marker).touch()
        time.sleep(3600)


class ColumnCache:
    def __init__(self, engine: Engine, url: str, *, max_bytes: int, workers: int,
                 shared_dir: Path | None = None, pool_idle_s: float = 5.0) -> None:
        self.engine = engine
        self.url = url
        self.max_bytes = max_bytes
        self.workers = max(1, workers)
        self._entries: OrderedDict[tuple[int, int], DatasetColumns] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[tuple[int, int], threading.Lock] = {}
        # workers - 1 processes: the thread that loads decodes a share of the ranges itself (it
        # would only wait otherwise), and one spawned interpreter fewer is ~30 MiB less at a
        # cold load's peak (issue 14). Uploads encrypt on them while their thread parses.
        self.pool = IdlePool(max(1, self.workers - 1), pool_idle_s)
        self._touched: dict[tuple[int, int], float] = {}
        self.store: SharedArrays | None = None
        if shared_dir is not None:
            try:
                self.store = SharedArrays(shared_dir)
            except (NotRamBacked, OSError) as exc:
                log.warning("shared column cache off (each worker keeps its own copy): %s", exc)
        # What loading cost, for tests and benchmarks.
        self.stats = {"full_loads": 0, "incremental_loads": 0, "decrypted_records": 0,
                      "mapped": 0}

    # -- public ------------------------------------------------------------------------------
    def get(self, dataset_id: int, version: int, schema: DatasetSchema,
            keys: Sequence[bytes]) -> DatasetColumns:
        key = (dataset_id, version)
        with self._lock:
            self._sweep()
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                self._touch(key, entry)
                return entry
            load_lock = self._loading.setdefault(key, threading.Lock())
        with load_lock:  # one decryption per version, however many requests wait for it
            with self._lock:
                entry = self._entries.get(key)
                if entry is not None:
                    return entry
            name = _bundle_name(dataset_id, version, schema, keys)
            if self.store is not None:
                entry = self._shared_get(self.store, dataset_id, version, schema, keys, name)
            else:
                entry = self._local_get(dataset_id, version, schema, keys, name)
            with self._lock:
                self._drop_older(dataset_id, version)
                self._entries[key] = entry
                self._evict()
                self._loading.pop(key, None)
            return entry

    def peek(self, dataset_id: int, version: int) -> DatasetColumns | None:
        """The cached entry of exactly this version, or None: never loads."""
        with self._lock:
            self._sweep()
            entry = self._entries.get((dataset_id, version))
            if entry is not None:
                self._entries.move_to_end((dataset_id, version))
                self._touch((dataset_id, version), entry)
            return entry

    def encrypt_chunk(self, key: bytes, plaintexts: Sequence[bytes]) -> Future[list[bytes]]:
        """Start encrypting one upload chunk on a worker process; the caller keeps parsing."""
        if self.workers == 1:
            done: Future[list[bytes]] = Future()
            done.set_result(encrypt_plaintexts(key, plaintexts))
            return done
        return self.pool.submit(encrypt_plaintexts, key, plaintexts)

    def invalidate(self, dataset_id: int) -> None:
        """Forget every version of the dataset here, and remove its shared copies on the host
        at once: other workers drop their mappings at their next query (`_sweep`)."""
        with self._lock:
            for key in [k for k in self._entries if k[0] == dataset_id]:
                del self._entries[key]
        if self.store is not None:
            self.store.remove(f"{dataset_id}-")

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self._entries.values())

    def close(self) -> None:
        self.pool.shutdown()

    # -- internals ---------------------------------------------------------------------------
    def _sweep(self) -> None:
        """Drop entries whose shared file was removed (evicted, or the dataset deleted) by
        any process: one stat per cached version."""
        for key in [k for k, e in self._entries.items()
                    if e.bundles and e.store is not None and not e.store.exists(e.bundles[0])]:
            del self._entries[key]

    def _touch(self, key: tuple[int, int], entry: DatasetColumns) -> None:
        # The host-wide LRU order is the files' mtimes: refreshed at most once a second.
        now = time.monotonic()
        if entry.store is not None and entry.bundles and now - self._touched.get(key, 0) > 1:
            self._touched[key] = now
            entry.store.touch(entry.bundles[0])

    def _drop_older(self, dataset_id: int, version: int) -> None:
        for key in [k for k in self._entries if k[0] == dataset_id and k[1] < version]:
            del self._entries[key]

    def _evict(self) -> None:
        while len(self._entries) > 1 and self.nbytes > self.max_bytes:
            self._entries.popitem(last=False)

    def _local_get(self, dataset_id: int, version: int, schema: DatasetSchema,
                   keys: Sequence[bytes], name: str) -> DatasetColumns:
        target = self._build(dataset_id, version, schema, keys, name, _LocalTarget)
        return _entry(dataset_id, version, schema, name, target.arrays, target.meta)

    def _shared_get(self, store: SharedArrays, dataset_id: int, version: int,
                    schema: DatasetSchema, keys: Sequence[bytes], name: str) -> DatasetColumns:
        bundle = store.open(name)
        if bundle is None:
            with store.loading(name):  # one loader per version per host; the rest wait here
                bundle = store.open(name)
                if bundle is None:
                    store.clean_stale()
                    self._build(dataset_id, version, schema, keys, name,
                                lambda specs: store.writer(name, specs))
                    bundle = store.open(name)
                    self._after_write(store, dataset_id, version, name)
                else:
                    self.stats["mapped"] += 1
        else:
            self.stats["mapped"] += 1
        if bundle is None:  # removed at once (deleted or evicted meanwhile): a private copy
            return self._local_get(dataset_id, version, schema, keys, name)
        entry = _entry(dataset_id, version, schema, name, bundle.arrays, bundle.meta)
        entry.store, entry.bundles = store, [bundle]
        entry.after_write = lambda: self._after_write(store, dataset_id, version, name)
        return entry

    def _after_write(self, store: SharedArrays, dataset_id: int, version: int,
                     name: str) -> None:
        """Keep the host under the byte bound: remove older versions of this dataset, then
        the least recently used versions; and the copy itself if the dataset was deleted
        (crypto-shredded) while it loaded."""
        with self.engine.connect() as conn:
            deleted = conn.execute(select(Dataset.deleted_at).where(Dataset.id == dataset_id)
                                   ).first()
        if deleted is None or deleted[0] is not None:
            store.remove(f"{dataset_id}-")
            return
        groups: dict[str, list[float]] = {}
        for bundle_name, size, mtime in store.usage():
            parts = bundle_name.split("-")
            if len(parts) < 3:
                continue
            group = "-".join(parts[:3])
            if int(parts[0]) == dataset_id and (int(parts[1]) < version or (
                    int(parts[1]) == version and group != name)):
                # older versions, and this version under superseded keys (a key rotation)
                store.remove(group)
                continue
            g = groups.setdefault(group, [0.0, 0.0])
            g[0] += size
            g[1] = max(g[1], mtime)
        total: float = sum(g[0] for g in groups.values())
        for group, (group_bytes, _) in sorted(groups.items(), key=lambda kv: kv[1][1]):
            if total <= self.max_bytes:
                break
            if group != name:
                store.remove(group)
                total -= group_bytes

    def _find_base(self, dataset_id: int, version: int, schema: DatasetSchema,
                   name: str) -> DatasetColumns | None:
        """The newest cached earlier version of the dataset under the same keys and schema,
        here or on the host, that may be a base for an incremental load."""
        tag = name.split("-")[2]
        with self._lock:
            local = [e for (d, v), e in self._entries.items()
                     if d == dataset_id and v < version and e.exact and e.name.endswith(tag)]
        if local:
            return max(local, key=lambda e: e.version)
        if self.store is None:
            return None
        versions = []
        for bundle_name, _, _ in self.store.usage():
            parts = bundle_name.split("-")
            if len(parts) == 3 and parts[0] == str(dataset_id) and parts[2] == tag \
                    and int(parts[1]) < version:
                versions.append(int(parts[1]))
        for v in sorted(versions, reverse=True):
            bundle = self.store.open(f"{dataset_id}-{v}-{tag}")
            if bundle is not None and bundle.meta.get("exact"):
                base = _entry(dataset_id, v, schema, bundle.path.stem, bundle.arrays,
                              bundle.meta)
                base.bundles = [bundle]
                return base
        return None

    def _plan(self, dataset_id: int, version: int, schema: DatasetSchema, name: str) -> _Plan:
        base = self._find_base(dataset_id, version, schema, name)
        with self.engine.connect() as conn:
            rows = {r.version: r for r in conn.execute(
                select(DatasetVersion.version, DatasetVersion.kind, DatasetVersion.records,
                       DatasetVersion.max_record_id)
                .where(DatasetVersion.dataset_id == dataset_id,
                       DatasetVersion.version <= version,
                       DatasetVersion.version >= (base.version if base else version)))}
            target = rows.get(version)
            upto = target.max_record_id if target is not None else None
            expected = target.records if target is not None else None
            after = 0
            if base is not None:
                chain = all(v in rows and rows[v].kind == "append"
                            for v in range(base.version + 1, version + 1))
                start = rows.get(base.version)
                # the base must hold exactly its version's records (an empty version 0 has
                # no row and no records)
                base_ok = (base.version == 0 or (start is not None
                                                 and start.records == base.records
                                                 and (start.max_record_id or 0)
                                                 == base.max_record_id))
                if chain and base_ok:
                    after = base.max_record_id
                else:
                    base = None
            where = [Record.dataset_id == dataset_id, Record.id > after]
            if upto is not None:
                where.append(Record.id <= upto)
            lo, hi, count = conn.execute(
                select(func.min(Record.id), func.max(Record.id), func.count()).where(*where)
            ).one()
        return _Plan(base, after, upto, int(count), int(lo or 0), int(hi or 0), expected)

    def _build(self, dataset_id: int, version: int, schema: DatasetSchema,
               keys: Sequence[bytes], name: str,
               make_target: Callable[[dict[str, tuple[tuple[int, ...], np.dtype[Any]]]],
                                     _Target]) -> _Target:
        for _ in range(5):
            plan = self._plan(dataset_id, version, schema, name)
            try:
                return self._fill(plan, dataset_id, schema, keys, make_target)
            except _Raced:
                continue
        raise RuntimeError("records kept arriving while the version loaded")

    def _fill(self, plan: _Plan, dataset_id: int, schema: DatasetSchema, keys: Sequence[bytes],
              make_target: Callable[[dict[str, tuple[tuple[int, ...], np.dtype[Any]]]],
                                    _Target]) -> _Target:
        """Decode the plan's records straight into preallocated columns (after a copy of the
        base's), then bound contributions: the peak is the columns plus one decoded range."""
        base_rows = plan.base.n_rows if plan.base is not None else 0
        capacity = base_rows + plan.count
        specs: dict[str, tuple[tuple[int, ...], np.dtype[Any]]] = {
            c.name: ((capacity,), np.dtype(_dtype(c))) for c in schema.columns}
        with make_target(specs) as target:
            if plan.base is not None:
                for c in schema.columns:
                    target.arrays[c.name][:base_rows] = plan.base.columns[c.name]
            decoded = self._decode_into(target.arrays, plan, dataset_id, schema, keys,
                                        base_rows, capacity)
            kept = _bound_new_rows(target.arrays, schema, base_rows, decoded)
            n_rows = base_rows + kept
            for c in schema.columns:
                target.shrink(c.name, n_rows)
            records = (plan.base.records if plan.base is not None else 0) + decoded
            target.meta.update({
                "n_rows": n_rows,
                "bounded_away": (plan.base.bounded_away if plan.base is not None else 0)
                + decoded - kept,
                "records": records,
                "max_record_id": max(plan.hi, plan.after_id),
                "exact": plan.expected_records is not None and records == plan.expected_records,
            })
            self.stats["incremental_loads" if plan.base is not None else "full_loads"] += 1
            self.stats["decrypted_records"] += decoded
        return target

    def _decode_into(self, arrays: dict[str, np.ndarray], plan: _Plan, dataset_id: int,
                     schema: DatasetSchema, keys: Sequence[bytes], at: int,
                     capacity: int) -> int:
        """Decode the plan's records into arrays[at:]; returns how many."""
        if not plan.count:
            return 0
        pos = at

        def place(part: tuple[int, dict[str, np.ndarray]]) -> None:
            nonlocal pos
            n, cols = part
            if pos + n > capacity:
                raise _Raced
            for c in schema.columns:
                arrays[c.name][pos:pos + n] = cols[c.name]
            pos += n

        lo, hi = plan.lo, plan.hi + 1
        layout = _layout(schema)
        row_bytes = sum(a.itemsize for a in arrays.values())
        if (plan.count < PARALLEL_THRESHOLD or plan.count * row_bytes < INLINE_MAX_BYTES
                or self.workers == 1 or self.url.startswith("sqlite:///:")):
            try:
                with self.engine.connect() as conn:
                    for i, (a, b) in enumerate(_id_ranges(lo, hi, plan.count, 1)):
                        place(decode_range(conn, dataset_id, a, b, keys, layout))
                        if i == 0:
                            _maybe_pause()
            finally:
                # a range's temporaries were freed: give their pages back (glibc keeps them)
                release_freed_memory()
            return pos - at
        # In order, with a bounded window in flight: memory is a few ranges, not all of them.
        # Every `workers`-th range is this thread's own, decoded when its turn comes to be
        # placed, while the pool's processes work on theirs.
        source = source_of(self.engine)
        window = self.workers * 2
        pending: deque[Future[tuple[int, dict[str, np.ndarray]]] | tuple[int, int]] = deque()
        placed = 0
        try:
            with self.engine.connect() as conn:

                def take() -> None:
                    nonlocal placed
                    item = pending.popleft()
                    if isinstance(item, Future):
                        place(item.result())
                    else:
                        place(decode_range(conn, dataset_id, item[0], item[1], keys, layout))
                    placed += 1
                    if placed == 1:
                        _maybe_pause()

                for i, (a, b) in enumerate(_id_ranges(lo, hi, plan.count, self.workers * 4)):
                    if i % self.workers == self.workers - 1:
                        pending.append((a, b))
                    else:
                        pending.append(self.pool.submit(
                            decrypt_range, source, dataset_id, a, b, list(keys), layout))
                    if len(pending) > window:
                        take()
                while pending:
                    take()
        finally:
            for item in pending:
                if isinstance(item, Future):
                    item.cancel()
            release_freed_memory()
        # the pool's processes (~30 MiB each) are done with this load: unless an upload is
        # encrypting on them, let them go before contribution bounding allocates (issue 14)
        self.pool.release_if_idle()
        return pos - at


def _bundle_name(dataset_id: int, version: int, schema: DatasetSchema,
                 keys: Sequence[bytes]) -> str:
    """`<dataset>-<version>-<tag>`: the tag (an HMAC under the data keys of the schema) makes
    a copy belong to exactly these keys and schema, so a recreated database reusing dataset
    ids, or a key rotation, never meets an old copy."""
    fingerprint = orjson.dumps([[c.as_dict() for c in schema.columns],
                                schema.privacy_unit_column, schema.privacy_unit_max_rows])
    tag = hmac.new(b"".join(keys), fingerprint, hashlib.sha256).hexdigest()[:16]
    return f"{dataset_id}-{version}-{tag}"


def _entry(dataset_id: int, version: int, schema: DatasetSchema, name: str,
           arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> DatasetColumns:
    columns = dict(arrays)
    entry = DatasetColumns(dataset_id, version, schema, columns, int(meta["n_rows"]),
                           bounded_away=int(meta["bounded_away"]), records=int(meta["records"]),
                           max_record_id=int(meta["max_record_id"]),
                           exact=bool(meta["exact"]), name=name)
    entry.nbytes = sum(a.nbytes for a in columns.values())
    return entry


def _id_ranges(lo: int, hi: int, count: int, at_least: int) -> list[tuple[int, int]]:
    """Split ids lo <= id < hi into at least `at_least` ranges of about RANGE_ROWS records or
    fewer: a decode's arrays then stay cache-sized (one 1M-row pass costs ~30% more per row)."""
    n = max(at_least, -(-count // RANGE_ROWS))
    edges = np.linspace(lo, hi, n + 1).astype(np.int64).tolist()
    return [(a, b) for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a]


def _bound_contributions(entry: DatasetColumns) -> None:
    """Contribution bounding of a whole in-memory entry (benchmarks build entries directly)."""
    columns = {k: v.copy() for k, v in entry.columns.items()}
    kept = _bound_new_rows(columns, entry.schema, 0, entry.n_rows)
    entry.bounded_away = entry.n_rows - kept
    entry.columns = {k: v[:kept] for k, v in columns.items()}
    entry.n_rows = kept


def _bound_new_rows(arrays: dict[str, np.ndarray], schema: DatasetSchema, base_rows: int,
                    new_rows: int) -> int:
    """Keep at most max_rows rows per privacy unit (the earliest uploaded ones), compacting
    rows base_rows..base_rows+new_rows in place; returns how many of them are kept.

    This is what makes a unit's influence bounded by max_rows: the DP sensitivities assume it.
    The choice of rows depends only on upload order, never on values. Rows before base_rows
    are an earlier version's kept rows (already bounded): a new row of a unit is kept when the
    unit's kept earlier rows plus its new rows before it are fewer than max_rows — the rank it
    would have in a full load, since a unit keeps fewer than max_rows earlier rows only when it
    had no more. So an incremental load keeps exactly the rows a full load keeps, in the same
    order (tests/services/test_shared_columns.py::test_incremental_equals_full_load).
    """
    unit = schema.privacy_unit_column
    if unit is None or new_rows == 0:
        return new_rows
    max_rows = schema.privacy_unit_max_rows
    units = arrays[unit][base_rows:base_rows + new_rows]
    # Positions and ranks fit int32 below 2^31 rows: half the temporaries of int64, which sit
    # beside the whole version's columns at the end of a cold load (its peak, issue 14).
    index: type[np.signedinteger[Any]] = np.int32 if base_rows + new_rows < 2**31 else np.int64
    order = np.argsort(units, kind="stable").astype(index)  # stable: upload order in a unit
    sorted_units = units[order]
    starts = np.r_[0, np.flatnonzero(sorted_units[1:] != sorted_units[:-1]) + 1].astype(index)
    distinct = sorted_units[starts] if base_rows else None
    del sorted_units
    run_lengths = np.diff(np.r_[starts, new_rows]).astype(index)
    rank: np.ndarray = np.arange(new_rows, dtype=index)
    rank -= np.repeat(starts, run_lengths)
    if distinct is not None:
        earlier = arrays[unit][:base_rows]
        at = np.searchsorted(distinct, earlier)
        np.minimum(at, len(distinct) - 1, out=at)
        known = distinct[at] == earlier
        prior = np.bincount(at[known], minlength=len(distinct))
        del at, known
        rank += np.repeat(prior.astype(index), run_lengths)
    keep_sorted = rank < max_rows
    del rank, run_lengths, starts
    if keep_sorted.all():
        return new_rows
    keep = np.zeros(new_rows, dtype=bool)
    keep[order[keep_sorted]] = True
    kept = int(keep.sum())
    for a in arrays.values():
        a[base_rows:base_rows + kept] = a[base_rows:base_rows + new_rows][keep]
    return kept
