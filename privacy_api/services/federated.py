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

import datetime as dt
import hashlib
import math
import uuid
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal
from functools import lru_cache
from typing import IO

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from mechanisms.accounting import PrivacyEvent, PrivacySpent, total_spent
from mechanisms.errors import MechanismError
from mechanisms.noise import calibrate_gaussian_sigma

from ..crypto import he
from ..db import IMMEDIATE, Database
from ..errors import (
    BadRequest,
    BudgetExhausted,
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from ..models import Enrollment, Federation, LedgerEntry, Round, RoundUpdate, User, utcnow
from ..names import checked_name
from ..units import delta_units, delta_value, eps_units, eps_value
from .audit import record_action
from .ledger import events_from_json, events_to_json

OPEN, AGGREGATED, FAILED = "open", "aggregated", "failed"
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
    """A round as the API shows it: the row plus its published contributor list."""

    round: Round
    contributors: list[Contributor]


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
) -> FederationState:
    """Register a federation from its public CKKS context (secret or evaluation keys: 400)."""
    try:
        ctx = he.load_public_context(public_context_bytes, max_bytes=max_context_bytes)
    except he.InvalidHEPayload as exc:
        raise BadRequest(f"public_context refused: {exc}", {"public_context": [str(exc)]}) from None
    errors: dict[str, list[str]] = {}
    if he.update_size_bound(ctx, vector_length) > max_update_bytes:
        errors["vector_length"] = [f"an update of {vector_length} parameters would exceed this "
                                   f"server's upload limit of {max_update_bytes} bytes"]
    clip_norm = noise_multiplier = None
    if dp is None:
        if epsilon_cap is not None or delta is not None:
            errors["dp"] = ["epsilon_cap and delta apply only to a federation with dp"]
    else:
        clip_norm, noise_multiplier = float(dp["clip_norm"]), float(dp["noise_multiplier"])
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
        epsilon_spent=0, delta_spent=0,
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
    session.add(LedgerEntry(
        id=str(uuid.uuid4()), user_id=federation.owner_id, dataset_id=None,
        federation_id=federation.id, round_id=rnd.id, dataset_version=0,
        fingerprint=hashlib.sha256(str(rnd.id).encode()).hexdigest(),
        aggregate="federated_round", plan={"federation": federation.id, "round": rnd.id},
        mechanism="gaussian", epsilon_requested=eps_units(event.epsilon),
        delta_requested=delta_units(event.delta), epsilon_charged=inc_eps,
        delta_charged=inc_delta, privacy_events=events_to_json((event,)),
    ))
    federation.epsilon_spent, federation.delta_spent = new_eps, new_delta
    rnd.epsilon_charged, rnd.delta_charged = inc_eps, inc_delta


# --------------------------------------------------------------------------------------------
# Rounds


def as_utc(moment: dt.datetime | None) -> dt.datetime | None:
    # SQLite hands timestamps back without a zone; every timestamp here is written in UTC.
    if moment is not None and moment.tzinfo is None:
        return moment.replace(tzinfo=dt.UTC)
    return moment


def _past_deadline(rnd: Round, now: dt.datetime) -> bool:
    deadline = as_utc(rnd.deadline_at)
    return deadline is not None and now >= deadline


def _finalize(rnd: Round, now: dt.datetime, *, why: str) -> None:
    """Close a round: it releases its sum only with at least min_clients contributions."""
    rnd.closed_at = now
    if rnd.received >= rnd.min_clients:
        rnd.status = AGGREGATED
        return
    rnd.status = FAILED
    rnd.running_sum = None  # below min_clients nothing is released, now or later
    rnd.failure_reason = f"{rnd.received} of {rnd.min_clients} required updates at {why}"


def _settled_round(session: Session, round_id: int) -> Round:
    """The round, locked, closed first if its deadline has passed (closing lazily on read)."""
    rnd = _lock_round(session, round_id)
    now = utcnow()
    if rnd.status == OPEN and _past_deadline(rnd, now):
        _finalize(rnd, now, why="the deadline")
    return rnd


def _state(session: Session, rnd: Round) -> RoundState:
    rows = session.execute(
        select(RoundUpdate.client_id, RoundUpdate.receipt).where(RoundUpdate.round_id == rnd.id)
        .order_by(RoundUpdate.id)).all()
    return RoundState(rnd, [Contributor(c, r) for c, r in rows])


