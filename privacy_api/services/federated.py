"""Federations and rounds of CKKS secure aggregation, with optional distributed DP.

The server holds a federation's *public* CKKS context only (checked by `crypto.he`), adds the
clients' encrypted updates into a per-round running sum and hands that sum back once enough
clients contributed. It never sees a plaintext update or a client's weight.

Persistence is the crash story: each accepted update is folded into `Round.running_sum` and
written in the same transaction as its `RoundUpdate` row, under a lock on the round row
(SELECT ... FOR UPDATE on PostgreSQL, BEGIN IMMEDIATE on SQLite). Concurrent uploads therefore
serialise and none is lost, a restart loses nothing that was acknowledged, and memory stays one
update's size however many clients contribute.

Distributed DP (DESIGN.md §5): every client clips [w*x, w] to L2 norm C and adds Gaussian noise
sigma*C/sqrt(min_clients); a released sum (>= min_clients contributions) therefore carries
noise sigma*C at L2 sensitivity C, i.e. one Gaussian mechanism with noise multiplier sigma. The
round's cost is charged to the federation's budget in the ledger when the round is *opened*
(charge before release), composed over all of the federation's rounds by the accountant.

Transactions: services take the request's session and never commit it, except `submit_update`,
which must not hold the round lock while a (possibly large, possibly slow) body streams in: it
reads and validates the body first, then runs one short locked unit of work of its own, like
`services.queries.run_query` does for the ledger.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal
from functools import lru_cache
from typing import IO

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

import privacy_secagg as secagg
from mechanisms.accounting import PrivacyEvent, PrivacySpent, total_spent
from mechanisms.errors import MechanismError
from mechanisms.noise import calibrate_gaussian_sigma

from ..crypto import he
from ..crypto.keyring import MasterKeyring, new_data_key
from ..domain.errors import (
    BadRequest,
    BudgetExhausted,
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from ..domain.ledger_chain import federation_chain
from ..domain.names import checked_name
from ..domain.units import delta_units, delta_value, eps_units, eps_value
from ..storage.db import IMMEDIATE, Database
from ..storage.models import (
    Enrollment,
    Federation,
    LedgerEntry,
    Round,
    RoundParticipant,
    RoundShare,
    RoundUpdate,
    User,
    utcnow,
)
from .audit import record_action
from .ledger import events_from_json, events_to_json, sealed

OPEN, AGGREGATED, FAILED = "open", "aggregated", "failed"
# Secure-aggregation stages (see the state machine above `threshold_for`).
ADVERTISE, SHARE, COLLECT, UNMASK, RELEASED, STAGE_FAILED = (
    "advertise", "share", "collect", "unmask", "released", "failed")
STAGES = (ADVERTISE, SHARE, COLLECT, UNMASK)
# Below three contributors a client subtracts its own update from the aggregate and holds the
# other's; secure aggregation also needs t > n/2 with t >= 2.
MIN_CLIENTS_FLOOR = 3
UPDATE_CONTENT_TYPE = "application/octet-stream"
MAX_DELTA = Decimal("0.001")
MAX_DEADLINE_SECONDS = 30 * 24 * 3600
# A round costing more is no protection; it also keeps the analytic calibration finite.
MAX_ROUND_EPSILON = 100.0
_READ_CHUNK = 1 << 20


@dataclass(frozen=True)
class FederationState:
    """A federation as a caller sees it: the row, its rounds accepting updates now, and its
    enrolled clients (None unless the caller is the owner or an admin)."""

    federation: Federation
    context: he.PublicContext
    open_rounds: list[int]
    clients: list[int] | None


@dataclass(frozen=True)
class Contributor:
    client_id: int
    receipt: str


@dataclass(frozen=True)
class RoundState:
    """A round as the API shows it: the row, its published contributor list and who reached
    which stage."""

    round: Round
    contributors: list[Contributor]
    progress: Progress


# --------------------------------------------------------------------------------------------
# Locking


def _begin_write(session: Session) -> None:
    """Make this unit of work a writer from its first statement.

    SQLite ignores FOR UPDATE, and a deferred transaction that has read cannot safely become a
    writer later (another commit in between makes it fail with SQLITE_BUSY_SNAPSHOT), so the
    write lock (BEGIN IMMEDIATE) must be taken before anything is read. On PostgreSQL the
    option is inert; row locks come from FOR UPDATE.
    """
    if not session.in_transaction():
        session.connection(execution_options=IMMEDIATE)
        return
    conn = session.connection()
    if conn.dialect.name == "sqlite" and not conn.get_execution_options().get("sqlite_immediate"):
        raise RuntimeError("a federated write must be the first statement of its unit of work")


def _lock_round(session: Session, round_id: int) -> Round:
    _begin_write(session)
    rnd = session.scalar(
        select(Round).where(Round.id == round_id).with_for_update()
        .execution_options(populate_existing=True)
    )
    if rnd is None:
        raise NotFound("no such round")
    return rnd


def _lock_federation(session: Session, federation_id: int) -> Federation | None:
    _begin_write(session)
    return session.scalar(
        select(Federation).where(Federation.id == federation_id).with_for_update()
        .execution_options(populate_existing=True)
    )


# --------------------------------------------------------------------------------------------
# Visibility


def _is_enrolled(session: Session, federation_id: int, user_id: int) -> bool:
    return session.scalar(
        select(Enrollment.id).where(Enrollment.federation_id == federation_id,
                                    Enrollment.user_id == user_id)
    ) is not None


def can_see(session: Session, user: User, federation: Federation) -> bool:
    """Admins, the federation's owner and its enrolled clients; nobody else learns it exists."""
    if user.role == "admin" or (user.role == "owner" and federation.owner_id == user.id):
        return True
    return user.role == "client" and _is_enrolled(session, federation.id, user.id)


def get_visible_federation(session: Session, user: User, federation_id: int) -> Federation:
    federation = session.get(Federation, federation_id)
    if federation is None or not can_see(session, user, federation):
        raise NotFound("no such federation")
    return federation


