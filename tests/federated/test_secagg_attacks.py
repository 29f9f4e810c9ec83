"""Attacks on secure aggregation through the real app, on SQLite and PostgreSQL.

The adversary is the server's operator: it holds the master keys (so every Fernet token at rest
opens for it), reads every row and every byte of the database file, sees every request and
answer on the wire (`Operator`, an httpx transport in front of the app), and can answer each
client differently. One client colludes and hands over its secret CKKS context and its local
round state. Each test states the guarantee it attacks; the property is that the operator with
fewer than t clients learns nothing about an honest client's update beyond the aggregate.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sqlalchemy import select

import privacy_secagg as secagg
from privacy_api.crypto import he as server_he
from privacy_api.services import federated as federated_service
from privacy_api.storage.db import Base
from privacy_api.storage.models import Federation, Round, RoundShare
from privacy_client import he as sdk_he
from privacy_client.errors import Conflict
from privacy_client.federated import AggregateForged, IdentityChanged, UnmaskRefused
from privacy_client.seal_codec import data_moduli
from tests.federated.support import Keys, World, weighted_mean

N = 8192
Q = data_moduli("n8192")[0]
# 20,000 parameters: the correlation of two independent vectors is ~N(0, 1/141); |r| < 0.05
# is seven standard deviations, so an honest implementation never fails it by chance.
LONG = 20_000
CORRELATION_BOUND = 0.05


# --------------------------------------------------------------------------------------------
# The operator: wire log, lies, database


@dataclass
class Exchange:
    client: int | None  # index into World.clients; None for the owner
    method: str
    path: str
    request: bytes
    status: int
    response: bytes

    def json_request(self) -> Any:
        return json.loads(self.request)


@dataclass
class Lie:
    method: str
    pattern: str
    clients: set[int] | None  # None: every caller
    rewrite: Callable[[Any], Any]  # the answer's JSON (or bytes for non-JSON answers)
    status: int | None = None  # answer with this status instead (a server accepting anything)


@dataclass
class Operator(httpx.BaseTransport):
    """The server as its operator sees and controls it: every exchange is logged; a `Lie`
    rewrites the answers given to chosen clients (the app itself stays honest)."""

    inner: httpx.BaseTransport
    key_to_client: dict[str, int]
    log: list[Exchange] = field(default_factory=list)
    lies: list[Lie] = field(default_factory=list)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body = request.read()
        key = request.headers.get("authorization", "").removeprefix("Bearer ")
        who = self.key_to_client.get(key)
        response = self.inner.handle_request(request)
        content = response.read()
        status = response.status_code
        for lie in self.lies:
            if request.method != lie.method or not re.fullmatch(lie.pattern, request.url.path):
                continue
            if lie.clients is not None and who not in lie.clients:
                continue
            if response.headers.get("content-type", "").startswith("application/json"):
                content = json.dumps(lie.rewrite(json.loads(content))).encode()
            else:
                content = lie.rewrite(content)
            status = lie.status or status
        self.log.append(Exchange(who, request.method, request.url.path, body, status, content))
        headers = [
            (k, v)
            for k, v in response.headers.items()
            if k.lower() not in ("content-length", "content-encoding")
        ]
        return httpx.Response(status, headers=headers, content=content, request=request)

    def sent(self, method: str, pattern: str, client: int | None = None) -> list[Exchange]:
        return [
            e
            for e in self.log
            if e.method == method and re.fullmatch(pattern, e.path) and (client is None or e.client == client)
        ]


@pytest.fixture
def world(api: Any, keys: Keys) -> Iterator[World]:
    w = World.build(api, keys, clients=5)
    yield w
    w.close()


@pytest.fixture
def operator(world: World) -> Operator:
    op = Operator(world.transport, {key: i for i, (_, key) in enumerate(world.clients)})
    world.transport = op  # type: ignore[assignment] # every SDK client made from now on goes through it
    return op


def uid(world: World, i: int) -> int:
    return world.clients[i][0]


def app_state(world: World) -> Any:
    return world.api.app.extensions["privacy_api"]


def stored_sum(world: World, round_id: int) -> bytes | None:
    """The round's running sum as the operator reads it: row + master keys -> plaintext bytes."""
    st = app_state(world)
    with st.db.transaction() as s:
        rnd = s.get(Round, round_id)
        assert rnd is not None
        if rnd.running_sum is None:
            return None
        federation = s.get(Federation, rnd.federation_id)
        assert federation is not None
        return federated_service._federation_fernet(st.keyring, federation).decrypt(rnd.running_sum)


