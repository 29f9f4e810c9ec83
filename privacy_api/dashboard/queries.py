"""Read models for the dashboard: every query a page needs, taking the request's Session.

Views stay thin: they call one of these, then render. Nothing here writes; the actions go
through the services (users, budgets), which also write the audit trail.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Generic, TypeVar

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session, aliased

from ..crypto.keyring import DataCipher, KeyUnavailable, MasterKeyring
from ..domain.errors import NotFound
from ..domain.units import delta_value, eps_units, eps_value
from ..services.budgets import BudgetView
from ..services.datasets import data_cipher
from ..storage.models import (
    ApiKey,
    AuditEvent,
    Budget,
    Dataset,
    Enrollment,
    Federation,
    LedgerEntry,
    Round,
    RoundUpdate,
    User,
)
from .spend import Charge, Projection, SpendChart, as_utc, project_exhaustion, series_for, spend_chart

T = TypeVar("T")


@dataclass(frozen=True)
class Usage:
    """Spent against a total; `total` None means uncapped."""

    spent: Decimal
    total: Decimal | None

    @property
    def fraction(self) -> float | None:
        if self.total is None or self.total == 0:
            return None
        return float(self.spent / self.total)

    @property
    def severity(self) -> str:
        f = self.fraction
        if f is None:
            return "ok"
        return "critical" if f >= 0.9 else "warn" if f >= 0.7 else "ok"


@dataclass(frozen=True)
class BudgetRow:
    user_id: int
    user_name: str
    dataset_id: int
    dataset_name: str
    view: BudgetView

    @property
    def epsilon(self) -> Usage:
        return Usage(self.view.epsilon_spent, self.view.epsilon_total)

    @property
    def delta(self) -> Usage:
        return Usage(self.view.delta_spent, self.view.delta_total)

    @property
    def lifetime(self) -> Usage:
        """All periods' ε together: what renewal adds up to (against the lifetime cap, if set)."""
        return Usage(self.view.lifetime_epsilon_spent, self.view.lifetime_epsilon_cap)

    @property
    def renewal(self) -> str:
        v = self.view
        if v.renewal_period is None or v.period_ends_at is None:
            return "no renewal"
        return f"{v.renewal_period}, renews {v.period_ends_at:%Y-%m-%d %H:%M} UTC"

    @property
    def exhaustion(self) -> float:
        # An epsilon grant of 0 cannot answer anything: as good as exhausted. A delta grant
        # of 0 only rules out Gaussian queries, so it does not count towards exhaustion.
        eps = self.epsilon.fraction
        return max(1.0 if eps is None else eps, self.delta.fraction or 0.0,
                   self.lifetime.fraction or 0.0)


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    page: int
    per_page: int
    total: int

    @property
    def pages(self) -> int:
        return max(1, math.ceil(self.total / self.per_page))

    @property
    def has_prev(self) -> bool:
        return self.page > 1

    @property
    def has_next(self) -> bool:
        return self.page < self.pages


def _paginate(session: Session, query: Select[*tuple[Any, ...]], page: int,
              per_page: int) -> tuple[int, int, Any]:
    total = session.scalar(select(func.count()).select_from(query.order_by(None).subquery())) or 0
    pages = max(1, math.ceil(total / per_page))
    page = min(max(1, page), pages)
    rows = session.execute(query.limit(per_page).offset((page - 1) * per_page)).all()
    return total, page, rows


# --- budgets --------------------------------------------------------------------------------


def budget_rows(session: Session, *, user_id: int | None = None,
                now: dt.datetime | None = None) -> list[BudgetRow]:
    """Budgets on live datasets, closest to exhaustion first."""
    query = (
        select(Budget, User.name, Dataset.name)
        .join(User, User.id == Budget.user_id)
        .join(Dataset, Dataset.id == Budget.dataset_id)
        .where(Dataset.deleted_at.is_(None))
    )
    if user_id is not None:
        query = query.where(Budget.user_id == user_id)
    rows = [BudgetRow(b.user_id, uname, b.dataset_id, dname, BudgetView.of(b, now))
            for b, uname, dname in session.execute(query)]
    return sorted(rows, key=lambda r: (-r.exhaustion, r.user_name, r.dataset_name))


