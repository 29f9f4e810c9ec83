"""The ledger's hash chain: what one entry's hash covers, and a checker anyone can run.

Pure (no database, no Flask): the service, the `verify-ledger` command, its offline
`--export` mode and the migration that backfilled old rows all hash through `entry_hash`, so
an auditor holding only an NDJSON export recomputes exactly what the server computed.

Each budget (an analyst's budget on a dataset, or a federation's budget) has its own chain:
entry n carries seq n and the hash of entry n-1 (GENESIS for the first), and the budget row
stores the newest hash and the entry count. The hash is plain SHA-256 (no server secret) over
a canonical encoding: orjson with sorted keys of integers and strings only. Amounts are the
integer units the ledger stores (epsilon in 1e-12, delta in 1e-18, privacy_units.py), so they
hash exactly; times are UTC microseconds as text.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

FORMAT = 1
GENESIS = "0" * 64
# The fields a hash covers, in the export's vocabulary. Not covered, because the service
# legitimately writes them after the charge: the encrypted answer, and the dataset version
# (rewritten when an upload lands between charge and compute).
HASHED_FIELDS = ("v", "chain", "seq", "prev_hash", "id", "kind", "user_id", "fingerprint",
                 "aggregate", "mechanism", "epsilon_requested", "delta_requested",
                 "epsilon_charged", "delta_charged", "events", "period", "replay_of",
                 "round_id", "created_at")


def budget_chain(user_id: int, dataset_id: int) -> str:
    return f"budget/{user_id}/{dataset_id}"


def federation_chain(federation_id: int) -> str:
    return f"federation/{federation_id}"


def canonical_time(value: dt.datetime) -> str:
    """UTC, microseconds, no offset: SQLite gives back naive UTC, PostgreSQL aware; both hash
    alike."""
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC).replace(tzinfo=None)
    return value.isoformat(sep=" ", timespec="microseconds")


def entry_kind(replay_of: str | None, round_id: int | None) -> str:
    if round_id is not None:
        return "federated_round"
    return "replay" if replay_of is not None else "query"


def entry_hash(payload: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the canonical encoding of the HASHED_FIELDS of `payload`."""
    body = {name: payload[name] for name in HASHED_FIELDS}
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


def payload(*, chain: str, seq: int, prev_hash: str, id: str, user_id: int, fingerprint: str,
            aggregate: str, mechanism: str, epsilon_requested: int, delta_requested: int,
            epsilon_charged: int, delta_charged: int, events: list[list[Any]], period: int,
            replay_of: str | None, round_id: int | None, created_at: dt.datetime | str
            ) -> dict[str, Any]:
    """The hashed fields of one entry (an export line is this plus its "hash")."""
    return {
        "v": FORMAT, "chain": chain, "seq": seq, "prev_hash": prev_hash, "id": id,
        "kind": entry_kind(replay_of, round_id), "user_id": user_id, "fingerprint": fingerprint,
        "aggregate": aggregate, "mechanism": mechanism,
        "epsilon_requested": epsilon_requested, "delta_requested": delta_requested,
        "epsilon_charged": epsilon_charged, "delta_charged": delta_charged,
        # decimal strings and floats as stored; orjson writes a float as its shortest repr,
        # which round-trips, so the bytes are the same whoever re-encodes them
        "events": events, "period": period, "replay_of": replay_of, "round_id": round_id,
        "created_at": created_at if isinstance(created_at, str) else canonical_time(created_at),
    }


@dataclass(frozen=True)
class Problem:
    chain: str
    entry: str | None  # entry id, or None for a problem of the budget row
    message: str

    def __str__(self) -> str:
        where = f"{self.chain} entry {self.entry}" if self.entry else self.chain
        return f"{where}: {self.message}"


@dataclass
class ChainTotals:
    """What one chain's entries add up to (sums in integer units)."""

    count: int = 0
    head: str = GENESIS
    epsilon: int = 0  # lifetime: every entry, basic composition across periods
    delta: int = 0
    by_period: dict[int, tuple[int, int]] = field(default_factory=dict)


