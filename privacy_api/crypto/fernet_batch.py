"""Fernet tokens encrypted and decrypted many at a time: same format, same primitives.

Why: cryptography's `Fernet.decrypt` spends most of its ~20 µs per token creating objects (an
HMAC context, a Cipher, a decryptor, an unpadder), not computing. Decrypting a dataset version
means hundreds of thousands of tokens at once, so this module does the per-token work that must
be per token (base64, format checks, HMAC-SHA256 via OpenSSL's one-shot `hmac.digest`, a
constant-time `hmac.compare_digest`) and everything else once per batch: one AES-128-ECB call
over every ciphertext block, then the CBC chaining as one NumPy XOR with the previous blocks,
then PKCS7 padding checked for all tokens at once.

The tokens are exactly Fernet (https://github.com/fernet/spec): `cryptography.fernet.Fernet`
decrypts what `encrypt` makes and vice versa (tests/crypto/test_fernet_batch.py). Like
`Fernet.decrypt` without a ttl, the timestamp is authenticated but not checked. A token that
fails authentication under every key fails the whole batch with `InvalidToken`: nothing is
ever decoded from an unauthenticated token.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from cryptography.fernet import InvalidToken
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from numpy.lib.stride_tricks import sliding_window_view

__all__ = ["InvalidToken", "Plaintexts", "decrypt", "encrypt"]

_VERSION = 0x80
_BLOCK = 16
_HEADER = 25  # version (1) + timestamp (8) + iv (16)
_MAC = 32
_OVERHEAD = _HEADER + _MAC  # 57
_PADS = [bytes([n]) * n for n in range(_BLOCK + 1)]


def _split_key(key: bytes) -> tuple[bytes, bytes]:
    """(signing key, encryption key) of a url-safe base64 Fernet key, as `Fernet(key)` does."""
    raw = base64.urlsafe_b64decode(key)
    if len(raw) != 32:
        raise ValueError("Fernet key must be 32 url-safe base64-encoded bytes.")
    return raw[:16], raw[16:]


def _aes_ecb(key: bytes, data: bytes, *, decrypt: bool) -> np.ndarray:
    cipher = Cipher(algorithms.AES(key), modes.ECB())
    ctx = cipher.decryptor() if decrypt else cipher.encryptor()
    out = ctx.update(data) + ctx.finalize()
    return np.frombuffer(out, dtype=np.uint8)


@dataclass(frozen=True)
class Plaintexts:
    """Decrypted tokens: their padded plaintexts back to back, in token order.

    `data[ends[i] - blocks[i]*16 : ends[i] - pads[i]]` is token i's plaintext. The padding
    (at least one byte per token, already validated) is left in place so that callers that
    only need the plaintexts joined can have them without one bytes object per token.
    """

    data: np.ndarray  # uint8
    ends: np.ndarray  # int64, end of each token's padded plaintext in `data`
    pads: np.ndarray  # int64, 1..16

    def __len__(self) -> int:
        return len(self.ends)

    def tolist(self) -> list[bytes]:
        raw = self.data.tobytes()
        starts = np.empty_like(self.ends)
        starts[:1] = 0
        starts[1:] = self.ends[:-1]
        stops = self.ends - self.pads
        return [raw[a:b] for a, b in zip(starts.tolist(), stops.tolist(), strict=True)]

    def join(self, sep: bytes, end: bytes, fill: bytes = b" ") -> bytes:
        """Each plaintext followed by `sep` (`end` after the last one), in one bytes object.

        Written over the padding: the first padding byte becomes `sep`/`end`, the others
        `fill`. With sep=b",", end=b"]" and fill=b" " (JSON whitespace), b"[" + the result is
        a JSON array of the plaintexts, if each is a JSON value.
        """
        if len(sep) != 1 or len(end) != 1 or len(fill) != 1:
            raise ValueError("sep, end and fill must be single bytes")
        if not len(self):
            return b""
        out = self.data.copy()
        n_fill = self.pads - 1
        total = int(n_fill.sum())
        if total:
            first = self.ends - n_fill  # first fill byte of each token
            offsets = np.arange(total) - np.repeat(np.cumsum(n_fill) - n_fill, n_fill)
            out[np.repeat(first, n_fill) + offsets] = fill[0]
        out[self.ends - self.pads] = sep[0]
        out[self.ends[-1] - self.pads[-1]] = end[0]
        return out.tobytes()


class _HmacSha256:
    """HMAC-SHA256 under one key (RFC 2104) from hashlib states keyed once.

    The same construction as the standard library's `hmac` module, minus the per-call setup
    that makes `hmac.digest` cost ~3 µs for a short message (OpenSSL 3 fetches the digest
    every call); this is ~1 µs.
    """

    def __init__(self, key: bytes) -> None:
        if len(key) > 64:
            key = hashlib.sha256(key).digest()
        key = key.ljust(64, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))

    def digests(self, data: bytes, spans: Sequence[tuple[int, int]]) -> list[bytes]:
        """The MAC of data[a:b] for each (a, b) in spans."""
        inner, outer = self._inner.copy, self._outer.copy
        out = []
        for a, b in spans:
            h = inner()
            h.update(data[a:b])
            o = outer()
            o.update(h.digest())
            out.append(o.digest())
        return out


# url-safe base64 (and, as base64.urlsafe_b64decode accepts them, "+" and "/") to standard
# base64; "=" to "A" (zero bits): a token's padding then decodes to bytes past its end.
_TO_STANDARD = bytes.maketrans(b"-_=", b"+/A")
_EQ = ord("=")
_TO_URLSAFE = bytes.maketrans(b"+/", b"-_")


def _b64decode_joined(tokens: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """All tokens base64-decoded in one call: (bytes back to back, starts, sizes).

    Handles canonical padded base64 only (what Fernet writes); returns None for anything
    else, and the caller decodes token by token exactly as Fernet does.
    """
    n = len(tokens)
    joined = b"".join(tokens)
    lengths = np.fromiter(map(len, tokens), dtype=np.int64, count=n)
    if (lengths % 4).any() or not lengths.all():
        return None
    ends = np.cumsum(lengths)
    text = np.frombuffer(joined, dtype=np.uint8)
    # "=" only as the last one or two characters of a token
    last, second = text[ends - 1] == _EQ, text[ends - 2] == _EQ
    trailing = last.astype(np.int64) + (last & second)
    if joined.count(b"=") != int(trailing.sum()) or (second & ~last).any():
        return None
    try:
        raw = binascii.a2b_base64(joined.translate(_TO_STANDARD), strict_mode=True)
    except binascii.Error:
        return None
    starts = (ends - lengths) // 4 * 3
    return np.frombuffer(raw, dtype=np.uint8), starts, lengths // 4 * 3 - trailing


def _b64decode_each(tokens: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Token by token with base64.urlsafe_b64decode, exactly as Fernet decodes."""
    raws = []
    for token in tokens:
        try:
            raws.append(base64.urlsafe_b64decode(token))
        except (TypeError, binascii.Error):
            raise InvalidToken from None
    sizes = np.fromiter(map(len, raws), dtype=np.int64, count=len(raws))
    return np.frombuffer(b"".join(raws), dtype=np.uint8), np.cumsum(sizes) - sizes, sizes