def get_federation(session: Session, user: User, federation_id: int) -> FederationState:
    return describe(session, user, get_visible_federation(session, user, federation_id))


def list_federations(session: Session, user: User) -> list[FederationState]:
    query = select(Federation).order_by(Federation.id)
    if user.role == "owner":
        query = query.where(Federation.owner_id == user.id)
    elif user.role == "client":
        query = query.join(Enrollment, Enrollment.federation_id == Federation.id).where(
            Enrollment.user_id == user.id)
    elif user.role != "admin":
        return []
    return [describe(session, user, f) for f in session.scalars(query).all()]


def describe(session: Session, user: User, federation: Federation) -> FederationState:
    manager = user.role == "admin" or federation.owner_id == user.id
    return FederationState(
        federation, public_context(federation.public_context),
        open_round_ids(session, federation.id),
        enrolled_clients(session, federation.id) if manager else None,
    )


def _owned(federation: Federation | None, user: User) -> Federation:
    # Another owner gets 404, not 403: it must not learn which federations exist.
    if federation is None or federation.owner_id != user.id:
        raise NotFound("no such federation")
    return federation


def enrolled_clients(session: Session, federation_id: int) -> list[int]:
    return list(session.scalars(
        select(Enrollment.user_id).where(Enrollment.federation_id == federation_id)
        .order_by(Enrollment.user_id)))


def open_round_ids(session: Session, federation_id: int) -> list[int]:
    """Rounds still accepting updates (open and before their deadline)."""
    now = utcnow()
    rounds = session.scalars(
        select(Round).where(Round.federation_id == federation_id, Round.status == OPEN)
        .order_by(Round.id)).all()
    return [r.id for r in rounds if not _past_deadline(r, now)]


# --------------------------------------------------------------------------------------------
# Federations


@lru_cache(maxsize=64)
def public_context(data: bytes) -> he.PublicContext:
    """A stored context, checked once per process (TenSEAL parses it; the result is plain data)."""
    return he.load_public_context(data, max_bytes=max(len(data), 1))


def create_federation(
    session: Session,
    owner: User,
    *,
    name: str,
    public_context_bytes: bytes,
    vector_length: int,
    min_clients: int,
    dp: dict[str, float] | None,
    epsilon_cap: Decimal | None,
    delta: Decimal | None,
    max_context_bytes: int,
    max_update_bytes: int,
    keyring: MasterKeyring,
) -> FederationState:
    """Register a federation from its parameters-only CKKS context (any key in it: 400).

    Floors (422): min_clients >= 3; with dp, 0 <= noise_skippers < min_clients (the number
    of contributors that may skip or reveal their noise while the sum still carries sigma*C).
    """
    try:
        ctx = he.load_public_context(public_context_bytes, max_bytes=max_context_bytes)
    except he.InvalidHEPayload as exc:
        raise BadRequest(f"public_context refused: {exc}", {"public_context": [str(exc)]}) from None
    errors: dict[str, list[str]] = {}
    if min_clients < MIN_CLIENTS_FLOOR:
        errors["min_clients"] = [f"must be at least {MIN_CLIENTS_FLOOR}: with two, each client "
                                 "learns the other's update from the aggregate"]
    if he.update_size_bound(ctx, vector_length) > max_update_bytes:
        errors["vector_length"] = [f"an update of {vector_length} parameters would exceed this "
                                   f"server's upload limit of {max_update_bytes} bytes"]
    clip_norm = noise_multiplier = None
    skippers = 0
    if dp is None:
        if epsilon_cap is not None or delta is not None:
            errors["dp"] = ["epsilon_cap and delta apply only to a federation with dp"]
    else:
        clip_norm, noise_multiplier = float(dp["clip_norm"]), float(dp["noise_multiplier"])
        skippers = int(dp.get("noise_skippers", 0))
        if not 0 <= skippers < min_clients:
            errors["noise_skippers"] = ["must be at least 0 and below min_clients"]
        if delta is None or not (0 < delta < MAX_DELTA):
            errors["delta"] = [f"a dp federation needs 0 < delta < {MAX_DELTA}"]
        if epsilon_cap is None or not (epsilon_cap.is_finite() and epsilon_cap > 0):
            errors["epsilon_cap"] = ["a dp federation needs a finite epsilon_cap > 0"]
        if not errors:
            assert delta is not None and epsilon_cap is not None
            round_eps = round_event(noise_multiplier, delta_units(delta)).epsilon
            if round_eps > epsilon_cap:
                errors["epsilon_cap"] = [f"one round costs epsilon {round_eps} at this noise "
                                         "multiplier and delta; raise the cap or the noise"]
    if errors:
        raise InvalidRequest("invalid federation", errors)
    federation = Federation(
        name=checked_name(name, "name"), owner_id=owner.id, preset=ctx.preset.name,
        public_context=bytes(public_context_bytes), vector_length=vector_length,
        min_clients=min_clients, dp_clip_norm=clip_norm, dp_noise_multiplier=noise_multiplier,
        epsilon_cap=eps_units(epsilon_cap) if epsilon_cap is not None else None,
        delta=delta_units(delta) if delta is not None else None,
        epsilon_spent=0, delta_spent=0, dp_noise_skippers=skippers,
        wrapped_key=keyring.wrap(new_data_key()),
    )
    session.add(federation)
    session.flush()
    record_action(session, owner, "federation.create", f"federation:{federation.id}",
                  preset=ctx.preset.name, vector_length=vector_length, min_clients=min_clients,
                  dp=dp is not None, context_sha256=ctx.fingerprint)
    return FederationState(federation, ctx, [], [])