class ChainChecker:
    """Feed entries (export-shaped dicts) in seq order per chain; collects problems.

    Checks each entry's hash, that seq runs 1, 2, 3... without gap or repeat, and that each
    prev_hash is the hash of the entry before. `start_anywhere` accepts a chain whose first
    entry seen is not seq 1 (an export filtered by `since`): its links are checked from there.
    """

    def __init__(self, *, start_anywhere: bool = False) -> None:
        self.totals: dict[str, ChainTotals] = {}
        self.problems: list[Problem] = []
        self.partial: set[str] = set()
        self._start_anywhere = start_anywhere
        self._pins: dict[str, tuple[int, str]] = {}
        self._pins_seen: set[str] = set()

    def pin(self, chain: str, count: int, head: str) -> None:
        """A head published earlier (`pin_line`): the chain's entry `count` must still hash to
        `head`, however the chain has grown since. Rewriting history (even recomputing every
        hash after it) changes that entry's hash or removes it."""
        self._pins[chain] = (count, head)

    def add(self, entry: Mapping[str, Any]) -> None:
        chain, seq, entry_id = str(entry.get("chain")), entry.get("seq"), entry.get("id")
        missing = [name for name in HASHED_FIELDS if name not in entry]
        if missing or "hash" not in entry:
            self.problems.append(Problem(chain, entry_id, f"missing fields {missing or ['hash']}"))
            return
        totals = self.totals.get(chain)
        if totals is None:
            totals = self.totals[chain] = ChainTotals()
            if self._start_anywhere and seq != 1 and isinstance(seq, int):
                self.partial.add(chain)
                totals.count, totals.head = seq - 1, entry["prev_hash"]
        recomputed = entry_hash(entry)
        if recomputed != entry["hash"]:
            self.problems.append(Problem(
                chain, entry_id, f"seq {seq}: stored hash {entry['hash']} != recomputed "
                f"{recomputed} (a hashed field was changed)"))
        if seq != totals.count + 1:
            self.problems.append(Problem(
                chain, entry_id, f"seq {seq} where {totals.count + 1} was expected "
                "(an entry was deleted, inserted or reordered)"))
        elif entry["prev_hash"] != totals.head:
            self.problems.append(Problem(
                chain, entry_id, f"seq {seq}: prev_hash {entry['prev_hash']} is not the hash "
                f"of entry {totals.count} ({totals.head})"))
        pinned = self._pins.get(chain)
        if pinned is not None and seq == pinned[0]:
            self._pins_seen.add(chain)
            if entry["hash"] != pinned[1] or recomputed != pinned[1]:
                self.problems.append(Problem(
                    chain, entry_id, f"seq {seq} hashes to {recomputed}, but {pinned[1]} was "
                    "pinned for it (history rewritten since the pin)"))
        totals.count = seq if isinstance(seq, int) else totals.count + 1
        totals.head = str(entry["hash"])
        eps, delta = int(entry["epsilon_charged"]), int(entry["delta_charged"])
        totals.epsilon += eps
        totals.delta += delta
        period_eps, period_delta = totals.by_period.get(int(entry["period"]), (0, 0))
        totals.by_period[int(entry["period"])] = (period_eps + eps, period_delta + delta)

    def add_all(self, entries: Iterable[Mapping[str, Any]]) -> None:
        for entry in entries:
            self.add(entry)

    def check_pins(self) -> None:
        for chain, (count, head) in sorted(self._pins.items()):
            if chain not in self._pins_seen:
                self.problems.append(Problem(
                    chain, None, f"the pinned entry {count} ({head}) is not in the ledger "
                    "(the chain was truncated or rewritten since the pin)"))

    def check_head(self, chain: str, *, count: int, head: str) -> None:
        """The budget row's anchor: catches a deleted tail (which leaves a valid shorter chain)."""
        totals = self.totals.get(chain, ChainTotals())
        if (totals.count, totals.head) != (count, head):
            self.problems.append(Problem(
                chain, None, f"the budget row records {count} entries with head {head}, the "
                f"entries give {totals.count} with head {totals.head} (entries deleted or "
                "added at the end)"))

    def check_spent(self, chain: str, *, period: int, epsilon_spent: int, delta_spent: int,
                    lifetime_epsilon: int | None, lifetime_delta: int | None) -> None:
        """The budget row's spend against its entries: the current period's spent is the sum of
        that period's charges, the lifetime spend the sum of all."""
        totals = self.totals.get(chain, ChainTotals())
        got = totals.by_period.get(period, (0, 0))
        if got != (epsilon_spent, delta_spent):
            self.problems.append(Problem(
                chain, None, f"spent (epsilon, delta) = ({epsilon_spent}, {delta_spent}) units "
                f"in period {period}, but that period's entries sum to {got}"))
        if lifetime_epsilon is not None and lifetime_delta is not None and (
                (lifetime_epsilon, lifetime_delta) != (totals.epsilon, totals.delta)):
            self.problems.append(Problem(
                chain, None, f"lifetime spent (epsilon, delta) = ({lifetime_epsilon}, "
                f"{lifetime_delta}) units, but all entries sum to "
                f"({totals.epsilon}, {totals.delta})"))


def pin_line(chain: str, count: int, head: str) -> str:
    """One line an auditor can publish or keep: the chain's length and newest hash."""
    return f"{chain} {count} {head}"
