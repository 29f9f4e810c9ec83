"""No plaintext update value reaches the database or the logs: only CKKS ciphertext does."""

from __future__ import annotations

import logging
import struct
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from privacy_api.storage.db import Base
from tests.federated.support import World

# Distinctive values: neither their text nor their bytes occur in a database by chance.
CANARY = np.array([31415.926535897931, -27182.818284590452, 16180.339887498948, 1414.2135623730951])


def _needles(values: np.ndarray) -> dict[str, bytes]:
    needles = {}
    for v in values:
        needles[f"repr {v!r}"] = repr(float(v)).encode()
        needles[f"f32 repr {v!r}"] = repr(float(np.float32(v))).encode()
        needles[f"f64 le {v!r}"] = struct.pack("<d", v)
        needles[f"f64 be {v!r}"] = struct.pack(">d", v)
    # float32 values are only 4 bytes: look for the whole vector, as a plaintext copy would hold it
    needles["f32 le vector"] = values.astype("<f4").tobytes()
    needles["f32 be vector"] = values.astype(">f4").tobytes()
    return needles


def _database_bytes(world: World, db_url: str) -> list[bytes]:
    st = world.api.app.extensions["privacy_api"]
    if db_url.startswith("sqlite"):
        st.db.dispose()  # checkpoint the WAL, then read every byte on disk
        path = Path(db_url.removeprefix("sqlite:///"))
        return [p.read_bytes() for p in path.parent.glob(path.name + "*")]
    blobs: list[bytes] = []
    with st.db.transaction() as s:
        for table in Base.metadata.sorted_tables:
            for row in s.execute(select(table)).all():
                for value in row:
                    blobs.append(bytes(value) if isinstance(value, bytes | memoryview)
                                 else str(value).encode())
    return blobs


def test_canary_update_never_reaches_database_or_logs(world: World, db_url: str,
                                                      caplog: pytest.LogCaptureFixture,
                                                      capfd: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.DEBUG)
    fed = world.federation(vector_length=len(CANARY), min_clients=3)
    rnd = world.owner.open_round(fed)["id"]
    world.prepare(rnd, range(3))
    # weight 1: the encrypted vector is exactly [x, 1, check], so a plaintext copy would hold
    # the canary
    world.client(0).submit(rnd, CANARY, 1.0)
    world.client(1).submit(rnd, CANARY, 1.0)
    refused = world.post_update(world.clients[2][1], rnd, CANARY.tobytes())  # plaintext sent raw
    assert refused.status_code == 400
    world.client(2).submit(rnd, CANARY, 1.0)
    world.finish(rnd, range(3))
    mean = world.client(0).aggregate(rnd)
    assert np.allclose(mean, CANARY, atol=1e-6)  # the values really went through, encrypted

    out, err = capfd.readouterr()
    haystacks = {"logs": caplog.text.encode() + out.encode() + err.encode()}
    for i, blob in enumerate(_database_bytes(world, db_url)):
        haystacks[f"db[{i}]"] = blob
    assert sum(len(h) for h in haystacks.values()) > 100_000  # ciphertexts were stored
    for where, haystack in haystacks.items():
        for name, needle in _needles(CANARY).items():
            assert needle not in haystack, f"{name} found in {where}"
