"""Read and rewrite the coefficients of a TenSEAL-serialized CKKS vector (client side).

Secure aggregation (`privacy_secagg`) adds masks to a ciphertext's coefficients modulo
its primes, which TenSEAL's Python API cannot do. This codec reads the exact bytes TenSEAL
writes (a ``CKKSVectorProto``: packed sizes, one SEAL ciphertext, scale; the SEAL object
zstd-framed in raw blocks, as SEAL stores uniformly random data) and writes the same message
with new coefficients as an *uncompressed* SEAL object (compr_mode none), which TenSEAL loads
and the server's reader (`privacy_api.crypto.he`) accepts.

Masks go on c0 only: c1 of a symmetric ciphertext is a uniformly random polynomial independent
of the message, so masking it hides nothing more, and an unmasked c1 keeps the decryption
``c0 + c1*s`` linear in the mask, so summed masks cancel exactly and the sum decrypts with the
same precision as an unmasked one. The ciphertext is in NTT form; the NTT is a bijection and
linear mod q, so a mask uniform over NTT-form residues is uniform over coefficients too.

Every malformed input raises `InvalidHEPayload` (a ValueError) naming what is wrong.
"""

from __future__ import annotations

import struct
from functools import cache
from typing import Final

import numpy as np
import numpy.typing as npt

from .he import PRESETS, InvalidHEPayload

__all__ = ["add_mask", "ciphertext_coefficients", "data_moduli", "with_coefficients"]

Coefficients = npt.NDArray[np.uint64]

_SEAL_MAGIC: Final = 0xA15E
_SEAL_HEADER = struct.Struct("<HBBBBHQ")  # magic, header size, major, minor, compr, reserved, size
_SEAL_MAJOR: Final = 4
_COMPR_NONE: Final = 0
_COMPR_ZSTD: Final = 2
# parms_id (4 x u64), is_ntt_form (u8), size, poly_modulus_degree, coeff_modulus_size,
# scale (f64), correction_factor: what a SEAL 4 ciphertext writes before its data array.
_CT_META = struct.Struct("<4QBQQQdQ")
_COUNT = struct.Struct("<Q")
_ZSTD_MAGIC: Final = b"\x28\xb5\x2f\xfd"
_MAX_VECTOR_BYTES: Final = 64 * 1024 * 1024
_FIELD_CIPHERTEXT: Final = 2


@cache
def _known_levels() -> dict[tuple[int, ...], tuple[int, ...]]:
    """parms_id of each preset's first data level -> its primes, computed by SEAL (no keys)."""
    import tenseal.sealapi as sealapi

    levels: dict[tuple[int, ...], tuple[int, ...]] = {}
    for preset in PRESETS.values():
        parms = sealapi.EncryptionParameters(sealapi.SCHEME_TYPE.CKKS)
        parms.set_poly_modulus_degree(preset.poly_modulus_degree)
        parms.set_coeff_modulus(
            sealapi.CoeffModulus.Create(preset.poly_modulus_degree, list(preset.coeff_mod_bit_sizes))
        )
        ctx = sealapi.SEALContext(parms, True, sealapi.SEC_LEVEL_TYPE.TC128)
        data = ctx.first_context_data()
        levels[tuple(ctx.first_parms_id())] = tuple(int(q.value()) for q in data.parms().coeff_modulus())
    return levels


def data_moduli(preset: str) -> tuple[int, ...]:
    """The primes of a preset's fresh ciphertexts (for n8192 and n4096: one 60-bit prime)."""
    import tenseal.sealapi as sealapi

    spec = PRESETS[preset]
    parms = sealapi.EncryptionParameters(sealapi.SCHEME_TYPE.CKKS)
    parms.set_poly_modulus_degree(spec.poly_modulus_degree)
    parms.set_coeff_modulus(
        sealapi.CoeffModulus.Create(spec.poly_modulus_degree, list(spec.coeff_mod_bit_sizes))
    )
    ctx = sealapi.SEALContext(parms, True, sealapi.SEC_LEVEL_TYPE.TC128)
    return _known_levels()[tuple(ctx.first_parms_id())]


# --------------------------------------------------------------------------------------------
# Protobuf (only what CKKSVectorProto uses), keeping each field's raw bytes for rewriting


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while shift < 64:
        if pos >= len(buf):
            raise InvalidHEPayload("CKKS vector: truncated protobuf")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
    raise InvalidHEPayload("CKKS vector: malformed varint")


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _fields(buf: bytes) -> list[tuple[int, int, int, int, int]]:
    """(field number, wire type, start of the field, start of its value, end)."""
    out, pos = [], 0
    while pos < len(buf):
        start = pos
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise InvalidHEPayload("CKKS vector: malformed protobuf (field 0)")
        value_start = pos
        if wire == 0:
            _, pos = _varint(buf, pos)
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        elif wire == 2:
            length, pos = _varint(buf, pos)
            value_start = pos
            pos += length
        else:
            raise InvalidHEPayload(f"CKKS vector: unsupported protobuf wire type {wire}")
        if pos > len(buf):
            raise InvalidHEPayload("CKKS vector: truncated protobuf")
        out.append((number, wire, start, value_start, pos))
    return out


