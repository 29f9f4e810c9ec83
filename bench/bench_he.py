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
import os
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

import privacy_secagg as secagg  # noqa: E402
from bench.common import print_table  # noqa: E402
from privacy_api.crypto import he as server  # noqa: E402
from privacy_client import he as sdk  # noqa: E402
from privacy_client import seal_codec  # noqa: E402

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
            "<4sBBBBIII", b"PAHE", sdk.FORMAT_VERSION, preset.code, 2, 0, length, len(payloads),
            len(blobs)
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


# --------------------------------------------------------------------------------------------
# Secure aggregation (double masking, privacy_secagg): every stage of one round, with
# each client's and the server's work timed separately, in one process (no HTTP, no database).

SECAGG_HEADERS = [
    "round",
    "keys+shares ms/client",
    "encrypt+mask ms/client",
    "bytes/update",
    "x float32",
    "advert B/client",
    "shares B/client",
    "unmask B/client",
    "fold ms/update",
    "fold M params/s",
    "fold M params/s CPU",
    "unmask ms",
    "decrypt ms",
    "round s",
    "max abs error",
]


def secagg_round(
    updates: np.ndarray, weights: np.ndarray, truth: np.ndarray, dropouts: int
) -> list[Any]:
    """One masked round of n8192 with `dropouts` clients that advertise and share keys, then
    never upload. "round s" adds, stage by stage, the slowest client (clients work in
    parallel) and the server: advertise, share, collect (encrypt+mask, then fold), consistency
    check, unmask, decrypt. Bytes are the raw protocol fields (JSON/base64 framing of the API not counted)."""
    clients, length = updates.shape
    secret, public = sdk.generate_keys("n8192")
    ctx = server.load_public_context(public)
    ids = list(range(1, clients + 1))
    threshold = clients // 2 + 1
    binding = secagg.round_binding(1, 1)
    (q,) = seal_codec.data_moduli("n8192")
    chunks = ctx.chunk_count(length)
    n = ctx.preset.poly_modulus_degree
    identities = {c: secagg.IdentityKey.generate() for c in ids}
    pinned = {c: identities[c].public_bytes() for c in ids}

    # advertise: fresh round keys, signed.
    adverts: dict[int, tuple[bytes, bytes, bytes]] = {}
    secrets_of: dict[int, secagg.RoundSecrets] = {}
    advertise_s = 0.0
    for c in ids:
        start = time.perf_counter()
        secrets_of[c] = secagg.RoundSecrets.generate()
        mine = secrets_of[c]
        message = secagg.advertisement_message(binding, c, mine.c_public, mine.s_public)
        adverts[c] = (mine.c_public, mine.s_public, identities[c].sign(message))
        advertise_s = max(advertise_s, time.perf_counter() - start)
    advert_bytes = 8 + 32 + 32 + 64

    # share: verify every peer's signature against the pinned roster, encrypt shares.
    blobs: dict[int, dict[int, bytes]] = {}
    share_s = 0.0
    for c in ids:
        start = time.perf_counter()
        for peer, (c_pub, s_pub, sig) in adverts.items():
            secagg.verify_signature(
                pinned[peer], secagg.advertisement_message(binding, peer, c_pub, s_pub), sig
            )
        blobs[c] = secagg.share_secrets(
            secrets_of[c], c, {p: a[0] for p, a in adverts.items()}, threshold, binding
        )
        share_s = max(share_s, time.perf_counter() - start)
    share_bytes = 2 * clients * (8 + secagg.SHARE_BLOB_BYTES)  # sent and received

    # collect: open the shares received, mask and encrypt; survivors upload.
    survivors = ids[dropouts:]
    opened: dict[int, dict[int, secagg.Share]] = {c: {} for c in ids}
    payloads: dict[int, bytes] = {}
    collect_s = 0.0
    encrypt_times = []
    s_publics = {p: a[1] for p, a in adverts.items()}
    for c in survivors:
        start = time.perf_counter()
        for sender in ids:
            opened[sender][c] = secagg.open_share(
                blobs[sender][c], c, sender, secrets_of[c], adverts[sender][0], binding
            )
        t0 = time.perf_counter()
        # One mask row per ciphertext, as the SDK and the server lay it out.
        mask = secagg.client_mask(secrets_of[c], c, s_publics, [q] * chunks, n, binding)
        payloads[c] = sdk.encrypt_update(
            secret, updates[c - 1], float(weights[c - 1]), check_binding=binding, mask=mask
        )
        now = time.perf_counter()
        encrypt_times.append(now - t0)
        collect_s = max(collect_s, now - start)
    bound = server.update_size_bound(ctx, length)

    def fold_all() -> server.RunningSum:
        running = None
        for c in survivors:
            running = server.fold(
                running, server.parse_update(ctx, payloads[c], vector_length=length, max_bytes=bound)
            )
        assert running is not None
        return running

    running, fold_s = best_pass(fold_all)
    cpu_start = time.process_time()
    fold_all()
    fold_cpu_s = time.process_time() - cpu_start

    # unmask: each survivor signs the survivor/dropped sets, checks t signatures on them
    # (consistency check), then reveals self-seed shares of survivors, s-key shares of the
    # dropped.
    dropped = [c for c in ids if c not in survivors]
    consistency = secagg.consistency_message(binding, survivors, dropped)
    signatures = {c: identities[c].sign(consistency) for c in survivors}
    confirm_s = 0.0
    for _ in survivors:  # every survivor checks the same signatures
        start = time.perf_counter()
        secagg.verify_consistency(binding, survivors, dropped, signatures, pinned, threshold)
        confirm_s = max(confirm_s, time.perf_counter() - start)
    # sent: its signature and one share per named client; received: every survivor's signature
    unmask_bytes = 64 + clients * (8 + 32) + len(survivors) * (8 + 64)
    start = time.perf_counter()
    seeds = {
        u: secagg.reconstruct(
            [(opened[u][v].index, opened[u][v].self_seed_share) for v in survivors], threshold
        )
        for u in survivors
    }
    keys = {
        d: secagg.reconstruct_s_private(
            [(opened[d][v].index, opened[d][v].s_key_share) for v in survivors], threshold,
            s_publics[d],
        )
        for d in dropped
    }
    removal = secagg.removal_mask(seeds, keys, s_publics, survivors, [q] * chunks, n, binding)
    server.subtract_mask(running, removal)
    aggregate = server.serialize_sum(running)
    unmask_s = time.perf_counter() - start
    sums, decrypt_s = timed(
        lambda: sdk.decrypt_sums(secret, aggregate, length, check_binding=binding)
    )
    assert sums.check_residual is not None and abs(sums.check_residual) < sdk.CHECK_TOLERANCE
    mean = sums.weighted_sum / sums.total_weight
    kept = np.array(survivors) - 1
    expected = (weights[kept, None] * updates[kept]).sum(axis=0) / weights[kept].sum()
    del truth
    size = sum(len(p) for p in payloads.values()) / len(payloads)
    per_fold = fold_s / len(survivors)
    round_s = advertise_s + share_s + collect_s + fold_s + confirm_s + unmask_s + decrypt_s
    return [
        f"masked, {dropouts} of {clients} drop",
        (advertise_s + share_s) * 1e3,
        float(np.mean(encrypt_times)) * 1e3,
        int(size),
        size / (4 * length),
        advert_bytes,
        share_bytes,
        unmask_bytes,
        per_fold * 1e3,
        length / per_fold / 1e6,
        length * len(survivors) / fold_cpu_s / 1e6,
        unmask_s * 1e3,
        decrypt_s * 1e3,
        round_s,
        f"{float(np.max(np.abs(mean - expected))):.1e}",
    ]


