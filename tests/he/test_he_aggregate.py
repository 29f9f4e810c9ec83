"""End to end: SDK encrypts, server checks and adds, SDK decrypts the weighted mean."""

from __future__ import annotations

import numpy as np
import pytest
from he_support import Federation, accept

from privacy_api.crypto import he as server
from privacy_client import he as sdk


def run_round(
    fed: Federation, updates: np.ndarray, weights: np.ndarray, *, context: bytes | None = None
) -> bytes:
    length = updates.shape[1]
    running = None
    for x, w in zip(updates, weights, strict=True):
        payload = sdk.encrypt_update(context or fed.secret, x, float(w))
        running = server.fold(running, accept(fed, payload, length))
    assert running is not None
    return server.serialize_sum(running)


def weighted_mean(updates: np.ndarray, weights: np.ndarray) -> np.ndarray:
    return (weights[:, None] * updates).sum(axis=0) / weights.sum()


@pytest.mark.parametrize("scale", [1.0, 10.0])
def test_weighted_mean_of_ten_clients_for_one_parameter(federation: Federation, scale: float) -> None:
    rng = np.random.default_rng(1)
    updates = rng.uniform(-scale, scale, (10, 1))
    weights = np.exp(rng.uniform(np.log(1e-3), np.log(1000), 10))  # 0.001 .. 1000
    weights[0] = 1000.0

    aggregate = run_round(federation, updates, weights)

    mean = sdk.decrypt_aggregate(federation.secret, aggregate, 1)
    assert mean.shape == (1,)
    assert np.max(np.abs(mean - weighted_mean(updates, weights))) <= 1e-6


def test_weighted_mean_of_300k_parameters(federation: Federation) -> None:
    length = 300_000
    rng = np.random.default_rng(2)
    updates = rng.uniform(-1, 1, (3, length))
    weights = np.array([1000.0, 1.0, 250.5])

    aggregate = run_round(federation, updates, weights)

    sums = sdk.decrypt_sums(federation.secret, aggregate, length)
    assert sums.contributions == 3
    assert sums.total_weight == pytest.approx(weights.sum(), abs=1e-6)
    assert np.max(np.abs(sums.weighted_sum - (weights[:, None] * updates).sum(0))) <= 1e-6
    mean = sdk.decrypt_aggregate(federation.secret, aggregate, length)
    assert np.max(np.abs(mean - weighted_mean(updates, weights))) <= 1e-6


def test_public_context_can_neither_encrypt_nor_decrypt(n8192: Federation) -> None:
    # Symmetric CKKS: whoever holds only the stored context (the server) cannot encrypt a
    # vector of its choice, nor decrypt one.
    with pytest.raises(ValueError, match="secret context"):
        sdk.encrypt_update(n8192.public, np.zeros(2), 1.0)
    aggregate = run_round(n8192, np.array([[0.5, -0.25], [1.0, 0.0]]), np.array([1.0, 3.0]))
    assert np.allclose(sdk.decrypt_aggregate(n8192.secret, aggregate, 2), [0.875, -0.0625],
                       atol=1e-7)
    with pytest.raises(ValueError, match="secret context"):
        sdk.decrypt_aggregate(n8192.public, aggregate, 2)


def test_persisted_sum_resumes_after_restart(n8192: Federation) -> None:
    length = 9000  # three chunks, the last one partial
    rng = np.random.default_rng(3)
    updates = rng.uniform(-1, 1, (4, length))
    weights = np.array([2.0, 7.0, 1.0, 4.0])
    payloads = [sdk.encrypt_update(n8192.secret, x, w) for x, w in zip(updates, weights, strict=True)]

    running = None
    for payload in payloads[:2]:
        running = server.fold(running, accept(n8192, payload, length))
    assert running is not None
    stored = server.serialize_sum(running)
    # "restart": only the bytes and the federation's public context survive
    context = server.load_public_context(n8192.public)
    restored = server.deserialize_sum(context, stored, vector_length=length)
    assert restored.contributions == 2
    assert server.serialize_sum(restored) == stored
    for payload in payloads[2:]:
        restored = server.fold(restored, server.parse_update(
            context, payload, vector_length=length, max_bytes=len(payload)
        ))

    aggregate = server.serialize_sum(restored)
    assert sdk.decrypt_sums(n8192.secret, aggregate, length).contributions == 4
    mean = sdk.decrypt_aggregate(n8192.secret, aggregate, length)
    assert np.max(np.abs(mean - weighted_mean(updates, weights))) <= 1e-6


def test_a_single_update_decrypts_to_its_weighted_values(federation: Federation) -> None:
    x = np.array([0.1, -2.0, 3.5])
    payload = sdk.encrypt_update(federation.secret, x, 4.0)

    sums = sdk.decrypt_sums(federation.secret, payload, 3)

    assert sums.contributions == 1
    assert np.allclose(sums.weighted_sum, 4.0 * x, atol=1e-7)
    assert sums.total_weight == pytest.approx(4.0, abs=1e-7)


def test_sum_cannot_be_read_with_another_presets_key(federation: Federation) -> None:
    other = "n4096" if federation.preset == "n8192" else "n8192"
    other_secret, _ = sdk.generate_keys(other)
    payload = sdk.encrypt_update(federation.secret, np.zeros(3), 1.0)

    with pytest.raises(sdk.InvalidHEPayload, match="preset"):
        sdk.decrypt_aggregate(other_secret, payload, 3)
    with pytest.raises(sdk.InvalidHEPayload, match="parameters"):
        sdk.decrypt_aggregate(federation.secret, payload, 4)


def test_sdk_refuses_garbage_aggregates(n8192: Federation, short_update: bytes) -> None:
    for garbage in [b"", b"PAHE", short_update[:-7], short_update + b"\0", b"\0" * 64]:
        with pytest.raises(sdk.InvalidHEPayload):
            sdk.decrypt_aggregate(n8192.secret, garbage, 5000)
    with pytest.raises(sdk.InvalidHEPayload):
        sdk.encrypt_update(b"not a context", np.zeros(3), 1.0)


def test_encrypt_update_refuses_what_it_cannot_encrypt_faithfully(n8192: Federation) -> None:
    headroom = sdk.PRESETS["n8192"].max_abs_sum
    assert headroom >= 2**18  # room for 260 clients at weight 1000 and |x| <= 1
    with pytest.raises(ValueError, match="scale the weights down"):
        sdk.encrypt_update(n8192.secret, np.array([1.0, headroom]), 1.0)
    with pytest.raises(ValueError, match="NaN"):
        sdk.encrypt_update(n8192.secret, np.array([np.nan]), 1.0)
    with pytest.raises(ValueError, match="1-D"):
        sdk.encrypt_update(n8192.secret, np.zeros((2, 2)), 1.0)
    for weight in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match="weight"):
            sdk.encrypt_update(n8192.secret, np.zeros(2), weight)
    with pytest.raises(ValueError, match="unknown preset"):
        sdk.generate_keys("n2048")
