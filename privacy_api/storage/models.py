"""SQLAlchemy 2 typed models.

Privacy budgets are stored as integers in fixed quanta (``units.py``) so that every sum is exact.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from ..domain.ledger_chain import GENESIS
from .db import Base

ROLES = ("admin", "owner", "analyst", "client")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class TimestampMixin:
    created_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, server_default=func.now()
    )


class User(TimestampMixin, Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    keys: Mapped[list[ApiKey]] = relationship(back_populates="user")


class ApiKey(TimestampMixin, Base):
    """An API key is shown once; only its SHA-256 digest is kept (keys carry 256 random bits)."""

    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    digest: Mapped[bytes] = mapped_column(LargeBinary(32))
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    user: Mapped[User] = relationship(back_populates="keys")


class DashboardSession(TimestampMixin, Base):
    """A dashboard sign-in. The cookie carries a random token; only its SHA-256 is stored.

    Signing out sets ended_at, so every copy of the cookie (a stolen one included) stops
    working at once; a signed cookie alone cannot be revoked.
    """

    __tablename__ = "dashboard_sessions"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # hex SHA-256 of the token
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"))
    ended_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class Dataset(TimestampMixin, Base):
    __tablename__ = "datasets"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    columns: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    privacy_unit_column: Mapped[str | None] = mapped_column(String(200))
    privacy_unit_max_rows: Mapped[int] = mapped_column(Integer, default=1)
    # Dataset-wide caps over all analysts, in budget units (None = no cap).
    epsilon_cap: Mapped[int | None] = mapped_column(BigInteger)
    delta_cap: Mapped[int | None] = mapped_column(BigInteger)
    epsilon_spent: Mapped[int] = mapped_column(BigInteger, default=0)
    delta_spent: Mapped[int] = mapped_column(BigInteger, default=0)
    rows: Mapped[int] = mapped_column(BigInteger, default=0)
    # Bumped by every upload: cached columns and stored answers are per version.
    version: Mapped[int] = mapped_column(Integer, default=0)
    # Version of the newest data key; records below it await re-encryption.
    key_version: Mapped[int] = mapped_column(Integer, default=1)
    deleted_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class DatasetVersion(TimestampMixin, Base):
    """How one version of a dataset's records came about, for the column cache.

    kind "append": the version holds the previous version's records plus exactly the records
    with previous max_record_id < id <= max_record_id, so a cache holding the previous version
    decrypts only those. Any version without a row here, or of another kind (deletions,
    erasure, anything new), is loaded in full: incremental loading is opt-in per version.
    """

    __tablename__ = "dataset_versions"
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    # Records in the version and the largest record id among them (None when empty).
    records: Mapped[int] = mapped_column(BigInteger)
    max_record_id: Mapped[int | None] = mapped_column(BigInteger)


class DatasetKey(TimestampMixin, Base):
    """A dataset's Fernet data key, stored only wrapped by the master keyring."""

    __tablename__ = "dataset_keys"
    __table_args__ = (UniqueConstraint("dataset_id", "version"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    wrapped_key: Mapped[bytes] = mapped_column(LargeBinary)


class Record(Base):
    """One record = one Fernet token. No plaintext column exists."""

    __tablename__ = "records"
    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"), index=True)
    key_version: Mapped[int] = mapped_column(Integer)
    token: Mapped[bytes] = mapped_column(LargeBinary)


class Budget(Base):
    __tablename__ = "budgets"
    __table_args__ = (UniqueConstraint("user_id", "dataset_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"), index=True)
    epsilon_total: Mapped[int] = mapped_column(BigInteger)
    delta_total: Mapped[int] = mapped_column(BigInteger)
    epsilon_spent: Mapped[int] = mapped_column(BigInteger, default=0)
    delta_spent: Mapped[int] = mapped_column(BigInteger, default=0)
    queries: Mapped[int] = mapped_column(Integer, default=0)
    frozen: Mapped[bool] = mapped_column(Boolean, default=False)
    updated_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )
    # The charged queries' composition (mechanisms.accounting.Composition), kept up to date by
    # every charge so that accounting costs O(1) however long the ledger is: basic-composition
    # sums over all events and over the non-Gaussian ones (integer units, rounded up), and the
    # Gaussian events' composed RDP curve as its slope rho (an exact decimal string).
    basic_epsilon: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    basic_delta: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    pure_epsilon: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    pure_delta: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    gaussian_rho: Mapped[str] = mapped_column(String(64), default="0", server_default="0")
    # Renewal (privacy_api/domain/renewal.py): with a renewal_period (daily | weekly | monthly) the
    # spent columns and the composition above are the current period's, and are reset when a
    # charge finds the period over; `period` counts the periods (0 for a budget that never
    # renewed). The lifetime sums grow with every charge and never reset: each period adds up
    # to epsilon_total to the analyst's total privacy loss (basic composition across periods).
    renewal_period: Mapped[str | None] = mapped_column(String(16))
    period: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    period_start: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    period_ends_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    lifetime_epsilon_spent: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    lifetime_delta_spent: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    lifetime_epsilon_cap: Mapped[int | None] = mapped_column(BigInteger)
    lifetime_delta_cap: Mapped[int | None] = mapped_column(BigInteger)
    # The anchor of this budget's ledger hash chain (privacy_api/domain/ledger_chain.py): how many
    # entries it has and the newest one's hash, so that deleting the tail is caught.
    ledger_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    ledger_head: Mapped[str] = mapped_column(String(64), default=GENESIS, server_default=GENESIS)


class LedgerEntry(TimestampMixin, Base):
    """One charged (or replayed) query. The charge row is committed before any answer exists."""

    __tablename__ = "ledger_entries"
    # Every query looks for the first answered original of itself (find_replay). Partial (no
    # replay rows, which repeat the fingerprint without bound) and ordered by created_at, the
    # lookup reads one index entry however long the analyst's ledger grows; without it SQLite
    # walked every entry of the analyst.
    __table_args__ = (
        Index("ix_ledger_entries_replay", "user_id", "dataset_id", "fingerprint",
              "dataset_version", "created_at",
              sqlite_where=text("replay_of IS NULL"), postgresql_where=text("replay_of IS NULL")),
    )
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    # A query charges a dataset budget; a DP federated round charges its federation's budget.
    dataset_id: Mapped[int | None] = mapped_column(ForeignKey("datasets.id"), index=True)
    federation_id: Mapped[int | None] = mapped_column(ForeignKey("federations.id"), index=True)
    round_id: Mapped[int | None] = mapped_column(ForeignKey("rounds.id"))
    dataset_version: Mapped[int] = mapped_column(Integer)
    # SHA-256 of the canonical plan + mechanism + epsilon + delta: the replay key.
    fingerprint: Mapped[str] = mapped_column(String(64), index=True)
    aggregate: Mapped[str] = mapped_column(String(32))
    plan: Mapped[dict[str, Any]] = mapped_column(JSON)
    mechanism: Mapped[str] = mapped_column(String(16))
    epsilon_requested: Mapped[int] = mapped_column(BigInteger)
    delta_requested: Mapped[int] = mapped_column(BigInteger)
    epsilon_charged: Mapped[int] = mapped_column(BigInteger)
    delta_charged: Mapped[int] = mapped_column(BigInteger)
    # The mechanisms run, as [epsilon, delta, noise multiplier or null, count] with decimal
    # strings: the accountant recomposes the whole history from these (RDP for Gaussians).
    privacy_events: Mapped[list[list[Any]]] = mapped_column(JSON, default=list)
    replay_of: Mapped[str | None] = mapped_column(String(36))
    # Fernet token of the released answer (under the dataset key); None until released.
    answer_token: Mapped[bytes | None] = mapped_column(LargeBinary)
    # Fernet token (dataset key) of the SQL text when the query came as SQL: the analyst's
    # literals can be as telling as an answer, so it is kept as private as one.
    sql_token: Mapped[bytes | None] = mapped_column(LargeBinary)
    # The hash chain (privacy_api/domain/ledger_chain.py): the entry's place in its budget's chain,
    # the previous entry's hash and its own, and the renewal period it was charged to.
    # (No Python-side defaults: the ledger always sets them, through ledger.sealed.)
    chain_seq: Mapped[int] = mapped_column(Integer, server_default="0")
    prev_hash: Mapped[str] = mapped_column(String(64), server_default=GENESIS)
    entry_hash: Mapped[str] = mapped_column(String(64), server_default="")
    period: Mapped[int] = mapped_column(Integer, server_default="0")


class Federation(TimestampMixin, Base):
    __tablename__ = "federations"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    preset: Mapped[str] = mapped_column(String(32))
    public_context: Mapped[bytes] = mapped_column(LargeBinary)
    vector_length: Mapped[int] = mapped_column(Integer)
    min_clients: Mapped[int] = mapped_column(Integer)
    dp_clip_norm: Mapped[float | None] = mapped_column(Float)
    dp_noise_multiplier: Mapped[float | None] = mapped_column(Float)
    epsilon_cap: Mapped[int | None] = mapped_column(BigInteger)
    delta: Mapped[int | None] = mapped_column(BigInteger)
    epsilon_spent: Mapped[int] = mapped_column(BigInteger, default=0)
    delta_spent: Mapped[int] = mapped_column(BigInteger, default=0)
    # Distributed DP: how many contributors may skip (or reveal) their noise share while the
    # released sum still carries sigma*C; clients calibrate to min_clients - noise_skippers.
    dp_noise_skippers: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # The federation's Fernet key for round state at rest (running sums, relayed shares,
    # unmasking messages), wrapped by the master keyring like a dataset key.
    wrapped_key: Mapped[bytes | None] = mapped_column(LargeBinary)
    # The anchor of the federation budget's ledger hash chain (see Budget.ledger_head).
    ledger_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    ledger_head: Mapped[str] = mapped_column(String(64), default=GENESIS, server_default=GENESIS)


class Enrollment(TimestampMixin, Base):
    __tablename__ = "enrollments"
    __table_args__ = (UniqueConstraint("federation_id", "user_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    federation_id: Mapped[int] = mapped_column(ForeignKey("federations.id"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    # The client's Ed25519 identity public key (32 bytes), registered once by the client; it
    # signs the client's round keys. Public: other clients pin it (trust on first use).
    identity_key: Mapped[bytes | None] = mapped_column(LargeBinary(32))


class Round(TimestampMixin, Base):
    __tablename__ = "rounds"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    federation_id: Mapped[int] = mapped_column(ForeignKey("federations.id"), index=True)
    status: Mapped[str] = mapped_column(String(16), default="open")
    min_clients: Mapped[int] = mapped_column(Integer)
    deadline_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    closed_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    received: Mapped[int] = mapped_column(Integer, default=0)
    # Fernet token (federation key) of the running sum of the accepted masked updates,
    # rewritten with each accepted update in the same transaction, so a restart loses nothing
    # and memory does not grow with clients. Once released: the unmasked sum, same key.
    running_sum: Mapped[bytes | None] = mapped_column(LargeBinary)
    # Secure-aggregation stage: advertise | share | collect | unmask | released | failed.
    stage: Mapped[str] = mapped_column(String(16), default="advertise",
                                       server_default="advertise")
    # Seconds each stage may last (None: until every expected client posted, or close).
    stage_seconds: Mapped[float | None] = mapped_column(Float)
    # Shamir threshold t, fixed when the advertise stage ends (t > half of the advertisers).
    threshold: Mapped[int | None] = mapped_column(Integer)
    epsilon_charged: Mapped[int] = mapped_column(BigInteger, default=0)
    delta_charged: Mapped[int] = mapped_column(BigInteger, default=0)
    failure_reason: Mapped[str | None] = mapped_column(String(200))


class RoundUpdate(TimestampMixin, Base):
    __tablename__ = "round_updates"
    __table_args__ = (UniqueConstraint("round_id", "client_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id"), index=True)
    client_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    receipt: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(Integer)


class RoundParticipant(TimestampMixin, Base):
    """A client's part in one round's secure aggregation: its signed round keys (public, kept
    exactly as received) and how far it got. Unmasking shares are a Fernet token under the
    federation key."""

    __tablename__ = "round_participants"
    __table_args__ = (UniqueConstraint("round_id", "client_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id"), index=True)
    client_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    c_public: Mapped[bytes] = mapped_column(LargeBinary(32))
    s_public: Mapped[bytes] = mapped_column(LargeBinary(32))
    signature: Mapped[bytes] = mapped_column(LargeBinary(64))
    shared: Mapped[bool] = mapped_column(Boolean, default=False)
    uploaded: Mapped[bool] = mapped_column(Boolean, default=False)
    unmask_token: Mapped[bytes | None] = mapped_column(LargeBinary)
    # The survivor's Ed25519 signature over the survivor and dropped sets it was shown
    # (secagg.consistency_message); public, relayed so peers reveal only on t matching ones.
    consistency_signature: Mapped[bytes | None] = mapped_column(LargeBinary(64))


class RoundShare(Base):
    """One encrypted share relayed from sender to recipient (AES-GCM between them, and a
    Fernet token under the federation key at rest)."""

    __tablename__ = "round_shares"
    __table_args__ = (UniqueConstraint("round_id", "recipient_id", "sender_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id"), index=True)
    sender_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    recipient_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    token: Mapped[bytes] = mapped_column(LargeBinary)


class AuditEvent(TimestampMixin, Base):
    __tablename__ = "audit_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), index=True)
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(200))
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
