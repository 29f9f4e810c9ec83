"""Keys and payloads shared by the HE tests: keygen is cheap, encryption is not, so build once."""

from __future__ import annotations

import numpy as np
import pytest
from he_support import SHORT, Federation

from privacy_api.crypto import he as server
from privacy_client import he as sdk


@pytest.fixture(scope="session", params=["n8192", "n4096"])
def federation(request: pytest.FixtureRequest) -> Federation:
    secret, public = sdk.generate_keys(request.param)
    return Federation(request.param, secret, public, server.load_public_context(public))


@pytest.fixture(scope="session")
def n8192() -> Federation:
    secret, public = sdk.generate_keys("n8192")
    return Federation("n8192", secret, public, server.load_public_context(public))


@pytest.fixture(scope="session")
def short_update(n8192: Federation) -> bytes:
    """A valid n8192 update of SHORT parameters."""
    x = np.random.default_rng(7).uniform(-1, 1, SHORT)
    return sdk.encrypt_update(n8192.secret, x, 2.5)
