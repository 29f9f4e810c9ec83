"""Federated secure aggregation: our single-level CKKS presets beside the usual 4-level set and
plaintext FedAvg, in one run.

Each of `clients` clients sends a `length`-parameter update (values in [-1, 1], weights in
[1, 1000]); the server checks and adds them; a client decrypts the weighted mean.

Columns: client encrypt time per update; bytes on the wire per update and as a multiple of the
float32 vector; server accept-and-fold time per update (parse_update + fold, best of 3 passes,
one core) and parameters/s; SHA-256 receipt per update; aggregate-and-decrypt (serialize_sum +
decrypt_aggregate); max abs error of the weighted mean against float64 plaintext.
"standard4" is not accepted by the server: it is folded with TenSEAL directly (deserialize +
add_, no checks), as is n8192 in the last row, to show what the server's own reader saves.

Run: `.venv/bin/python bench/bench_he.py [--quick]` or `.venv/bin/python -m bench.bench_he`.
"""

from __future__ import annotations

import argparse
import hashlib
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import tenseal as ts

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import print_table  # noqa: E402
from privacy_api.crypto import he as server  # noqa: E402
from privacy_client import he as sdk  # noqa: E402

HEADERS = [
    "setup",
    "encrypt ms/update",
    "bytes/update",
    "x float32",
    "fold ms/update",
    "fold M params/s",
    "receipt ms",
    "aggregate+decrypt ms",
    "max abs error",
]


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def encrypt_all(secret: bytes, updates: np.ndarray, weights: np.ndarray) -> tuple[list[bytes], float]:
    payloads = []
    start = time.perf_counter()
    for x, w in zip(updates, weights, strict=True):
        payloads.append(sdk.encrypt_update(secret, x, float(w)))
    return payloads, (time.perf_counter() - start) / len(updates)


def best_pass(fold_all: Callable[[], Any], passes: int = 3) -> tuple[Any, float]:
    runs = [timed(fold_all) for _ in range(passes)]
    return min(runs, key=lambda run: run[1])


def our_preset(name: str, updates: np.ndarray, weights: np.ndarray, truth: np.ndarray) -> list[Any]:
    length = updates.shape[1]
    secret, public = sdk.generate_keys(name)
    ctx = server.load_public_context(public)
    payloads, encrypt_s = encrypt_all(secret, updates, weights)
    bound = server.update_size_bound(ctx, length)

    def fold_all() -> server.RunningSum:
        running = None
        for payload in payloads:
            running = server.fold(
                running, server.parse_update(ctx, payload, vector_length=length, max_bytes=bound)
            )
        assert running is not None
        return running

    running, fold_s = best_pass(fold_all)
    _, receipt_s = timed(lambda: [server.receipt(p) for p in payloads])
    mean, decrypt_s = timed(
        lambda: sdk.decrypt_aggregate(secret, server.serialize_sum(running), length)
    )
    return row(name, updates, payloads, encrypt_s, fold_s, receipt_s, decrypt_s, mean, truth)


def tenseal_fold(
    name: str, updates: np.ndarray, weights: np.ndarray, truth: np.ndarray
) -> list[Any]:
    """Fold with TenSEAL itself: what a server without its own reader would do."""
    length = updates.shape[1]
    secret, public = sdk.generate_keys(name)
    preset = sdk.PRESETS[name]
    ctx = ts.context_from(public)
    payloads, encrypt_s = encrypt_all(secret, updates, weights)

    def fold_all() -> list[Any]:
        sums: list[Any] | None = None
        for payload in payloads:
            vectors = [ts.ckks_vector_from(ctx, chunk) for chunk in chunks_of(payload)]
            if sums is None:
                sums = vectors
            else:
                for total, vector in zip(sums, vectors, strict=True):
                    total.add_(vector)
        assert sums is not None
        return sums

    sums, fold_s = best_pass(fold_all)
    _, receipt_s = timed(lambda: [server.receipt(p) for p in payloads])

    def aggregate_and_decrypt() -> np.ndarray:
        blobs = [vector.serialize() for vector in sums]
        header = struct.pack(
            "<4sBBBBIII", b"PAHE", 1, preset.code, 2, 0, length, len(payloads), len(blobs)
        )
        aggregate = header + b"".join(struct.pack("<I", len(b)) + b for b in blobs)
        return sdk.decrypt_aggregate(secret, aggregate, length)

    mean, decrypt_s = timed(aggregate_and_decrypt)
    label = f"{name} via TenSEAL, no checks"
    return row(label, updates, payloads, encrypt_s, fold_s, receipt_s, decrypt_s, mean, truth)


