"""Untrusted updates: every malformed payload is refused with InvalidHEPayload, nothing else."""

from __future__ import annotations

import random
import struct
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tenseal as ts
from he_support import SHORT, Federation, accept, frame, unframe

from privacy_api.crypto import he as server
from privacy_client import he as sdk

ROOT = Path(__file__).resolve().parents[2]
# Bytes before the first coefficient of an SDK payload's first chunk: frame header (20),
# chunk length (4), protobuf tags and lengths (8), SEAL header (16), zstd frame and block
# headers (12), ciphertext metadata (73), data-array header (16) and count (8).
METADATA_END = 20 + 4 + 8 + 16 + 12 + 73 + 16 + 8


def varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    return bytes(out + bytes([value]))


def proto(sizes: list[int], blobs: list[bytes], scale: float = 2.0**40) -> bytes:
    """A TenSEAL CKKSVectorProto: packed sizes (1), ciphertexts (2), scale (3)."""
    packed = b"".join(varint(s) for s in sizes)
    out = b"\x0a" + varint(len(packed)) + packed if sizes else b""
    out += b"".join(b"\x12" + varint(len(blob)) + blob for blob in blobs)
    return out + b"\x19" + struct.pack("<d", scale)


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, pos


def blob_of(chunk: bytes) -> bytes:
    """The SEAL ciphertext inside a one-ciphertext CKKSVectorProto (sizes field first)."""
    pos = 2 + chunk[1]
    assert chunk[0] == 0x0A and chunk[pos] == 0x12
    length, pos = read_varint(chunk, pos + 1)
    return chunk[pos : pos + length]


def size_of(chunk: bytes) -> int:
    return read_varint(chunk, 2)[0]


@pytest.fixture(scope="module")
def plain_chunks(n8192: Federation, short_update: bytes) -> list[bytes]:
    """The update's chunks rewritten by the server without compression framing: SEAL
    ciphertexts with compr_mode none, whose fields sit at fixed offsets (see mutate)."""
    aggregate = server.serialize_sum(server.fold(None, accept(n8192, short_update, SHORT)))
    return unframe(aggregate)[1]


def as_update(chunks: list[bytes], *, code: int = 1, length: int = SHORT) -> bytes:
    return frame(code, 1, length, 1, chunks)


def mutate(chunk: bytes, offset: int, value: bytes) -> bytes:
    """Overwrite bytes of the uncompressed SEAL ciphertext inside `chunk`, then re-wrap."""
    blob = bytearray(blob_of(chunk))
    blob[offset : offset + len(value)] = value
    return proto([size_of(chunk)], [bytes(blob)])


# Offsets in an uncompressed SEAL 4 ciphertext: header 0-15, parms_id 16-47, NTT flag 48,
# size 49-56, degree 57-64, primes 65-72, scale 73-80, correction 81-88, array header
# 89-104, count 105-112, then c0 and c1 (N little-endian uint64 each).
C0, C1 = 113, 113 + 8192 * 8


def refuse(fed: Federation, payload: bytes, match: str, length: int = SHORT) -> None:
    # a generous size cap, so that the check under test is the one that fires
    with pytest.raises(server.InvalidHEPayload, match=match):
        server.parse_update(fed.context, payload, vector_length=length, max_bytes=10**8)


def test_valid_update_and_server_written_chunks_are_accepted(
    n8192: Federation, short_update: bytes, plain_chunks: list[bytes]
) -> None:
    assert accept(n8192, short_update, SHORT).coefficients.shape == (2, 2, 8192)
    rewritten = accept(n8192, as_update(plain_chunks), SHORT)
    assert np.array_equal(rewritten.coefficients, accept(n8192, short_update, SHORT).coefficients)


