"""Helpers for the HE tests: the wire format written independently of both implementations."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from privacy_api.crypto import he as server

SHORT = 5000  # two ciphertexts under n8192: enough structure for malformed-payload tests


@dataclass(frozen=True)
class Federation:
    preset: str
    secret: bytes
    public: bytes
    context: server.PublicContext


def accept(fed: Federation, payload: bytes, length: int) -> server.EncryptedUpdate:
    bound = server.update_size_bound(fed.context, length)
    return server.parse_update(fed.context, payload, vector_length=length, max_bytes=bound)


def frame(code: int, kind: int, length: int, contributions: int, chunks: list[bytes]) -> bytes:
    """The documented wire format, written independently of both implementations."""
    out = struct.pack("<4sBBBBIII", b"PAHE", 2, code, kind, 0, length, contributions, len(chunks))
    return out + b"".join(struct.pack("<I", len(c)) + c for c in chunks)


def unframe(payload: bytes) -> tuple[tuple[int, ...], list[bytes]]:
    header = struct.unpack_from("<4sBBBBIII", payload)
    chunks, pos = [], 20
    for _ in range(header[-1]):
        (n,) = struct.unpack_from("<I", payload, pos)
        chunks.append(payload[pos + 4 : pos + 4 + n])
        pos += 4 + n
    assert pos == len(payload)
    return header, chunks
