"""privacy_client.seal_codec: masks on real TenSEAL symmetric ciphertexts cancel exactly, the
server's reader accepts masked uploads, and garbage is refused with InvalidHEPayload."""

from __future__ import annotations

import numpy as np
import pytest
import tenseal as ts

import privacy_secagg as secagg
from privacy_api.crypto import he as server_he
from privacy_client import he, seal_codec
from privacy_client.he import InvalidHEPayload

BINDING = secagg.round_binding(3, 9)
N = 8192


@pytest.fixture(scope="module")
def keys() -> tuple[bytes, bytes]:
    return he.generate_keys("n8192")


@pytest.fixture(scope="module")
def context(keys: tuple[bytes, bytes]) -> ts.Context:
    return ts.context_from(keys[0])


@pytest.fixture(scope="module")
def q() -> int:
    (prime,) = seal_codec.data_moduli("n8192")
    return prime


def test_data_moduli_match_the_server_reference(q: int) -> None:
    assert q == server_he._reference(server_he.PRESETS["n8192"]).modulus
    assert seal_codec.data_moduli("n4096") == (server_he._reference(server_he.PRESETS["n4096"]).modulus,)


def test_round_trip_keeps_every_coefficient_and_decrypts(context: ts.Context) -> None:
    values = np.linspace(-3, 3, 4096)
    blob = ts.ckks_vector(context, values).serialize()
    c0, c1, moduli = seal_codec.ciphertext_coefficients(blob)
    assert c0.shape == c1.shape == (1, N) and len(moduli) == 1
    rewritten = seal_codec.with_coefficients(blob, c0, c1)
    assert seal_codec.ciphertext_coefficients(rewritten)[0].tolist() == c0.tolist()
    decrypted = np.array(ts.ckks_vector_from(context, rewritten).decrypt())
    assert np.array_equal(decrypted, np.array(ts.ckks_vector_from(context, blob).decrypt()))
    assert np.abs(decrypted - values).max() < 1e-7


def test_masked_sum_over_five_clients_decrypts_to_the_plain_sum(context: ts.Context, q: int) -> None:
    rng = np.random.default_rng(5)
    clients = {cid: secagg.RoundSecrets.generate() for cid in (2, 4, 6, 8, 10)}
    s_publics = {c: s.s_public for c, s in clients.items()}
    plains = {c: rng.normal(0, 1, 4096) for c in clients}
    blobs = {c: ts.ckks_vector(context, plains[c]).serialize() for c in clients}
    total0 = np.zeros(N, dtype=object)
    total1 = np.zeros(N, dtype=object)
    plain0 = np.zeros(N, dtype=object)
    for c, blob in blobs.items():
        mask = secagg.client_mask(clients[c], c, s_publics, [q], N, BINDING)
        masked = seal_codec.add_mask(blob, mask[0])
        m0, m1, _ = seal_codec.ciphertext_coefficients(masked)
        u0, u1, _ = seal_codec.ciphertext_coefficients(blob)
        assert np.array_equal(m1, u1)  # c1 carries no mask
        assert not np.array_equal(m0, u0)
        # One masked upload decrypts to noise, uncorrelated with the client's values.
        alone = np.array(ts.ckks_vector_from(context, masked).decrypt())
        assert abs(np.corrcoef(alone, plains[c])[0, 1]) < 0.1
        assert np.abs(alone).max() > 1e6
        total0 += m0[0].astype(object)
        total1 += m1[0].astype(object)
        plain0 += u0[0].astype(object)
    # The server's part: subtract the removal mask (no dropouts: the self masks).
    removal = secagg.removal_mask(
        {c: s.self_seed for c, s in clients.items()}, {}, s_publics, list(clients), [q], N, BINDING
    )
    c0 = ((total0 - removal[0].astype(object)) % q).astype(np.uint64).reshape(1, N)
    c1 = (total1 % q).astype(np.uint64).reshape(1, N)
    # Exactly the coefficients of the unmasked ciphertext sum: same precision as today.
    assert np.array_equal(c0[0], (plain0 % q).astype(np.uint64))
    summed = seal_codec.with_coefficients(blobs[2], c0, c1)
    decrypted = np.array(ts.ckks_vector_from(context, summed).decrypt())
    expected = sum(plains.values())
    assert np.abs(decrypted - expected).max() < 1e-7
    # TenSEAL's own homomorphic sum of the unmasked vectors gives the same numbers.
    reference = ts.ckks_vector_from(context, blobs[2])
    for c in (4, 6, 8, 10):
        reference += ts.ckks_vector_from(context, blobs[c])
    assert np.abs(np.array(reference.decrypt()) - decrypted).max() < 1e-9


