"""Helpers for the federated tests: users, a federation, SDK clients on the real app in-process."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

from privacy_client import FederatedClient, encrypt_update
from tests.helpers import Api

BASE = "http://testserver"
OCTET = {"Content-Type": "application/octet-stream"}


@dataclass(frozen=True)
class Keys:
    secret: bytes
    public: bytes
    other_secret: bytes  # n4096: a valid context of another preset
    other_public: bytes


def weighted_mean(updates: np.ndarray, weights: np.ndarray) -> np.ndarray:
    return (weights[:, None] * updates).sum(axis=0) / weights.sum()


@dataclass
class World:
    """An owner, `clients` enrolled-able client users and an unenrolled one, on one app."""

    api: Api
    keys: Keys
    owner_id: int
    owner_key: str
    clients: list[tuple[int, str]]
    outsider: tuple[int, str]  # role client, never enrolled
    transport: httpx.WSGITransport
    _open: list[FederatedClient] = field(default_factory=list)
    _clients: dict[int, FederatedClient] = field(default_factory=dict)

    @classmethod
    def build(cls, api: Api, keys: Keys, *, clients: int) -> World:
        owner_id, owner_key = api.user("owner", "owner")
        users = [api.user(f"client-{i}", "client") for i in range(clients)]
        outsider = api.user("outsider", "client")
        return cls(api, keys, owner_id, owner_key, users, outsider,
                   httpx.WSGITransport(app=api.app))

    def sdk(self, key: str, secret: bytes | None = None) -> FederatedClient:
        client = FederatedClient(BASE, key, secret, transport=self.transport)
        self._open.append(client)
        return client

    @property
    def owner(self) -> FederatedClient:
        return self.sdk(self.owner_key)

    def client(self, i: int) -> FederatedClient:
        """Client i's SDK object (one per client, so it remembers its receipts)."""
        if i not in self._clients:
            self._clients[i] = self.sdk(self.clients[i][1], self.keys.secret)
        return self._clients[i]

    def federation(self, *, vector_length: int, min_clients: int = 2, enroll: int | None = None,
                   **kwargs: Any) -> int:
        """Create a federation and enrol the first `enroll` clients (default: all)."""
        owner = self.owner
        fed = owner.create_federation("fed", self.keys.public, vector_length=vector_length,
                                      min_clients=min_clients, **kwargs)
        for user_id, _ in self.clients[: len(self.clients) if enroll is None else enroll]:
            owner.enroll(fed["id"], user_id)
        return int(fed["id"])

    def post_update(self, key: str, round_id: int, body: bytes,
                    headers: dict[str, str] | None = None) -> Any:
        return self.api.as_(key).post(f"/v1/rounds/{round_id}/updates", data=body,
                                      headers=headers or OCTET)

    def encrypt(self, values: Any, weight: float = 1.0) -> bytes:
        return encrypt_update(self.keys.secret, np.asarray(values, dtype=np.float64), weight)

    def public_b64(self, context: bytes | None = None) -> str:
        return base64.b64encode(context or self.keys.public).decode()

    def close(self) -> None:
        for client in self._open:
            client.close()
