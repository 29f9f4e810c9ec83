"""The server stores only a parameters-only (symmetric, keyless) context of a shipped preset
(DESIGN.md §5)."""

from __future__ import annotations

import hashlib
import random

import pytest
import tenseal as ts
from he_support import Federation

from privacy_api.crypto import he as server
from privacy_client import he as sdk


def tenseal_context(
    degree: int = 8192,
    bits: tuple[int, ...] = (60, 60),
    scale: float | None = 2.0**40,
    **kwargs: object,
) -> ts.Context:
    kwargs.setdefault("encryption_type", ts.ENCRYPTION_TYPE.SYMMETRIC)
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, degree, coeff_mod_bit_sizes=list(bits), **kwargs)
    if scale is not None:
        ctx.global_scale = scale
    return ctx


def public_bytes(ctx: ts.Context, **keys: bool) -> bytes:
    options = {"save_public_key": False, "save_secret_key": False, "save_galois_keys": False,
               "save_relin_keys": False}
    options.update(keys)
    return bytes(ctx.serialize(**options))


def test_generated_public_context_carries_parameters_only(federation: Federation) -> None:
    loaded = ts.context_from(federation.public)
    assert not loaded.is_private() and not loaded.has_secret_key()
    assert not loaded.has_galois_keys() and not loaded.has_relin_keys()
    assert len(federation.public) < 200  # parameters only: no public key to encrypt with
    with pytest.raises(ValueError):
        ts.ckks_vector(loaded, [1.0])
    assert ts.context_from(federation.secret).has_secret_key()
    assert sdk.context_preset(federation.public).name == federation.preset


def test_shipped_presets_are_accepted(federation: Federation) -> None:
    ctx = server.load_public_context(federation.public)

    assert ctx.preset.name == federation.preset
    assert ctx.fingerprint == hashlib.sha256(federation.public).hexdigest()
    assert not ctx.has_public_key and ctx.size == len(federation.public)


def test_asymmetric_context_with_a_public_key_is_refused() -> None:
    # With a public key the server could encrypt a vector of its choice as a round's sum.
    ctx = tenseal_context(encryption_type=ts.ENCRYPTION_TYPE.ASYMMETRIC)
    with pytest.raises(server.InvalidHEPayload, match="symmetric|public key"):
        server.load_public_context(public_bytes(ctx, save_public_key=True))
    with pytest.raises(server.InvalidHEPayload, match="symmetric"):
        server.load_public_context(public_bytes(ctx))


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: public_bytes(tenseal_context(), save_secret_key=True), "private key"),
        (lambda: public_bytes(tenseal_context(), save_relin_keys=True), "relinearization"),
        (lambda: _with_galois_keys(), "Galois"),
        (lambda: public_bytes(tenseal_context(scale=2.0**30)), "scale"),
        (lambda: public_bytes(tenseal_context(scale=None)), "scale"),
        (lambda: public_bytes(tenseal_context(bits=(60, 40, 60))), "preset"),
        (lambda: public_bytes(tenseal_context(bits=(60, 40, 40, 60))), "preset"),
        (lambda: public_bytes(tenseal_context(bits=(40, 40))), "preset"),
        (lambda: public_bytes(tenseal_context(degree=4096, bits=(60, 49), scale=2.0**39)), "scale"),
        (lambda: public_bytes(tenseal_context(degree=16384, bits=(60, 60))), "preset"),
        (
            lambda: public_bytes(
                tenseal_context(encryption_type=ts.ENCRYPTION_TYPE.ASYMMETRIC),
                save_public_key=True,
            ),
            "symmetric|public key",
        ),
        (
            lambda: public_bytes(
                ts.context(ts.SCHEME_TYPE.BFV, 8192, 1032193, coeff_mod_bit_sizes=[60, 60],
                           encryption_type=ts.ENCRYPTION_TYPE.SYMMETRIC)
            ),
            "preset|scale",
        ),
    ],
    ids=[
        "secret-key", "relin-keys", "galois-keys", "scale-2^30", "no-scale", "three-primes",
        "standard4", "40-bit-primes", "n4096-scale-2^39", "n16384", "public-key", "bfv",
    ],
)
def test_unsafe_or_unknown_contexts_are_refused(make: object, reason: str) -> None:
    assert callable(make)
    with pytest.raises(server.InvalidHEPayload, match=reason):
        server.load_public_context(make(), max_bytes=64 * 1024 * 1024)


def _with_galois_keys() -> bytes:
    ctx = tenseal_context(degree=4096, bits=(60, 49))
    ctx.generate_galois_keys()
    return public_bytes(ctx, save_galois_keys=True)


def test_secret_context_is_refused_even_through_the_sdk(n8192: Federation) -> None:
    with pytest.raises(server.InvalidHEPayload, match="private key"):
        server.load_public_context(n8192.secret)


def test_oversized_context_is_refused_before_parsing(n8192: Federation) -> None:
    with pytest.raises(server.InvalidHEPayload, match="limit"):
        server.load_public_context(n8192.public, max_bytes=len(n8192.public) - 1)


def test_garbage_contexts_raise_only_the_domain_error(n8192: Federation) -> None:
    rng = random.Random(3)
    base = n8192.public
    garbage = [b"", b"\x00", b"\x0a", rng.randbytes(16), rng.randbytes(5000), b"\xff" * 300]
    garbage += [base[:cut] for cut in (1, 2, 10, 40, 60, len(base) // 2, len(base) - 1)]
    for data in garbage:
        with pytest.raises(server.InvalidHEPayload):
            server.load_public_context(data)
    for _ in range(60):
        flipped = bytearray(base)
        flipped[rng.randrange(len(base))] ^= 1 << rng.randrange(8)
        try:
            ctx = server.load_public_context(bytes(flipped))
        except server.InvalidHEPayload:
            continue
        # Some bits do not matter (zstd framing slack, a public-key coefficient): then the
        # parameters the server relies on are still exactly the preset's.
        assert ctx.preset.name == "n8192"
