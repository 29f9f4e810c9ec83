"""Verify the ledger's hash chains against the budget rows, and export them for an auditor.

Both read one consistent snapshot (`snapshot`): the budget rows and the entries as of one
moment, so a charge committing meanwhile cannot look like tampering. Entries stream in chain
order (constant memory in the ledger's length; memory grows only with the number of budgets).

What is checked, per chain (privacy_api/domain/ledger_chain.py): every entry's hash, the seq and
prev_hash links, the budget row's entry count and head, its current period's spent (epsilon,
delta) against that period's entries, its lifetime spent against all entries, and its stored
composition (basic sums and RDP rho) against the current period's events.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, Row, select

from mechanisms.accounting import PrivacyEvent

from ..domain.ledger_chain import (
    FORMAT,
    ChainChecker,
    Problem,
    budget_chain,
    federation_chain,
    payload,
)
from ..storage.db import Database
from ..storage.models import Budget, Federation, LedgerEntry
from .ledger import StoredComposition, events_from_json

_ENTRY_COLUMNS = (LedgerEntry.id, LedgerEntry.user_id, LedgerEntry.dataset_id,
                  LedgerEntry.federation_id, LedgerEntry.round_id, LedgerEntry.fingerprint,
                  LedgerEntry.aggregate, LedgerEntry.mechanism, LedgerEntry.epsilon_requested,
                  LedgerEntry.delta_requested, LedgerEntry.epsilon_charged,
                  LedgerEntry.delta_charged, LedgerEntry.privacy_events, LedgerEntry.replay_of,
                  LedgerEntry.chain_seq, LedgerEntry.prev_hash, LedgerEntry.entry_hash,
                  LedgerEntry.period, LedgerEntry.created_at)


@contextmanager
def snapshot(db: Database) -> Iterator[Connection]:
    """A read-only transaction that sees one moment: SQLite's WAL read transaction is a
    snapshot; PostgreSQL needs REPEATABLE READ (READ COMMITTED sees each statement's own)."""
    with db.engine.connect() as conn:
        if not db.is_sqlite:
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            yield conn


@dataclass(frozen=True)
class Anchor:
    """What a budget (or federation) row says about its chain."""

    chain: str
    count: int
    head: str
    period: int
    epsilon_spent: int
    delta_spent: int
    lifetime_epsilon: int | None
    lifetime_delta: int | None
    composition: StoredComposition | None  # None for a federation (it recomposes its rounds)

    def as_line(self) -> dict[str, Any]:
        return {"type": "head", "chain": self.chain, "count": self.count, "head": self.head,
                "period": self.period, "epsilon_spent": self.epsilon_spent,
                "delta_spent": self.delta_spent, "lifetime_epsilon_spent": self.lifetime_epsilon,
                "lifetime_delta_spent": self.lifetime_delta}


def anchors(conn: Connection, chain: str | None = None) -> dict[str, Anchor]:
    found: dict[str, Anchor] = {}
    for b in conn.execute(select(Budget.__table__).order_by(Budget.user_id, Budget.dataset_id)):
        name = budget_chain(b.user_id, b.dataset_id)
        if chain is None or chain == name:
            found[name] = Anchor(
                name, b.ledger_count, b.ledger_head, b.period, b.epsilon_spent, b.delta_spent,
                b.lifetime_epsilon_spent, b.lifetime_delta_spent,
                StoredComposition(b.basic_epsilon, b.basic_delta, b.pure_epsilon, b.pure_delta,
                                  Decimal(b.gaussian_rho)))
    for f in conn.execute(select(Federation.id, Federation.ledger_count, Federation.ledger_head,
                                 Federation.epsilon_spent, Federation.delta_spent)
                          .order_by(Federation.id)):
        name = federation_chain(f.id)
        if chain is None or chain == name:
            found[name] = Anchor(name, f.ledger_count, f.ledger_head, 0, f.epsilon_spent,
                                 f.delta_spent, None, None, None)
    return found


def _chain_of(row: Row[Any]) -> str:
    if row.federation_id is not None:
        return federation_chain(row.federation_id)
    return budget_chain(row.user_id, row.dataset_id)


def entry_line(row: Row[Any]) -> dict[str, Any]:
    """An entry as its export line: the hashed fields, its stored hash, and type "entry"."""
    body = payload(
        chain=_chain_of(row), seq=row.chain_seq, prev_hash=row.prev_hash, id=row.id,
        user_id=row.user_id, fingerprint=row.fingerprint, aggregate=row.aggregate,
        mechanism=row.mechanism, epsilon_requested=row.epsilon_requested,
        delta_requested=row.delta_requested, epsilon_charged=row.epsilon_charged,
        delta_charged=row.delta_charged, events=row.privacy_events or [], period=row.period,
        replay_of=row.replay_of, round_id=row.round_id, created_at=row.created_at)
    return {"type": "entry", **body, "hash": row.entry_hash}


def entry_rows(conn: Connection, *, chain: str | None = None,
               since: dt.datetime | None = None) -> Iterator[Row[Any]]:
    """Entries in chain order (budget chains, then federation chains), streamed."""
    query = select(*_ENTRY_COLUMNS)
    if chain is not None:
        kind, _, rest = chain.partition("/")
        parts = rest.split("/")
        if kind == "federation" and len(parts) == 1 and parts[0].isdigit():
            query = query.where(LedgerEntry.federation_id == int(parts[0]))
        elif kind == "budget" and len(parts) == 2 and all(p.isdigit() for p in parts):
            query = query.where(LedgerEntry.federation_id.is_(None),
                                LedgerEntry.user_id == int(parts[0]),
                                LedgerEntry.dataset_id == int(parts[1]))
        else:
            return
    if since is not None:
        # UTC: SQLite compares the stored text, which is UTC without an offset
        query = query.where(LedgerEntry.created_at >= since.astimezone(dt.UTC))
    query = query.order_by(LedgerEntry.federation_id.is_not(None), LedgerEntry.federation_id,
                           LedgerEntry.user_id, LedgerEntry.dataset_id, LedgerEntry.chain_seq,
                           LedgerEntry.id)
    yield from conn.execute(query.execution_options(yield_per=1000))


def _events(row: Row[Any] | dict[str, Any]) -> list[PrivacyEvent] | None:
    """The events a charged entry adds to the stored composition (None: it adds its request,
    as the composition's backfill did for entries that recorded no events)."""
    events = row["events"] if isinstance(row, dict) else row.privacy_events
    return events_from_json(events) if events else None


@dataclass
class Report:
    chains: int = 0
    entries: int = 0
    problems: list[Problem] = field(default_factory=list)
    heads: list[Anchor] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


class LedgerVerifier:
    """Checks export-shaped lines (see ledger_chain.ChainChecker) against their anchors."""

    def __init__(self, *, start_anywhere: bool = False) -> None:
        self.checker = ChainChecker(start_anywhere=start_anywhere)
        self.anchors: dict[str, Anchor] = {}
        self._compositions: dict[str, StoredComposition] = {}
        self.entries = 0

    def anchor(self, anchor: Anchor) -> None:
        self.anchors[anchor.chain] = anchor

    def pin(self, chain: str, count: int, head: str) -> None:
        self.checker.pin(chain, count, head)

    def add(self, line: dict[str, Any]) -> None:
        self.entries += 1
        self.checker.add(line)
        anchor = self.anchors.get(str(line.get("chain")))
        if anchor is None or anchor.composition is None or line.get("period") != anchor.period \
                or line.get("kind") != "query":
            return
        composition = self._compositions.get(anchor.chain, StoredComposition())
        events = _events(line)
        if events is None:
            composition = StoredComposition(
                composition.basic_epsilon + int(line["epsilon_requested"]),
                composition.basic_delta + int(line["delta_requested"]),
                composition.pure_epsilon + int(line["epsilon_requested"]),
                composition.pure_delta + int(line["delta_requested"]), composition.gaussian_rho)
        else:
            composition = composition.plus(events)
        self._compositions[anchor.chain] = composition

    def finish(self, *, partial: bool = False) -> Report:
        """`partial`: the entries are those since a time; a chain none of whose entries came
        is not checked (there is nothing to check it with)."""
        c = self.checker
        for name, anchor in self.anchors.items():
            if partial and name not in c.totals:
                continue
            c.check_head(name, count=anchor.count, head=anchor.head)
            if name not in c.partial:
                c.check_spent(name, period=anchor.period, epsilon_spent=anchor.epsilon_spent,
                              delta_spent=anchor.delta_spent,
                              lifetime_epsilon=anchor.lifetime_epsilon,
                              lifetime_delta=anchor.lifetime_delta)
                got = self._compositions.get(name, StoredComposition())
                if anchor.composition is not None and got != anchor.composition:
                    c.problems.append(Problem(
                        name, None, f"the stored composition {anchor.composition} differs from "
                        f"the one its period-{anchor.period} entries give, {got}"))
        for name in sorted(set(c.totals) - set(self.anchors)):
            c.problems.append(Problem(name, None, "entries of a chain with no budget row"))
        c.check_pins()
        return Report(len(self.anchors), self.entries, list(c.problems),
                      list(self.anchors.values()))


def verify_database(db: Database, pins: Sequence[tuple[str, int, str]] = ()) -> Report:
    with snapshot(db) as conn:
        verifier = LedgerVerifier()
        for anchor in anchors(conn).values():
            verifier.anchor(anchor)
        for chain, count, head in pins:
            verifier.pin(chain, count, head)
        for row in entry_rows(conn):
            verifier.add(entry_line(row))
        return verifier.finish()


def export_lines(db: Database, *, chain: str | None = None,
                 since: dt.datetime | None = None) -> Iterator[dict[str, Any]]:
    """The export: a header line, one "head" line per budget (its anchor), then its entries in
    chain order, all from one snapshot. Memory: the anchors, not the entries."""
    with snapshot(db) as conn:
        yield {"type": "export", "format": FORMAT, "chain": chain,
               "since": since and since.isoformat()}
        for anchor in anchors(conn, chain).values():
            yield anchor.as_line()
        for row in entry_rows(conn, chain=chain, since=since):
            yield entry_line(row)


def verify_export(lines: Iterable[dict[str, Any]],
                  pins: Sequence[tuple[str, int, str]] = ()) -> Report:
    """Verify an export with no database: its head lines anchor its chains. In an export `since`
    a time, a chain may start after seq 1: its links and head are checked, not its sums."""
    verifier: LedgerVerifier | None = None
    partial = False
    for line in lines:
        if verifier is None:
            if line.get("type") != "export":
                raise ValueError("not a ledger export: the first line is not its header")
            partial = line.get("since") is not None
            verifier = LedgerVerifier(start_anywhere=partial)
            for chain, count, head in pins:
                verifier.pin(chain, count, head)
        elif line.get("type") == "head":
            verifier.anchor(Anchor(
                str(line["chain"]), int(line["count"]), str(line["head"]), int(line["period"]),
                int(line["epsilon_spent"]), int(line["delta_spent"]),
                line.get("lifetime_epsilon_spent"), line.get("lifetime_delta_spent"), None))
        else:
            verifier.add(line)
    if verifier is None:
        raise ValueError("an empty file is not a ledger export")
    return verifier.finish(partial=partial)