@dataclass(frozen=True)
class DatasetTotal:
    dataset_id: int
    name: str
    analysts: int
    epsilon: Usage  # spent by all analysts against all their grants
    delta: Usage
    epsilon_cap: Usage | None  # the dataset-wide cap, when set
    delta_cap: Usage | None


def dataset_totals(session: Session) -> list[DatasetTotal]:
    query = (
        select(Dataset, func.count(Budget.id),
               func.coalesce(func.sum(Budget.epsilon_spent), 0),
               func.coalesce(func.sum(Budget.epsilon_total), 0),
               func.coalesce(func.sum(Budget.delta_spent), 0),
               func.coalesce(func.sum(Budget.delta_total), 0))
        .outerjoin(Budget, Budget.dataset_id == Dataset.id)
        .where(Dataset.deleted_at.is_(None))
        .group_by(Dataset.id)
        .order_by(Dataset.name, Dataset.id)
    )
    out = []
    for ds, n, eps_spent, eps_total, d_spent, d_total in session.execute(query):
        # PostgreSQL sums bigint into numeric: back to exact ints before converting units.
        out.append(DatasetTotal(
            ds.id, ds.name, int(n),
            Usage(eps_value(int(eps_spent)), eps_value(int(eps_total))),
            Usage(delta_value(int(d_spent)), delta_value(int(d_total))),
            Usage(eps_value(ds.epsilon_spent), eps_value(ds.epsilon_cap))
            if ds.epsilon_cap is not None else None,
            Usage(delta_value(ds.delta_spent), delta_value(ds.delta_cap))
            if ds.delta_cap is not None else None,
        ))
    return out


def live_datasets(session: Session) -> list[tuple[int, str]]:
    return [(i, n) for i, n in session.execute(
        select(Dataset.id, Dataset.name).where(Dataset.deleted_at.is_(None)).order_by(Dataset.name)
    )]


def budget_totals(session: Session, user_id: int, dataset_id: int) -> tuple[Decimal, Decimal] | None:
    row = session.execute(
        select(Budget.epsilon_total, Budget.delta_total)
        .where(Budget.user_id == user_id, Budget.dataset_id == dataset_id)
    ).first()
    return None if row is None else (eps_value(row[0]), delta_value(row[1]))


# --- federations ----------------------------------------------------------------------------

ROUNDS_SHOWN = 10


@dataclass(frozen=True)
class RoundSummary:
    id: int
    status: str
    received: int
    min_clients: int
    created_at: dt.datetime
    closed_at: dt.datetime | None
    epsilon_charged: Decimal
    failure_reason: str | None
    contributors: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class FederationSummary:
    id: int
    name: str
    owner_name: str
    preset: str
    vector_length: int
    min_clients: int
    clip_norm: float | None
    noise_multiplier: float | None
    enrolled: int
    epsilon: Usage
    delta: Decimal | None
    rounds_total: int
    rounds: list[RoundSummary]


