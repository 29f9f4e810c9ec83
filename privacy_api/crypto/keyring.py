"""Envelope encryption: per-dataset Fernet data keys wrapped by a master MultiFernet keyring.

The master keyring lists keys newest first: wrapping always uses the newest; unwrapping tries
each, so a master rotation only needs the wrapped data keys rewritten (O(datasets)).
"""

from __future__ import annotations

from collections.abc import Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet


class KeyUnavailable(Exception):
    """A wrapped key or token could not be authenticated with the keys we hold."""


class MasterKeyring:
    def __init__(self, keys: Sequence[bytes]) -> None:
        if not keys:
            raise ValueError("the master keyring needs at least one key")
        self._fernet = MultiFernet([Fernet(k) for k in keys])
        self._unwrapped: dict[bytes, bytes] = {}
        # Set once the keyring has unwrapped every stored data key (services.datasets.
        # verify_master_keyring): until then no new data key may be wrapped under it.
        self.verified = False

    def wrap(self, data_key: bytes) -> bytes:
        return self._fernet.encrypt(data_key)

    def unwrap(self, wrapped: bytes) -> bytes:
        # Every query needs its dataset's key: remember recent unwraps (the plaintext keys
        # live in this process's memory while in use anyway). Bounded, and keyed by the wrapped
        # token, so a rewrapped or destroyed key is simply never asked for again.
        cached = self._unwrapped.get(wrapped)
        if cached is not None:
            return cached
        try:
            key = self._fernet.decrypt(wrapped)
        except InvalidToken as exc:
            raise KeyUnavailable("data key cannot be unwrapped with the current master keys") from exc
        if len(self._unwrapped) >= 4096:
            self._unwrapped.clear()
        self._unwrapped[wrapped] = key
        return key

    def can_unwrap(self, wrapped: bytes) -> bool:
        try:
            self.unwrap(wrapped)
        except KeyUnavailable:
            return False
        return True

    def forget(self) -> None:
        """Drop remembered data keys (after crypto-shredding a dataset)."""
        self._unwrapped.clear()

    def rewrap(self, wrapped: bytes) -> bytes:
        """Re-encrypt a wrapped key under the newest master key (keeps its plaintext)."""
        try:
            return self._fernet.rotate(wrapped)
        except InvalidToken as exc:
            raise KeyUnavailable("data key cannot be unwrapped with the current master keys") from exc


def new_data_key() -> bytes:
    return Fernet.generate_key()


class DataCipher:
    """Encrypts records with a dataset's newest data key; decrypts with any of its live keys."""

    def __init__(self, keys_newest_first: Sequence[bytes]) -> None:
        self.keys = tuple(keys_newest_first)
        self._newest = Fernet(self.keys[0])
        self._all = MultiFernet([Fernet(k) for k in self.keys])

    def encrypt(self, plaintext: bytes) -> bytes:
        return self._newest.encrypt(plaintext)

    def decrypt(self, token: bytes) -> bytes:
        try:
            return self._all.decrypt(token)
        except InvalidToken as exc:
            raise KeyUnavailable("record token failed authentication (tampered or wrong key)") from exc

    def rotate(self, token: bytes) -> bytes:
        return self._all.rotate(token)