def stored_share_blobs(world: World, round_id: int) -> dict[tuple[int, int], bytes]:
    """Every relayed share blob at rest, opened with the master keys: (sender, recipient) -> blob."""
    st = app_state(world)
    with st.db.transaction() as s:
        rnd = s.get(Round, round_id)
        assert rnd is not None
        federation = s.get(Federation, rnd.federation_id)
        assert federation is not None
        fernet = federated_service._federation_fernet(st.keyring, federation)
        rows = s.scalars(select(RoundShare).where(RoundShare.round_id == round_id)).all()
        return {(r.sender_id, r.recipient_id): fernet.decrypt(r.token) for r in rows}


def local_state(world: World, i: int, round_id: int) -> dict[str, Any]:
    """A client's local round file (what a colluding client hands over)."""
    path = world.state_root / f"client-{uid(world, i)}" / f"round-{round_id}.json"
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def public_ctx(world: World) -> server_he.PublicContext:
    return server_he.load_public_context(world.keys.public)


def coefficients_of_upload(world: World, body: bytes, length: int) -> np.ndarray:
    ctx = public_ctx(world)
    bound = server_he.update_size_bound(ctx, length)
    return server_he.parse_update(ctx, body, vector_length=length, max_bytes=bound).coefficients.copy()


def decrypt_coefficients(world: World, coefficients: np.ndarray, length: int) -> np.ndarray:
    """Decrypt arbitrary ciphertext coefficients with the colluder's secret context."""
    running = server_he.RunningSum(public_ctx(world), length, coefficients.copy(), 1)
    sums = sdk_he.decrypt_sums(world.keys.secret, server_he.serialize_sum(running), length)
    return np.asarray(sums.weighted_sum)


def corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])


# --------------------------------------------------------------------------------------------
# Driving a round step by step, with the operator taking snapshots


@dataclass
class RoundRun:
    round_id: int
    federation_id: int
    updates: np.ndarray
    weights: np.ndarray
    survivors: list[int]
    snapshots: list[bytes]  # the stored running sum (decrypted with the master keys) after each upload


def run_round(
    world: World, *, length: int, drop: tuple[int, ...] = (), seed: int = 0, fed: int | None = None
) -> RoundRun:
    rng = np.random.default_rng(seed)
    updates = rng.normal(0, 1, (5, length))
    weights = rng.uniform(1, 5, 5)
    fed = fed if fed is not None else world.federation(vector_length=length, min_clients=3)
    rnd = int(world.owner.open_round(fed)["id"])
    world.prepare(rnd, range(5))
    survivors = [i for i in range(5) if i not in drop]
    snapshots = []
    for i in survivors:
        world.client(i).submit(rnd, updates[i], float(weights[i]))
        snap = stored_sum(world, rnd)
        assert snap is not None
        snapshots.append(snap)
    world.finish(rnd, survivors)
    return RoundRun(rnd, fed, updates, weights, survivors, snapshots)


def advertisements(op: Operator, round_id: int) -> dict[int, tuple[bytes, bytes]]:
    """(c_public, s_public) per client id, as relayed to the clients."""
    answers = [e for e in op.sent("GET", f"/v1/rounds/{round_id}/keys") if e.status == 200]
    keys = json.loads(answers[-1].response)["keys"]
    return {
        int(k["client_id"]): (base64.b64decode(k["c_public"]), base64.b64decode(k["s_public"])) for k in keys
    }


def unmask_messages(op: Operator, world: World, round_id: int) -> dict[int, dict[str, dict[int, bytes]]]:
    """Every unmasking message a client sent (accepted or not): responder id -> kind -> shares."""
    out: dict[int, dict[str, dict[int, bytes]]] = {}
    for e in op.sent("POST", f"/v1/rounds/{round_id}/unmask"):
        body = e.json_request()
        assert e.client is not None
        out[uid(world, e.client)] = {
            kind: {int(s["client_id"]): base64.b64decode(s["share"]) for s in body[kind]}
            for kind in ("self_seed_shares", "s_key_shares")
        }
    return out


@dataclass
class Knowledge:
    """What the operator (plus the colluders' local state) can reconstruct of a round."""

    self_seeds: dict[int, bytes]
    s_keys: dict[int, bytes]
    s_publics: dict[int, bytes]