def enroll_client(session: Session, owner: User, federation_id: int, user_id: int) -> Enrollment:
    federation = _owned(session.get(Federation, federation_id), owner)
    client = session.get(User, user_id)
    if client is None:
        raise NotFound("no such user")
    if client.role != "client":
        raise InvalidRequest("only users with role client can be enrolled",
                             {"user_id": [f"user {user_id} has role {client.role}"]})
    if _is_enrolled(session, federation.id, user_id):
        raise Conflict("this user is already enrolled in the federation")
    enrollment = Enrollment(federation_id=federation.id, user_id=user_id)
    session.add(enrollment)
    try:
        session.flush()
    except IntegrityError:  # a concurrent enrolment of the same user won the race
        raise Conflict("this user is already enrolled in the federation") from None
    record_action(session, owner, "federation.enroll", f"federation:{federation.id}",
                  user_id=user_id)
    return enrollment


# --------------------------------------------------------------------------------------------
# Privacy accounting of rounds


@lru_cache(maxsize=256)
def round_event(noise_multiplier: float, delta: int) -> PrivacyEvent:
    """One round's privacy event: a Gaussian mechanism with this noise multiplier (sigma/C).

    Its (epsilon, delta) is the analytic Gaussian bound at the federation's delta (`delta` in
    budget units), rounded up, so that basic composition over it is valid; the accountant
    composes several rounds by RDP from the recorded noise multiplier, which is far tighter.
    """
    target = delta_value(delta)
    if not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
        raise InvalidRequest("noise_multiplier must be > 0", {"dp": ["noise_multiplier"]})

    def sigma(eps: float) -> float:
        return calibrate_gaussian_sigma(eps, target, 1.0)

    lo, hi = 1e-6, MAX_ROUND_EPSILON
    try:
        if sigma(hi) > noise_multiplier:
            raise InvalidRequest(
                f"noise_multiplier is too small: one round would cost epsilon > {hi:g}",
                {"dp": ["noise_multiplier"]})
        if sigma(lo) <= noise_multiplier:
            hi = lo
        # Bisection in log space on sigma(eps) <= noise_multiplier; `hi` always satisfies it.
        while hi / lo > 1 + 1e-9:
            mid = math.sqrt(lo * hi)
            if sigma(mid) <= noise_multiplier:
                hi = mid
            else:
                lo = mid
    except MechanismError as exc:
        raise InvalidRequest(str(exc), {"dp": [str(exc)]}) from None
    epsilon = Decimal(hi).quantize(Decimal("1e-9"), rounding=ROUND_CEILING)
    return PrivacyEvent(epsilon, target, noise_multiplier=noise_multiplier)


def _charge_round(session: Session, federation: Federation, rnd: Round) -> None:
    """Charge a new round to the federation's budget (federation row locked), or refuse."""
    assert federation.dp_noise_multiplier is not None and federation.delta is not None
    assert federation.epsilon_cap is not None
    event = round_event(federation.dp_noise_multiplier, federation.delta)
    stored = session.scalars(
        select(LedgerEntry.privacy_events).where(LedgerEntry.federation_id == federation.id,
                                                 LedgerEntry.replay_of.is_(None))).all()
    history = [e for rows in stored for e in events_from_json(rows)]
    before = PrivacySpent(eps_value(federation.epsilon_spent), delta_value(federation.delta_spent))
    # The whole history is recomposed: RDP over k rounds is far below k times one round.
    total = total_spent([*history, event], delta_budget=delta_value(federation.delta),
                        at_least=before)
    new_eps, new_delta = eps_units(total.epsilon), delta_units(total.delta)
    if new_eps > federation.epsilon_cap or new_delta > federation.delta:
        raise BudgetExhausted(
            "this round would exceed the federation's privacy budget; nothing was charged",
            {"epsilon_cap": float(eps_value(federation.epsilon_cap)),
             "epsilon_spent": float(eps_value(federation.epsilon_spent)),
             "epsilon_needed": float(eps_value(new_eps - federation.epsilon_spent))})
    inc_eps, inc_delta = new_eps - federation.epsilon_spent, new_delta - federation.delta_spent
    # The federation row is locked: its chain head is read and moved on in this transaction.
    seq = federation.ledger_count + 1
    entry = LedgerEntry(**sealed(dict(
        id=str(uuid.uuid4()), user_id=federation.owner_id, dataset_id=None,
        federation_id=federation.id, round_id=rnd.id, dataset_version=0,
        fingerprint=hashlib.sha256(str(rnd.id).encode()).hexdigest(),
        aggregate="federated_round", plan={"federation": federation.id, "round": rnd.id},
        mechanism="gaussian", epsilon_requested=eps_units(event.epsilon),
        delta_requested=delta_units(event.delta), epsilon_charged=inc_eps,
        delta_charged=inc_delta, privacy_events=events_to_json((event,)), period=0,
        created_at=utcnow(),
    ), federation_chain(federation.id), seq, federation.ledger_head))
    session.add(entry)
    federation.ledger_count, federation.ledger_head = seq, entry.entry_hash
    federation.epsilon_spent, federation.delta_spent = new_eps, new_delta
    rnd.epsilon_charged, rnd.delta_charged = inc_eps, inc_delta


# --------------------------------------------------------------------------------------------
# Round state at rest


def _federation_fernet(keyring: MasterKeyring, federation: Federation) -> Fernet:
    """The federation's key for round state at rest (running sums, shares, unmasking shares)."""
    if federation.wrapped_key is None:  # a federation made before this key existed
        federation.wrapped_key = keyring.wrap(new_data_key())
    return Fernet(keyring.unwrap(federation.wrapped_key))


def _seal_sum(fernet: Fernet, running: he.RunningSum) -> bytes:
    return fernet.encrypt(he.serialize_sum(running))


def _open_sum(fernet: Fernet, ctx: he.PublicContext, token: bytes, vector_length: int) -> he.RunningSum:
    try:
        data = fernet.decrypt(token)
    except InvalidToken:
        raise RuntimeError("a stored running sum failed authentication") from None
    return he.deserialize_sum(ctx, data, vector_length=vector_length)


# --------------------------------------------------------------------------------------------
# Identity keys and roster