def decrypt(keys: Sequence[bytes], tokens: Sequence[bytes]) -> Plaintexts:
    """Verify and decrypt Fernet tokens; `keys` newest first (like MultiFernet).

    Each token is accepted under the first key whose HMAC verifies. Raises InvalidToken if any
    token is malformed or verifies under none of the keys.
    """
    split = [_split_key(k) for k in keys]
    if not split:
        raise ValueError("at least one key is needed")
    n = len(tokens)
    if not n:
        empty = np.empty(0, dtype=np.int64)
        return Plaintexts(np.empty(0, dtype=np.uint8), empty, empty)
    decoded = _b64decode_joined(tokens)
    buf, starts, sizes = decoded if decoded is not None else _b64decode_each(tokens)
    # at least one ciphertext block, whole blocks only, version 0x80
    if ((sizes < _OVERHEAD + _BLOCK).any() or ((sizes - _OVERHEAD) % _BLOCK).any()
            or (buf[starts] != _VERSION).any()):
        raise InvalidToken

    # HMAC over version || timestamp || iv || ciphertext, compared in constant time
    macs = [_HmacSha256(s) for s, _ in split]
    raw = buf.tobytes()
    mac_starts = (starts + sizes - _MAC).tolist()
    signed = list(zip(starts.tolist(), mac_starts, strict=True))
    computed = macs[0].digests(raw, signed)
    stored = [raw[b:b + _MAC] for b in mac_starts]
    key_index = np.zeros(n, dtype=np.int64)
    if not hmac.compare_digest(b"".join(computed), b"".join(stored)):
        for i, ((a, b), mac) in enumerate(zip(signed, stored, strict=True)):
            if hmac.compare_digest(computed[i], mac):
                continue
            for k in range(1, len(macs)):
                if hmac.compare_digest(macs[k].digests(raw, [(a, b)])[0], mac):
                    key_index[i] = k
                    break
            else:
                raise InvalidToken

    blocks = (sizes - _OVERHEAD) // _BLOCK
    block_first = np.cumsum(blocks) - blocks  # index of each token's first block
    ct_offset = (np.repeat(starts + _HEADER, blocks)
                 + _BLOCK * (np.arange(int(blocks.sum())) - np.repeat(block_first, blocks)))
    windows = sliding_window_view(buf, _BLOCK)
    ciphertext = windows[ct_offset]  # (blocks, 16): every ciphertext block, token order
    previous = windows[ct_offset - _BLOCK]  # the iv for a first block, else the block before
    if not key_index.any():
        plain = _aes_ecb(split[0][1], ciphertext.tobytes(), decrypt=True).reshape(-1, _BLOCK).copy()
    else:
        block_key = np.repeat(key_index, blocks)
        plain = np.empty_like(ciphertext)
        for k in np.unique(key_index).tolist():
            mask = block_key == k
            plain[mask] = _aes_ecb(split[k][1], ciphertext[mask].tobytes(),
                                   decrypt=True).reshape(-1, _BLOCK)
    plain ^= previous  # CBC
    data = plain.reshape(-1)

    # PKCS7: the last byte p is 1..16 and the last p bytes all equal p
    ends = (block_first + blocks) * _BLOCK
    pads = data[ends - 1].astype(np.int64)
    last_block = sliding_window_view(data, _BLOCK)[ends - _BLOCK]
    is_pad = np.arange(_BLOCK) >= _BLOCK - pads[:, None]
    valid = (pads >= 1) & (pads <= _BLOCK) & ((last_block == pads[:, None].astype(np.uint8))
                                               | ~is_pad).all(axis=1)
    if not valid.all():
        raise InvalidToken
    return Plaintexts(data, ends, pads)