def federation_summaries(session: Session) -> list[FederationSummary]:
    owner = aliased(User)
    feds = session.execute(
        select(Federation, owner.name).join(owner, owner.id == Federation.owner_id)
        .order_by(Federation.id)
    ).all()
    if not feds:
        return []
    enrolled = dict(session.execute(
        select(Enrollment.federation_id, func.count()).group_by(Enrollment.federation_id)
    ).all())
    round_counts = dict(session.execute(
        select(Round.federation_id, func.count()).group_by(Round.federation_id)
    ).all())
    rounds: dict[int, list[Round]] = {}
    for fed, _ in feds:
        # Federations are few; one small query each keeps "latest N rounds" portable.
        rounds[fed.id] = list(session.scalars(
            select(Round).where(Round.federation_id == fed.id)
            .order_by(Round.id.desc()).limit(ROUNDS_SHOWN)
        ))
    round_ids = [r.id for rs in rounds.values() for r in rs]
    contributors: dict[int, list[str]] = defaultdict(list)
    if round_ids:
        for round_id, name in session.execute(
            select(RoundUpdate.round_id, User.name).join(User, User.id == RoundUpdate.client_id)
            .where(RoundUpdate.round_id.in_(round_ids)).order_by(RoundUpdate.id)
        ):
            contributors[round_id].append(name)
    return [
        FederationSummary(
            fed.id, fed.name, owner_name, fed.preset, fed.vector_length, fed.min_clients,
            fed.dp_clip_norm, fed.dp_noise_multiplier, enrolled.get(fed.id, 0),
            Usage(eps_value(fed.epsilon_spent),
                  eps_value(fed.epsilon_cap) if fed.epsilon_cap is not None else None),
            delta_value(fed.delta) if fed.delta is not None else None,
            round_counts.get(fed.id, 0),
            [RoundSummary(r.id, r.status, r.received, r.min_clients, as_utc(r.created_at),
                          as_utc(r.closed_at) if r.closed_at else None,
                          eps_value(r.epsilon_charged), r.failure_reason, contributors[r.id])
             for r in rounds[fed.id]],
        )
        for fed, owner_name in feds
    ]


# --- users and keys -------------------------------------------------------------------------


@dataclass(frozen=True)
class UserRow:
    id: int
    name: str
    role: str
    disabled: bool
    created_at: dt.datetime
    active_keys: int


def user_rows(session: Session) -> list[UserRow]:
    active = (
        select(ApiKey.user_id, func.count().label("n")).where(ApiKey.revoked_at.is_(None))
        .group_by(ApiKey.user_id).subquery()
    )
    query = (
        select(User, func.coalesce(active.c.n, 0))
        .outerjoin(active, active.c.user_id == User.id).order_by(User.id)
    )
    return [UserRow(u.id, u.name, u.role, u.disabled, as_utc(u.created_at), int(n))
            for u, n in session.execute(query)]


def get_user(session: Session, user_id: int) -> User:
    user = session.get(User, user_id)
    if user is None:
        raise NotFound("no such user")
    return user


def user_keys(session: Session, user_id: int) -> Sequence[ApiKey]:
    return session.scalars(
        select(ApiKey).where(ApiKey.user_id == user_id).order_by(ApiKey.created_at, ApiKey.id)
    ).all()


def key_owner(session: Session, key_id: str) -> int | None:
    return session.scalar(select(ApiKey.user_id).where(ApiKey.id == key_id))


# --- the analyst's ledger -------------------------------------------------------------------


def charge_history(session: Session, user_id: int) -> dict[int, list[Charge]]:
    """Charged (non-replayed, non-zero) dataset queries per dataset, oldest first."""
    out: dict[int, list[Charge]] = defaultdict(list)
    for ds_id, created, units in session.execute(
        select(LedgerEntry.dataset_id, LedgerEntry.created_at, LedgerEntry.epsilon_charged)
        .where(LedgerEntry.user_id == user_id, LedgerEntry.epsilon_charged > 0,
               LedgerEntry.dataset_id.is_not(None))  # federation rounds have no dataset
        .order_by(LedgerEntry.created_at, LedgerEntry.id)
    ):
        if ds_id is not None:  # filtered in SQL; the guard is for the type checker
            out[ds_id].append((as_utc(created), int(units)))
    return dict(out)