@dataclass(frozen=True)
class RosterEntry:
    client_id: int
    identity_key: bytes


def register_identity(session: Session, user: User, federation_id: int,
                      identity_key: bytes) -> RosterEntry:
    """A client registers its Ed25519 identity public key, once. The same key again is a no-op;
    another key is refused (409): a changed identity is exactly what pinning must catch."""
    _begin_write(session)
    federation = get_visible_federation(session, user, federation_id)
    if user.role != "client":
        raise Forbidden("only an enrolled client registers an identity key")
    try:
        Ed25519PublicKey.from_public_bytes(bytes(identity_key))
    except ValueError:
        raise InvalidRequest("identity_key must be a 32-byte Ed25519 public key",
                             {"identity_key": ["not an Ed25519 public key"]}) from None
    enrollment = session.scalar(
        select(Enrollment).where(Enrollment.federation_id == federation.id,
                                 Enrollment.user_id == user.id).with_for_update())
    assert enrollment is not None
    if enrollment.identity_key is not None and enrollment.identity_key != identity_key:
        raise Conflict("an identity key is already registered for this client; it cannot change",
                       {"fingerprint": secagg.fingerprint(enrollment.identity_key)})
    if enrollment.identity_key is None:
        enrollment.identity_key = bytes(identity_key)
        record_action(session, user, "federation.identity", f"federation:{federation.id}",
                      fingerprint=secagg.fingerprint(identity_key))
    return RosterEntry(user.id, enrollment.identity_key)


def roster(session: Session, user: User, federation_id: int) -> list[RosterEntry]:
    """Enrolled clients' registered identity keys (the SDK pins them on first sight)."""
    federation = get_visible_federation(session, user, federation_id)
    rows = session.execute(
        select(Enrollment.user_id, Enrollment.identity_key)
        .where(Enrollment.federation_id == federation.id, Enrollment.identity_key.is_not(None))
        .order_by(Enrollment.user_id)).all()
    return [RosterEntry(uid, key) for uid, key in rows if key is not None]  # None: filtered above


# --------------------------------------------------------------------------------------------
# Rounds: the secure-aggregation state machine
#
#   advertise --(all enrolled advertised | stage deadline | close)--> share      [U1 >= min]
#   share     --(all of U1 shared        | stage deadline | close)--> collect    [U2 >= t, min]
#   collect   --(all of U2 uploaded      | stage deadline | close)--> unmask     [U3 >= t, min]
#   unmask    --(all of U3 answered      | stage deadline | close)--> released   [U4 >= t]
#   any stage --(its floor not met)--> failed: nothing is released, the sum is deleted.
#
# U1 advertised signed round keys, U2 (of U1) posted encrypted shares to every member of U1,
# U3 (of U2) uploaded a masked update, U4 (of U3) posted unmasking shares: self-seed shares for
# every member of U3 and s-key shares for every member of U2 - U3 (never both for one client:
# the two sets are disjoint by construction and fixed once the unmask stage starts).
# t = floor(|U1| / 2) + 1 >= 2, fixed when advertise ends.


def as_utc(moment: dt.datetime | None) -> dt.datetime | None:
    # SQLite hands timestamps back without a zone; every timestamp here is written in UTC.
    if moment is not None and moment.tzinfo is None:
        return moment.replace(tzinfo=dt.UTC)
    return moment


def _past_deadline(rnd: Round, now: dt.datetime) -> bool:
    deadline = as_utc(rnd.deadline_at)
    return deadline is not None and now >= deadline


