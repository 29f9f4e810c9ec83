"""`privacy-api verify-ledger` passes an intact ledger and names each kind of tampering.

Every test builds a real ledger over HTTP (tests/ledger/conftest.py), tampers with the
database directly as an operator with SQL access could, and runs the CLI against it."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest
from sqlalchemy import Engine, select, text, update

from privacy_api.domain import ledger_chain
from privacy_api.services.ledger import sealed
from privacy_api.storage.models import Budget, LedgerEntry
from tests.ledger.conftest import Ledger, verify_cli


def _engine(book: Ledger) -> Engine:
    engine: Engine = book.api.app.extensions["privacy_api"].db.engine
    return engine


def _chain(book: Ledger, k: int = 0) -> list[Any]:
    uid = book.analysts[k][0]
    with _engine(book).connect() as conn:
        return list(conn.execute(select(LedgerEntry.__table__)
                                 .where(LedgerEntry.user_id == uid,
                                        LedgerEntry.dataset_id == book.ds)
                                 .order_by(LedgerEntry.chain_seq)))


def _tamper(book: Ledger, *statements: Any) -> None:
    with _engine(book).begin() as conn:
        for statement in statements:
            conn.execute(statement)


def _fails(db_url: str, *needles: str) -> str:
    result = verify_cli(db_url)
    assert result.exit_code == 1, result.output
    for needle in needles:
        assert needle in result.output, result.output
    return result.output


def test_an_intact_ledger_verifies(ledger: Ledger, db_url: str):
    result = verify_cli(db_url, "--heads")
    assert result.exit_code == 0, result.output
    entries = _chain(ledger, 0) + _chain(ledger, 1)
    assert len(entries) == 2 * 7  # 4 counts, a replay, a Gaussian mean, a SQL statement each
    assert f"ledger verified: {len(entries)} entries in 2 chains" in result.output
    chain = ledger_chain.budget_chain(ledger.analysts[0][0], ledger.ds)
    assert ledger_chain.pin_line(chain, 7, _chain(ledger, 0)[-1].entry_hash) in result.stdout
    # every kind of charge is chained in order: seq 1..n, each prev the hash before
    rows = _chain(ledger, 0)
    assert [r.chain_seq for r in rows] == list(range(1, 8))
    assert rows[0].prev_hash == ledger_chain.GENESIS
    assert all(b.prev_hash == a.entry_hash for a, b in zip(rows, rows[1:], strict=False))
    assert {r.replay_of is not None for r in rows} == {True, False}


def test_a_changed_amount_is_caught(ledger: Ledger, db_url: str):
    victim = _chain(ledger, 0)[2]
    _tamper(ledger, update(LedgerEntry).where(LedgerEntry.id == victim.id)
            .values(epsilon_charged=victim.epsilon_charged - 1))
    out = _fails(db_url, f"entry {victim.id}", "seq 3: stored hash", "a hashed field was changed")
    assert "spent (epsilon, delta)" in out  # and the budget no longer sums to its entries


def test_a_changed_time_is_caught(ledger: Ledger, db_url: str):
    victim = _chain(ledger, 1)[1]
    _tamper(ledger, update(LedgerEntry).where(LedgerEntry.id == victim.id)
            .values(created_at=victim.created_at - dt.timedelta(hours=3)))
    _fails(db_url, f"entry {victim.id}", "seq 2: stored hash")


def test_swapped_order_is_caught(ledger: Ledger, db_url: str):
    a, b = _chain(ledger, 0)[1:3]
    _tamper(ledger,
            update(LedgerEntry).where(LedgerEntry.id == a.id).values(chain_seq=-1),
            update(LedgerEntry).where(LedgerEntry.id == b.id).values(chain_seq=a.chain_seq),
            update(LedgerEntry).where(LedgerEntry.id == a.id).values(chain_seq=b.chain_seq))
    _fails(db_url, f"entry {b.id}", "seq 2: stored hash", f"entry {a.id}")


def test_a_deleted_entry_is_caught(ledger: Ledger, db_url: str):
    victim = _chain(ledger, 0)[3]
    _tamper(ledger, LedgerEntry.__table__.delete().where(LedgerEntry.id == victim.id))
    nxt = _chain(ledger, 0)[3]
    _fails(db_url, f"entry {nxt.id}", "seq 5 where 4 was expected",
           "deleted, inserted or reordered")


def test_a_deleted_tail_is_caught(ledger: Ledger, db_url: str):
    rows = _chain(ledger, 1)
    _tamper(ledger, LedgerEntry.__table__.delete().where(
        LedgerEntry.id.in_([r.id for r in rows[-2:]])))
    # the shorter chain is internally valid: only the budget row's anchor shows the cut
    _fails(db_url, "the budget row records 7 entries", "the entries give 5",
           "entries deleted or added at the end")


def test_a_forged_entry_is_caught_even_with_a_valid_hash(ledger: Ledger, db_url: str):
    rows = _chain(ledger, 0)
    last = rows[-1]
    chain = ledger_chain.budget_chain(last.user_id, last.dataset_id)
    forged = {c: getattr(last, c) for c in LedgerEntry.__table__.columns.keys()}
    forged.update(id=str(uuid.uuid4()), epsilon_charged=0, delta_charged=0,
                  created_at=last.created_at + dt.timedelta(seconds=1))
    _tamper(ledger, LedgerEntry.__table__.insert().values(
        sealed(forged, chain, last.chain_seq + 1, last.entry_hash)))
    _fails(db_url, "the budget row records 7 entries", "the entries give 8")


def test_a_forged_entry_in_the_middle_is_caught(ledger: Ledger, db_url: str):
    mid = _chain(ledger, 0)[2]
    forged = {c: getattr(mid, c) for c in LedgerEntry.__table__.columns.keys()}
    forged["id"] = str(uuid.uuid4())
    _tamper(ledger, LedgerEntry.__table__.insert().values(forged))
    _fails(db_url, "where 4 was expected")


@pytest.mark.parametrize("column", ["epsilon_spent", "lifetime_epsilon_spent", "gaussian_rho",
                                    "ledger_head"])
def test_a_changed_budget_row_is_caught(ledger: Ledger, db_url: str, column: str):
    uid = ledger.analysts[1][0]
    where = (Budget.user_id == uid) & (Budget.dataset_id == ledger.ds)
    if column == "gaussian_rho":
        value: Any = text("'0'")
    elif column == "ledger_head":
        value = "f" * 64
    else:
        value = getattr(Budget, column) - 10**11  # 0.1 epsilon off the books
    _tamper(ledger, update(Budget).where(where).values({column: value}))
    expected = {"epsilon_spent": "spent (epsilon, delta) =",
                "lifetime_epsilon_spent": "lifetime spent", "gaussian_rho": "stored composition",
                "ledger_head": "with head " + "f" * 64}[column]
    _fails(db_url, ledger_chain.budget_chain(uid, ledger.ds), expected)


def test_rewriting_the_whole_history_is_caught_by_a_pinned_head(ledger: Ledger, db_url: str,
                                                                tmp_path):
    """An operator who rewrites an entry (here: backdates the first query by a day) and
    recomputes every later hash and the budget row's head passes the plain check; a head
    pinned before the rewrite catches it."""
    pins = tmp_path / "pins.txt"
    result = verify_cli(db_url, "--heads")
    pins.write_text(result.stdout)
    rows = _chain(ledger, 0)
    chain = ledger_chain.budget_chain(rows[0].user_id, rows[0].dataset_id)
    statements: list[Any] = []
    head = ledger_chain.GENESIS
    for row in rows:
        values = {c: getattr(row, c) for c in LedgerEntry.__table__.columns.keys()}
        if row.chain_seq == 1:
            values["created_at"] = row.created_at - dt.timedelta(days=1)
        values = sealed(values, chain, row.chain_seq, head)
        head = values["entry_hash"]
        statements.append(update(LedgerEntry).where(LedgerEntry.id == row.id).values(
            created_at=values["created_at"], prev_hash=values["prev_hash"], entry_hash=head))
    statements.append(update(Budget).where(Budget.user_id == rows[0].user_id,
                                           Budget.dataset_id == ledger.ds).values(ledger_head=head))
    _tamper(ledger, *statements)
    assert verify_cli(db_url).exit_code == 0  # a consistent rewrite: what pinning is for
    result = verify_cli(db_url, "--pinned", str(pins))
    assert result.exit_code == 1
    assert f"{chain} entry {rows[-1].id}: seq 7 hashes to" in result.output
    assert "history rewritten since the pin" in result.output
