"""Revision ledger_chain_a1 chains the entries written before it, in their order, and anchors
each chain in its budget row: the upgraded ledger verifies, and tampering with it is caught."""

from __future__ import annotations

import uuid

from sqlalchemy import create_engine, insert, select, text, update

from privacy_api.storage.migrate import upgrade
from privacy_api.storage.models import Budget, LedgerEntry
from tests.ledger.conftest import verify_cli


def test_the_migration_backfills_verifiable_chains(tmp_path):
    url = f"sqlite:///{tmp_path}/old.sqlite3"
    upgrade(url, "fed_consistency_b1")
    engine = create_engine(url)
    old_entries = LedgerEntry.__table__.c
    columns = [old_entries[c] for c in (
        "id", "user_id", "dataset_id", "dataset_version", "fingerprint", "aggregate", "plan",
        "mechanism", "epsilon_requested", "delta_requested", "epsilon_charged", "delta_charged",
        "privacy_events", "replay_of", "created_at")]
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO users (id, name, role, disabled) VALUES "
                          "(1, 'own', 'owner', false), (2, 'a1', 'analyst', false)"))
        conn.execute(text("INSERT INTO datasets (id, name, owner_id, columns, privacy_unit_max_rows,"
                          " epsilon_spent, delta_spent, rows, version, key_version) VALUES "
                          "(1, 'd', 1, '[]', 1, 3000000000000, 0, 0, 0, 1)"))
        conn.execute(text("INSERT INTO budgets (id, user_id, dataset_id, epsilon_total, delta_total,"
                          " epsilon_spent, delta_spent, queries, frozen, updated_at, basic_epsilon,"
                          " pure_epsilon) VALUES (1, 2, 1, 5000000000000, 0, 3000000000000, 0, 3,"
                          " false, CURRENT_TIMESTAMP, 3000000000000, 3000000000000)"))
        for i in range(3):
            conn.execute(insert(LedgerEntry.__table__).from_select(columns, select(
                *(text(f":{c.name}") for c in columns))), {
                "id": str(uuid.uuid4()), "user_id": 2, "dataset_id": 1, "dataset_version": 0,
                "fingerprint": f"f{i}", "aggregate": "count", "plan": "{}", "mechanism": "laplace",
                "epsilon_requested": 10**12, "delta_requested": 0, "epsilon_charged": 10**12,
                "delta_charged": 0, "privacy_events": '[["1", "0", null, 1]]', "replay_of": None,
                "created_at": f"2026-01-0{i + 1} 10:00:00.000000"})
    upgrade(url)
    with engine.connect() as conn:
        rows = conn.execute(select(LedgerEntry.__table__).order_by(LedgerEntry.chain_seq)).all()
        budget = conn.execute(select(Budget.__table__)).one()
    assert [r.fingerprint for r in rows] == ["f0", "f1", "f2"]  # in the order they were written
    assert [r.chain_seq for r in rows] == [1, 2, 3]
    assert budget.ledger_count == 3 and budget.ledger_head == rows[-1].entry_hash
    assert budget.lifetime_epsilon_spent == 3 * 10**12
    result = verify_cli(url)
    assert result.exit_code == 0, result.output
    with engine.begin() as conn:
        conn.execute(update(LedgerEntry).where(LedgerEntry.fingerprint == "f1")
                     .values(epsilon_charged=0))
    assert verify_cli(url).exit_code == 1
    engine.dispose()
