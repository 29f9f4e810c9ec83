"""Federated logistic regression on sklearn's digits, aggregated under CKKS through the REST API.

Five clients hold disjoint shards of the training set. Every round each one starts from the
global model, runs a few epochs of full-batch gradient descent on its shard, encrypts its model
delta weighted by its shard size (FedAvg) and uploads it; the server adds ciphertexts only, and
the clients decrypt the weighted mean and apply it. The same training is replayed in plaintext
with the same shards and seeds: the two must agree (CKKS is exact to ~1e-8 here).

    python examples/federated_digits.py                 # starts a local server on a temp SQLite DB
    python examples/federated_digits.py --rounds 10
    python examples/federated_digits.py --url http://127.0.0.1:8000 \\
        --owner-key pa_... --client-keys pa_1,pa_2,pa_3,pa_4,pa_5

With --url, the owner key must have role `owner` and the client keys role `client`.
Exit status 1 if the final accuracy is more than 2 points from plaintext FedAvg.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

try:
    from privacy_client import FederatedClient, generate_keys
except ModuleNotFoundError:  # run from a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from privacy_client import FederatedClient, generate_keys

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
    from privacy_api.migrate import upgrade
    from privacy_api.services.users import create_user

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

    # The clients' coordinator makes the keys: the secret context stays with the clients,
    # the server only ever receives the public one.
    secret, public = generate_keys(args.preset)
    with ExitStack() as stack:
        owner = stack.enter_context(FederatedClient(accounts.url, accounts.owner_key, None))
        clients = [stack.enter_context(FederatedClient(accounts.url, key, secret))
                   for key in accounts.client_keys[: args.clients]]
        fed = owner.create_federation("digits", public, vector_length=length,
                                      min_clients=len(clients))
        for client in clients:
            owner.enroll(fed["id"], client.me()["id"])
        print(f"federation {fed['id']}: preset {fed['preset']}, min_clients {fed['min_clients']}")

        init = np.random.default_rng(args.seed).normal(0, 0.01, length)
        he_model, plain_model = init.copy(), init.copy()
        weights = np.array([len(s.y) for s in shards], dtype=np.float64)
        started = time.perf_counter()
        print(f"{'round':>5}  {'CKKS FedAvg':>11}  {'plaintext':>9}  {'max |diff|':>10}")
        for r in range(1, args.rounds + 1):
            rnd = owner.open_round(fed["id"], deadline_seconds=300)
            for client, shard, weight in zip(clients, shards, weights, strict=True):
                delta = local_training(he_model, shard, epochs=args.local_epochs, lr=args.lr) - he_model
                client.submit(rnd["id"], delta, float(weight))
            closed = owner.close_round(rnd["id"])
            assert closed["status"] == "aggregated", closed
            means = [client.aggregate(rnd["id"]) for client in clients]  # each checks its receipt
            he_model = he_model + means[0]

            plain_deltas = np.stack([local_training(plain_model, s, epochs=args.local_epochs,
                                                    lr=args.lr) - plain_model for s in shards])
            plain_model = plain_model + (weights[:, None] * plain_deltas).sum(0) / weights.sum()
            print(f"{r:>5}  {accuracy(he_model, x_test, y_test):>11.4f}  "
                  f"{accuracy(plain_model, x_test, y_test):>9.4f}  "
                  f"{np.max(np.abs(he_model - plain_model)):>10.2e}")
        elapsed = time.perf_counter() - started
    ours, plain = accuracy(he_model, x_test, y_test), accuracy(plain_model, x_test, y_test)
    print(f"{args.rounds} rounds x {args.clients} clients in {elapsed:.1f}s")
    print(f"final test accuracy: CKKS FedAvg {100 * ours:.2f}%  plaintext FedAvg {100 * plain:.2f}%  "
          f"difference {100 * abs(ours - plain):.2f} points")
    return ours, plain


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--clients", type=int, default=5, choices=range(2, len(SHARE) + 1))
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
        ours, plain = run(args, Accounts(args.url.rstrip("/"), args.owner_key, keys))
    else:
        with local_server(args.clients) as accounts:
            ours, plain = run(args, accounts)
    return 0 if abs(ours - plain) <= 0.02 else 1


if __name__ == "__main__":
    sys.exit(main())
