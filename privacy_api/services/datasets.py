"""Datasets: public schema, encrypted records, key rotation and crypto-shredding."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any

from sqlalchemy import Connection, bindparam, delete, exists, func, or_, select, text, update
from sqlalchemy.orm import Session

from ..crypto import fernet_batch
from ..crypto.keyring import DataCipher, MasterKeyring, new_data_key
from ..domain.errors import Conflict, Forbidden, InvalidRequest, MasterKeyMismatch, NotFound
from ..domain.names import checked_name
from ..domain.units import delta_units, eps_units
from ..storage.dataset_schema import DatasetSchema, RowEncoder, SchemaError, parse_schema
from ..storage.models import (
    Budget,
    Dataset,
    DatasetKey,
    DatasetVersion,
    LedgerEntry,
    Record,
    User,
    utcnow,
)
from .audit import record_action
from .uploads import RowErrors, iter_encoded


def schema_of(dataset: Dataset) -> DatasetSchema:
    return DatasetSchema.from_model(
        dataset.columns, dataset.privacy_unit_column, dataset.privacy_unit_max_rows
    )


_ALL_WRAPPED_KEYS = select(DatasetKey.wrapped_key)


def verify_master_keyring(conn: Session | Connection, keyring: MasterKeyring) -> None:
    """Check that the master keyring unwraps every stored data key, else MasterKeyMismatch.

    A wrong but well-formed master key (a typo'd env var, another environment's key file) would
    otherwise start cleanly, fail every query with 500s, and wrap new datasets' keys under a key
    nobody else holds. One Fernet decryption per data key (~10 µs each), once per process.
    """
    wrapped = conn.scalars(_ALL_WRAPPED_KEYS).all()
    bad = sum(not keyring.can_unwrap(bytes(w)) for w in wrapped)
    if bad:
        raise MasterKeyMismatch(
            f"the configured master keys cannot unwrap {bad} of the {len(wrapped)} dataset keys "
            "in the database: wrong PRIVACY_API_MASTER_KEYS / key file, or an old key removed "
            "before `privacy-api rotate-master-key` finished",
            {"unreadable_keys": bad, "keys": len(wrapped)})
    keyring.verified = True


def _wrap_new_data_key(session: Session, keyring: MasterKeyring) -> bytes:
    # Normally verified at start-up; if the database was unreachable then, check now, before
    # anything is wrapped under a keyring that may not be the one the data needs.
    if not keyring.verified:
        verify_master_keyring(session, keyring)
    return keyring.wrap(new_data_key())


def create_dataset(
    session: Session,
    keyring: MasterKeyring,
    owner: User,
    *,
    name: str,
    columns: Sequence[dict[str, Any]],
    privacy_unit: dict[str, Any] | None,
    epsilon_cap: float | None,
    delta_cap: float | None,
) -> Dataset:
    name = checked_name(name, "name")
    try:
        schema = parse_schema(columns, privacy_unit)
    except SchemaError as exc:
        raise InvalidRequest("invalid dataset schema", exc.errors) from None
    if schema.privacy_unit_column:
        unit = schema.column(schema.privacy_unit_column)
        if unit.type not in ("id", "int", "category"):
            raise InvalidRequest("the privacy unit column must be of type id, int or category")
    dataset = Dataset(
        name=name,
        owner_id=owner.id,
        columns=[c.as_dict() for c in schema.columns],
        privacy_unit_column=schema.privacy_unit_column,
        privacy_unit_max_rows=schema.privacy_unit_max_rows,
        epsilon_cap=eps_units(epsilon_cap) if epsilon_cap is not None else None,
        delta_cap=delta_units(delta_cap) if delta_cap is not None else None,
        rows=0,
        version=0,
        key_version=1,
        epsilon_spent=0,
        delta_spent=0,
    )
    session.add(dataset)
    session.flush()
    session.add(DatasetKey(dataset_id=dataset.id, version=1,
                           wrapped_key=_wrap_new_data_key(session, keyring)))
    record_action(session, owner, "dataset.create", f"dataset:{dataset.id}", name=dataset.name)
    return dataset


def visible_datasets(session: Session, user: User) -> Sequence[Dataset]:
    query = select(Dataset).where(Dataset.deleted_at.is_(None)).order_by(Dataset.id)
    if user.role == "owner":
        query = query.where(Dataset.owner_id == user.id)
    elif user.role == "analyst":
        query = query.where(
            exists().where(Budget.dataset_id == Dataset.id, Budget.user_id == user.id)
        )
    elif user.role != "admin":
        return []
    return session.scalars(query).all()


def get_visible_dataset(session: Session, user: User, dataset_id: int) -> Dataset:
    dataset = session.get(Dataset, dataset_id)
    if dataset is None or dataset.deleted_at is not None or not can_see(session, user, dataset):
        raise NotFound("no such dataset")
    return dataset


def can_see(session: Session, user: User, dataset: Dataset) -> bool:
    if user.role == "admin" or (user.role == "owner" and dataset.owner_id == user.id):
        return True
    if user.role == "analyst":
        return session.scalar(
            select(Budget.id).where(Budget.dataset_id == dataset.id, Budget.user_id == user.id)
        ) is not None
    return False


def get_managed_dataset(session: Session, user: User, dataset_id: int, *,
                        lock: bool = False) -> Dataset:
    """A dataset the user may write to (its owner or an admin)."""
    query = select(Dataset).where(Dataset.id == dataset_id, Dataset.deleted_at.is_(None))
    if lock:
        # FOR NO KEY UPDATE on PostgreSQL: serialises the writers of the dataset row without
        # conflicting with the FOR KEY SHARE locks that inserting its records takes (an
        # upload streaming its records holds those; FOR UPDATE there would deadlock two
        # concurrent uploads)
        # populate_existing: the session may hold this dataset from an unlocked read; the
        # counters must be the ones read under the lock, or concurrent uploads lose updates
        query = query.with_for_update(key_share=True).execution_options(populate_existing=True)
    dataset = session.scalar(query)
    if dataset is None or not can_see(session, user, dataset):
        raise NotFound("no such dataset")
    if not (user.role == "admin" or dataset.owner_id == user.id):
        raise Forbidden("only the dataset's owner or an admin may change it")
    return dataset


_WRAPPED_KEYS = (select(DatasetKey.wrapped_key)
                 .where(DatasetKey.dataset_id == bindparam("dataset_id"))
                 .order_by(DatasetKey.version.desc()))


def data_cipher(conn: Session | Connection, keyring: MasterKeyring, dataset_id: int) -> DataCipher:
    wrapped = conn.scalars(_WRAPPED_KEYS, {"dataset_id": dataset_id}).all()
    if not wrapped:
        raise NotFound("the dataset's key has been destroyed")
    return DataCipher([keyring.unwrap(w) for w in wrapped])


@dataclass(frozen=True)
class UploadResult:
    inserted: int
    version: int
    # Inclusive [first, last] id ranges of the stored records, for datasets without a privacy
    # unit (there a record is the unit, and its id is what erasure names); else None.
    record_ids: list[tuple[int, int]] | None = None


EncryptChunk = Callable[[bytes, Sequence[bytes]], "Future[list[bytes]]"]


# Encrypted chunks an upload may have in flight (each holds CHUNK_ROWS plaintexts).
MAX_PENDING_CHUNKS = 4


def upload_records(
    session: Session,
    keyring: MasterKeyring,
    user: User,
    dataset_id: int,
    content_type: str,
    stream: IO[bytes],
    *,
    encrypt_chunk: EncryptChunk | None = None,
) -> UploadResult:
    """Validate every row, encrypt, and insert all of them in the caller's transaction.

    Nothing is committed unless every row is valid. Chunks are encrypted (by `encrypt_chunk`,
    e.g. on worker processes) while later chunks are still being parsed. On PostgreSQL the
    encrypted chunks are streamed into one COPY as they come, so the server's share of the
    insert overlaps the parsing; an invalid row aborts the COPY and the caller rolls back.
    Elsewhere (SQLite, one writer at a time) they are staged in a temporary table and moved
    into `records` once the whole body has validated. The dataset row is then locked so
    concurrent uploads and key rotations serialise and each upload gets its own version.
    """
    dataset = get_managed_dataset(session, user, dataset_id)
    key_version, data_key = newest_data_key(session, keyring, dataset.id)
    encrypt = encrypt_chunk or _encrypt_inline
    errors = RowErrors()
    pending: deque[Future[list[bytes]]] = deque()
    inserted = 0
    # recorded under the key that encrypted them: a rotation begun meanwhile re-encrypts them
    with _record_sink(session, dataset.id, key_version) as sink:
        write = sink.write
        for chunk in iter_encoded(RowEncoder(schema_of(dataset)), content_type, stream, errors):
            if errors.count:  # once a row is bad nothing will be written: stop encrypting
                continue
            pending.append(encrypt(data_key, chunk))
            while pending and (pending[0].done() or len(pending) > MAX_PENDING_CHUNKS):
                # waiting when too many are in flight bounds memory to a few chunks even when
                # parsing outruns encryption
                inserted += write(pending.popleft().result())
        errors.raise_if_any()
        while pending:
            inserted += write(pending.popleft().result())
    if not inserted:
        raise InvalidRequest("no records in the body")
    dataset = get_managed_dataset(session, user, dataset_id, lock=True)
    # A key rotation that finished while this body was parsed has destroyed the key these
    # records are under (it locks this row before destroying keys): store nothing.
    if session.scalar(select(DatasetKey.id).where(DatasetKey.dataset_id == dataset_id,
                                                  DatasetKey.version == key_version)) is None:
        raise Conflict("the dataset's key was rotated during this upload; nothing was stored, "
                       "send it again")
    dataset.rows += inserted
    dataset.version += 1
    _record_version(session, dataset, inserted)
    session.flush()
    ranges = None if dataset.privacy_unit_column else sink.id_ranges(session, dataset.id)
    return UploadResult(inserted, dataset.version, ranges)


def _record_version(session: Session, dataset: Dataset, inserted: int) -> None:
    """Note whether the upload just made `dataset.version` a pure append (dataset row locked).

    It is one when the previous version's records are known (its own row, or version 0) and
    every record of this upload has an id above the previous version's largest: then the new
    version is the old one plus the ids above that watermark. On PostgreSQL a concurrent
    upload may have drawn lower ids from the sequence and committed first; the count tells.
    """
    previous = dataset.version - 1
    base: int | None = 0 if previous == 0 else None
    if previous > 0:
        row = session.get(DatasetVersion, (dataset.id, previous))
        if row is not None:
            base = row.max_record_id or 0
    max_id = session.scalar(select(func.max(Record.id)).where(Record.dataset_id == dataset.id))
    kind = "full"
    if base is not None:
        above = session.scalar(select(func.count()).select_from(Record).where(
            Record.dataset_id == dataset.id, Record.id > base))
        kind = "append" if above == inserted else "full"
    session.add(DatasetVersion(dataset_id=dataset.id, version=dataset.version, kind=kind,
                               records=dataset.rows, max_record_id=max_id))


def _encrypt_inline(key: bytes, plaintexts: Sequence[bytes]) -> Future[list[bytes]]:
    future: Future[list[bytes]] = Future()
    future.set_result(fernet_batch.encrypt(key, plaintexts))
    return future


def newest_data_key(session: Session, keyring: MasterKeyring, dataset_id: int) -> tuple[int, bytes]:
    row = session.execute(
        select(DatasetKey.version, DatasetKey.wrapped_key)
        .where(DatasetKey.dataset_id == dataset_id)
        .order_by(DatasetKey.version.desc()).limit(1)
    ).first()
    if row is None:
        raise NotFound("the dataset's key has been destroyed")
    return row.version, keyring.unwrap(row.wrapped_key)


# Fernet tokens are url-safe base64: no byte of them is special in COPY's text format or in
# bytea's escape input, so a token is its own COPY field, as is.
_TOKEN_BYTES = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_="
_COPY_RECORDS = "COPY records (dataset_id, key_version, token) FROM STDIN"


def _copy_tokens(copy: Any, dataset_id: int, key_version: int, tokens: Sequence[bytes]) -> int:
    """Write rows into an open COPY: one text-format block, not a driver call per row."""
    joined = b"\n".join(tokens)
    if (tokens and joined.count(b"\n") == len(tokens) - 1
            and not joined.translate(None, _TOKEN_BYTES + b"\n")):
        prefix = f"{int(dataset_id)}\t{int(key_version)}\t".encode()
        copy.write(prefix + joined.replace(b"\n", b"\n" + prefix) + b"\n")
    else:
        for token in tokens:
            copy.write_row((dataset_id, key_version, token))
    return len(tokens)


_STAGE_CREATE = "CREATE TEMP TABLE IF NOT EXISTS upload_staging (token BLOB NOT NULL)"
_STAGE_CLEAR = "DELETE FROM temp.upload_staging"
_STAGE_INSERT = "INSERT INTO temp.upload_staging (token) VALUES (?)"
_STAGE_MOVE = ("INSERT INTO records (dataset_id, key_version, token) "
               "SELECT ?, ?, token FROM temp.upload_staging ORDER BY rowid")


class _RecordSink:
    """Stores chunks of tokens for one upload and can then say which ids they got."""

    def __init__(self, write: Callable[[Sequence[bytes]], int]) -> None:
        self.write = write
        self.written = 0
        # SQLite: the one contiguous range, known once the staged rows are moved
        self.sqlite_range: tuple[int, int] | None = None
        # PostgreSQL: every id this upload got is above this (read before the COPY)
        self.pg_floor = 0

    def id_ranges(self, session: Session, dataset_id: int) -> list[tuple[int, int]]:
        if self.sqlite_range is not None:
            return [self.sqlite_range]
        if not self.written:
            return []
        # Concurrent uploads draw from the same sequence, so this upload's ids need not be
        # contiguous: its rows are the ones this transaction wrote (xmin), above the floor
        # (an index range over just the new ids), grouped into runs of consecutive ids.
        rows = session.execute(text(
            "SELECT min(id), max(id) FROM (SELECT id, id - row_number() OVER (ORDER BY id) AS run"
            " FROM records WHERE id > :floor AND dataset_id = :ds"
            " AND xmin = pg_current_xact_id()::xid) AS mine GROUP BY run ORDER BY 1"),
            {"floor": self.pg_floor, "ds": dataset_id}).all()
        return [(int(a), int(b)) for a, b in rows]


@contextmanager
def _record_sink(session: Session, dataset_id: int, key_version: int) -> Iterator[_RecordSink]:
    """A sink that stores chunks of tokens (`write` returns how many), for the duration of the
    block: streamed into one COPY on PostgreSQL (aborted if the block raises), else staged in
    a temporary table and moved into `records` when the block ends without an error."""
    conn = session.connection()
    if conn.dialect.name != "postgresql":
        # Staged in a TEMP table (the connection's own temporary database, spilled to disk by
        # SQLite), not in memory: peak memory stays a few chunks whatever the body's size, and
        # writing there takes no lock on the main database while the body is still parsing.
        conn.exec_driver_sql(_STAGE_CREATE)
        conn.exec_driver_sql(_STAGE_CLEAR)
        raw_sqlite = conn.connection.dbapi_connection
        assert raw_sqlite is not None

        def stage(tokens: Sequence[bytes]) -> int:
            cur = raw_sqlite.cursor()
            try:
                cur.executemany(_STAGE_INSERT, [(t,) for t in tokens])
            finally:
                cur.close()
            sink.written += len(tokens)
            return len(tokens)

        sink = _RecordSink(stage)
        yield sink
        # SQLite cannot turn the read snapshot taken before parsing into a write once another
        # writer has committed ("database is locked", at once): end it, and take the write lock
        # up front, queueing behind other writers for up to the busy timeout. On this same
        # connection - the staged rows live in its temporary database.
        conn.exec_driver_sql("COMMIT")
        conn.exec_driver_sql("BEGIN IMMEDIATE")
        session.expire_all()
        moved = conn.exec_driver_sql(_STAGE_MOVE, (dataset_id, key_version)).rowcount
        if moved > 0:
            # One statement under the write lock: its rows got consecutive ids (SQLite gives
            # each new row max(id) + 1), ending at the last inserted one.
            last = int(conn.exec_driver_sql("SELECT last_insert_rowid()").scalar_one())
            sink.sqlite_range = (last - moved + 1, last)
        conn.exec_driver_sql(_STAGE_CLEAR)
        return
    floor = int(conn.execute(select(func.coalesce(func.max(Record.id), 0))).scalar_one())
    raw = conn.connection.dbapi_connection
    assert raw is not None
    with raw.cursor() as cur, cur.copy(_COPY_RECORDS) as copy:  # type: ignore[attr-defined]
        def copy_tokens(tokens: Sequence[bytes]) -> int:
            sink.written += len(tokens)
            return _copy_tokens(copy, dataset_id, key_version, tokens)

        sink = _RecordSink(copy_tokens)
        sink.pg_floor = floor
        yield sink


def insert_records(session: Session, dataset_id: int, key_version: int,
                   tokens: Sequence[bytes]) -> None:
    conn = session.connection()
    raw = conn.connection.dbapi_connection
    assert raw is not None
    if conn.dialect.name == "postgresql":
        # COPY is several times faster than multi-row INSERT for bulk uploads.
        with raw.cursor() as cur, cur.copy(_COPY_RECORDS) as copy:  # type: ignore[attr-defined]
            _copy_tokens(copy, dataset_id, key_version, tokens)
        return
    # executemany on the driver: the ORM's per-row bookkeeping costs more than SQLite's insert.
    cur = raw.cursor()
    try:
        cur.executemany("INSERT INTO records (dataset_id, key_version, token) VALUES (?, ?, ?)",
                        [(dataset_id, key_version, t) for t in tokens])
    finally:
        cur.close()


def delete_dataset(session: Session, user: User, dataset_id: int) -> None:
    """Crypto-shred: destroy the data keys, drop the records, keep the ledger for audit."""
    dataset = get_managed_dataset(session, user, dataset_id, lock=True)
    session.execute(delete(DatasetKey).where(DatasetKey.dataset_id == dataset.id))
    session.execute(delete(Record).where(Record.dataset_id == dataset.id))
    session.execute(
        update(LedgerEntry).where(LedgerEntry.dataset_id == dataset.id)
        .values(answer_token=None, sql_token=None)
    )
    dataset.deleted_at = utcnow()
    dataset.version += 1
    record_action(session, user, "dataset.delete", f"dataset:{dataset.id}", name=dataset.name)


# --- key rotation -----------------------------------------------------------------------------

def rewrap_dataset_keys(session: Session, keyring: MasterKeyring) -> int:
    """Master-key rotation: rewrap every data key under the newest master key."""
    count = 0
    for key in session.scalars(select(DatasetKey)).all():
        key.wrapped_key = keyring.rewrap(key.wrapped_key)
        count += 1
    record_action(session, None, "keys.rotate_master", "keyring", rewrapped=count)
    return count


def start_dataset_key_rotation(session: Session, keyring: MasterKeyring, dataset_id: int) -> int:
    """Add a new data key version; records are re-encrypted by `reencrypt_batch`."""
    dataset = session.scalar(
        select(Dataset).where(Dataset.id == dataset_id, Dataset.deleted_at.is_(None))
        .with_for_update()
    )
    if dataset is None:
        raise NotFound("no such dataset")
    dataset.key_version += 1
    session.add(DatasetKey(dataset_id=dataset.id, version=dataset.key_version,
                           wrapped_key=_wrap_new_data_key(session, keyring)))
    record_action(session, None, "keys.rotate_dataset", f"dataset:{dataset.id}",
                  key_version=dataset.key_version)
    return dataset.key_version


def reencrypt_batch(session: Session, keyring: MasterKeyring, dataset_id: int,
                    batch_size: int = 5000) -> int:
    """Re-encrypt up to batch_size stale records (and stored answers); returns how many.

    Each batch is its own transaction, so a rotation interrupted at any point resumes where
    it stopped; readers keep working throughout because every live key stays in the cipher.
    When nothing is stale the superseded keys are destroyed.
    """
    # Locked as uploads lock it when they commit, so that no upload can land records under a
    # key between the check for stale records below and that key's destruction.
    dataset = session.scalar(select(Dataset).where(Dataset.id == dataset_id)
                             .with_for_update(key_share=True)
                             .execution_options(populate_existing=True))
    if dataset is None or dataset.deleted_at is not None:
        raise NotFound("no such dataset")
    cipher = data_cipher(session, keyring, dataset_id)
    rows = session.execute(
        select(Record.id, Record.token)
        .where(Record.dataset_id == dataset_id, Record.key_version < dataset.key_version)
        .order_by(Record.id).limit(batch_size)
    ).all()
    if rows:
        session.execute(
            update(Record),
            [{"id": r.id, "token": cipher.rotate(r.token), "key_version": dataset.key_version}
             for r in rows],
        )
        return len(rows)
    answers = session.execute(
        select(LedgerEntry.id, LedgerEntry.answer_token, LedgerEntry.sql_token)
        .where(LedgerEntry.dataset_id == dataset_id,
               or_(LedgerEntry.answer_token.is_not(None), LedgerEntry.sql_token.is_not(None)))
    ).all()
    for a in answers:  # stored answers and SQL texts are under the data key too
        session.execute(update(LedgerEntry).where(LedgerEntry.id == a.id).values(
            answer_token=cipher.rotate(a.answer_token) if a.answer_token is not None else None,
            sql_token=cipher.rotate(a.sql_token) if a.sql_token is not None else None))
    session.execute(delete(DatasetKey).where(DatasetKey.dataset_id == dataset_id,
                                             DatasetKey.version < dataset.key_version))
    return 0


def stale_record_count(session: Session, dataset_id: int) -> int:
    dataset = session.get(Dataset, dataset_id)
    if dataset is None:
        return 0
    return session.scalar(
        select(func.count()).select_from(Record)
        .where(Record.dataset_id == dataset_id, Record.key_version < dataset.key_version)
    ) or 0