def _split_vector(vector: bytes) -> tuple[bytes, bytes, bytes]:
    """(bytes before the ciphertext field, the SEAL ciphertext, bytes after it)."""
    if not isinstance(vector, bytes | bytearray | memoryview):
        raise InvalidHEPayload("CKKS vector must be bytes")
    data = bytes(vector)
    if not data:
        raise InvalidHEPayload("CKKS vector is empty")
    if len(data) > _MAX_VECTOR_BYTES:
        raise InvalidHEPayload(f"CKKS vector is {len(data)} bytes; the limit is {_MAX_VECTOR_BYTES}")
    found = [f for f in _fields(data) if f[0] == _FIELD_CIPHERTEXT]
    if {f[0] for f in _fields(data)} - {1, 2, 3}:
        raise InvalidHEPayload("not a TenSEAL CKKS vector (unexpected protobuf field)")
    if len(found) != 1 or found[0][1] != 2:
        raise InvalidHEPayload("CKKS vector must hold exactly one ciphertext")
    _, _, start, value_start, end = found[0]
    return data[:start], data[value_start:end], data[end:]


# --------------------------------------------------------------------------------------------
# SEAL ciphertext


def _zstd_content(frame: bytes, limit: int) -> bytes:
    """Content of a zstd frame of raw and RLE blocks (SEAL's output for random data)."""
    if len(frame) < 6 or frame[:4] != _ZSTD_MAGIC:
        raise InvalidHEPayload("ciphertext: malformed zstd frame")
    descriptor = frame[4]
    fcs_flag, single = descriptor >> 6, (descriptor >> 5) & 1
    if (descriptor >> 3) & 3 or descriptor & 3:
        raise InvalidHEPayload("ciphertext: unsupported zstd frame (reserved bits or dictionary)")
    checksum = (descriptor >> 2) & 1
    pos = 5 + (0 if single else 1)
    fcs_len = (1 if single else 0, 2, 4, 8)[fcs_flag]
    pos += fcs_len
    pieces: list[bytes] = []
    total = 0
    while True:
        if pos + 3 > len(frame):
            raise InvalidHEPayload("ciphertext: truncated zstd frame")
        block = int.from_bytes(frame[pos : pos + 3], "little")
        pos += 3
        last, kind, size = block & 1, (block >> 1) & 3, block >> 3
        total += size
        if total > limit:
            raise InvalidHEPayload("ciphertext: too large")
        if kind == 0:
            if pos + size > len(frame):
                raise InvalidHEPayload("ciphertext: truncated zstd block")
            pieces.append(frame[pos : pos + size])
            pos += size
        elif kind == 1:
            if pos + 1 > len(frame):
                raise InvalidHEPayload("ciphertext: truncated zstd block")
            pieces.append(frame[pos : pos + 1] * size)
            pos += 1
        else:
            raise InvalidHEPayload("ciphertext: compressed zstd blocks are not supported")
        if last:
            break
    pos += 4 if checksum else 0
    if pos != len(frame):
        raise InvalidHEPayload("ciphertext: bytes after the zstd frame")
    return b"".join(pieces)


class _Ciphertext:
    def __init__(
        self, version: tuple[int, int], meta: tuple[object, ...], moduli: tuple[int, ...], data: Coefficients
    ) -> None:
        self.version = version
        self.meta = meta
        self.moduli = moduli
        self.data = data  # shape (2, k, N)


def _read_ciphertext(blob: bytes) -> _Ciphertext:
    if len(blob) < _SEAL_HEADER.size:
        raise InvalidHEPayload("ciphertext: truncated SEAL object")
    magic, header_size, major, minor, compr, reserved, size = _SEAL_HEADER.unpack_from(blob)
    if magic != _SEAL_MAGIC or header_size != _SEAL_HEADER.size or reserved != 0:
        raise InvalidHEPayload("ciphertext: not a SEAL object")
    if major != _SEAL_MAJOR:
        raise InvalidHEPayload(f"ciphertext: written by SEAL {major}.{minor}; SEAL 4 is required")
    if size != len(blob):
        raise InvalidHEPayload(f"ciphertext: SEAL object claims {size} bytes but has {len(blob)}")
    body = blob[_SEAL_HEADER.size :]
    if compr == _COMPR_ZSTD:
        body = _zstd_content(body, 2 * _MAX_VECTOR_BYTES)
    elif compr != _COMPR_NONE:
        raise InvalidHEPayload(f"ciphertext: unsupported SEAL compression mode {compr}")
    head_len = _CT_META.size + _SEAL_HEADER.size + _COUNT.size
    if len(body) < head_len:
        raise InvalidHEPayload("ciphertext: truncated")
    meta = _CT_META.unpack_from(body)
    parms_id, ntt, polys, degree, k = tuple(meta[:4]), meta[4], meta[5], meta[6], meta[7]
    moduli = _known_levels().get(parms_id)
    if moduli is None:
        raise InvalidHEPayload("ciphertext: encrypted under parameters that are not a known preset")
    if polys != 2:
        raise InvalidHEPayload(f"ciphertext: has {polys} polynomials; a fresh ciphertext has 2")
    if ntt != 1 or k != len(moduli) or degree not in (p.poly_modulus_degree for p in PRESETS.values()):
        raise InvalidHEPayload("ciphertext: not a fresh CKKS ciphertext in NTT form")
    count_expected = polys * k * degree
    array = _SEAL_HEADER.unpack_from(body, _CT_META.size)
    (count,) = _COUNT.unpack_from(body, _CT_META.size + _SEAL_HEADER.size)
    expected_array = (_SEAL_MAGIC, 16, major, minor, _COMPR_NONE, 0, 16 + 8 + 8 * count_expected)
    if array != expected_array or count != count_expected:
        raise InvalidHEPayload("ciphertext: malformed data header")
    if len(body) != head_len + 8 * count_expected:
        raise InvalidHEPayload("ciphertext: wrong size for its parameters")
    data = np.frombuffer(body, dtype="<u8", offset=head_len).astype(np.uint64).reshape(2, k, degree)
    if (data >= np.asarray(moduli, dtype=np.uint64).reshape(1, k, 1)).any():
        raise InvalidHEPayload("ciphertext: a coefficient is not reduced modulo its prime")
    return _Ciphertext((major, minor), meta, moduli, data)