def open_round(session: Session, owner: User, federation_id: int, *,
               deadline_seconds: float | None) -> RoundState:
    """Open a round; with dp, its privacy cost is charged now, before anything is released."""
    federation = _owned(_lock_federation(session, federation_id), owner)
    now = utcnow()
    rnd = Round(
        federation_id=federation.id, status=OPEN, min_clients=federation.min_clients,
        deadline_at=now + dt.timedelta(seconds=deadline_seconds) if deadline_seconds else None,
        received=0, epsilon_charged=0, delta_charged=0,
    )
    session.add(rnd)
    session.flush()
    if federation.dp_noise_multiplier is not None:
        _charge_round(session, federation, rnd)
    record_action(session, owner, "round.open", f"round:{rnd.id}", federation_id=federation.id)
    return RoundState(rnd, [])


def get_round(session: Session, user: User, round_id: int) -> RoundState:
    rnd = _settled_round(session, round_id)
    get_visible_federation(session, user, rnd.federation_id)
    return _state(session, rnd)


def close_round(session: Session, owner: User, round_id: int) -> RoundState:
    """Close an open round (aggregated, or failed below min_clients). Closing twice is a no-op."""
    rnd = _settled_round(session, round_id)
    _owned(session.get(Federation, rnd.federation_id), owner)
    if rnd.status == OPEN:
        _finalize(rnd, utcnow(), why="close")
        record_action(session, owner, "round.close", f"round:{rnd.id}", status=rnd.status,
                      received=rnd.received)
    return _state(session, rnd)


def round_aggregate(session: Session, user: User, round_id: int) -> bytes:
    """The encrypted sums of an aggregated round, for its owner and enrolled clients."""
    rnd = _settled_round(session, round_id)
    federation = get_visible_federation(session, user, rnd.federation_id)
    if user.role == "admin" and federation.owner_id != user.id:
        raise Forbidden("only the federation's owner and clients may fetch an aggregate")
    if rnd.status != AGGREGATED or rnd.running_sum is None:
        detail = rnd.failure_reason or f"round is {rnd.status}"
        raise Conflict(f"no aggregate: {detail}", {"status": rnd.status})
    return rnd.running_sum


# --------------------------------------------------------------------------------------------
# Updates


def _check_can_submit(session: Session, user: User, rnd: Round, now: dt.datetime) -> None:
    if not _is_enrolled(session, rnd.federation_id, user.id):
        raise Forbidden("you are not enrolled in this round's federation")
    if rnd.status != OPEN:
        raise Conflict(f"round is {rnd.status}; it accepts no more updates", {"status": rnd.status})
    if _past_deadline(rnd, now):
        raise Conflict("the round's deadline has passed", {"status": "closed"})
    previous = session.scalar(select(RoundUpdate.receipt).where(
        RoundUpdate.round_id == rnd.id, RoundUpdate.client_id == user.id))
    if previous is not None:
        raise Conflict("you already submitted an update to this round", {"receipt": previous})


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


def submit_update(db: Database, user: User, round_id: int, *, content_type: str,
                  stream: IO[bytes], content_length: int | None) -> str:
    """Accept one client's encrypted update into an open round; returns its receipt.

    Refusals: 404 no such round, 403 not enrolled, 409 round closed / past its deadline /
    second update, 415 not application/octet-stream, 413 over the federation's size bound,
    400 anything `crypto.he.parse_update` refuses (nothing reaches TenSEAL's native code).
    """
    if content_type.split(";")[0].strip().lower() != UPDATE_CONTENT_TYPE:
        raise UnsupportedMediaType(f"send the encrypted update as {UPDATE_CONTENT_TYPE}")
    # 1. Cheap checks and the federation's size bound, before any byte of the body is read.
    with db.sessions() as session:
        rnd = session.get(Round, round_id)
        if rnd is None:
            raise NotFound("no such round")
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
        running = (he.deserialize_sum(ctx, rnd.running_sum, vector_length=vector_length)
                   if rnd.running_sum is not None else None)
        rnd.running_sum = he.serialize_sum(he.fold(running, update))
        rnd.received += 1
        session.add(RoundUpdate(round_id=rnd.id, client_id=user.id, receipt=receipt,
                                size_bytes=size))
        try:
            session.flush()
        except IntegrityError:  # the unique (round, client) key: cannot happen under the lock
            raise Conflict("you already submitted an update to this round") from None
    return receipt

