"""Clipping and distributed Gaussian noise in the SDK (DESIGN.md §5, optional DP)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from he_support import Federation, accept

from privacy_api.crypto import he as server
from privacy_client import he as sdk

ROOT = Path(__file__).resolve().parents[2]


def test_clip_l2_only_shrinks_and_keeps_direction() -> None:
    x = np.array([3.0, 4.0])
    assert np.allclose(sdk.clip_l2(x, 1.0), [0.6, 0.8])
    assert np.allclose(sdk.clip_l2(x, 10.0), x)
    assert np.linalg.norm(sdk.clip_l2(np.full(1000, 7.0), 2.5)) == pytest.approx(2.5)
    with pytest.raises(ValueError):
        sdk.clip_l2(x, 0.0)


def test_noise_share_has_the_promised_scale() -> None:
    dp = sdk.DistributedGaussian(clip_norm=2.0, noise_multiplier=1.5, min_clients=9)
    assert dp.share_std == pytest.approx(1.5 * 2.0 / 3.0)

    noisy = dp.privatize(np.zeros(200_000), np.random.default_rng(11))

    # sample std of 200k normals is within 1% of the truth with overwhelming probability
    assert np.std(noisy) == pytest.approx(1.0, rel=0.01)
    assert abs(np.mean(noisy)) < 0.01


def test_default_noise_is_fresh_every_time() -> None:
    dp = sdk.DistributedGaussian(clip_norm=1.0, noise_multiplier=1.0, min_clients=1)
    assert not np.array_equal(dp.privatize(np.zeros(8)), dp.privatize(np.zeros(8)))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"clip_norm": 0.0, "noise_multiplier": 1.0, "min_clients": 2},
        {"clip_norm": 1.0, "noise_multiplier": -1.0, "min_clients": 2},
        {"clip_norm": 1.0, "noise_multiplier": float("nan"), "min_clients": 2},
        {"clip_norm": 1.0, "noise_multiplier": 1.0, "min_clients": 0},
    ],
)
def test_invalid_dp_settings_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        sdk.DistributedGaussian(**kwargs)  # type: ignore[arg-type]


def test_round_sum_carries_sigma_c_and_clipping_keeps_the_mean_unbiased(n8192: Federation) -> None:
    """With m clients each adding a share, the decrypted sum's noise has std sigma*C per slot;
    clipping the joint vector [w*x, w] only lowers weights, so x's direction survives."""
    length, clients = 4095, 4
    dp = sdk.DistributedGaussian(clip_norm=1.0, noise_multiplier=2.0, min_clients=clients)
    x = np.full(length, 0.01)  # |[w*x, w]| = w * sqrt(0.4095 + 1) > 1, so every client is clipped
    running = None
    for seed in range(clients):
        payload = sdk.encrypt_update(n8192.secret, x, 1.0, dp=dp, rng=np.random.default_rng(seed))
        running = server.fold(running, accept(n8192, payload, length))
    assert running is not None

    sums = sdk.decrypt_sums(n8192.secret, server.serialize_sum(running), length)

    clipped = sdk.clip_l2(np.append(x, 1.0), 1.0) * clients
    residual = np.append(sums.weighted_sum, sums.total_weight) - clipped
    assert np.std(residual) == pytest.approx(2.0, rel=0.05)  # sigma * C


def test_library_code_draws_no_noise_from_global_numpy_state() -> None:
    pattern = re.compile(r"np\.random\.(normal|laplace|rand)|random\.random\(")
    for path in [ROOT / "privacy_client" / "src" / "privacy_client" / "he.py",
                 ROOT / "secagg" / "src" / "privacy_secagg" / "__init__.py",
                 ROOT / "privacy_api" / "crypto" / "he.py"]:
        assert not pattern.search(path.read_text()), path