def reconstruct_what_it_can(
    op: Operator, world: World, run: RoundRun, colluders: list[int], threshold: int
) -> Knowledge:
    ads = advertisements(op, run.round_id)
    participants = sorted(ads)
    seed_shares: dict[int, dict[int, bytes]] = {c: {} for c in participants}
    key_shares: dict[int, dict[int, bytes]] = {c: {} for c in participants}
    for responder, message in unmask_messages(op, world, run.round_id).items():
        index = secagg.share_index(participants, responder)
        for target, share in message["self_seed_shares"].items():
            seed_shares[target][index] = share
        for target, share in message["s_key_shares"].items():
            key_shares[target][index] = share
    s_keys: dict[int, bytes] = {}
    self_seeds: dict[int, bytes] = {}
    for i in colluders:
        state = local_state(world, i, run.round_id)
        mine = secagg.RoundSecrets.from_bytes(bytes.fromhex(state["secrets"]))
        s_keys[uid(world, i)] = mine.s_private
        self_seeds[uid(world, i)] = mine.self_seed
        for sender, (index, seed_hex, key_hex) in state.get("shares", {}).items():
            seed_shares[int(sender)][int(index)] = bytes.fromhex(seed_hex)
            key_shares[int(sender)][int(index)] = bytes.fromhex(key_hex)
    for c in participants:
        if c not in self_seeds and len(seed_shares[c]) >= threshold:
            self_seeds[c] = secagg.reconstruct(seed_shares[c].items(), threshold)
        if c not in s_keys and len(key_shares[c]) >= threshold:
            s_keys[c] = secagg.reconstruct_s_private(key_shares[c].items(), threshold, ads[c][1])
    return Knowledge(self_seeds, s_keys, {c: s for c, (_, s) in ads.items()})


def strip_known_masks(
    coefficients: np.ndarray, victim: int, knowledge: Knowledge, partners: list[int], binding: bytes
) -> np.ndarray:
    """Remove from one upload every mask of `victim` the operator can regenerate."""
    chunks = coefficients.shape[0]
    q = np.uint64(Q)
    c0 = coefficients[:, 0, :]

    # The SDK and the server lay a mask out as one row per ciphertext (moduli [q] * chunks).
    moduli = [Q] * chunks

    def remove(t: np.ndarray, sign: int) -> None:
        if sign > 0:  # the upload carries +term: subtract it
            np.add(c0, q - t, out=c0)
        else:
            np.add(c0, t, out=c0)
        np.minimum(c0, c0 - q, out=c0)

    if victim in knowledge.self_seeds:
        remove(secagg.expand_mask(knowledge.self_seeds[victim], moduli, N, secagg.SELF_MASK_LABEL), +1)
    for u in partners:
        if u == victim:
            continue
        if u in knowledge.s_keys:
            seed = secagg.pairwise_seed(knowledge.s_keys[u], knowledge.s_publics[victim], binding, victim, u)
        elif victim in knowledge.s_keys:
            seed = secagg.pairwise_seed(knowledge.s_keys[victim], knowledge.s_publics[u], binding, victim, u)
        else:
            continue
        remove(secagg.expand_mask(seed, moduli, N, secagg.PAIR_MASK_LABEL), +1 if u > victim else -1)
    return coefficients


def upload_of(op: Operator, round_id: int, client: int) -> bytes:
    (exchange,) = op.sent("POST", f"/v1/rounds/{round_id}/updates", client)
    return exchange.request


# --------------------------------------------------------------------------------------------
# 1. The collusion attack of the issue