def threshold_for(advertised: int) -> int:
    """Shamir threshold for a round whose advertise stage ended with `advertised` clients:
    more than half of them (so the server cannot get two disjoint groups to reveal both kinds
    of share for one client), and at least 2."""
    return max(2, advertised // 2 + 1)


def _participants(session: Session, round_id: int) -> list[RoundParticipant]:
    return list(session.scalars(
        select(RoundParticipant).where(RoundParticipant.round_id == round_id)
        .order_by(RoundParticipant.client_id)))


def _participant(session: Session, round_id: int, client_id: int) -> RoundParticipant | None:
    return session.scalar(select(RoundParticipant).where(
        RoundParticipant.round_id == round_id, RoundParticipant.client_id == client_id))


def _fail(rnd: Round, now: dt.datetime, reason: str) -> None:
    rnd.status, rnd.stage, rnd.closed_at = FAILED, STAGE_FAILED, now
    rnd.running_sum = None  # below the floors nothing is released, now or later
    rnd.failure_reason = reason[:200]


def _enter(rnd: Round, stage: str, now: dt.datetime) -> None:
    rnd.stage = stage
    rnd.deadline_at = (now + dt.timedelta(seconds=rnd.stage_seconds)
                       if rnd.stage_seconds else None)


def _stage_complete(session: Session, rnd: Round) -> bool:
    """Has every client the current stage waits for posted its message?"""
    parts = _participants(session, rnd.id)
    if rnd.stage == ADVERTISE:
        return len(parts) >= len(enrolled_clients(session, rnd.federation_id))
    if rnd.stage == SHARE:
        return all(p.shared for p in parts)
    if rnd.stage == COLLECT:
        return all(p.uploaded for p in parts if p.shared)
    if rnd.stage == UNMASK:
        return all(p.unmask_token is not None for p in parts if p.uploaded)
    return False


def _advance(session: Session, rnd: Round, keyring: MasterKeyring, now: dt.datetime, *,
             why: str) -> None:
    """End the current stage with whoever posted, and enter the next (or fail)."""
    parts = _participants(session, rnd.id)
    floor = rnd.min_clients
    if rnd.stage == ADVERTISE:
        if len(parts) < floor:
            _fail(rnd, now, f"{len(parts)} of {floor} required clients advertised keys at {why}")
            return
        rnd.threshold = threshold_for(len(parts))
        _enter(rnd, SHARE, now)
    elif rnd.stage == SHARE:
        sharers = [p for p in parts if p.shared]
        need = max(floor, rnd.threshold or 2)
        if len(sharers) < need:
            _fail(rnd, now, f"{len(sharers)} of {need} required clients shared keys at {why}")
            return
        _enter(rnd, COLLECT, now)
    elif rnd.stage == COLLECT:
        need = max(floor, rnd.threshold or 2)
        if rnd.received < need:
            _fail(rnd, now, f"{rnd.received} of {need} required updates at {why}")
            return
        _enter(rnd, UNMASK, now)
    elif rnd.stage == UNMASK:
        _release(session, rnd, parts, keyring, now, why=why)


def _release(session: Session, rnd: Round, parts: list[RoundParticipant],
             keyring: MasterKeyring, now: dt.datetime, *, why: str) -> None:
    """Reconstruct the survivors' self seeds and the dropped clients' s keys from at least t
    unmasking messages, subtract the masks left in the sum and release it."""
    federation = session.get(Federation, rnd.federation_id)
    assert federation is not None and rnd.threshold is not None
    t = rnd.threshold
    responders = [p for p in parts if p.unmask_token is not None]
    if len(responders) < t:
        _fail(rnd, now, f"{len(responders)} of {t} required unmasking answers at {why}")
        return
    fernet = _federation_fernet(keyring, federation)
    advertised = [p.client_id for p in parts]
    survivors = {p.client_id for p in parts if p.uploaded}
    sharers = {p.client_id: p for p in parts if p.shared}
    dropped = set(sharers) - survivors
    seed_shares: dict[int, list[tuple[int, bytes]]] = {u: [] for u in survivors}
    key_shares: dict[int, list[tuple[int, bytes]]] = {d: [] for d in dropped}
    for p in responders:
        assert p.unmask_token is not None
        message = json.loads(fernet.decrypt(p.unmask_token))
        index = secagg.share_index(advertised, p.client_id)
        for u, share in message["self_seed"].items():
            seed_shares[int(u)].append((index, base64.b64decode(share)))
        for d, share in message["s_key"].items():
            key_shares[int(d)].append((index, base64.b64decode(share)))
    ctx = public_context(federation.public_context)
    chunks = ctx.chunk_count(federation.vector_length)
    binding = secagg.round_binding(federation.id, rnd.id)
    try:
        seeds = {u: secagg.reconstruct(s, t) for u, s in seed_shares.items()}
        keys = {d: secagg.reconstruct_s_private(s, t, sharers[d].s_public)
                for d, s in key_shares.items()}
        mask = secagg.removal_mask(
            seeds, keys, {c: p.s_public for c, p in sharers.items()}, survivors,
            [ctx.modulus] * chunks, ctx.preset.poly_modulus_degree, binding)
    except secagg.SecAggError as exc:
        _fail(rnd, now, f"unmasking failed: {exc}")
        return
    assert rnd.running_sum is not None
    running = _open_sum(fernet, ctx, rnd.running_sum, federation.vector_length)
    he.subtract_mask(running, mask)
    rnd.running_sum = _seal_sum(fernet, running)
    rnd.status, rnd.stage, rnd.closed_at = AGGREGATED, RELEASED, now


def _settled_round(session: Session, round_id: int, keyring: MasterKeyring) -> Round:
    """The round, locked, moved past every stage that is complete or past its deadline
    (stages advance lazily, on the next request that touches the round)."""
    rnd = _lock_round(session, round_id)
    now = utcnow()
    for _ in range(len(STAGES)):
        if rnd.status != OPEN:
            break
        if _past_deadline(rnd, now):
            _advance(session, rnd, keyring, now, why="the deadline")
        elif _stage_complete(session, rnd):
            _advance(session, rnd, keyring, now, why="completion")
        else:
            break
    return rnd


@dataclass(frozen=True)
class Progress:
    """Who has reached which stage of a round: the sets U1 ⊇ U2 ⊇ U3 ⊇ U4."""

    advertised: list[int]
    shared: list[int]
    survivors: list[int]  # uploaded a masked update (published once the unmask stage starts)
    dropped: list[int]  # shared but did not upload (ditto)
    unmasked: list[int]


def _progress(session: Session, rnd: Round) -> Progress:
    parts = _participants(session, rnd.id)
    published = rnd.stage in (UNMASK, RELEASED) or (rnd.stage == STAGE_FAILED
                                                    and rnd.threshold is not None)
    uploaded = [p.client_id for p in parts if p.uploaded] if published else []
    return Progress(
        advertised=[p.client_id for p in parts],
        shared=[p.client_id for p in parts if p.shared],
        survivors=uploaded,
        dropped=[p.client_id for p in parts if p.shared and not p.uploaded] if published else [],
        unmasked=[p.client_id for p in parts if p.unmask_token is not None],
    )


def _state(session: Session, rnd: Round) -> RoundState:
    rows = session.execute(
        select(RoundUpdate.client_id, RoundUpdate.receipt).where(RoundUpdate.round_id == rnd.id)
        .order_by(RoundUpdate.id)).all()
    return RoundState(rnd, [Contributor(c, r) for c, r in rows], _progress(session, rnd))


def open_round(session: Session, owner: User, federation_id: int, keyring: MasterKeyring, *,
               deadline_seconds: float | None) -> RoundState:
    """Open a round in its advertise stage; with dp, its privacy cost is charged now, before
    anything is released. `deadline_seconds` bounds each stage."""
    federation = _owned(_lock_federation(session, federation_id), owner)
    _federation_fernet(keyring, federation)
    now = utcnow()
    rnd = Round(
        federation_id=federation.id, status=OPEN, stage=ADVERTISE,
        min_clients=federation.min_clients, stage_seconds=deadline_seconds,
        deadline_at=now + dt.timedelta(seconds=deadline_seconds) if deadline_seconds else None,
        received=0, epsilon_charged=0, delta_charged=0,
    )
    session.add(rnd)
    session.flush()
    if federation.dp_noise_multiplier is not None:
        _charge_round(session, federation, rnd)
    record_action(session, owner, "round.open", f"round:{rnd.id}", federation_id=federation.id)
    return RoundState(rnd, [], _progress(session, rnd))


def get_round(session: Session, user: User, round_id: int, keyring: MasterKeyring) -> RoundState:
    rnd = _settled_round(session, round_id, keyring)
    get_visible_federation(session, user, rnd.federation_id)
    return _state(session, rnd)


def close_round(session: Session, owner: User, round_id: int,
                keyring: MasterKeyring) -> RoundState:
    """End the round's current stage now with whoever has posted (explicit dropout handling):
    the round moves on, or fails below its floors. On a finished round it is a no-op."""
    rnd = _settled_round(session, round_id, keyring)
    _owned(session.get(Federation, rnd.federation_id), owner)
    if rnd.status == OPEN:
        stage = rnd.stage
        _advance(session, rnd, keyring, utcnow(), why="close")
        record_action(session, owner, "round.close", f"round:{rnd.id}", stage=stage,
                      status=rnd.status, received=rnd.received)
    return _state(session, rnd)


def round_aggregate(session: Session, user: User, round_id: int,
                    keyring: MasterKeyring) -> bytes:
    """The encrypted sums of a released round, for its owner and enrolled clients."""
    rnd = _settled_round(session, round_id, keyring)
    federation = get_visible_federation(session, user, rnd.federation_id)
    if user.role == "admin" and federation.owner_id != user.id:
        raise Forbidden("only the federation's owner and clients may fetch an aggregate")
    if rnd.status != AGGREGATED or rnd.running_sum is None:
        detail = rnd.failure_reason or f"round is {rnd.status} (stage {rnd.stage})"
        raise Conflict(f"no aggregate: {detail}", {"status": rnd.status, "stage": rnd.stage})
    try:
        return _federation_fernet(keyring, federation).decrypt(rnd.running_sum)
    except InvalidToken:
        raise RuntimeError("a stored aggregate failed authentication") from None


# --------------------------------------------------------------------------------------------
# Stage messages (typed, checked on arrival; nothing is stored unless all of it is valid)


@dataclass(frozen=True)
class Advertisement:
    """A client's signed round keys, relayed unchanged to the round's other clients."""

    client_id: int
    c_public: bytes
    s_public: bytes
    signature: bytes


def _client_round(session: Session, user: User, round_id: int,
                  keyring: MasterKeyring) -> tuple[Round, Federation]:
    rnd = _settled_round(session, round_id, keyring)
    federation = session.get(Federation, rnd.federation_id)
    assert federation is not None
    if not _is_enrolled(session, federation.id, user.id):
        if can_see(session, user, federation):
            raise Forbidden("only enrolled clients take part in a round")
        raise NotFound("no such round")
    return rnd, federation


def _require_stage(rnd: Round, stage: str, what: str) -> None:
    if rnd.status != OPEN or rnd.stage != stage:
        raise Conflict(f"{what} belongs to the {stage} stage; the round is in stage {rnd.stage}",
                       {"status": rnd.status, "stage": rnd.stage})


def _key_field(value: bytes, length: int, name: str, errors: dict[str, list[str]]) -> None:
    if len(value) != length:
        errors[name] = [f"must be {length} bytes, got {len(value)}"]


def advertise(session: Session, user: User, round_id: int, keyring: MasterKeyring, *,
              c_public: bytes, s_public: bytes, signature: bytes) -> Advertisement:
    """Stage advertise: accept a client's round keys, signed by its registered identity key.

    Refusals: 409 wrong stage, a second advertisement, or no identity key registered; 422 keys
    or signature of the wrong size; 400 a signature that does not verify. Nothing is stored
    unless everything checks."""
    rnd, federation = _client_round(session, user, round_id, keyring)
    _require_stage(rnd, ADVERTISE, "advertising round keys")
    errors: dict[str, list[str]] = {}
    _key_field(c_public, secagg.KEY_BYTES, "c_public", errors)
    _key_field(s_public, secagg.KEY_BYTES, "s_public", errors)
    _key_field(signature, secagg.SIGNATURE_BYTES, "signature", errors)
    if errors:
        raise InvalidRequest("malformed round keys", errors)
    if _participant(session, rnd.id, user.id) is not None:
        raise Conflict("you already advertised keys for this round")
    identity = session.scalar(select(Enrollment.identity_key).where(
        Enrollment.federation_id == federation.id, Enrollment.user_id == user.id))
    if identity is None:
        raise Conflict("register an identity key for this federation before advertising")
    message = secagg.advertisement_message(secagg.round_binding(federation.id, rnd.id),
                                           user.id, c_public, s_public)
    try:
        secagg.verify_signature(identity, message, signature)
    except secagg.SecAggError:
        raise BadRequest("the round keys' signature does not verify under your identity key",
                         {"signature": ["does not verify"]}) from None
    session.add(RoundParticipant(round_id=rnd.id, client_id=user.id, c_public=c_public,
                                 s_public=s_public, signature=signature, shared=False,
                                 uploaded=False))
    session.flush()
    _settled_round(session, round_id, keyring)
    return Advertisement(user.id, c_public, s_public, signature)


@dataclass(frozen=True)
class RoundKeys:
    threshold: int
    advertisements: list[Advertisement]


def round_keys(session: Session, user: User, round_id: int,
               keyring: MasterKeyring) -> RoundKeys:
    """Every advertisement of the round (U1) and the threshold, once advertise has ended."""
    rnd, _ = _client_round(session, user, round_id, keyring)
    if rnd.threshold is None:
        raise Conflict("the round's keys are not fixed yet (stage advertise)",
                       {"status": rnd.status, "stage": rnd.stage})
    return RoundKeys(rnd.threshold, [
        Advertisement(p.client_id, p.c_public, p.s_public, p.signature)
        for p in _participants(session, rnd.id)])


def post_shares(session: Session, user: User, round_id: int, keyring: MasterKeyring,
                shares: Mapping[int, bytes]) -> int:
    """Stage share: one encrypted share blob for every advertiser (the sender included).

    Refusals: 409 wrong stage, not an advertiser, already shared; 422 a missing or unknown
    recipient or a blob of the wrong size. All or nothing."""
    rnd, federation = _client_round(session, user, round_id, keyring)
    _require_stage(rnd, SHARE, "posting shares")
    me = _participant(session, rnd.id, user.id)
    if me is None:
        raise Conflict("you did not advertise keys for this round; you cannot take part")
    if me.shared:
        raise Conflict("you already posted your shares for this round")
    advertised = {p.client_id for p in _participants(session, rnd.id)}
    errors: dict[str, list[str]] = {}
    missing = sorted(advertised - set(shares))
    unknown = sorted(set(shares) - advertised)
    if missing:
        errors["missing"] = [f"no share for client {c}" for c in missing]
    if unknown:
        errors["unknown"] = [f"client {c} is not a participant of this round" for c in unknown]
    bad = sorted(c for c, blob in shares.items() if len(blob) != secagg.SHARE_BLOB_BYTES)
    if bad:
        errors["size"] = [f"share for client {c} is not {secagg.SHARE_BLOB_BYTES} bytes"
                          for c in bad]
    if errors:
        raise InvalidRequest("the shares must be one blob for every participant", errors)
    fernet = _federation_fernet(keyring, federation)
    for recipient, blob in sorted(shares.items()):
        session.add(RoundShare(round_id=rnd.id, sender_id=user.id, recipient_id=recipient,
                               token=fernet.encrypt(bytes(blob))))
    me.shared = True
    session.flush()
    _settled_round(session, round_id, keyring)
    return len(shares)


def my_shares(session: Session, user: User, round_id: int,
              keyring: MasterKeyring) -> dict[int, bytes]:
    """The share blobs addressed to this client by every client that completed the share
    stage (U2), once that stage has ended."""
    rnd, federation = _client_round(session, user, round_id, keyring)
    if rnd.stage not in (COLLECT, UNMASK, RELEASED):
        raise Conflict("shares are relayed once the share stage has ended",
                       {"status": rnd.status, "stage": rnd.stage})
    fernet = _federation_fernet(keyring, federation)
    sharers = {p.client_id for p in _participants(session, rnd.id) if p.shared}
    rows = session.execute(select(RoundShare.sender_id, RoundShare.token).where(
        RoundShare.round_id == rnd.id, RoundShare.recipient_id == user.id)).all()
    return {sender: fernet.decrypt(token) for sender, token in rows if sender in sharers}


def post_consistency(session: Session, user: User, round_id: int, keyring: MasterKeyring, *,
                     signature: bytes) -> None:
    """Stage unmask, before any share (consistency check, Bonawitz et al. 2017): a survivor's
    signature over the survivor and dropped sets the server names now. Peers reveal shares
    only after seeing t such signatures on the same sets, so a server cannot show different
    sets to different clients.

    Refusals: 409 wrong stage, not a survivor, already signed, no identity key; 422 a
    signature of the wrong size; 400 one that does not verify over these sets."""
    rnd, federation = _client_round(session, user, round_id, keyring)
    _require_stage(rnd, UNMASK, "signing the survivor set")
    me = _participant(session, rnd.id, user.id)
    if me is None or not me.uploaded:
        raise Conflict("only clients whose update is in the sum take part in unmasking")
    if me.consistency_signature is not None:
        raise Conflict("you already signed the survivor set of this round")
    if len(signature) != secagg.SIGNATURE_BYTES:
        raise InvalidRequest("malformed signature", {"signature": [
            f"must be {secagg.SIGNATURE_BYTES} bytes, got {len(signature)}"]})
    identity = session.scalar(select(Enrollment.identity_key).where(
        Enrollment.federation_id == federation.id, Enrollment.user_id == user.id))
    if identity is None:
        raise Conflict("register an identity key for this federation first")
    progress = _progress(session, rnd)
    message = secagg.consistency_message(secagg.round_binding(federation.id, rnd.id),
                                         progress.survivors, progress.dropped)
    try:
        secagg.verify_signature(identity, message, signature)
    except secagg.SecAggError:
        raise BadRequest("the signature does not verify over this round's survivor and dropped "
                         "sets under your identity key", {"signature": ["does not verify"]}) from None
    me.consistency_signature = bytes(signature)
    session.flush()


def consistency_signatures(session: Session, user: User, round_id: int,
                           keyring: MasterKeyring) -> dict[int, bytes]:
    """The survivors' signatures over the survivor and dropped sets, from stage unmask on."""
    rnd, _ = _client_round(session, user, round_id, keyring)
    if rnd.stage not in (UNMASK, RELEASED):
        raise Conflict("signatures of the survivor set exist from the unmask stage on",
                       {"status": rnd.status, "stage": rnd.stage})
    return {p.client_id: p.consistency_signature for p in _participants(session, rnd.id)
            if p.consistency_signature is not None}


def post_unmask(session: Session, user: User, round_id: int, keyring: MasterKeyring, *,
                self_seed: Mapping[int, bytes], s_key: Mapping[int, bytes]) -> None:
    """Stage unmask: a survivor's shares - of the self seed of every survivor and of the s key
    of every dropped client, nothing else.

    Refusals: 409 wrong stage, not a survivor, already answered; 422 a set of clients other
    than exactly the survivors / the dropped, a client in both, or a share of the wrong size.
    """
    rnd, federation = _client_round(session, user, round_id, keyring)
    _require_stage(rnd, UNMASK, "posting unmasking shares")
    me = _participant(session, rnd.id, user.id)
    if me is None or not me.uploaded:
        raise Conflict("only clients whose update is in the sum take part in unmasking")
    if me.unmask_token is not None:
        raise Conflict("you already posted your unmasking shares for this round")
    if me.consistency_signature is None:
        raise Conflict("sign the survivor set (POST .../consistency) before unmasking")
    progress = _progress(session, rnd)
    errors: dict[str, list[str]] = {}
    if set(self_seed) & set(s_key):
        errors["both"] = [f"client {c}: never both kinds of share"
                          for c in sorted(set(self_seed) & set(s_key))]
    if set(self_seed) != set(progress.survivors):
        errors["self_seed"] = [f"self-seed shares are for exactly the survivors "
                               f"{progress.survivors}"]
    if set(s_key) != set(progress.dropped):
        errors["s_key"] = [f"s-key shares are for exactly the dropped clients {progress.dropped}"]
    bad = sorted(c for c, v in [*self_seed.items(), *s_key.items()]
                 if len(v) != secagg.KEY_BYTES)
    if bad:
        errors["size"] = [f"share for client {c} is not {secagg.KEY_BYTES} bytes" for c in bad]
    if errors:
        raise InvalidRequest("unmasking shares refused", errors)
    message = {"self_seed": {str(c): base64.b64encode(v).decode() for c, v in self_seed.items()},
               "s_key": {str(c): base64.b64encode(v).decode() for c, v in s_key.items()}}
    me.unmask_token = _federation_fernet(keyring, federation).encrypt(
        json.dumps(message, sort_keys=True).encode())
    session.flush()
    _settled_round(session, round_id, keyring)


# --------------------------------------------------------------------------------------------
# Updates


def _check_can_submit(session: Session, user: User, rnd: Round, now: dt.datetime) -> None:
    if not _is_enrolled(session, rnd.federation_id, user.id):
        raise Forbidden("you are not enrolled in this round's federation")
    if rnd.status != OPEN:
        raise Conflict(f"round is {rnd.status}; it accepts no more updates", {"status": rnd.status})
    if _past_deadline(rnd, now) and rnd.stage == COLLECT:
        raise Conflict("the round's deadline has passed", {"status": "closed"})
    previous = session.scalar(select(RoundUpdate.receipt).where(
        RoundUpdate.round_id == rnd.id, RoundUpdate.client_id == user.id))
    if previous is not None:
        raise Conflict("you already submitted an update to this round", {"receipt": previous})
    if rnd.stage != COLLECT:
        raise Conflict(f"updates belong to the collect stage; the round is in stage {rnd.stage}",
                       {"status": rnd.status, "stage": rnd.stage})
    me = _participant(session, rnd.id, user.id)
    if me is None or not me.shared:
        raise Conflict("you did not complete the share stage of this round; "
                       "your masks would not cancel")


def _read_capped(stream: IO[bytes], content_length: int | None, cap: int) -> bytes:
    if content_length is not None and content_length > cap:
        raise PayloadTooLarge(f"update is {content_length} bytes; this federation's limit is {cap}",
                              {"limit": cap})
    parts: list[bytes] = []
    size = 0
    while True:  # also bounds bodies sent without a Content-Length (chunked)
        chunk = stream.read(min(_READ_CHUNK, cap + 1 - size))
        if not chunk:
            break
        parts.append(chunk)
        size += len(chunk)
        if size > cap:
            raise PayloadTooLarge(f"update exceeds this federation's limit of {cap} bytes",
                                  {"limit": cap})
    return b"".join(parts)


def submit_update(db: Database, keyring: MasterKeyring, user: User, round_id: int, *,
                  content_type: str, stream: IO[bytes], content_length: int | None) -> str:
    """Accept one client's masked, encrypted update in the collect stage; returns its receipt.

    The update is folded into the running sum (stored only as a Fernet token under the
    federation key) and discarded: no upload is ever persisted on its own.

    Refusals: 404 no such round, 403 not enrolled, 409 not the collect stage / past its
    deadline / second update / did not share, 415 not application/octet-stream, 413 over the
    federation's size bound, 400 anything `crypto.he.parse_update` refuses.
    """
    if content_type.split(";")[0].strip().lower() != UPDATE_CONTENT_TYPE:
        raise UnsupportedMediaType(f"send the encrypted update as {UPDATE_CONTENT_TYPE}")
    # 1. Cheap checks and the federation's size bound, before any byte of the body is read.
    with db.transaction(immediate=True) as session:
        rnd = _settled_round(session, round_id, keyring)
        _check_can_submit(session, user, rnd, utcnow())
        federation = session.get(Federation, rnd.federation_id)
        assert federation is not None
        ctx = public_context(federation.public_context)
        vector_length = federation.vector_length
    cap = he.update_size_bound(ctx, vector_length)
    # 2. Read and validate with no lock held: a slow upload must not stall the round.
    payload = _read_capped(stream, content_length, cap)
    try:
        update = he.parse_update(ctx, payload, vector_length=vector_length, max_bytes=cap)
    except he.InvalidHEPayload as exc:
        raise BadRequest(f"update refused: {exc}") from None
    receipt, size = he.receipt(payload), len(payload)
    del payload  # only the ciphertext coefficients are needed from here on
    # 3. Fold into the persisted running sum under the round lock, in one short transaction.
    with db.transaction(immediate=True) as session:
        rnd = _lock_round(session, round_id)
        _check_can_submit(session, user, rnd, utcnow())
        federation = session.get(Federation, rnd.federation_id)
        assert federation is not None
        fernet = _federation_fernet(keyring, federation)
        running = (_open_sum(fernet, ctx, rnd.running_sum, vector_length)
                   if rnd.running_sum is not None else None)
        rnd.running_sum = _seal_sum(fernet, he.fold(running, update))
        rnd.received += 1
        me = _participant(session, rnd.id, user.id)
        assert me is not None
        me.uploaded = True
        session.add(RoundUpdate(round_id=rnd.id, client_id=user.id, receipt=receipt,
                                size_bytes=size))
        try:
            session.flush()
        except IntegrityError:  # the unique (round, client) key: cannot happen under the lock
            raise Conflict("you already submitted an update to this round") from None
        _settled_round(session, round_id, keyring)
    return receipt