def chunks_of(payload: bytes) -> list[bytes]:
    (count,) = struct.unpack_from("<I", payload, 16)
    chunks, pos = [], 20
    for _ in range(count):
        (size,) = struct.unpack_from("<I", payload, pos)
        chunks.append(payload[pos + 4 : pos + 4 + size])
        pos += 4 + size
    return chunks


def plaintext(updates: np.ndarray, weights: np.ndarray, truth: np.ndarray) -> list[Any]:
    """FedAvg without encryption: float32 updates (weight in an extra slot), float64 sums."""
    length = updates.shape[1]
    start = time.perf_counter()
    payloads = [
        np.append(w * x, w).astype(np.float32).tobytes()
        for x, w in zip(updates, weights, strict=True)
    ]
    encrypt_s = (time.perf_counter() - start) / len(updates)

    def fold_all() -> np.ndarray:
        total = np.zeros(length + 1)
        for payload in payloads:
            vector = np.frombuffer(payload, dtype=np.float32)
            if vector.shape != (length + 1,) or not np.isfinite(vector).all():
                raise ValueError("bad update")
            total += vector
        return total

    total, fold_s = best_pass(fold_all)
    _, receipt_s = timed(lambda: [hashlib.sha256(p).hexdigest() for p in payloads])
    mean, decrypt_s = timed(lambda: total[:length] / total[length])
    return row("plaintext FedAvg", updates, payloads, encrypt_s, fold_s, receipt_s, decrypt_s,
               mean, truth)


def row(
    label: str,
    updates: np.ndarray,
    payloads: list[bytes],
    encrypt_s: float,
    fold_s: float,
    receipt_s: float,
    decrypt_s: float,
    mean: np.ndarray,
    truth: np.ndarray,
) -> list[Any]:
    clients, length = updates.shape
    size = sum(len(p) for p in payloads) / clients
    per_fold = fold_s / clients
    return [
        label,
        encrypt_s * 1e3,
        int(size),
        size / (4 * length),
        per_fold * 1e3,
        length / per_fold / 1e6,
        receipt_s / clients * 1e3,
        decrypt_s * 1e3,
        f"{float(np.max(np.abs(mean - truth))):.1e}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20,000 parameters, 4 clients")
    args = parser.parse_args()
    length, clients = (20_000, 4) if args.quick else (100_000, 10)

    rng = np.random.default_rng(0)
    updates = rng.uniform(-1, 1, (clients, length))
    weights = rng.uniform(1, 1000, clients)
    truth = (weights[:, None] * updates).sum(axis=0) / weights.sum()

    rows = [our_preset(name, updates, weights, truth) for name in ("n8192", "n4096")]
    rows.append(tenseal_fold("standard4", updates, weights, truth))
    rows.append(plaintext(updates, weights, truth))
    rows.append(tenseal_fold("n8192", updates, weights, truth))
    sizes = ", ".join(f"{name} {len(sdk.generate_keys(name)[1]) / 1024:.0f} KiB"
                      for name in ("n8192", "n4096", "standard4"))
    print_table(
        f"HE secure aggregation: {length:,} parameters x {clients} clients "
        f"(public context: {sizes})",
        HEADERS,
        rows,
    )


if __name__ == "__main__":
    main()
