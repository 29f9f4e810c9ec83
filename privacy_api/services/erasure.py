"""Erasure of a data subject: every record of one privacy unit, or one record, deleted.

Records hold no plaintext column (not even a hash of the unit: a stored per-record tag, keyed or
not, would show anyone reading the database which records belong to the same person), so the
records of a unit are found by decrypting the dataset's records in batches and comparing the
unit column in memory. That costs one decryption pass per erasure, which is rare.

The deletion and the version bump commit together, so a query sees the dataset either before or
after the erasure. On SQLite every connection runs with `secure_delete` (db.py), so the deleted
tokens are overwritten in the pages that held them; the WAL is then checkpointed and truncated
so that no older copy of those pages survives in the -wal file. Answers released before the
erasure stay released: they were differentially private, and the ledger keeps them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Connection, delete, select

from ..crypto import fernet_batch
from ..crypto.keyring import MasterKeyring
from ..domain.errors import InvalidRequest
from ..storage.columns import CorruptRecord
from ..storage.dataset_schema import RowError, converters
from ..storage.db import Database
from ..storage.models import Dataset, Record, User
from .audit import record_action
from .datasets import data_cipher, get_managed_dataset, schema_of

# Records decrypted per step of the scan: bounds its memory to a few MB of tokens.
SCAN_BATCH = 20_000
DELETE_BATCH = 500
# How long the post-erasure checkpoint waits for readers of older snapshots (ms).
CHECKPOINT_WAIT_MS = 5_000


@dataclass(frozen=True)
class ErasureResult:
    deleted: int
    version: int
    # SQLite: whether the WAL was checkpointed and truncated (False: a reader held an older
    # snapshot; the next checkpoint finishes the job). None on PostgreSQL (docs/operations.md).
    wal_checkpointed: bool | None


def erase_unit(db: Database, keyring: MasterKeyring, user: User, dataset_id: int,
               unit: str) -> ErasureResult:
    """Delete every record whose privacy-unit column holds `unit` (as uploaded: the string
    form of an id or int, or a category's name). No record of it: deleted 0, no new version."""
    with db.transaction() as session:
        dataset = get_managed_dataset(session, user, dataset_id)
        schema = schema_of(dataset)
        if schema.privacy_unit_column is None:
            raise InvalidRequest("this dataset has no privacy unit: erase records by id "
                                 "(DELETE /v1/datasets/{id}/records/{record_id})",
                                 {"unit": ["the dataset has no privacy unit column"]})
        position = schema.names.index(schema.privacy_unit_column)
        try:
            target: Any = converters(schema)[position](unit)
        except RowError:
            target = None  # not a value the column can hold: no record can match
        keys = data_cipher(session, keyring, dataset_id).keys
    unit_ref = hashlib.blake2b(unit.encode(), key=keys[0][:64], digest_size=4).hexdigest()
    matched: list[int] = []
    scanned_to = 0
    if target is not None and db.is_sqlite:
        # SQLite takes one write lock for the whole database: scan first without it. Ids are
        # assigned under that lock at commit, so whatever lands meanwhile has a higher id and
        # is scanned again below. (PostgreSQL draws ids before commit, so an upload in flight
        # can commit ids below the scan's end: there the scan runs under the dataset's lock,
        # which blocks only writers of this dataset.)
        with db.core_transaction() as conn:
            scanned_to, matched = _scan(conn, keys, dataset_id, position, target, after=0)
    with db.transaction(immediate=True) as session:
        dataset = get_managed_dataset(session, user, dataset_id, lock=True)
        if target is not None:
            # the dataset key may have been rotated since: the cipher read now has every live key
            keys = data_cipher(session, keyring, dataset_id).keys
            _, more = _scan(session.connection(), keys, dataset_id, position, target,
                            after=scanned_to)
            matched += more
        deleted = _delete(session.connection(), dataset, matched)
        record_action(session, user, "dataset.erase_unit", f"dataset:{dataset.id}",
                      deleted=deleted, version=dataset.version, unit_ref=unit_ref)
        version = dataset.version
    return ErasureResult(deleted, version, truncate_wal(db) if deleted else None)


def erase_record(db: Database, user: User, dataset_id: int, record_id: int) -> ErasureResult:
    """Delete one record by id (the ids a unit-less dataset's upload answer lists)."""
    with db.transaction(immediate=True) as session:
        dataset = get_managed_dataset(session, user, dataset_id, lock=True)
        # an id no BIGINT holds names no record (and would overflow the driver)
        ids = [record_id] if 0 < record_id < 2**63 else []
        deleted = _delete(session.connection(), dataset, ids)
        record_action(session, user, "dataset.erase_record", f"dataset:{dataset.id}",
                      deleted=deleted, version=dataset.version, record_id=record_id)
        version = dataset.version
    return ErasureResult(deleted, version, truncate_wal(db) if deleted else None)


def _scan(conn: Connection, keys: Sequence[bytes], dataset_id: int, position: int, target: Any,
          *, after: int) -> tuple[int, list[int]]:
    """(highest id read, ids of the records whose column `position` equals `target`), over
    the dataset's records with id > after, in id order."""
    last = after
    found: list[int] = []
    while True:
        rows = _read_batch(conn, dataset_id, last)
        if not rows:
            return last, found
        ids = [r[0] for r in rows]
        try:
            plain = fernet_batch.decrypt(keys, [r[1] for r in rows])
        except fernet_batch.InvalidToken:
            raise CorruptRecord("a record failed authentication (tampered or wrong key)") from None
        values = orjson.loads(b"[" + plain.join(b",", b"]"))
        found.extend(i for i, row in zip(ids, values, strict=True) if row[position] == target)
        last = ids[-1]


def _read_batch(conn: Connection, dataset_id: int, after: int) -> list[tuple[int, bytes]]:
    """(id, token) of up to SCAN_BATCH records with id > after, in id order.

    Straight from the driver's cursor (as columns._read_tokens does): SQLAlchemy's per-row
    result handling cost more than decrypting the tokens. PostgreSQL in binary format."""
    raw = conn.connection.dbapi_connection
    dialect = conn.dialect.name
    if raw is None or dialect not in ("sqlite", "postgresql"):
        return [(r[0], bytes(r[1])) for r in conn.execute(
            select(Record.id, Record.token).where(Record.dataset_id == dataset_id,
                                                  Record.id > after)
            .order_by(Record.id).limit(SCAN_BATCH))]
    mark = "?" if dialect == "sqlite" else "%s"
    cursor = raw.cursor(binary=True) if dialect == "postgresql" else raw.cursor()
    try:
        cursor.execute(f"SELECT id, token FROM records WHERE dataset_id = {mark} AND id > {mark} "
                       f"ORDER BY id LIMIT {SCAN_BATCH}", (dataset_id, after))
        rows = [(int(r[0]), bytes(r[1])) for r in cursor.fetchall()]
    finally:
        cursor.close()
    return rows


def _delete(conn: Connection, dataset: Dataset, ids: list[int]) -> int:
    """Delete those of `ids` that are records of `dataset`; a new version if any were."""
    deleted = 0
    for start in range(0, len(ids), DELETE_BATCH):
        chunk = ids[start:start + DELETE_BATCH]
        result = conn.execute(delete(Record).where(Record.dataset_id == dataset.id,
                                                   Record.id.in_(chunk)))
        deleted += result.rowcount
    if deleted:
        # A plain version bump: the column cache reloads the new version in full (it goes
        # incremental only for versions marked as appends).
        dataset.rows -= deleted
        dataset.version += 1
    return deleted


def truncate_wal(db: Database) -> bool | None:
    """SQLite: copy the WAL into the database file and truncate it, so that pages from before
    an erasure survive in neither. True when done; False when a reader of an older snapshot
    kept it from finishing within CHECKPOINT_WAIT_MS. None on other databases."""
    if not db.is_sqlite:
        return None
    raw = db.engine.raw_connection()
    try:
        cur = raw.cursor()
        try:
            cur.execute(f"PRAGMA busy_timeout={CHECKPOINT_WAIT_MS}")
            busy, _, _ = cur.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            cur.execute("PRAGMA busy_timeout=60000")
        finally:
            cur.close()
    finally:
        raw.close()
    return bool(busy == 0)