@dataclass(frozen=True)
class LogFilter:
    dataset_id: int | None = None
    aggregate: str | None = None
    replayed: bool | None = None

    def args(self) -> dict[str, str]:
        """The filter as query-string arguments (for paging links)."""
        out: dict[str, str] = {}
        if self.dataset_id is not None:
            out["dataset"] = str(self.dataset_id)
        if self.aggregate:
            out["aggregate"] = self.aggregate
        if self.replayed is not None:
            out["replayed"] = "yes" if self.replayed else "no"
        return out


@dataclass(frozen=True)
class LogRow:
    id: str
    created_at: dt.datetime
    dataset_id: int
    dataset_name: str
    aggregate: str
    columns: list[str]
    mechanism: str
    epsilon_requested: Decimal
    epsilon_charged: Decimal
    delta_requested: Decimal
    delta_charged: Decimal
    replayed: bool
    sql: str | None = None  # the statement's text when the query came as SQL


def plan_columns(plan: dict[str, Any]) -> list[str]:
    """Columns a stored plan touches: the aggregated column, filter columns, group keys."""
    cols: list[str] = []
    for part in plan.get("statement") or []:  # a SQL statement of several aggregates
        if isinstance(part, dict) and isinstance(part.get("plan"), dict):
            cols += plan_columns(part["plan"])
    if isinstance(plan.get("column"), str):
        cols.append(plan["column"])
    for f in plan.get("where") or []:
        # Canonical plans store filters as [column, op, value]; accept a dict too.
        col = f[0] if isinstance(f, list) and f else f.get("column") if isinstance(f, dict) else None
        if isinstance(col, str):
            cols.append(col)
    cols += [g for g in plan.get("group_by") or [] if isinstance(g, str)]
    return list(dict.fromkeys(cols))


LOG_PAGE_SIZE = 25


def _sql_texts(session: Session, keyring: MasterKeyring | None,
               entries: Sequence[LedgerEntry]) -> dict[str, str]:
    """The SQL text of the entries that came as SQL, decrypted with their dataset's key (an
    admin's page shows what the analyst asked; the database keeps it as ciphertext)."""
    texts: dict[str, str] = {}
    if keyring is None:
        return texts
    ciphers: dict[int, DataCipher | None] = {}
    for e in entries:
        if e.sql_token is None or e.dataset_id is None:
            continue
        if e.dataset_id not in ciphers:
            try:
                ciphers[e.dataset_id] = data_cipher(session, keyring, e.dataset_id)
            except NotFound:  # the dataset's key is destroyed: its texts are gone too
                ciphers[e.dataset_id] = None
        cipher = ciphers[e.dataset_id]
        if cipher is not None:
            try:
                texts[e.id] = cipher.decrypt(e.sql_token).decode("utf-8", "replace")
            except KeyUnavailable:  # a page must render even over a damaged token
                texts[e.id] = "(SQL text unreadable)"
    return texts


def query_log(session: Session, user_id: int, flt: LogFilter, page: int,
              per_page: int = LOG_PAGE_SIZE, keyring: MasterKeyring | None = None) -> Page[LogRow]:
    query = (
        # The inner join keeps dataset queries only (federation round charges have no dataset).
        select(LedgerEntry, Dataset.id, Dataset.name)
        .join(Dataset, Dataset.id == LedgerEntry.dataset_id)
        .where(LedgerEntry.user_id == user_id)
        .order_by(LedgerEntry.created_at.desc(), LedgerEntry.id.desc())
    )
    if flt.dataset_id is not None:
        query = query.where(LedgerEntry.dataset_id == flt.dataset_id)
    if flt.aggregate:
        query = query.where(LedgerEntry.aggregate == flt.aggregate)
    if flt.replayed is True:
        query = query.where(LedgerEntry.replay_of.is_not(None))
    elif flt.replayed is False:
        query = query.where(LedgerEntry.replay_of.is_(None))
    total, page, rows = _paginate(session, query, page, per_page)
    texts = _sql_texts(session, keyring, [e for e, _, _ in rows])
    items = [
        LogRow(e.id, as_utc(e.created_at), ds_id, name, e.aggregate,
               plan_columns(e.plan if isinstance(e.plan, dict) else {}), e.mechanism,
               eps_value(e.epsilon_requested), eps_value(e.epsilon_charged),
               delta_value(e.delta_requested), delta_value(e.delta_charged),
               e.replay_of is not None, texts.get(e.id))
        for e, ds_id, name in rows
    ]
    return Page(items, page, per_page, total)