def test_server_reader_folds_masked_uploads_and_release_matches_weighted_mean(
    keys: tuple[bytes, bytes], q: int
) -> None:
    secret, public = keys
    ctx = server_he.load_public_context(public)
    length = 5000  # two chunks
    chunks = ctx.chunk_count(length)
    rng = np.random.default_rng(8)
    clients = {cid: secagg.RoundSecrets.generate() for cid in (1, 2, 3, 4, 5)}
    s_publics = {c: s.s_public for c, s in clients.items()}
    updates = {c: rng.normal(0, 1, length) for c in clients}
    weights = {c: float(w) for c, w in zip(clients, (1, 2, 3, 4, 5), strict=True)}
    survivors = [1, 2, 4, 5]  # client 3 shared keys, then dropped out before uploading
    running = None
    for c in survivors:
        mask = secagg.client_mask(clients[c], c, s_publics, [q], chunks * N, BINDING).reshape(chunks, N)
        payload = he.encrypt_update(secret, updates[c], weights[c], check_binding=BINDING, mask=mask)
        update = server_he.parse_update(
            ctx, payload, vector_length=length, max_bytes=server_he.update_size_bound(ctx, length)
        )
        running = server_he.fold(running, update)
    assert running is not None
    removal = secagg.removal_mask(
        {c: clients[c].self_seed for c in survivors},
        {3: clients[3].s_private},
        s_publics,
        survivors,
        [q],
        chunks * N,
        BINDING,
    )
    server_he.subtract_mask(running, removal.reshape(chunks, N))
    sums = he.decrypt_sums(secret, server_he.serialize_sum(running), length, check_binding=BINDING)
    expected = sum(weights[c] * updates[c] for c in survivors) / sum(weights[c] for c in survivors)
    assert np.abs(sums.weighted_sum / sums.total_weight - expected).max() < 1e-6
    assert sums.check_residual is not None and abs(sums.check_residual) < he.CHECK_TOLERANCE


def test_masked_sum_without_the_removal_mask_is_noise(keys: tuple[bytes, bytes], q: int) -> None:
    """A server that skips (or fakes) unmasking releases nothing usable."""
    secret, _ = keys
    clients = {cid: secagg.RoundSecrets.generate() for cid in (1, 2, 3)}
    s_publics = {c: s.s_public for c, s in clients.items()}
    ctx = ts.context_from(secret)
    values = np.ones(4096)
    total0 = np.zeros(N, dtype=object)
    total1 = np.zeros(N, dtype=object)
    for c in clients:
        blob = seal_codec.add_mask(
            ts.ckks_vector(ctx, values).serialize(),
            secagg.client_mask(clients[c], c, s_publics, [q], N, BINDING)[0],
        )
        c0, c1, _ = seal_codec.ciphertext_coefficients(blob)
        total0 += c0[0].astype(object)
        total1 += c1[0].astype(object)
    summed = seal_codec.with_coefficients(
        blob,
        (total0 % q).astype(np.uint64).reshape(1, N),
        (total1 % q).astype(np.uint64).reshape(1, N),
    )
    decrypted = np.array(ts.ckks_vector_from(ctx, summed).decrypt())
    assert np.abs(decrypted - 3.0).min() > 1.0


# -- garbage -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def blob(context: ts.Context) -> bytes:
    return ts.ckks_vector(context, [1.0, 2.0]).serialize()


def _seal_offset(data: bytes) -> int:
    return data.index(bytes.fromhex("5ea1"))


