"""Fixtures for the federated tests: keys once per session, a world of users per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from privacy_client import generate_keys
from tests.federated.support import Keys, World


@pytest.fixture(scope="session")
def keys() -> Keys:
    """The federation's CKKS keys (n8192) and another preset's, for wrong-parameter payloads."""
    secret, public = generate_keys("n8192")
    other_secret, other_public = generate_keys("n4096")
    return Keys(secret, public, other_secret, other_public)


@pytest.fixture
def world(api, keys: Keys) -> Iterator[World]:
    w = World.build(api, keys, clients=3)
    yield w
    w.close()