@pytest.mark.parametrize("drop", [(), (3,)], ids=["no-dropout", "one-dropout"])
def test_operator_with_one_colluding_client_learns_nothing_about_the_others(
    world: World, operator: Operator, drop: tuple[int, ...]
) -> None:
    """Server + 1 client (< t = 3 of 5) read every upload, every stored snapshot of the running
    sum, every stored share blob and every unmasking message, and strip every mask they can
    regenerate: what remains of
    each honest client's upload, decrypted with the colluder's secret context, is uncorrelated
    with that client's update. With every client's secrets (a positive control, >= t) the same
    code recovers each update exactly, so the measurement can fail."""
    run = run_round(world, length=LONG, drop=drop)
    colluder = 0
    honest = [i for i in run.survivors if i != colluder]
    binding = secagg.round_binding(run.federation_id, run.round_id)
    threshold = int(world.owner.round(run.round_id)["threshold"])
    assert threshold == 3
    knowledge = reconstruct_what_it_can(operator, world, run, [colluder], threshold)
    partners = sorted(knowledge.s_publics)
    truths = {i: run.weights[i] * run.updates[i] for i in range(5)}

    # (a) Snapshots: each difference of consecutive stored sums is exactly one upload.
    previous = None
    for position, i in enumerate(run.survivors):
        snapshot = server_he.deserialize_sum(public_ctx(world), run.snapshots[position], vector_length=LONG)
        upload = coefficients_of_upload(world, upload_of(operator, run.round_id, i), LONG)
        if previous is not None:
            diff = snapshot.coefficients.astype(object) - previous.astype(object)
            assert ((diff - upload.astype(object)) % Q == 0).all()
        else:
            assert np.array_equal(snapshot.coefficients, upload)
        # A partial sum decrypts to noise, uncorrelated with the partial sum of the updates.
        partial_truth = sum(truths[j] for j in run.survivors[: position + 1])
        assert (
            abs(corr(decrypt_coefficients(world, snapshot.coefficients, LONG), partial_truth))
            < CORRELATION_BOUND
        )
        previous = snapshot.coefficients

    # (b) Uploads, raw and after stripping every mask the operator can regenerate.
    for i in honest:
        victim = uid(world, i)
        upload = coefficients_of_upload(world, upload_of(operator, run.round_id, i), LONG)
        assert abs(corr(decrypt_coefficients(world, upload, LONG), truths[i])) < CORRELATION_BOUND
        # The unmasking messages gave it every survivor's self seed, and (with a dropout)
        # the dropped client's s key: still, victim's pairwise masks with honest peers remain.
        assert victim in knowledge.self_seeds
        stripped = strip_known_masks(upload.copy(), victim, knowledge, partners, binding)
        assert abs(corr(decrypt_coefficients(world, stripped, LONG), truths[i])) < CORRELATION_BOUND

    # (c) Every share blob at rest opens with the master keys to AES-GCM only the recipient
    # can open: with the colluder's round secrets, exactly the blobs addressed to it open.
    blobs = stored_share_blobs(world, run.round_id)
    assert len(blobs) == 25
    mine = secagg.RoundSecrets.from_bytes(
        bytes.fromhex(local_state(world, colluder, run.round_id)["secrets"])
    )
    ads = advertisements(operator, run.round_id)
    for (sender, recipient), blob in blobs.items():
        if recipient == uid(world, colluder):
            secagg.open_share(blob, recipient, sender, mine, ads[sender][0], binding)
            continue
        with pytest.raises(secagg.SecAggError, match="does not authenticate"):
            secagg.open_share(blob, recipient, sender, mine, ads[sender][0], binding)

    # (d) The released aggregate is the weighted mean of the survivors: that, it may learn.
    kept = np.array(run.survivors)
    mean = world.client(colluder).aggregate(run.round_id)
    assert np.abs(mean - weighted_mean(run.updates[kept], run.weights[kept])).max() < 1e-6

    # Positive control: with every client's secrets (t or more colluders) the same stripping
    # recovers an individual update exactly.
    everyone = reconstruct_what_it_can(operator, world, run, list(range(5)), threshold)
    i = honest[0]
    upload = coefficients_of_upload(world, upload_of(operator, run.round_id, i), LONG)
    stripped = strip_known_masks(upload, uid(world, i), everyone, partners, binding)
    assert np.abs(decrypt_coefficients(world, stripped, LONG) - truths[i]).max() < 1e-6


# --------------------------------------------------------------------------------------------
# 2. Correctness with dropouts, and below the threshold


@pytest.mark.parametrize("drop", [(), (4,), (1, 3)], ids=["0-dropouts", "1-dropout", "2-dropouts"])
def test_aggregate_is_the_weighted_mean_of_the_survivors(world: World, drop: tuple[int, ...]) -> None:
    run = run_round(world, length=300, drop=drop, seed=len(drop))
    rnd = world.owner.round(run.round_id)
    assert rnd["status"] == "aggregated"
    assert sorted(rnd["dropped"]) == sorted(uid(world, i) for i in drop)
    kept = np.array(run.survivors)
    expected = weighted_mean(run.updates[kept], run.weights[kept])
    for i in run.survivors:
        assert np.abs(world.client(i).aggregate(run.round_id) - expected).max() < 1e-6


def _assert_nothing_released(world: World, round_id: int) -> None:
    rnd = world.owner.round(round_id)
    assert rnd["status"] == "failed"
    assert stored_sum(world, round_id) is None
    with pytest.raises(Conflict):
        world.client(0).aggregate(round_id)
    response = world.api.as_(world.owner_key).get(f"/v1/rounds/{round_id}/aggregate")
    assert response.status_code == 409
    assert set(response.get_json()) == {"code", "message", "details"}


def test_below_threshold_of_uploads_the_round_fails_and_releases_nothing(world: World) -> None:
    fed = world.federation(vector_length=16, min_clients=3)
    rnd = int(world.owner.open_round(fed)["id"])
    world.prepare(rnd, range(5))
    for i in (0, 1):  # t = 3: two uploads are not enough
        world.client(i).submit(rnd, np.ones(16), 1.0)
    world.owner.close_round(rnd)
    _assert_nothing_released(world, rnd)


def test_below_threshold_of_unmasking_answers_the_round_fails_and_releases_nothing(world: World) -> None:
    fed = world.federation(vector_length=16, min_clients=3)
    rnd = int(world.owner.open_round(fed)["id"])
    world.prepare(rnd, range(5))
    for i in (0, 1, 2):
        world.client(i).submit(rnd, np.ones(16), 1.0)
    world.owner.close_round(rnd)
    assert world.owner.round(rnd)["stage"] == "unmask"
    for i in (0, 1):  # two of the three survivors answer: below t = 3
        world.client(i).unmask(rnd)
    world.owner.close_round(rnd)
    _assert_nothing_released(world, rnd)


# --------------------------------------------------------------------------------------------
# 3. A server that lies about who dropped out