MALFORMED: list[tuple[str, Callable[[bytes, list[bytes]], bytes], str]] = [
        ("empty", lambda u, c: b"", "too short"),
        ("random", lambda u, c: random.Random(1).randbytes(4000), "magic"),
        ("magic-then-random", lambda u, c: b"PAHE" + random.Random(2).randbytes(4000), "."),
        ("format-v1", lambda u, c: u[:4] + b"\x01" + u[5:], "version"),
        ("unknown-preset", lambda u, c: as_update(c, code=9), "unknown code 9"),
        ("aggregate-as-update", lambda u, c: frame(1, 2, SHORT, 1, c), "single client"),
        ("two-contributions", lambda u, c: frame(1, 1, SHORT, 2, c), "single client"),
        ("reserved-byte", lambda u, c: u[:7] + b"\x01" + u[8:], "header"),
        ("claims-other-length", lambda u, c: as_update(c, length=SHORT - 1), "expects 5000"),
        ("chunk-missing", lambda u, c: frame(1, 1, SHORT, 1, c[:1]), "need 2"),
        ("chunk-extra", lambda u, c: frame(1, 1, SHORT, 1, [*c, c[0]]), "need 2"),
        ("chunks-swapped", lambda u, c: as_update([c[1], c[0]]), "holds"),
        ("trailing-bytes", lambda u, c: u + b"\x00", "trailing"),
        ("empty-ckks-vector", lambda u, c: as_update([proto([], []), c[1]]), "TenSEAL"),
        ("no-sizes", lambda u, c: as_update([proto([], [blob_of(c[0])]), c[1]]), "TenSEAL"),
        (
            "two-ciphertexts",
            lambda u, c: as_update([proto([4096, 4096], [blob_of(c[0])] * 2), c[1]]),
            "holds",
        ),
        ("proto-scale", lambda u, c: as_update([proto([4096], [blob_of(c[0])], 2.0**39), c[1]]),
         "scale"),
        ("other-parms-id", lambda u, c: as_update([mutate(c[0], 16, b"\x01"), c[1]]), "parameters"),
        ("not-ntt", lambda u, c: as_update([mutate(c[0], 48, b"\x00"), c[1]]), "NTT"),
        ("seal-scale", lambda u, c: as_update([mutate(c[0], 73, struct.pack("<d", 2.0**39)), c[1]]),
         "scale"),
        ("seal-major-3", lambda u, c: as_update([mutate(c[0], 3, b"\x03"), c[1]]), "SEAL 3"),
        ("seal-minor", lambda u, c: as_update([mutate(c[0], 4, b"\x09"), c[1]]), "SEAL 4.9"),
        ("seal-size-field", lambda u, c: as_update([mutate(c[0], 8, b"\x00"), c[1]]), "claims"),
        (
            "transparent",
            lambda u, c: as_update([mutate(c[0], C1, bytes(8192 * 8)), c[1]]),
            "transparent",
        ),
        (
            "coefficient-not-reduced",
            lambda u, c: as_update([mutate(c[0], C0, struct.pack("<Q", 2**64 - 1)), c[1]]),
            "not reduced",
        ),
]


@pytest.mark.parametrize(
    ("make", "match"), [pytest.param(make, match, id=name) for name, make, match in MALFORMED]
)
def test_malformed_updates_are_refused(
    n8192: Federation,
    short_update: bytes,
    plain_chunks: list[bytes],
    make: Callable[[bytes, list[bytes]], bytes],
    match: str,
) -> None:
    refuse(n8192, make(short_update, plain_chunks), match)


def test_wrong_length_for_the_federation_is_refused(n8192: Federation, short_update: bytes) -> None:
    refuse(n8192, short_update, "expects 4999", length=4999)
    refuse(n8192, short_update, "expects 1", length=1)


