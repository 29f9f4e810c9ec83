"""O(1) accounting: the composition stored on the budget row, over the real API and databases.

- every charge's spend equals a full recomposition of the ledger (the pre-O(1) algorithm);
- a Gaussian charge and an estimate read no ledger rows and run the same statements after
  many earlier queries as after one (a work test, not a timing test);
- the migration backfills the composition of existing budgets from their ledger;
- a budget's delta is capped (422, nothing created or changed), configurably.
"""

from __future__ import annotations

import random
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, event, insert, select, text

from mechanisms import PrivacyEvent, PrivacySpent, privacy_events_for, total_spent
from privacy_api.domain.units import delta_units, delta_value, eps_units, eps_value
from privacy_api.runtime.config import ConfigError, load_settings
from privacy_api.services import ledger
from privacy_api.services.datasets import schema_of
from privacy_api.services.query_plan import build_plan, fingerprint
from privacy_api.services.release import query_cost
from privacy_api.storage.migrate import upgrade
from privacy_api.storage.models import Budget, Dataset, LedgerEntry, User
from tests.conftest import MASTER_KEY, PG_URL, _pg_reason, _sa_url, make_app
from tests.helpers import Api, patient_rows

D = Decimal


def _setup(app: Any, *, epsilon: float = 1e6, delta: float = 1e-3) -> tuple[Api, int, str, int, str]:
    api = Api(app)
    _, admin = api.user("root", "admin")
    _, owner = api.user("own", "owner")
    aid, analyst = api.user("ana", "analyst")
    ds = api.dataset(owner, rows=patient_rows(300))
    resp = api.as_(admin).put(f"/v1/budgets/{aid}/{ds}", json={"epsilon": epsilon, "delta": delta})
    assert resp.status_code == 200, resp.get_json()
    return api, aid, analyst, ds, admin


def _budget(app: Any) -> Budget:
    with app.extensions["privacy_api"].db.transaction() as s:
        b = s.scalar(select(Budget))
        assert b is not None
        s.expunge(b)
        return b


def _recompose(app: Any, delta_budget: Decimal) -> tuple[int, int]:
    """The spend as the service computed it before the composition was stored: each charge
    recomposes the whole charged history (total_spent), chained through `at_least`; a query
    without Gaussian noise adds its (epsilon, delta)."""
    with app.extensions["privacy_api"].db.transaction() as s:
        entries = s.scalars(select(LedgerEntry).where(LedgerEntry.replay_of.is_(None))
                            .order_by(LedgerEntry.created_at)).all()
        histories = [(e.mechanism, ledger.events_from_json(e.privacy_events)) for e in entries]
    spent = (0, 0)
    history: list[PrivacyEvent] = []
    for mechanism, events in histories:
        history.extend(events)
        if mechanism != "gaussian":
            spent = (spent[0] + sum(eps_units(e.epsilon * e.count) for e in events),
                     spent[1] + sum(delta_units(e.delta * e.count) for e in events))
            continue
        floor = PrivacySpent(eps_value(spent[0]), delta_value(spent[1]))
        total = total_spent(history, delta_budget=delta_budget, at_least=floor)
        spent = (eps_units(total.epsilon), delta_units(total.delta))
    return spent


def _random_spec(rng: random.Random) -> dict[str, Any]:
    eps = round(rng.uniform(0.01, 1.5), 3)
    aggregate = rng.choice(["count", "sum", "mean", "variance", "histogram"])
    spec: dict[str, Any] = {"aggregate": aggregate, "epsilon": eps}
    if aggregate != "count":
        spec["column"] = "cost"
    if aggregate == "histogram":
        spec["bins"] = 4
    if rng.random() < 0.6:
        spec.update(mechanism="gaussian", delta=rng.choice([1e-9, 1e-7, 1e-6, 1e-5]))
    return spec


def test_every_charge_equals_a_full_recomposition_of_the_ledger(app):
    api, _, analyst, ds, _ = _setup(app)
    rng = random.Random(20261201)
    for i in range(40):
        spec = _random_spec(rng)
        spec["where"] = [{"column": "age", "op": ">=", "value": i}]  # distinct: no replays
        if spec.get("mechanism") == "gaussian":
            est = api.as_(analyst).post(f"/v1/datasets/{ds}/query/estimate", json=spec).get_json()
            before = _budget(app)
        resp = api.as_(analyst).post(f"/v1/datasets/{ds}/query", json=spec)
        assert resp.status_code == 200, resp.get_json()
        b = _budget(app)
        assert (b.epsilon_spent, b.delta_spent) == _recompose(app, D("1e-3")), i
        if spec.get("mechanism") == "gaussian":  # the estimate predicted the charge exactly
            assert est["epsilon"] == float(eps_value(b.epsilon_spent - before.epsilon_spent))
            assert resp.get_json()["epsilon_spent"] == est["epsilon"]