def _claim_dropped(victim_uid: int) -> Callable[[Any], Any]:
    def rewrite(answer: Any) -> Any:
        if answer.get("stage") == "unmask" and victim_uid in answer.get("survivors", []):
            answer["survivors"] = [c for c in answer["survivors"] if c != victim_uid]
            answer["dropped"] = sorted([*answer["dropped"], victim_uid])
        return answer

    return rewrite


def accept_and_relay_signatures(
    op: Operator,
    world: World,
    round_id: int,
    clients: set[int],
    view_of: Callable[[int], tuple[list[int], list[int]]],
) -> None:
    """A malicious server accepts every consistency signature and relays, to each client, every
    signature it captured that verifies over the view it showed that client (its best case)."""
    pinned = {uid(world, i): world.client(i)._identity_key().public_bytes() for i in range(5)}
    fed = int(world.owner.round(round_id)["federation_id"])
    binding = secagg.round_binding(fed, round_id)

    def relay_for(i: int) -> Callable[[Any], Any]:
        def rewrite(_: Any) -> Any:
            survivors, dropped = view_of(i)
            message = secagg.consistency_message(binding, survivors, dropped)
            out = []
            for e in op.sent("POST", f"/v1/rounds/{round_id}/consistency"):
                assert e.client is not None
                signer, signature = uid(world, e.client), base64.b64decode(e.json_request()["signature"])
                try:
                    secagg.verify_signature(pinned[signer], message, signature)
                except secagg.SecAggError:
                    continue
                out.append({"client_id": signer, "signature": base64.b64encode(signature).decode()})
            return {"signatures": out}

        return rewrite

    accept = {"accepted": 1}
    op.lies.append(Lie("POST", f"/v1/rounds/{round_id}/consistency", clients, lambda _: accept, 202))
    op.lies.append(Lie("POST", f"/v1/rounds/{round_id}/unmask", clients, lambda _: accept, 202))
    for i in clients:
        op.lies.append(Lie("GET", f"/v1/rounds/{round_id}/consistency", {i}, relay_for(i)))


def test_a_client_told_it_dropped_refuses_to_unmask(world: World, operator: Operator) -> None:
    fed = world.federation(vector_length=16, min_clients=3)
    rnd = int(world.owner.open_round(fed)["id"])
    world.prepare(rnd, range(5))
    for i in range(5):
        world.client(i).submit(rnd, np.ones(16), 1.0)
    operator.lies.append(Lie("GET", f"/v1/rounds/{rnd}", {2}, _claim_dropped(uid(world, 2))))
    with pytest.raises(UnmaskRefused, match="claims this client dropped"):
        world.client(2).unmask(rnd)
    assert operator.sent("POST", f"/v1/rounds/{rnd}/unmask", 2) == []


def test_a_live_client_claimed_dropped_keeps_its_update_hidden(world: World, operator: Operator) -> None:
    """The operator tells clients 0, 1, 3 that live client 2 dropped, accepts their signatures
    of that view and relays them, so they reveal client 2's s-key shares. Then it tells the
    truth to get self-seed shares: those three refuse to sign other sets, and clients 2 and 4
    alone are fewer than t. It gets s_2 but never client 2's self seed, and client 2's upload,
    stripped of every pairwise mask, stays uncorrelated with its update."""
    rng = np.random.default_rng(7)
    updates, weights = rng.normal(0, 1, (5, LONG)), rng.uniform(1, 5, 5)
    fed = world.federation(vector_length=LONG, min_clients=3)
    rnd = int(world.owner.open_round(fed)["id"])
    world.prepare(rnd, range(5))
    for i in range(5):
        world.client(i).submit(rnd, updates[i], float(weights[i]))
    if world.owner.round(rnd)["stage"] == "collect":
        world.owner.close_round(rnd)
    victim = uid(world, 2)
    everyone = sorted(uid(world, i) for i in range(5))
    lied = ([c for c in everyone if c != victim], [victim])
    liars = {0, 1, 3}
    operator.lies.append(Lie("GET", f"/v1/rounds/{rnd}", liars, _claim_dropped(victim)))
    accept_and_relay_signatures(operator, world, rnd, liars, lambda i: lied)
    revealed = set()
    for _ in range(2):  # sign, then reveal once three signatures of the lie are relayed
        for i in sorted(liars - revealed):
            if world.client(i).unmask(rnd):
                revealed.add(i)
    assert revealed == liars
    operator.lies.clear()
    # The same clients, now told the truth, answer nothing more: they already answered once.
    posted = len(operator.sent("POST", f"/v1/rounds/{rnd}/(unmask|consistency)"))
    for i in sorted(liars):
        world.client(i).unmask(rnd)
    assert len(operator.sent("POST", f"/v1/rounds/{rnd}/(unmask|consistency)")) == posted
    for i in (2, 4):  # the truth has two signatures: below t = 3, nobody reveals
        assert world.client(i).unmask(rnd) is False
    messages = unmask_messages(operator, world, rnd)
    assert set(messages) == {uid(world, i) for i in liars}
    assert all(victim not in m["self_seed_shares"] for m in messages.values())
    assert all(victim in m["s_key_shares"] for m in messages.values())
    run = RoundRun(rnd, fed, updates, weights, list(range(5)), [])
    knowledge = reconstruct_what_it_can(operator, world, run, [0], 3)
    assert victim in knowledge.s_keys and victim not in knowledge.self_seeds
    binding = secagg.round_binding(fed, rnd)
    upload = coefficients_of_upload(world, upload_of(operator, rnd, 2), LONG)
    # With s_2 it strips all of client 2's pairwise masks; the self mask remains.
    stripped = strip_known_masks(upload, victim, knowledge, sorted(knowledge.s_publics), binding)
    assert abs(corr(decrypt_coefficients(world, stripped, LONG), weights[2] * updates[2])) < CORRELATION_BOUND