def encrypt(key: bytes, plaintexts: Sequence[bytes], current_time: int | None = None) -> list[bytes]:
    """Fernet tokens of `plaintexts` under `key`, as `Fernet(key).encrypt` would make them.

    CBC is sequential within a token, so block j of every token that has one is encrypted
    in one AES-ECB call, j = 0, 1, ...; each token gets its own random IV.
    """
    signing, encryption = _split_key(key)
    n = len(plaintexts)
    if not n:
        return []
    if current_time is None:
        current_time = int(time.time())
    pads = _PADS
    padded = b"".join([p + pads[_BLOCK - len(p) % _BLOCK] for p in plaintexts])
    plain = np.frombuffer(padded, dtype=np.uint8).reshape(-1, _BLOCK)
    blocks = np.fromiter(map(len, plaintexts), dtype=np.int64, count=n) // _BLOCK + 1
    block_first = np.cumsum(blocks) - blocks
    ivs = np.frombuffer(os.urandom(_BLOCK * n), dtype=np.uint8).reshape(n, _BLOCK)

    # CBC, block position by block position; tokens longest first, so the tokens that have a
    # block j are a prefix
    order = np.argsort(-blocks, kind="stable")
    descending = -blocks[order]  # ascending, for searchsorted
    rows = block_first[order]
    previous = ivs[order]
    cipher = np.empty_like(plain)
    ctx = Cipher(algorithms.AES(encryption), modes.ECB()).encryptor()
    for j in range(int(-descending[0])):
        active = int(np.searchsorted(descending, -j, side="left"))  # tokens with > j blocks
        at = rows[:active] + j
        step = np.frombuffer(ctx.update((plain[at] ^ previous[:active]).tobytes()),
                             dtype=np.uint8).reshape(-1, _BLOCK)
        cipher[at] = step
        previous = step
    ctx.finalize()

    # version || timestamp || iv || ciphertext || hmac, each token starting at a multiple of 3
    # bytes so that one base64 pass encodes them all
    sizes = _OVERHEAD + _BLOCK * blocks
    slots = -(-sizes // 3) * 3
    starts = np.cumsum(slots) - slots
    raw = np.zeros(int(slots.sum()), dtype=np.uint8)
    raw[starts] = _VERSION
    raw[(starts + 1)[:, None] + np.arange(8)] = np.frombuffer(current_time.to_bytes(8, "big"),
                                                             dtype=np.uint8)
    raw[(starts + 9)[:, None] + np.arange(_BLOCK)] = ivs
    ct_offset = (np.repeat(starts + _HEADER, blocks)
                 + _BLOCK * (np.arange(len(plain)) - np.repeat(block_first, blocks)))
    raw[ct_offset[:, None] + np.arange(_BLOCK)] = cipher
    mac_at = starts + sizes - _MAC
    macs = _HmacSha256(signing).digests(raw.tobytes(), list(zip(starts.tolist(), mac_at.tolist(),
                                                                strict=True)))
    raw[mac_at[:, None] + np.arange(_MAC)] = np.frombuffer(b"".join(macs),
                                                           dtype=np.uint8).reshape(n, _MAC)
    text = bytearray(binascii.b2a_base64(raw.tobytes(), newline=False).translate(_TO_URLSAFE))
    # the zero bytes after a token (up to its slot) become "=" padding
    text_ends = (starts + slots) // 3 * 4
    n_eq = slots - sizes
    one, two = np.flatnonzero(n_eq >= 1), np.flatnonzero(n_eq == 2)
    view = np.frombuffer(text, dtype=np.uint8)
    view[text_ends[one] - 1] = _EQ
    view[text_ends[two] - 2] = _EQ
    encoded = bytes(text)
    bounds = (starts // 3 * 4).tolist() + [len(encoded)]
    return [encoded[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