def _charge_directly(app: Any, user_id: int, dataset_id: int, specs: list[dict[str, Any]]) -> None:
    """Seed the ledger through the service's own charge (no HTTP, no answers): as fast as a
    charge is, so 10,000 earlier queries take seconds."""
    st = app.extensions["privacy_api"]
    with st.db.transaction(immediate=True) as session:
        user = session.get(User, user_id)
        dataset = session.get(Dataset, dataset_id)
        assert user is not None and dataset is not None
        schema = schema_of(dataset)
        for spec in specs:
            mech = spec.get("mechanism", "laplace")
            eps, delta = D(str(spec["epsilon"])), D(str(spec.get("delta", 0)))
            plan = build_plan(schema, spec)
            cost = query_cost(plan, schema, mechanism=mech, epsilon=eps, delta=delta)
            ledger.charge(session, user, dataset_id, dataset.version, plan,
                          fingerprint(plan, mech, str(eps), str(delta)), mech, cost)


@contextmanager
def _statements(app: Any) -> Iterator[list[str]]:
    engine = app.extensions["privacy_api"].db.engine
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(re.sub(r"\s+", " ", statement))

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def _reads_of_ledger(statements: list[str]) -> list[str]:
    return [s for s in statements if s.lstrip().upper().startswith("SELECT")
            and "ledger_entries" in s and "LIMIT" not in s.upper()]


def test_gaussian_charge_and_estimate_do_the_same_work_after_many_queries(app):
    api, aid, analyst, ds, _ = _setup(app)
    rng = random.Random(7)
    gaussian = {"aggregate": "mean", "column": "cost", "mechanism": "gaussian", "epsilon": 0.1,
                "delta": 1e-7}

    def measure(tag: int) -> tuple[list[str], list[str]]:
        spec = {**gaussian, "where": [{"column": "age", "op": "<", "value": 50 + tag}]}
        with _statements(app) as est:
            assert api.as_(analyst).post(f"/v1/datasets/{ds}/query/estimate",
                                         json=spec).status_code == 200
        with _statements(app) as charge:
            assert api.as_(analyst).post(f"/v1/datasets/{ds}/query", json=spec).status_code == 200
        return est, charge

    _charge_directly(app, aid, ds, [_random_spec(rng)])
    # warm: the first answer decrypts the dataset into the column cache, and a first mean
    # builds the derived arrays it reads (each build then checks the host's cache bound)
    assert api.as_(analyst).post(f"/v1/datasets/{ds}/query",
                                 json={"aggregate": "count", "epsilon": 0.1}).status_code == 200
    assert api.as_(analyst).post(f"/v1/datasets/{ds}/query", json={
        **gaussian, "where": [{"column": "age", "op": "<", "value": 49}]}).status_code == 200
    est_1, charge_1 = measure(0)
    _charge_directly(app, aid, ds, [_random_spec(rng) for _ in range(200)])
    est_n, charge_n = measure(1)
    assert _budget(app).queries == 205
    # The same statements (ledger length does not change the work), and none reads the
    # ledger's history; the only ledger SELECT is the indexed replay lookup (LIMIT 1).
    assert est_1 == est_n and charge_1 == charge_n
    assert _reads_of_ledger(est_n + charge_n) == []
    assert (_budget(app).epsilon_spent, _budget(app).delta_spent) == _recompose(app, D("1e-3"))


# -- migration backfill --------------------------------------------------------------------

@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def fresh_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh.sqlite3'}"
        return
    reason = _pg_reason()
    if reason:
        pytest.skip(reason)
    schema = f"mig_{uuid.uuid4().hex[:12]}"
    base = _sa_url(PG_URL)
    engine = create_engine(base)
    with engine.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{base}?options=-csearch_path%3D{schema}"
    finally:
        with engine.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        engine.dispose()


