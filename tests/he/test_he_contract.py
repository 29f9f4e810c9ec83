"""The SDK and the server implement one documented wire format without importing each other."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from he_support import Federation, accept, unframe

from privacy_api.crypto import he as server
from privacy_client import he as sdk

ROOT = Path(__file__).resolve().parents[2]


def test_both_sides_ship_the_same_presets() -> None:
    shipped = {name: p for name, p in sdk.PRESETS.items() if p.server_accepted}
    assert shipped.keys() == server.PRESETS.keys()
    for name, client_preset in shipped.items():
        server_preset = server.PRESETS[name]
        assert (client_preset.code, client_preset.poly_modulus_degree) == (
            server_preset.code,
            server_preset.poly_modulus_degree,
        )
        assert client_preset.coeff_mod_bit_sizes == server_preset.coeff_mod_bit_sizes
        assert client_preset.scale == server_preset.scale
    assert sdk.PRESETS[sdk.DEFAULT_PRESET].server_accepted


def test_both_sides_use_the_same_format_constants() -> None:
    for name in ("MAGIC", "FORMAT_VERSION", "KIND_UPDATE", "KIND_AGGREGATE"):
        assert getattr(sdk, name) == getattr(server, name), name


@pytest.mark.parametrize(
    ("module", "forbidden"),
    [("privacy_client.he", "privacy_api"), ("privacy_api.crypto.he", "privacy_client")],
)
def test_neither_side_imports_the_other(module: str, forbidden: str) -> None:
    check = (
        f"import sys, {module}; "
        f"leaked = [m for m in sys.modules if m.split('.')[0] == {forbidden!r}]; "
        "print(leaked); assert not leaked"
    )
    result = subprocess.run(
        [sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_update_header_matches_the_documented_layout(federation: Federation) -> None:
    length = 5000
    payload = sdk.encrypt_update(federation.secret, np.ones(length), 3.0)

    (magic, version, code, kind, reserved, n, contributions, chunks), blobs = unframe(payload)

    preset = sdk.PRESETS[federation.preset]
    assert (magic, version, kind, reserved) == (b"PAHE", 2, 1, 0)
    assert (code, n, contributions) == (preset.code, length, 1)
    assert chunks == len(blobs) == -(-(length + 2) // preset.slots)


def test_wire_size_is_about_eight_times_float32(federation: Federation) -> None:
    length = 20_000
    payload = sdk.encrypt_update(federation.secret, np.zeros(length), 1.0)
    bound = server.update_size_bound(federation.context, length)

    assert len(payload) <= bound <= len(payload) * 1.01
    assert len(payload) / (4 * length) < 8.5
    aggregate = server.serialize_sum(server.fold(None, accept(federation, payload, length)))
    assert len(aggregate) <= bound
