"""Untrusted bytes: every malformed update gets a 4xx, nothing is stored, the server keeps serving."""

from __future__ import annotations

import os
import struct
from collections.abc import Callable

import numpy as np
import pytest
from sqlalchemy import func, select

from privacy_api.storage.models import RoundUpdate
from privacy_client import encrypt_update
from tests.federated.support import OCTET, World

LENGTH = 5000  # two n8192 ciphertexts: structure enough to cut and flip
_FRAME = 20


def _seal_blob(payload: bytes) -> tuple[int, int]:
    """[start, end) of the first ciphertext's SEAL blob inside the payload."""
    # frame | u32 chunk length | CKKSVectorProto: sizes, ciphertext (the blob), scale (9 bytes)
    (chunk_len,) = struct.unpack_from("<I", payload, _FRAME)
    start = payload.index(b"\x5e\xa1", _FRAME)  # SEAL's magic 0xA15E, little-endian
    return start, _FRAME + 4 + chunk_len - 9


def _flip(payload: bytes, offset: int, bit: int) -> bytes:
    out = bytearray(payload)
    out[offset] ^= 1 << bit
    return bytes(out)


def _cases(world: World, valid: bytes) -> dict[str, tuple[bytes, int]]:
    blob_start, blob_end = _seal_blob(valid)
    wrong_length = encrypt_update(world.keys.secret, np.ones(LENGTH - 1), 1.0)
    other_preset = encrypt_update(world.keys.other_secret, np.ones(LENGTH), 1.0)
    return {
        "empty": (b"", 400),
        "random": (os.urandom(len(valid)), 400),
        "random short": (os.urandom(100), 400),
        "truncated": (valid[: len(valid) // 2], 400),
        "truncated by one byte": (valid[:-1], 400),
        "trailing byte": (valid + b"\0", 400),
        "header only": (valid[:_FRAME], 400),
        "bit flipped: magic": (_flip(valid, 0, 3), 400),
        "bit flipped: vector length": (_flip(valid, 8, 0), 400),
        "bit flipped: chunk count": (_flip(valid, 16, 1), 400),
        "bit flipped: SEAL header": (_flip(valid, blob_start, 0), 400),
        # bit 63 of the last coefficient lifts it above the 60-bit modulus: not a ciphertext.
        # (A flip of a low bit gives another valid-looking ciphertext: undetectable by design.)
        "bit flipped: coefficient": (_flip(valid, blob_end - 1, 7), 400),
        "wrong length": (wrong_length, 400),
        "other preset (n4096)": (other_preset, 400),
        "aggregate, not update": (valid[:6] + b"\x02" + valid[7:], 400),
        "json": (b'{"update": [1, 2, 3]}', 415),
        "oversize": (b"\0" * (len(valid) * 2), 413),
    }


def test_malformed_updates_are_refused_and_the_round_survives(world: World) -> None:
    fed = world.federation(vector_length=LENGTH, min_clients=3)
    rnd = world.owner.open_round(fed)["id"]
    world.prepare(rnd, range(3))  # the collect stage: bodies are read and checked
    valid = world.encrypt(np.full(LENGTH, 0.5))
    key = world.clients[0][1]

    for name, (body, status) in _cases(world, valid).items():
        headers = {"Content-Type": "application/json"} if name == "json" else OCTET
        resp = world.post_update(key, rnd, body, headers)
        assert resp.status_code == status, (name, resp.status_code, resp.get_json())
        assert set(resp.get_json()) == {"code", "message", "details"}, name

    assert world.owner.round(rnd)["received"] == 0
    with world.api.app.extensions["privacy_api"].db.transaction() as s:
        assert s.scalar(select(func.count()).select_from(RoundUpdate)) == 0
    # the same client can still contribute, and the aggregate is exact
    for i, value in enumerate([0.5, 1.5, 1.0]):
        world.client(i).submit(rnd, np.full(LENGTH, value), 1.0)
    world.finish(rnd, range(3))
    mean = world.client(1).aggregate(rnd)
    assert np.max(np.abs(mean - 1.0)) <= 1e-6


@pytest.mark.parametrize("mutate", [
    lambda b: b[:_FRAME] + struct.pack("<I", 2**31) + b[_FRAME + 4:],  # chunk claims 2 GiB
    lambda b: b[:4] + b"\x01" + b[5:],  # format version 1 (no check slot)
])
def test_lying_lengths_do_not_allocate(world: World, mutate: Callable[[bytes], bytes]) -> None:
    fed = world.federation(vector_length=LENGTH)
    rnd = world.owner.open_round(fed)["id"]
    world.prepare(rnd, range(3))
    resp = world.post_update(world.clients[0][1], rnd, mutate(world.encrypt(np.ones(LENGTH))))
    assert resp.status_code == 400


def test_update_for_an_unknown_round_is_404(world: World) -> None:
    resp = world.post_update(world.clients[0][1], 999, b"x")
    assert resp.status_code == 404 and resp.get_json()["code"] == "not_found"