def test_migration_backfills_the_composition_from_the_ledger(fresh_url):
    upgrade(fresh_url, "0002")
    engine = create_engine(fresh_url)
    rng = random.Random(11)
    histories: dict[int, list[tuple[str, tuple[PrivacyEvent, ...]]]] = {1: [], 2: []}
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO users (id, name, role, disabled) VALUES "
                          "(1, 'own', 'owner', false), (2, 'a1', 'analyst', false), "
                          "(3, 'a2', 'analyst', false)"))
        conn.execute(text("INSERT INTO datasets (id, name, owner_id, columns, privacy_unit_max_rows,"
                          " epsilon_spent, delta_spent, rows, version, key_version) VALUES "
                          "(1, 'd', 1, '[]', 1, 0, 0, 0, 0, 1)"))
        conn.execute(text("INSERT INTO budgets (id, user_id, dataset_id, epsilon_total, delta_total,"
                          " epsilon_spent, delta_spent, queries, frozen, updated_at) VALUES "
                          "(1, 2, 1, 1, 1, 0, 0, 0, false, CURRENT_TIMESTAMP), "
                          "(2, 3, 1, 1, 1, 0, 0, 0, false, CURRENT_TIMESTAMP)"))
        for i in range(120):
            user = rng.choice([2, 3])
            spec = _random_spec(rng)
            mech = spec.get("mechanism", "laplace")
            eps, delta = D(str(spec["epsilon"])), D(str(spec.get("delta", 0)))
            events = privacy_events_for(spec["aggregate"], epsilon=eps, delta=delta,
                                        mechanism=mech)
            replay = i % 10 == 9  # replays are free: the backfill must skip them
            conn.execute(insert(LedgerEntry.__table__).values(
                id=str(uuid.uuid4()), user_id=user, dataset_id=1, dataset_version=0,
                fingerprint=f"f{i}", aggregate=spec["aggregate"], plan={}, mechanism=mech,
                epsilon_requested=eps_units(eps), delta_requested=delta_units(delta),
                epsilon_charged=0, delta_charged=0,
                privacy_events=[] if replay else ledger.events_to_json(events),
                replay_of="x" if replay else None))
            if not replay:
                histories[user - 1].append((mech, events))
    upgrade(fresh_url)
    with engine.begin() as conn:
        rows = {r.id: r for r in conn.execute(select(Budget.__table__))}
    engine.dispose()
    for budget_id, history in histories.items():
        expected = ledger.StoredComposition()
        for _, events in history:
            expected = expected.plus(events)
        got = rows[budget_id]
        assert (got.basic_epsilon, got.basic_delta, got.pure_epsilon, got.pure_delta,
                D(got.gaussian_rho)) == (expected.basic_epsilon, expected.basic_delta,
                                         expected.pure_epsilon, expected.pure_delta,
                                         expected.gaussian_rho)
        assert expected.gaussian_rho > 0 and expected.pure_epsilon > 0
        # and the stored composition gives the full recomposition's epsilon
        events = [e for _, evs in history for e in evs]
        full = total_spent(events, delta_budget=D("1e-3"))
        assert expected.spent(D("1e-3"), (0, 0)) == (eps_units(full.epsilon),
                                                     delta_units(full.delta))


# -- the delta cap ---------------------------------------------------------------------------

def test_a_budget_delta_above_the_cap_is_refused_and_nothing_is_created(app):
    api = Api(app)
    _, admin = api.user("root", "admin")
    _, owner = api.user("own", "owner")
    aid, analyst = api.user("ana", "analyst")
    ds = api.dataset(owner, rows=patient_rows(10))
    path = f"/v1/budgets/{aid}/{ds}"
    for delta in (0.0011, 0.5, 0.999999):
        resp = api.as_(admin).put(path, json={"epsilon": 1, "delta": delta})
        assert resp.status_code == 422, resp.get_json()
        body = resp.get_json()
        assert body["code"] == "invalid_request" and "delta" in body["details"]
    assert api.as_(admin).get("/v1/budgets").get_json() == []
    assert api.as_(admin).put(path, json={"epsilon": 1, "delta": 0.001}).status_code == 200
    # raising an existing budget's delta above the cap changes nothing
    resp = api.as_(admin).put(path, json={"epsilon": 5, "delta": 0.002})
    assert resp.status_code == 422
    [b] = api.as_(admin).get("/v1/budgets").get_json()
    assert (b["epsilon_total"], b["delta_total"]) == (1, 0.001)


def test_the_delta_cap_is_configurable(db_url, monkeypatch):
    monkeypatch.setenv("PRIVACY_API_MAX_BUDGET_DELTA", "0.01")
    app = make_app(db_url)
    try:
        assert app.extensions["privacy_api"].settings.max_budget_delta == D("0.01")
        api = Api(app)
        _, admin = api.user("root", "admin")
        _, owner = api.user("own", "owner")
        aid, _ = api.user("ana", "analyst")
        ds = api.dataset(owner, rows=patient_rows(10))
        assert api.as_(admin).put(f"/v1/budgets/{aid}/{ds}",
                                  json={"epsilon": 1, "delta": 0.005}).status_code == 200
        assert api.as_(admin).put(f"/v1/budgets/{aid}/{ds}",
                                  json={"epsilon": 1, "delta": 0.02}).status_code == 422
    finally:
        app.extensions["privacy_api"].cache.close()
        app.extensions["privacy_api"].db.dispose()


@pytest.mark.parametrize("raw", ["abc", "1", "-0.1", "NaN"])
def test_an_unusable_delta_cap_stops_start_up(monkeypatch, tmp_path, raw):
    monkeypatch.setenv("PRIVACY_API_MAX_BUDGET_DELTA", raw)
    with pytest.raises(ConfigError, match="PRIVACY_API_MAX_BUDGET_DELTA"):
        load_settings(str(tmp_path), {"master_keys": [MASTER_KEY], "database_url": "sqlite://"})