def test_split_views_of_the_survivors_do_not_unmask_a_live_client(world: World, operator: Operator) -> None:
    """The operator relays to victim A (client 0) only the shares of A, B, C (t = 3, so A
    accepts), then shows A 'survivors {A, B, C}' (all it knows of), D and E 'survivors {A, D,
    E}, dropped {B, C}', C 'survivors {A, C, D}, dropped {B}' and B 'survivors {A, B, D},
    dropped {C}': each view is consistent with what that client saw, and together they would
    reveal A's self seed and the s keys of A's only partners. It accepts every signature and
    relays to each client all those over its own view. No view gathers t survivors'
    signatures, so nobody reveals anything and A's upload stays masked. (Without the
    consistency check this attack recovered A's update exactly.)"""
    rng = np.random.default_rng(9)
    updates, weights = rng.normal(0, 1, (5, LONG)), rng.uniform(1, 5, 5)
    fed = world.federation(vector_length=LONG, min_clients=3)
    rnd = int(world.owner.open_round(fed)["id"])
    a, b, c, d, e = (uid(world, i) for i in range(5))

    def shrink(answer: Any) -> Any:
        answer["shares"] = [s for s in answer["shares"] if int(s["sender_id"]) in (a, b, c)]
        return answer

    operator.lies.append(Lie("GET", f"/v1/rounds/{rnd}/shares", {0}, shrink))
    world.prepare(rnd, range(5))
    for i in range(5):
        world.client(i).submit(rnd, updates[i], float(weights[i]))
    if world.owner.round(rnd)["stage"] == "collect":
        world.owner.close_round(rnd)
    views = {
        0: ([a, b, c], []),
        3: ([a, d, e], [b, c]),
        4: ([a, d, e], [b, c]),
        2: ([a, c, d], [b]),
        1: ([a, b, d], [c]),
    }

    def view(i: int) -> Callable[[Any], Any]:
        def rewrite(answer: Any) -> Any:
            if answer.get("stage") == "unmask":
                answer["survivors"], answer["dropped"] = sorted(views[i][0]), sorted(views[i][1])
            return answer

        return rewrite

    operator.lies += [Lie("GET", f"/v1/rounds/{rnd}", {i}, view(i)) for i in views]
    accept_and_relay_signatures(
        operator, world, rnd, set(views), lambda i: (sorted(views[i][0]), sorted(views[i][1]))
    )
    for _ in range(2):
        for i in range(5):
            assert world.client(i).unmask(rnd) is False  # signed its view; never t signatures on it
    assert unmask_messages(operator, world, rnd) == {}
    run = RoundRun(rnd, fed, updates, weights, list(range(5)), [])
    knowledge = reconstruct_what_it_can(operator, world, run, [], 3)
    assert a not in knowledge.self_seeds and b not in knowledge.s_keys and c not in knowledge.s_keys
    upload = coefficients_of_upload(world, upload_of(operator, rnd, 0), LONG)
    stripped = strip_known_masks(upload, a, knowledge, [a, b, c], secagg.round_binding(fed, rnd))
    assert abs(corr(decrypt_coefficients(world, stripped, LONG), weights[0] * updates[0])) < CORRELATION_BOUND


# --------------------------------------------------------------------------------------------
# 4. Substituted round keys


def _substitute_keys(
    target: int, secrets: secagg.RoundSecrets, signer: secagg.IdentityKey | None, binding: bytes
) -> Callable[[Any], Any]:
    def rewrite(answer: Any) -> Any:
        for ad in answer["keys"]:
            if int(ad["client_id"]) == target:
                ad["c_public"] = base64.b64encode(secrets.c_public).decode()
                ad["s_public"] = base64.b64encode(secrets.s_public).decode()
                if signer is not None:
                    message = secagg.advertisement_message(
                        binding, target, secrets.c_public, secrets.s_public
                    )
                    ad["signature"] = base64.b64encode(signer.sign(message)).decode()
        return answer

    return rewrite


