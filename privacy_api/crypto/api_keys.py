"""API-key material: random keys, shown once, stored as SHA-256 digests.

Below the HTTP edge so that services can mint keys (services.users) without importing the
request-time authentication in `privacy_api.http.auth`.
"""

from __future__ import annotations

import hashlib
import secrets

KEY_PREFIX = "pa"


def new_api_key() -> tuple[str, str, bytes]:
    """Return (key_id, plaintext key, digest). The key carries 256 random bits."""
    key_id = secrets.token_hex(8)
    plaintext = f"{KEY_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
    return key_id, plaintext, digest(plaintext)


def digest(plaintext: str) -> bytes:
    # A fast hash is right here: keys are high-entropy, so there is nothing to brute-force.
    return hashlib.sha256(plaintext.encode()).digest()