def test_garbage_vectors_are_refused(blob: bytes, q: int) -> None:
    start = _seal_offset(blob)
    uncompressed = seal_codec.with_coefficients(blob, *seal_codec.ciphertext_coefficients(blob)[:2])
    ustart = _seal_offset(uncompressed)
    meta_at = ustart + 16
    cases = {
        "empty": (b"", "is empty"),
        "random": (bytes(range(256)) * 3, "protobuf"),
        "truncated": (blob[:-10], "truncated"),
        "not bytes": ("text", "must be bytes"),
        "second ciphertext": (uncompressed + uncompressed[ustart - 4 :], "exactly one ciphertext"),
        "unknown field": (blob + b"\x28\x01", "unexpected protobuf field"),
        "bad SEAL magic": (blob[:start] + b"\x00\x00" + blob[start + 2 :], "not a SEAL object"),
        "SEAL 3": (blob[: start + 3] + b"\x03" + blob[start + 4 :], "SEAL 4 is required"),
        "wrong claimed size": (blob[: start + 8] + b"\xff" + blob[start + 9 :], "claims"),
        "three polynomials": (
            uncompressed[: meta_at + 33] + (3).to_bytes(8, "little") + uncompressed[meta_at + 41 :],
            "3 polynomials",
        ),
        "unknown parameters": (
            uncompressed[:meta_at] + b"\x01" * 8 + uncompressed[meta_at + 8 :],
            "not a known preset",
        ),
        "not NTT form": (uncompressed[: meta_at + 32] + b"\x00" + uncompressed[meta_at + 33 :], "NTT form"),
    }
    for name, (data, message) in cases.items():
        with pytest.raises(InvalidHEPayload, match=message):
            seal_codec.ciphertext_coefficients(data)  # type: ignore[arg-type]
        assert name


def test_unreduced_coefficients_and_bad_masks_are_refused(blob: bytes, q: int) -> None:
    c0, c1, _ = seal_codec.ciphertext_coefficients(blob)
    bad = c0.copy()
    bad[0, 5] = q
    with pytest.raises(InvalidHEPayload, match="not reduced"):
        seal_codec.with_coefficients(blob, bad, c1)
    with pytest.raises(InvalidHEPayload, match="shape"):
        seal_codec.with_coefficients(blob, c0[:, :100], c1)
    with pytest.raises(InvalidHEPayload, match="uint64"):
        seal_codec.with_coefficients(blob, c0.astype(np.int64), c1)
    # A stored-unreduced coefficient in the bytes themselves.
    forged = seal_codec.with_coefficients(blob, c0, c1)
    tail = bytearray(forged)
    tail[-8 - 9 : -9] = (2**64 - 1).to_bytes(8, "little")  # last coefficient before the scale field
    with pytest.raises(InvalidHEPayload, match="not reduced"):
        seal_codec.ciphertext_coefficients(bytes(tail))
    with pytest.raises(InvalidHEPayload, match="below"):
        seal_codec.add_mask(blob, np.full(N, q, dtype=np.uint64))
    with pytest.raises(InvalidHEPayload, match="shape"):
        seal_codec.add_mask(blob, np.zeros(N - 1, dtype=np.uint64))
    with pytest.raises(InvalidHEPayload, match="uint64"):
        seal_codec.add_mask(blob, np.zeros(N, dtype=np.float64))


def test_compressed_zstd_blocks_are_refused(blob: bytes) -> None:
    start = _seal_offset(blob)
    frame_at = start + 16
    assert blob[frame_at : frame_at + 4] == b"\x28\xb5\x2f\xfd"
    descriptor = blob[frame_at + 4]
    pos = (
        frame_at
        + 5
        + (0 if (descriptor >> 5) & 1 else 1)
        + (1 if (descriptor >> 5) & 1 else 0, 2, 4, 8)[descriptor >> 6]
    )
    header = int.from_bytes(blob[pos : pos + 3], "little")
    compressed = (header & ~0b110) | (2 << 1)  # block type 2: compressed
    data = blob[:pos] + compressed.to_bytes(3, "little") + blob[pos + 3 :]
    with pytest.raises(InvalidHEPayload, match="compressed zstd blocks"):
        seal_codec.ciphertext_coefficients(data)


def test_random_mutations_never_escape_as_other_errors(blob: bytes) -> None:
    rng = np.random.default_rng(11)
    refused = 0
    for _ in range(300):
        data = bytearray(blob)
        for _ in range(int(rng.integers(1, 4))):
            data[int(rng.integers(0, 64))] = int(rng.integers(0, 256))  # headers live up front
        if rng.random() < 0.3:
            del data[int(rng.integers(0, len(data))) :]
        try:
            seal_codec.ciphertext_coefficients(bytes(data))
        except InvalidHEPayload:
            refused += 1
    assert refused > 100