def _substitute_roster(target: int, identity: secagg.IdentityKey) -> Callable[[Any], Any]:
    def rewrite(answer: Any) -> Any:
        for entry in answer:
            if int(entry["client_id"]) == target:
                entry["identity_key"] = base64.b64encode(identity.public_bytes()).decode()
        return answer

    return rewrite


def _advertised_round(world: World) -> tuple[int, int]:
    fed = world.federation(vector_length=16, min_clients=3)
    rnd = int(world.owner.open_round(fed)["id"])
    for i in range(5):
        world.client(i).advertise(rnd)
    assert world.owner.round(rnd)["stage"] == "share"
    return fed, rnd


def test_a_substituted_round_key_is_detected_by_its_signature(world: World, operator: Operator) -> None:
    fed, rnd = _advertised_round(world)
    binding = secagg.round_binding(fed, rnd)
    server_keys = secagg.RoundSecrets.generate()
    operator.lies.append(
        Lie("GET", f"/v1/rounds/{rnd}/keys", {1}, _substitute_keys(uid(world, 2), server_keys, None, binding))
    )
    with pytest.raises(IdentityChanged, match="not signed by its pinned identity key"):
        world.client(1).share(rnd)
    assert operator.sent("POST", f"/v1/rounds/{rnd}/shares", 1) == []


def test_a_resigned_key_and_swapped_roster_entry_are_detected_after_pinning(
    world: World, operator: Operator
) -> None:
    fed, rnd = _advertised_round(world)
    honest = world.client(1).roster_fingerprints(fed)  # first sight: the real keys are pinned
    assert honest[uid(world, 2)] == world.client(2).identity_fingerprint()
    binding = secagg.round_binding(fed, rnd)
    server_identity, server_keys = secagg.IdentityKey.generate(), secagg.RoundSecrets.generate()
    operator.lies += [
        Lie("GET", f"/v1/federations/{fed}/roster", {1}, _substitute_roster(uid(world, 2), server_identity)),
        Lie(
            "GET",
            f"/v1/rounds/{rnd}/keys",
            {1},
            _substitute_keys(uid(world, 2), server_keys, server_identity, binding),
        ),
    ]
    with pytest.raises(IdentityChanged, match="another identity key"):
        world.client(1).share(rnd)
    assert operator.sent("POST", f"/v1/rounds/{rnd}/shares", 1) == []


def test_a_server_malicious_from_first_sight_is_caught_only_by_comparing_fingerprints(
    world: World, operator: Operator
) -> None:
    """Trust on first use: if the very first roster a client sees already carries the server's
    key for a peer, signatures cannot tell. The out-of-band fingerprint comparison does."""
    fed = world.federation(vector_length=16, min_clients=3)
    rnd = int(world.owner.open_round(fed)["id"])
    server_identity, server_keys = secagg.IdentityKey.generate(), secagg.RoundSecrets.generate()
    binding = secagg.round_binding(fed, rnd)
    operator.lies += [
        Lie("GET", f"/v1/federations/{fed}/roster", {1}, _substitute_roster(uid(world, 2), server_identity)),
        Lie(
            "GET",
            f"/v1/rounds/{rnd}/keys",
            {1},
            _substitute_keys(uid(world, 2), server_keys, server_identity, binding),
        ),
    ]
    for i in range(5):
        world.client(i).advertise(rnd)
    world.client(1).share(rnd)  # accepted: nothing in-band contradicts the substitution
    seen_by_1 = world.client(1).roster_fingerprints(fed)
    assert seen_by_1[uid(world, 2)] != world.client(2).identity_fingerprint()
    assert seen_by_1[uid(world, 2)] == secagg.fingerprint(server_identity.public_bytes())
    others = {i: world.client(i).identity_fingerprint() for i in (0, 3, 4)}
    assert all(seen_by_1[uid(world, i)] == fp for i, fp in others.items())


# --------------------------------------------------------------------------------------------
# 5. Forged and shifted aggregates


def _tamper_aggregate(
    world: World, length: int, change: Callable[[np.ndarray], None]
) -> Callable[[bytes], bytes]:
    def rewrite(payload: bytes) -> bytes:
        running = server_he.deserialize_sum(public_ctx(world), payload, vector_length=length)
        change(running.coefficients)
        return server_he.serialize_sum(running)

    return rewrite


def _shift_every_slot(by: float) -> Callable[[np.ndarray], None]:
    """Add a known plaintext: the constant polynomial round(by * 2**40), whose NTT form is the
    same value at every coefficient, shifts every slot (weight and check slot included) by `by`."""
    delta = np.uint64(round(by * 2**40) % Q)

    def change(coefficients: np.ndarray) -> None:
        c0 = coefficients[:, 0, :]
        np.add(c0, delta, out=c0)
        np.minimum(c0, c0 - np.uint64(Q), out=c0)

    return change


