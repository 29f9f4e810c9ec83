"""Client side of federated secure aggregation: CKKS keys, encrypted updates, decrypted means.

Trust model (DESIGN.md §5): the federation's CKKS secret key is made here and shared only
among the federation's clients. Clients encrypt *symmetrically* (with the secret key); the
server gets a context carrying parameters only (no public key), so it cannot encrypt a vector
of its choice. All clients hold the same secret key, so each client also masks its ciphertext
(`privacy_secagg`, driven by `FederatedClient`): an individual upload decrypts to noise.

Weighting happens here: a client encrypts ``[w*x_0, ..., w*x_{L-1}, w, check]``, so the server
learns neither the update nor the weight; `decrypt_aggregate` divides the summed vector by the
summed weight. ``check`` is the check slot: ``sum_i r_i * v_i`` over the other slots, with
coefficients ``r`` derived from the secret key and the round (`check_coefficients`). It is
linear, so it survives summation; a server that adds a plaintext ``d`` to the sum (or replaces
it) cannot adjust the check slot by ``sum_i r_i * d_i`` without knowing ``r``, and
`decrypt_sums` reports the mismatch (`AggregateSums.check_residual`). Presets are
single-level, addition-only CKKS parameter sets: ~8x float32 on the wire.

Wire format (version 1), shared with the server (`privacy_api.crypto.he` implements the same
contract without importing this module). Integers little-endian::

    magic b"PAHE" | version u8 = 2 | preset code u8 | kind u8 (1 update, 2 aggregate)
    | reserved u8 = 0 | vector_length u32 | contributions u32 | chunk count u32
    | chunk count x (length u32, TenSEAL-serialized CKKS vector of one ciphertext)

Chunk ``i`` holds slots ``[i*S, min((i+1)*S, L+2))`` of ``[w*x, w, check]``, ``S = N/2``.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import struct
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

import numpy as np
import numpy.typing as npt

from .extras import require_extra

try:
    import tenseal as ts
    import tenseal.sealapi  # noqa: F401 - registers SEAL's Modulus type, read by _preset_of
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF
except ImportError as exc:  # TenSEAL and cryptography come with the [federated] extra
    require_extra("federated", "privacy_client.he (CKKS)", exc)
    raise

__all__ = [
    "AggregateSums",
    "CHECK_TOLERANCE",
    "DEFAULT_PRESET",
    "DistributedGaussian",
    "InvalidHEPayload",
    "PRESETS",
    "Preset",
    "check_coefficients",
    "clip_l2",
    "context_preset",
    "federation_secret",
    "decrypt_aggregate",
    "decrypt_sums",
    "encrypt_update",
    "generate_keys",
]

MAGIC: Final = b"PAHE"
FORMAT_VERSION: Final = 2
# Slots after the L parameters: the weight and the check slot.
EXTRA_SLOTS: Final = 2
# |check - sum r_i v_i| of an honest aggregate, per sqrt(contribution). CKKS at scale 2**40
# errs by ~3e-10 per slot and sum r_i^2 <= 1/3, so honest residuals are ~1e-10: 1e-7 leaves a
# margin of several hundred standard deviations.
CHECK_TOLERANCE: Final = 1e-7
KIND_UPDATE: Final = 1
KIND_AGGREGATE: Final = 2
_FRAME = struct.Struct("<4sBBBBIII")
_LEN = struct.Struct("<I")

FloatArray = npt.NDArray[np.float64]


class InvalidHEPayload(ValueError):
    """Bytes that are not a well-formed payload or context for this SDK (or for this key)."""


@dataclass(frozen=True)
class Preset:
    """A CKKS parameter set.

    Single-level presets put the data under one 60-bit prime; the last prime is SEAL's special
    prime, which only lowers fresh-encryption noise. With scale ``2**scale_bits`` a decrypted
    sum is exact to ~1e-8 absolute per slot and must stay below `max_abs_sum` in magnitude
    (the sum of every client's ``|w*x_i|``, and the summed weight): past it values wrap around.
    """

    name: str
    code: int
    poly_modulus_degree: int
    coeff_mod_bit_sizes: tuple[int, ...]
    scale_bits: int
    server_accepted: bool = True

    @property
    def slots(self) -> int:
        return self.poly_modulus_degree // 2

    @property
    def scale(self) -> float:
        return float(2**self.scale_bits)

    @property
    def max_abs_sum(self) -> float:
        """Largest safe magnitude of a summed slot: half the headroom the data modulus leaves."""
        data_bits = sum(self.coeff_mod_bit_sizes[:-1])
        return float(2 ** (data_bits - self.scale_bits - 2))

    def chunk_count(self, vector_length: int) -> int:
        return -(-(vector_length + EXTRA_SLOTS) // self.slots)


# Keep in step with privacy_api.crypto.he.PRESETS (tests/he checks both agree).
PRESETS: Final[dict[str, Preset]] = {
    "n8192": Preset("n8192", 1, 8192, (60, 60), 40),
    "n4096": Preset("n4096", 2, 4096, (60, 49), 40),
    # The usual 4-level set, for benchmarks only: 3x the traffic; the server refuses it.
    "standard4": Preset("standard4", 3, 8192, (60, 40, 40, 60), 40, server_accepted=False),
}
DEFAULT_PRESET: Final = "n8192"
_BY_CODE: Final = {p.code: p for p in PRESETS.values()}


def generate_keys(preset: str = DEFAULT_PRESET) -> tuple[bytes, bytes]:
    """Make a federation's keys: ``(secret_context, public_context)``.

    The context is symmetric (clients encrypt with the secret key): the secret context (~130 KB
    for n8192) stays with the clients; the public context carries the encryption parameters
    only (~100 bytes: no public, secret, relinearization or Galois key). Nobody holding only
    the public context can encrypt or decrypt; the server needs nothing more to add.
    """
    try:
        spec = PRESETS[preset]
    except KeyError:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}") from None
    ctx = ts.context(
        ts.SCHEME_TYPE.CKKS,
        poly_modulus_degree=spec.poly_modulus_degree,
        coeff_mod_bit_sizes=list(spec.coeff_mod_bit_sizes),
        encryption_type=ts.ENCRYPTION_TYPE.SYMMETRIC,
    )
    ctx.global_scale = spec.scale
    secret: bytes = ctx.serialize(
        save_public_key=False, save_secret_key=True, save_galois_keys=False, save_relin_keys=False
    )
    public: bytes = ctx.serialize(
        save_public_key=False, save_secret_key=False, save_galois_keys=False, save_relin_keys=False
    )
    return secret, public


def federation_secret(secret_context: bytes) -> bytes:
    """32 bytes every holder of the federation's secret context derives alike, and nobody else.

    SHA-256 of the context re-serialized with its secret key only (TenSEAL's serialization of
    a loaded context is deterministic), so it does not depend on how the bytes were passed
    around. Keys the check slot; never sent anywhere.
    """
    ctx = _load_context(secret_context)
    if not ctx.has_secret_key():
        raise ValueError("the check key needs the secret context, not the public one")
    canonical = ctx.serialize(save_public_key=False, save_secret_key=True,
                              save_galois_keys=False, save_relin_keys=False)
    return hashlib.sha256(b"privacy-api federation secret v1\x00" + canonical).digest()


def check_coefficients(key: bytes, length: int, binding: bytes) -> FloatArray:
    """The check slot's coefficients ``r`` for ``length + 1`` slots (the update and its weight).

    Uniform in [-1, 1) / sqrt(length + 1), from a ChaCha20 keystream keyed by HKDF-SHA256(key,
    info = binding): fresh per round (the binding names federation and round), unknown to the
    server, and small enough that ``|check| <= |v|`` keeps the slot inside the preset's
    headroom.
    """
    if len(key) != 32:
        raise ValueError("the check key must be 32 bytes")
    count = length + 1
    stream_key = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"privacy-api check slot v1",
                      info=bytes(binding)).derive(key)
    encryptor = Cipher(algorithms.ChaCha20(stream_key, b"\x00" * 16), mode=None).encryptor()
    words = np.frombuffer(encryptor.update(b"\x00" * (8 * count)), dtype="<u8")
    # The top 53 bits give a float in [0, 1) exactly; map to [-1, 1).
    unit = (words >> np.uint64(11)).astype(np.float64) * (2.0**-53)
    coefficients: FloatArray = (2.0 * unit - 1.0) / math.sqrt(count)
    return coefficients


def context_preset(context: bytes) -> Preset:
    """The preset a serialized context (secret or public) was made with."""
    return _preset_of(_load_context(context))


@dataclass(frozen=True)
class DistributedGaussian:
    """Distributed Gaussian noise for a federation's rounds (DESIGN.md §5).

    Each client clips the vector it encrypts, ``v = [w*x, w]``, to L2 norm `clip_norm` (C) and
    adds independent N(0, (sigma*C)**2 / min_clients) noise to every slot. Guarantee: if at least
    `min_clients` clients follow this, the released sum is the Gaussian mechanism with L2
    sensitivity C (adding or removing one client moves the sum by at most C) and noise standard
    deviation at least sigma*C per slot, i.e. noise multiplier >= `noise_multiplier`; the
    server charges the round's (epsilon, delta) for that multiplier. Clipping the joint vector
    (weight slot included, so the released summed weight is protected too) keeps each update's
    direction and only lowers that client's effective weight: the result is still a weighted
    mean of the clients' x. Pick C near ``w * sqrt(|x|**2 + 1)`` for typical clients, and
    weights of order 1, so that the noisy summed weight stays well above sigma*C.
    Caveats: clients that skip the noise, or collude with the server by revealing their own
    noise, lower the guarantee for the others; floating-point sampling and CKKS's own rounding
    noise are not modelled.
    """

    clip_norm: float
    noise_multiplier: float
    min_clients: int

    def __post_init__(self) -> None:
        if not (math.isfinite(self.clip_norm) and self.clip_norm > 0):
            raise ValueError("clip_norm must be a positive number")
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier >= 0):
            raise ValueError("noise_multiplier must be a non-negative number")
        if self.min_clients < 1:
            raise ValueError("min_clients must be at least 1")

    @property
    def share_std(self) -> float:
        """Standard deviation of one client's noise share: sigma * C / sqrt(min_clients)."""
        return self.noise_multiplier * self.clip_norm / math.sqrt(self.min_clients)

    def privatize(self, vector: FloatArray, rng: np.random.Generator | None = None) -> FloatArray:
        """Clip `vector` to `clip_norm` and add this client's noise share."""
        generator = rng if rng is not None else _secure_generator()
        clipped = clip_l2(vector, self.clip_norm)
        # Generator.normal on a CSPRNG-seeded generator, never the global numpy state.
        draw = generator.normal
        return clipped + draw(0.0, self.share_std, size=clipped.shape)


def clip_l2(update: npt.ArrayLike, clip_norm: float) -> FloatArray:
    """Scale `update` down (never up) so that its L2 norm is at most `clip_norm`."""
    vector = np.asarray(update, dtype=np.float64)
    if not (math.isfinite(clip_norm) and clip_norm > 0):
        raise ValueError("clip_norm must be a positive number")
    norm = float(np.linalg.norm(vector))
    if norm <= clip_norm:
        return vector.copy()
    return vector * (clip_norm / norm)


def _secure_generator() -> np.random.Generator:
    return np.random.default_rng(secrets.randbits(128))


def encrypt_update(
    context: bytes,
    update: npt.ArrayLike,
    weight: float,
    *,
    dp: DistributedGaussian | None = None,
    rng: np.random.Generator | None = None,
    check_binding: bytes = b"",
    mask: npt.NDArray[np.uint64] | None = None,
) -> bytes:
    """Encrypt one client's update for the server to add: returns the wire payload.

    `update` is a 1-D float vector (the model delta, L values), `weight` a positive number (e.g.
    the client's sample count; only ratios matter). The payload encrypts ``[w*x, w, check]``
    (after `dp`'s clipping and noise, if given; the check slot is computed from the noisy
    vector, under `check_binding`), about 8x the size of ``x`` as float32. `context` is the
    secret context (encryption is symmetric). `mask`, shape (chunks, N) of residues mod the
    data prime, is added to each ciphertext's first polynomial (secure aggregation; see
    `privacy_secagg`). Raises ValueError for a non-finite or too large input (see
    `Preset.max_abs_sum`) or a context without the secret key.
    """
    ctx = _load_context(context)
    if not ctx.has_secret_key():
        raise ValueError("encryption is symmetric: it needs the secret context")
    preset = _preset_of(ctx)
    vector = np.asarray(update, dtype=np.float64)
    if vector.ndim != 1:
        raise ValueError(f"update must be a 1-D vector, got shape {vector.shape}")
    if not np.all(np.isfinite(vector)):
        raise ValueError("update contains NaN or infinite values")
    if not (math.isfinite(weight) and weight > 0):
        raise ValueError("weight must be a positive finite number")
    length = vector.shape[0]
    if length >= 2**32 - EXTRA_SLOTS:
        raise ValueError("update is too long for the wire format")
    plain = np.empty(length + 1, dtype=np.float64)
    np.multiply(vector, weight, out=plain[:length])
    plain[length] = weight
    if dp is not None:
        plain = dp.privatize(plain, rng)
    peak = float(np.max(np.abs(plain)))
    if peak >= preset.max_abs_sum:
        raise ValueError(
            f"weighted values reach {peak:.3g}; preset {preset.name} holds sums below "
            f"{preset.max_abs_sum:.3g}: scale the weights down"
        )
    check = float(check_coefficients(federation_secret(context), length, check_binding) @ plain)
    plain = np.append(plain, check)
    slots = preset.slots
    chunks = [
        ts.ckks_vector(ctx, plain[start : start + slots]).serialize()
        for start in range(0, length + EXTRA_SLOTS, slots)
    ]
    if mask is not None:
        chunks = _masked(chunks, mask, preset)
    return _frame(preset, KIND_UPDATE, length, 1, chunks)


def _masked(chunks: list[bytes], mask: npt.NDArray[np.uint64], preset: Preset) -> list[bytes]:
    from .seal_codec import add_mask

    if mask.shape != (len(chunks), preset.poly_modulus_degree):
        raise ValueError(f"mask has shape {mask.shape}; expected "
                         f"({len(chunks)}, {preset.poly_modulus_degree})")
    return [add_mask(chunk, mask[index]) for index, chunk in enumerate(chunks)]


class AggregateSums(NamedTuple):
    """Decrypted sums of a round: sum of w*x (length L), sum of w, number of contributions, and
    the check slot's residual ``check - sum_i r_i v_i`` (None unless a check key was given):
    ~1e-10 for an honest sum, see `CHECK_TOLERANCE`."""

    weighted_sum: FloatArray
    total_weight: float
    contributions: int
    check_residual: float | None = None


def decrypt_sums(secret_context: bytes, payload: bytes, vector_length: int, *,
                 check_binding: bytes | None = None) -> AggregateSums:
    """Decrypt an aggregate (or a single update) into its raw sums.

    With `check_binding` (the round's binding the updates were encrypted under), also computes
    the check slot's residual. Raises `InvalidHEPayload` if the payload is malformed, made for
    another preset or length, or cannot be decrypted with this context (ValueError if the
    context holds no secret key).
    """
    ctx = _load_context(secret_context)
    if not ctx.has_secret_key():
        raise ValueError("decryption needs the secret context, not the public one")
    preset = _preset_of(ctx)
    header, chunks = _unframe(payload)
    _, _, code, kind, _, length, contributions, count = header
    if kind not in (KIND_UPDATE, KIND_AGGREGATE) or contributions < 1:
        raise InvalidHEPayload("payload header is malformed")
    if code != preset.code:
        other = _BY_CODE.get(code)
        raise InvalidHEPayload(
            f"payload uses preset {other.name if other else code}; this key is {preset.name}"
        )
    if length != vector_length:
        raise InvalidHEPayload(f"aggregate has {length} parameters; expected {vector_length}")
    if count != preset.chunk_count(length):
        raise InvalidHEPayload("aggregate has the wrong number of ciphertexts for its length")
    total = length + EXTRA_SLOTS
    plain = np.empty(total, dtype=np.float64)
    slots = preset.slots
    for index, chunk in enumerate(chunks):
        start = index * slots
        expected = min(slots, total - start)
        try:
            values = ts.ckks_vector_from(ctx, chunk).decrypt()
        except Exception as exc:  # TenSEAL raises ValueError, RuntimeError, TypeError, ...
            raise InvalidHEPayload(f"ciphertext {index} cannot be decrypted: {exc}") from None
        if len(values) != expected:
            raise InvalidHEPayload(f"ciphertext {index} holds {len(values)} values")
        plain[start : start + expected] = values
    residual = None
    if check_binding is not None:
        r = check_coefficients(federation_secret(secret_context), length, check_binding)
        residual = float(plain[length + 1] - r @ plain[: length + 1])
    return AggregateSums(plain[:length], float(plain[length]), contributions, residual)


def decrypt_aggregate(secret_context: bytes, payload: bytes, vector_length: int) -> FloatArray:
    """The round's weighted mean ``sum(w*x) / sum(w)`` from the server's encrypted aggregate.

    Absolute error ~1e-8 * sqrt(contributions) / sum(w) from CKKS, plus the DP noise divided
    by sum(w) when the federation adds noise. Raises `InvalidHEPayload` as `decrypt_sums` does,
    and ValueError if the summed weight is not positive (possible only under heavy DP noise).
    """
    sums = decrypt_sums(secret_context, payload, vector_length)
    if not sums.total_weight > 0:
        raise ValueError(f"summed weight is {sums.total_weight:.3g}; cannot form a mean")
    return sums.weighted_sum / sums.total_weight


def _load_context(context: bytes) -> Any:
    try:
        return ts.context_from(bytes(context))
    except Exception as exc:  # TenSEAL raises ValueError, RuntimeError, TypeError, ...
        raise InvalidHEPayload(f"not a TenSEAL context: {exc}") from None


def _preset_of(ctx: Any) -> Preset:
    parms = ctx.seal_context().data.key_context_data().parms()
    degree = parms.poly_modulus_degree()
    bits = tuple(q.bit_count() for q in parms.coeff_modulus())
    for preset in PRESETS.values():
        if (
            preset.poly_modulus_degree == degree
            and preset.coeff_mod_bit_sizes == bits
            and preset.scale == ctx.global_scale
            and parms.scheme().name == "CKKS"
        ):
            return preset
    raise InvalidHEPayload(f"context (N={degree}, bits {list(bits)}) is not a known preset")


def _frame(preset: Preset, kind: int, length: int, contributions: int, chunks: list[bytes]) -> bytes:
    parts = [
        _FRAME.pack(MAGIC, FORMAT_VERSION, preset.code, kind, 0, length, contributions, len(chunks))
    ]
    for chunk in chunks:
        parts.append(_LEN.pack(len(chunk)))
        parts.append(chunk)
    return b"".join(parts)


def _unframe(payload: bytes) -> tuple[tuple[Any, ...], list[bytes]]:
    view = memoryview(bytes(payload))
    if len(view) < _FRAME.size:
        raise InvalidHEPayload("payload is too short")
    header = _FRAME.unpack_from(view)
    magic, version, _, _, reserved = header[:5]
    if magic != MAGIC or version != FORMAT_VERSION or reserved != 0:
        raise InvalidHEPayload(f"not an encrypted payload of format version {FORMAT_VERSION}")
    chunks, offset = [], _FRAME.size
    for _ in range(header[-1]):
        if offset + _LEN.size > len(view):
            raise InvalidHEPayload("payload is truncated")
        (size,) = _LEN.unpack_from(view, offset)
        offset += _LEN.size
        if size > len(view) - offset:
            raise InvalidHEPayload("payload is truncated")
        chunks.append(bytes(view[offset : offset + size]))
        offset += size
    if offset != len(view):
        raise InvalidHEPayload("payload has trailing bytes")
    return header, chunks