def _write_ciphertext(ct: _Ciphertext, data: Coefficients) -> bytes:
    major, minor = ct.version
    payload = np.ascontiguousarray(data, dtype="<u8").tobytes()
    array = _SEAL_HEADER.pack(_SEAL_MAGIC, 16, major, minor, _COMPR_NONE, 0, 16 + 8 + len(payload))
    body = _CT_META.pack(*ct.meta) + array + _COUNT.pack(data.size) + payload
    header = _SEAL_HEADER.pack(_SEAL_MAGIC, 16, major, minor, _COMPR_NONE, 0, _SEAL_HEADER.size + len(body))
    return header + body


# --------------------------------------------------------------------------------------------
# Public API


def ciphertext_coefficients(vector: bytes) -> tuple[Coefficients, Coefficients, tuple[int, ...]]:
    """``(c0, c1, moduli)`` of a serialized CKKS vector: two (k, N) uint64 arrays of residues
    (NTT form, row i modulo ``moduli[i]``) and the k primes of its level."""
    _, blob, _ = _split_vector(vector)
    ct = _read_ciphertext(blob)
    return ct.data[0].copy(), ct.data[1].copy(), ct.moduli


def with_coefficients(vector: bytes, c0: npt.ArrayLike, c1: npt.ArrayLike) -> bytes:
    """The same serialized CKKS vector with its coefficients replaced (each (k, N), reduced
    modulo the primes), written uncompressed. Everything else (sizes, scale, parameters) is
    kept byte for byte."""
    before, blob, after = _split_vector(vector)
    ct = _read_ciphertext(blob)
    shape = ct.data.shape[1:]
    q = np.asarray(ct.moduli, dtype=np.uint64).reshape(-1, 1)
    arrays = []
    for name, value in (("c0", c0), ("c1", c1)):
        array = np.asarray(value)
        if array.shape != shape or array.dtype != np.uint64:
            raise InvalidHEPayload(f"{name} must be a uint64 array of shape {shape}")
        if (array >= q).any():
            raise InvalidHEPayload(f"{name} has a coefficient not reduced modulo its prime")
        arrays.append(array)
    return _rewrite(before, ct, after, np.stack(arrays))


def _rewrite(before: bytes, ct: _Ciphertext, after: bytes, data: Coefficients) -> bytes:
    new_blob = _write_ciphertext(ct, data)
    key = _encode_varint(_FIELD_CIPHERTEXT << 3 | 2)
    return before + key + _encode_varint(len(new_blob)) + new_blob + after


def add_mask(vector: bytes, mask: npt.ArrayLike) -> bytes:
    """Add `mask` to c0 modulo the vector's primes. `mask`: uint64 residues, shape (N,) for a
    single-prime level (the shipped presets) or (k, N)."""
    before, blob, after = _split_vector(vector)
    ct = _read_ciphertext(blob)
    m = np.asarray(mask)
    k, n = ct.data.shape[1:]
    if m.dtype != np.uint64:
        raise InvalidHEPayload("mask must be a uint64 array")
    if m.shape == (n,) and k == 1:
        m = m.reshape(1, n)
    if m.shape != (k, n):
        raise InvalidHEPayload(f"mask has shape {m.shape}; this ciphertext needs ({k}, {n})")
    q = np.asarray(ct.moduli, dtype=np.uint64).reshape(-1, 1)
    if (m >= q).any():
        raise InvalidHEPayload("mask residues must be below the ciphertext's primes")
    data = ct.data.copy()
    np.add(data[0], m, out=data[0])  # both below q < 2**62: no overflow
    np.minimum(data[0], data[0] - q, out=data[0])
    return _rewrite(before, ct, after, data)