@pytest.fixture
def released(world: World) -> RoundRun:
    return run_round(world, length=300, seed=3)


def test_a_shifted_aggregate_is_refused_and_a_scaled_one_is_harmless(
    world: World, operator: Operator, released: RoundRun
) -> None:
    path = f"/v1/rounds/{released.round_id}/aggregate"
    operator.lies.append(Lie("GET", path, None, _tamper_aggregate(world, 300, _shift_every_slot(1e-3))))
    with pytest.raises(AggregateForged):
        world.client(0).aggregate(released.round_id)
    # Unverified, the same answer decrypts to the shifted numbers: the check is what caught it.
    shifted = world.client(0).aggregate_sums(released.round_id, verify=False)
    assert abs(shifted.total_weight - released.weights.sum() - 1e-3) < 1e-6

    # What the check cannot see: multiplying the whole sum by an integer is linear, so the
    # check slot holds; the weight slot scales alike, so the mean is still the true one.
    def double(coefficients: np.ndarray) -> None:
        np.add(coefficients, coefficients, out=coefficients)
        np.minimum(coefficients, coefficients - np.uint64(Q), out=coefficients)

    operator.lies[:] = [Lie("GET", path, None, _tamper_aggregate(world, 300, double))]
    mean = world.client(0).aggregate(released.round_id)
    assert np.abs(mean - weighted_mean(released.updates, released.weights)).max() < 1e-6


def test_a_replayed_or_substituted_aggregate_is_refused(
    world: World, operator: Operator, released: RoundRun
) -> None:
    older = world.client(0)._request("GET", f"/v1/rounds/{released.round_id}/aggregate").content
    second = run_round(world, length=300, seed=4, fed=released.federation_id)
    operator.lies.append(Lie("GET", f"/v1/rounds/{second.round_id}/aggregate", None, lambda _: older))
    with pytest.raises(AggregateForged):  # same contributors count, other round: check slot
        world.client(0).aggregate(second.round_id)
    operator.lies.clear()

    def one_upload_as_sum(payload: bytes) -> bytes:  # a client's masked upload posing as the sum
        running = server_he.deserialize_sum(public_ctx(world), payload, vector_length=300)
        running.coefficients[:] = coefficients_of_upload(world, upload_of(operator, second.round_id, 1), 300)
        return server_he.serialize_sum(running)

    operator.lies.append(Lie("GET", f"/v1/rounds/{second.round_id}/aggregate", None, one_upload_as_sum))
    with pytest.raises(AggregateForged):
        world.client(0).aggregate(second.round_id)


# --------------------------------------------------------------------------------------------
# 6. The database thief (no master key)


def _database_bytes(world: World, db_url: str) -> list[bytes]:
    st = app_state(world)
    blobs: list[bytes] = []
    if db_url.startswith("sqlite"):
        path = Path(db_url.removeprefix("sqlite:///"))
        blobs += [p.read_bytes() for p in path.parent.glob(path.name + "*")]  # WAL as it is
        st.db.dispose()  # then checkpointed
        blobs += [p.read_bytes() for p in path.parent.glob(path.name + "*")]
        return blobs
    with st.db.transaction() as s:
        for table in Base.metadata.sorted_tables:
            for row in s.execute(select(table)).all():
                for value in row:
                    blobs.append(
                        bytes(value) if isinstance(value, bytes | memoryview) else str(value).encode()
                    )
    return blobs


def test_a_database_thief_finds_no_sum_upload_share_or_unmasking_share(
    world: World, operator: Operator, db_url: str
) -> None:
    run = run_round(world, length=300, drop=(2,), seed=5)
    needles: dict[str, bytes] = {}
    sample = upload_of(operator, run.round_id, 0)
    needles["update frame header"] = sample[:20]
    needles["sum frame header"] = run.snapshots[-1][:20]
    seal = sample.index(bytes.fromhex("5ea1"))
    needles["SEAL header + parameter id"] = sample[seal : seal + 48]
    for e in operator.sent("POST", f"/v1/rounds/{run.round_id}/shares"):
        for item in e.json_request()["shares"]:
            needles[f"share blob {e.client}->{item['recipient_id']}"] = base64.b64decode(item["share"])
    for responder, message in unmask_messages(operator, world, run.round_id).items():
        for kind, shares in message.items():
            for target, share in shares.items():
                needles[f"{kind} {responder}->{target}"] = share
                needles[f"{kind} {responder}->{target} b64"] = base64.b64encode(share)
    assert len(needles) > 40
    blobs = _database_bytes(world, db_url)
    found = [name for name, needle in needles.items() if any(needle in blob for blob in blobs)]
    assert found == []