def unmasked_round(updates: np.ndarray, weights: np.ndarray, truth: np.ndarray) -> list[Any]:
    """Today's unmasked round with the same clients in parallel: encrypt, fold, decrypt."""
    clients, length = updates.shape
    secret, public = sdk.generate_keys("n8192")
    ctx = server.load_public_context(public)
    encrypt_s = 0.0
    payloads = []
    for x, w in zip(updates, weights, strict=True):
        payload, elapsed = timed(lambda x=x, w=w: sdk.encrypt_update(secret, x, float(w)))
        payloads.append(payload)
        encrypt_s = max(encrypt_s, elapsed)
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
    cpu_start = time.process_time()
    fold_all()
    fold_cpu_s = time.process_time() - cpu_start
    mean, decrypt_s = timed(
        lambda: sdk.decrypt_aggregate(secret, server.serialize_sum(running), length)
    )
    size = sum(len(p) for p in payloads) / clients
    per_fold = fold_s / clients
    return [
        "unmasked (shared key only)", 0.0, encrypt_s * 1e3, int(size), size / (4 * length),
        0, 0, 0, per_fold * 1e3, length / per_fold / 1e6, length * clients / fold_cpu_s / 1e6,
        0.0, decrypt_s * 1e3,
        encrypt_s + fold_s + decrypt_s, f"{float(np.max(np.abs(mean - truth))):.1e}",
    ]


def plaintext_round(updates: np.ndarray, weights: np.ndarray, truth: np.ndarray) -> list[Any]:
    values = plaintext(updates, weights, truth)
    clients, length = updates.shape
    encrypt_ms, size, fold_ms, decrypt_ms = values[1], values[2], values[4], values[7]
    return [
        "plaintext FedAvg", 0.0, encrypt_ms, size, values[3], 0, 0, 0, fold_ms, values[5], "",
        0.0,
        decrypt_ms, (encrypt_ms + fold_ms * clients + decrypt_ms) / 1e3, values[8],
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
    sizes = ", ".join(f"{name} {len(sdk.generate_keys(name)[1])} B"
                      for name in ("n8192", "n4096", "standard4"))
    print_table(
        f"HE secure aggregation: {length:,} parameters x {clients} clients "
        f"(public context: {sizes})",
        HEADERS,
        rows,
    )
    # Two dropouts out of 4 would leave fewer survivors than t = 3: the quick run drops one.
    secure = [secagg_round(updates, weights, truth, d) for d in ((0, 1) if args.quick else (0, 2))]
    secure.append(unmasked_round(updates, weights, truth))
    secure.append(plaintext_round(updates, weights, truth))
    print_table(
        f"Secure aggregation (double masking), n8192: {length:,} parameters x {clients} "
        f"clients, t = {clients // 2 + 1}; load average {os.getloadavg()[0]:.1f} on "
        f"{os.cpu_count()} cores (wall-clock columns slow down with it; CPU = process time)",
        SECAGG_HEADERS,
        secure,
    )


if __name__ == "__main__":
    main()