def log_filter_choices(session: Session, user_id: int) -> tuple[list[tuple[int, str]], list[str]]:
    """Datasets and aggregates that occur in this analyst's ledger or budgets."""
    ds_ids = select(LedgerEntry.dataset_id).where(LedgerEntry.user_id == user_id).union(
        select(Budget.dataset_id).where(Budget.user_id == user_id)).subquery()
    datasets = [(i, n) for i, n in session.execute(
        select(Dataset.id, Dataset.name).where(Dataset.id.in_(select(ds_ids)))
        .order_by(Dataset.name))]
    aggregates = list(session.scalars(
        select(LedgerEntry.aggregate)
        .where(LedgerEntry.user_id == user_id, LedgerEntry.dataset_id.is_not(None)).distinct()
        .order_by(LedgerEntry.aggregate)))
    return datasets, aggregates


# --- audit ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditRow:
    id: int
    created_at: dt.datetime
    actor: str
    action: str
    target: str
    details: dict[str, Any]


AUDIT_PAGE_SIZE = 50


def audit_log(session: Session, page: int, per_page: int = AUDIT_PAGE_SIZE) -> Page[AuditRow]:
    actor = aliased(User)
    query = (
        select(AuditEvent, actor.name).outerjoin(actor, actor.id == AuditEvent.actor_id)
        .order_by(AuditEvent.id.desc())
    )
    total, page, rows = _paginate(session, query, page, per_page)
    items = [AuditRow(e.id, as_utc(e.created_at), name or "system (CLI)", e.action, e.target,
                      e.details or {}) for e, name in rows]
    return Page(items, page, per_page, total)


# --- whole pages ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Overview:
    budgets: list[BudgetRow]
    datasets: list[DatasetTotal]
    federations: list[FederationSummary]


def overview(session: Session) -> Overview:
    return Overview(budget_rows(session), dataset_totals(session), federation_summaries(session))


@dataclass(frozen=True)
class AnalystBudget:
    row: BudgetRow
    projection: Projection


@dataclass(frozen=True)
class AnalystPage:
    user: User
    budgets: list[AnalystBudget]
    chart: SpendChart | None
    log: Page[LogRow]
    log_filter: LogFilter
    filter_datasets: list[tuple[int, str]]
    filter_aggregates: list[str]
    grantable: list[tuple[int, str]]
    keys: Sequence[ApiKey]


def analyst_page(session: Session, user_id: int, flt: LogFilter, page: int,
                 now: dt.datetime, keyring: MasterKeyring | None = None) -> AnalystPage:
    user = get_user(session, user_id)
    rows = budget_rows(session, user_id=user_id)
    history = charge_history(session, user_id)
    budgets = [
        AnalystBudget(r, project_exhaustion(history.get(r.dataset_id, []),
                                            eps_units(r.view.epsilon_remaining), now))
        for r in rows
    ]
    labels = {r.dataset_id: r.dataset_name for r in rows}
    datasets, aggregates = log_filter_choices(session, user_id)
    labels.update({i: n for i, n in datasets if i not in labels})
    totals = {r.dataset_id: eps_units(r.view.epsilon_total) for r in rows}
    chart = spend_chart(series_for(history, labels, totals), now)
    return AnalystPage(user, budgets, chart, query_log(session, user_id, flt, page, keyring=keyring), flt,
                       datasets, aggregates, live_datasets(session), user_keys(session, user_id))