def test_truncated_updates_are_refused(n8192: Federation, short_update: bytes) -> None:
    for cut in [1, 19, 20, 23, 24, 30, 40, 60, 100, 157, 1000, len(short_update) // 2, -1]:
        refuse(n8192, short_update[:cut], ".")


def test_oversized_updates_are_refused_before_parsing(n8192: Federation, short_update: bytes) -> None:
    with pytest.raises(server.InvalidHEPayload, match="limit"):
        server.parse_update(
            n8192.context, short_update, vector_length=SHORT, max_bytes=len(short_update) - 1
        )


def test_every_bit_flip_in_headers_and_metadata_is_refused(
    n8192: Federation, short_update: bytes
) -> None:
    for position in range(METADATA_END):
        for bit in range(8):
            flipped = bytearray(short_update)
            flipped[position] ^= 1 << bit
            with pytest.raises(server.InvalidHEPayload):
                accept(n8192, bytes(flipped), SHORT)


def test_compressed_blocks_are_refused_not_decompressed(
    n8192: Federation, short_update: bytes
) -> None:
    block_header = 20 + 4 + 8 + 16 + 9  # first zstd block header of the first chunk
    flipped = bytearray(short_update)
    flipped[block_header] |= 0b100  # block type raw (0) -> compressed (2)
    refuse(n8192, bytes(flipped), "compressed ciphertext blocks")


def test_payloads_for_other_parameters_are_refused(n8192: Federation) -> None:
    n4096_secret, _ = sdk.generate_keys("n4096")
    standard_secret, _ = sdk.generate_keys("standard4")
    x = np.zeros(SHORT)

    refuse(n8192, sdk.encrypt_update(n4096_secret, x, 1.0), "preset n4096")
    refuse(n8192, sdk.encrypt_update(standard_secret, x, 1.0), "preset standard4")
    # a ciphertext of another parameter set inside an n8192-labelled frame
    chunks = unframe(sdk.encrypt_update(standard_secret, x, 1.0))[1]
    refuse(n8192, as_update(chunks), "too large")


def test_three_polynomial_ciphertexts_are_refused(n8192: Federation, short_update: bytes) -> None:
    ctx = ts.context_from(n8192.secret)
    ctx.auto_relin = ctx.auto_rescale = False
    ctx.global_scale = 2.0**20  # so that the product has the preset's scale, 2**40
    squared = ts.ckks_vector(ctx, np.ones(4096)) * ts.ckks_vector(ctx, np.ones(4096))
    product = proto([4096], [blob_of(squared.serialize())])
    refuse(n8192, as_update([product, unframe(short_update)[1][1]]), "3 polynomials")


def test_wrong_key_updates_are_accepted_and_ruin_the_aggregate(n8192: Federation) -> None:
    """Documented limitation: a ciphertext under another key with the right parameters is
    indistinguishable from a valid one; only the key holders notice, on decryption."""
    stranger_secret, _ = sdk.generate_keys("n8192")
    x = np.full(SHORT, 0.5)
    honest = accept(n8192, sdk.encrypt_update(n8192.secret, x, 1.0), SHORT)
    stranger = accept(n8192, sdk.encrypt_update(stranger_secret, x, 1.0), SHORT)

    aggregate = server.serialize_sum(server.fold(server.fold(None, honest), stranger))

    sums = sdk.decrypt_sums(n8192.secret, aggregate, SHORT)
    assert np.max(np.abs(sums.weighted_sum - 1.0)) > 1.0


def test_update_under_another_key_is_caught_by_the_check_slot_not_the_server(
        n8192: Federation) -> None:
    # Contexts carry parameters only, so two federations of one preset store the same bytes:
    # the server cannot tell an update under another key from a valid one (module docstring).
    other_secret, other_public = sdk.generate_keys("n8192")
    assert other_public == n8192.public
    binding = b"round binding"
    ours = sdk.encrypt_update(n8192.secret, np.zeros(3), 1.0, check_binding=binding)
    theirs = sdk.encrypt_update(other_secret, np.ones(3), 1.0, check_binding=binding)
    running = server.fold(None, accept(n8192, ours, 3))
    server.fold(running, accept(n8192, theirs, 3))
    sums = sdk.decrypt_sums(n8192.secret, server.serialize_sum(running), 3, check_binding=binding)
    # The clients notice on decryption: the check slot no longer matches.
    assert abs(sums.check_residual or 0.0) > 1e3 * sdk.CHECK_TOLERANCE


def test_stored_sum_is_checked_like_an_update(n8192: Federation, short_update: bytes) -> None:
    with pytest.raises(server.InvalidHEPayload, match="stored aggregate"):
        server.deserialize_sum(n8192.context, short_update, vector_length=SHORT)
    aggregate = server.serialize_sum(server.fold(None, accept(n8192, short_update, SHORT)))
    with pytest.raises(server.InvalidHEPayload):
        server.deserialize_sum(n8192.context, aggregate[:-1], vector_length=SHORT)


FUZZ = textwrap.dedent(
    """
    import random, sys
    import numpy as np
    from privacy_api.crypto import he as server
    from privacy_client import he as sdk

    secret, public = sdk.generate_keys("n8192")
    ctx = server.load_public_context(public)
    update = sdk.encrypt_update(secret, np.random.default_rng(0).uniform(-1, 1, 5000), 2.0)
    aggregate = server.serialize_sum(server.fold(None, server.parse_update(
        ctx, update, vector_length=5000, max_bytes=len(update))))
    rng = random.Random(int(sys.argv[1]))

    def mutations(base, n):
        for _ in range(n):
            data = bytearray(base)
            kind = rng.randrange(5)
            if kind == 0:  # flip bits
                for _ in range(rng.randrange(1, 4)):
                    data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            elif kind == 1:  # flip bits among the headers
                data[rng.randrange(min(400, len(data)))] ^= 1 << rng.randrange(8)
            elif kind == 2:  # truncate
                del data[rng.randrange(len(data)):]
            elif kind == 3:  # overwrite a run with random bytes
                start = rng.randrange(len(data))
                data[start:start + 32] = rng.randbytes(32)
            else:  # splice a random chunk in
                at = rng.randrange(len(data))
                data[at:at] = rng.randbytes(rng.randrange(1, 64))
            yield bytes(data)

    counts = {"refused": 0, "accepted": 0}
    for data in list(mutations(update, 1000)) + list(mutations(aggregate, 300)):
        for parse in (
            lambda d: server.parse_update(ctx, d, vector_length=5000, max_bytes=10**7),
            lambda d: server.deserialize_sum(ctx, d, vector_length=5000),
        ):
            try:
                parse(data)
                counts["accepted"] += 1
            except server.InvalidHEPayload:
                counts["refused"] += 1
    for data in mutations(public, 150):
        try:
            server.load_public_context(data)
            counts["accepted"] += 1
        except server.InvalidHEPayload:
            counts["refused"] += 1
    for data in mutations(aggregate, 150):  # the SDK reads what a (possibly broken) server sent
        try:
            sdk.decrypt_sums(secret, data, 5000)
            counts["accepted"] += 1
        except sdk.InvalidHEPayload:
            counts["refused"] += 1
    print(counts["refused"], counts["accepted"])
    """
)


def test_fuzzed_payloads_never_crash_the_worker() -> None:
    """Mutated updates, sums and contexts in a child process: it must exit normally, and every
    failure must be InvalidHEPayload (any other exception would end the child non-zero).
    The SDK's decryption, which hands bytes to TenSEAL, is fuzzed the same way."""
    result = subprocess.run(
        [sys.executable, "-c", FUZZ, "20240611"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    refused, accepted = map(int, result.stdout.split())
    assert refused > 1500 and refused + accepted == 2 * 1300 + 150 + 150
