"""Federated logistic regression on sklearn's digits, aggregated under CKKS with secure
aggregation (masked ciphertexts, dropout recovery) through the REST API.

Five clients hold disjoint shards of the training set. Every round each one starts from the
global model, runs a few epochs of full-batch gradient descent on its shard, and calls
`FederatedClient.participate`, which advertises signed round keys, shares its mask secrets,
encrypts and masks its model delta weighted by its shard size (FedAvg), uploads it and helps
unmask; the server adds masked ciphertexts only, and the clients decrypt the weighted mean.
One client (--dropout, default the last) drops out of every round *after agreeing* (it
advertises and shares, then never uploads); the coordinator closes the collect stage once the
others are in, and the survivors' shares remove the dropped client's masks. The same training
is replayed in plaintext with the same shards and seeds, twice: FedAvg over the same survivors
(must agree to ~1e-8: CKKS and the masks are exact) and FedAvg over all five clients.

    python examples/federated_digits.py                 # starts a local server on a temp SQLite DB
    python examples/federated_digits.py --rounds 10
    python examples/federated_digits.py --url http://127.0.0.1:8000 \\
        --owner-key pa_... --client-keys pa_1,pa_2,pa_3,pa_4,pa_5

With --url, the owner key must have role `owner` and the client keys role `client`.
Exit status 1 if the final accuracy is more than 2 points from either plaintext FedAvg.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

_CHECKOUT = Path(__file__).resolve().parents[1]
if (_CHECKOUT / "privacy_client" / "src" / "privacy_client" / "__init__.py").exists():
    # Run from a source checkout: use its SDK, secure-aggregation core and server, not an older
    # installed copy (the SDK and secagg/ are src layouts).
    for _path in (_CHECKOUT, _CHECKOUT / "secagg" / "src", _CHECKOUT / "privacy_client" / "src"):
        sys.path.insert(0, str(_path))
from privacy_client import Conflict, FederatedClient, generate_keys  # noqa: E402

CLASSES = 10
SHARE = np.array([0.32, 0.24, 0.2, 0.14, 0.1])  # unequal shards, so the weighting matters


# -- the model: multinomial logistic regression, parameters flattened to one vector -------------
@dataclass(frozen=True)
class Shard:
    x: np.ndarray
    y: np.ndarray


def unpack(params: np.ndarray, features: int) -> tuple[np.ndarray, np.ndarray]:
    return params[: features * CLASSES].reshape(features, CLASSES), params[features * CLASSES:]


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)  # type: ignore[no-any-return]


def local_training(params: np.ndarray, shard: Shard, *, epochs: int, lr: float,
                   l2: float = 1e-3) -> np.ndarray:
    """Full-batch gradient descent on the mean cross-entropy (+ L2), from `params`."""
    features = shard.x.shape[1]
    onehot = np.eye(CLASSES)[shard.y]
    p = params.copy()
    for _ in range(epochs):
        w, b = unpack(p, features)
        err = softmax(shard.x @ w + b) - onehot
        grad_w = shard.x.T @ err / len(shard.y) + l2 * w
        grad_b = err.mean(axis=0)
        p -= lr * np.concatenate([grad_w.ravel(), grad_b])
    return p


def accuracy(params: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    w, b = unpack(params, x.shape[1])
    return float(np.mean(np.argmax(x @ w + b, axis=1) == y))


def load_shards(clients: int, seed: int) -> tuple[list[Shard], np.ndarray, np.ndarray]:
    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, stratify=y,
                                                        random_state=seed)
    # Pixel statistics are treated as public here (a real deployment would fix them up front).
    scaler = StandardScaler().fit(x_train)
    x_train, x_test = scaler.transform(x_train), scaler.transform(x_test)
    order = np.random.default_rng(seed).permutation(len(y_train))
    share = SHARE[:clients] / SHARE[:clients].sum()
    cuts = (np.cumsum(share)[:-1] * len(order)).astype(int)
    shards = [Shard(x_train[idx], y_train[idx]) for idx in np.split(order, cuts)]
    return shards, x_test, y_test


# -- a local server, unless --url is given -----------------------------------------------------
@dataclass(frozen=True)
class Accounts:
    url: str
    owner_key: str
    client_keys: list[str]


@contextmanager
def local_server(clients: int) -> Iterator[Accounts]:
    """The real app on a temporary SQLite database, served by werkzeug in a thread."""
    from cryptography.fernet import Fernet
    from werkzeug.serving import make_server

    from privacy_api import create_app
    from privacy_api.services.users import create_user
    from privacy_api.storage.migrate import upgrade

    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'federated.sqlite3'}"
        upgrade(url)
        app = create_app({"database_url": url, "master_keys": [Fernet.generate_key()],
                          "decrypt_workers": 1})
        db = app.extensions["privacy_api"].db
        with db.transaction() as session:  # as `privacy-api create-user` would
            _, owner_key = create_user(session, "coordinator", "owner")
            client_keys = [create_user(session, f"hospital-{i}", "client")[1] for i in range(clients)]
        server = make_server("127.0.0.1", 0, app, threaded=True)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield Accounts(f"http://127.0.0.1:{server.server_port}", owner_key, client_keys)
        finally:
            server.shutdown()
            thread.join()
            db.dispose()


# -- the run ---------------------------------------------------------------------------------------
def run(args: argparse.Namespace, accounts: Accounts) -> tuple[float, float]:
    shards, x_test, y_test = load_shards(args.clients, args.seed)
    features = shards[0].x.shape[1]
    length = features * CLASSES + CLASSES
    print(f"digits: {sum(len(s.y) for s in shards)} training rows in shards "
          f"{[len(s.y) for s in shards]}, {len(y_test)} test rows; {length} parameters")
    dropout = args.dropout if 0 <= args.dropout < args.clients else None
    survivors = [i for i in range(args.clients) if i != dropout]

    # The clients' coordinator makes the keys: the secret context stays with the clients,
    # the server only ever receives the parameters-only one.
    secret, public = generate_keys(args.preset)
    with ExitStack() as stack:
        state = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fed-clients-")))
        owner = stack.enter_context(FederatedClient(accounts.url, accounts.owner_key, None))
        clients = [stack.enter_context(FederatedClient(accounts.url, key, secret,
                                                       state_dir=state / f"client-{i}"))
                   for i, key in enumerate(accounts.client_keys[: args.clients])]
        fed = owner.create_federation("digits", public, vector_length=length,
                                      min_clients=args.min_clients)
        for client in clients:
            owner.enroll(fed["id"], client.me()["id"])
        print(f"federation {fed['id']}: preset {fed['preset']}, min_clients {fed['min_clients']}, "
              f"client {dropout} drops out of every round after key agreement"
              if dropout is not None else f"federation {fed['id']}: no dropouts")

        init = np.random.default_rng(args.seed).normal(0, 0.01, length)
        he_model, plain_model, plain_all = init.copy(), init.copy(), init.copy()
        weights = np.array([len(s.y) for s in shards], dtype=np.float64)
        started = time.perf_counter()
        print(f"{'round':>5}  {'CKKS FedAvg':>11}  {'plaintext':>9}  {'max |diff|':>10}  "
              f"{'plaintext, all 5':>16}")
        with ThreadPoolExecutor(args.clients) as pool:
            for r in range(1, args.rounds + 1):
                rnd = owner.open_round(fed["id"], deadline_seconds=300)["id"]
                deltas = [local_training(he_model, s, epochs=args.local_epochs, lr=args.lr)
                          - he_model for s in shards]
                jobs = [pool.submit(clients[i].participate, rnd, deltas[i], float(weights[i]),
                                    timeout=300, poll=0.05) for i in survivors]
                if dropout is not None:
                    agree_then_leave(owner, clients[dropout], rnd, len(survivors))
                means = [job.result() for job in jobs]  # each verified by its client
                assert all(np.array_equal(m, means[0]) for m in means)
                he_model = he_model + means[0]

                plain_model = plain_model + fedavg(plain_model, shards, survivors, weights, args)
                plain_all = plain_all + fedavg(plain_all, shards, range(len(shards)), weights, args)
                print(f"{r:>5}  {accuracy(he_model, x_test, y_test):>11.4f}  "
                      f"{accuracy(plain_model, x_test, y_test):>9.4f}  "
                      f"{np.max(np.abs(he_model - plain_model)):>10.2e}  "
                      f"{accuracy(plain_all, x_test, y_test):>16.4f}")
        elapsed = time.perf_counter() - started
    ours, plain = accuracy(he_model, x_test, y_test), accuracy(plain_model, x_test, y_test)
    everyone = accuracy(plain_all, x_test, y_test)
    print(f"{args.rounds} rounds x {args.clients} clients in {elapsed:.1f}s")
    print(f"final test accuracy: CKKS FedAvg {100 * ours:.2f}%  plaintext FedAvg {100 * plain:.2f}%  "
          f"difference {100 * abs(ours - plain):.2f} points")
    print(f"plaintext FedAvg over all {args.clients} clients (no dropout): {100 * everyone:.2f}%  "
          f"difference {100 * abs(ours - everyone):.2f} points")
    return ours, plain, everyone


def fedavg(model: np.ndarray, shards: list[Shard], members: Iterable[int], weights: np.ndarray,
           args: argparse.Namespace) -> np.ndarray:
    """The plaintext FedAvg step over `members`: the weighted mean of their local deltas."""
    idx = list(members)
    deltas = np.stack([local_training(model, shards[i], epochs=args.local_epochs, lr=args.lr)
                       - model for i in idx])
    step: np.ndarray = (weights[idx, None] * deltas).sum(0) / weights[idx].sum()
    return step


def agree_then_leave(owner: FederatedClient, client: FederatedClient, round_id: int,
                     uploads: int) -> None:
    """The dropout: advertise and share (it is part of the masks), then vanish; the coordinator
    closes the collect stage once the others' uploads are in."""
    while owner.round(round_id)["stage"] == "advertise" and client.receipt(round_id) is None:
        try:
            client.advertise(round_id)
            break
        except Conflict:
            time.sleep(0.05)
    while (rnd := owner.round(round_id))["stage"] == "advertise":
        time.sleep(0.05)
    if rnd["stage"] == "share":
        client.share(round_id)
    while (rnd := owner.round(round_id))["stage"] == "share" or (
            rnd["stage"] == "collect" and rnd["received"] < uploads):
        time.sleep(0.05)
    if rnd["stage"] == "collect":
        owner.close_round(round_id)  # the dropped client's masks are removed in unmask


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--clients", type=int, default=5, choices=range(3, len(SHARE) + 1))
    parser.add_argument("--min-clients", type=int, default=3)
    parser.add_argument("--dropout", type=int, default=4,
                        help="index of the client that drops out after key agreement (-1: none)")
    parser.add_argument("--local-epochs", type=int, default=5)
    parser.add_argument("--lr", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", default="n8192", choices=["n8192", "n4096"])
    parser.add_argument("--url", help="a running privacy-api (default: start one locally)")
    parser.add_argument("--owner-key", help="with --url: API key of a user with role owner")
    parser.add_argument("--client-keys", help="with --url: comma-separated keys of role client")
    args = parser.parse_args(argv)
    # Quiet the per-request access logs (the app's and werkzeug's); warnings still show.
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)

    if args.url:
        if not args.owner_key or not args.client_keys:
            parser.error("--url needs --owner-key and --client-keys")
        keys = [k.strip() for k in args.client_keys.split(",") if k.strip()]
        if len(keys) < args.clients:
            parser.error(f"--client-keys: {args.clients} keys needed")
        ours, plain, everyone = run(args, Accounts(args.url.rstrip("/"), args.owner_key, keys))
    else:
        with local_server(args.clients) as accounts:
            ours, plain, everyone = run(args, accounts)
    return 0 if abs(ours - plain) <= 0.02 and abs(ours - everyone) <= 0.02 else 1


if __name__ == "__main__":
    sys.exit(main())
