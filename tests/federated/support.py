"""Helpers for the federated tests: users, a federation, SDK clients on the real app in-process."""

from __future__ import annotations

import base64
import tempfile
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
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
    state_root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="fed-state-")))
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
        client = FederatedClient(BASE, key, secret, transport=self.transport,
                                 state_dir=self.state_root)
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

    def federation(self, *, vector_length: int, min_clients: int = 3, enroll: int | None = None,
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

    def clients_of(self, indices: Sequence[int]) -> list[FederatedClient]:
        return [self.client(i) for i in indices]

    def prepare(self, round_id: int, indices: Sequence[int]) -> None:
        """Stages advertise and share for clients `indices` (each stage ends when all enrolled
        clients posted; call `owner.close_round` to end one early)."""
        for i in indices:
            self.client(i).advertise(round_id)
        if self.owner.round(round_id)["stage"] == "advertise":
            self.owner.close_round(round_id)
        for i in indices:
            self.client(i).share(round_id)
        if self.owner.round(round_id)["stage"] == "share":
            self.owner.close_round(round_id)

    def finish(self, round_id: int, survivors: Collection[int]) -> dict[str, Any]:
        """End the collect stage if needed, let `survivors` unmask; returns the round."""
        if self.owner.round(round_id)["stage"] == "collect":
            self.owner.close_round(round_id)
        # Each survivor first signs the survivor set; it reveals once t survivors signed
        # (consistency check), so a second pass lets the early signers reveal too.
        pending = list(survivors)
        for _ in range(2):
            pending = [i for i in pending if not self.client(i).unmask(round_id)]
        rnd = self.owner.round(round_id)
        if rnd["stage"] == "unmask":
            rnd = self.owner.close_round(round_id)
        return rnd

    def run_round(self, fed: int, updates: Any, weights: Any, *, clients: Sequence[int] | None = None,
                  drop: Collection[int] = (), **submit: Any) -> int:
        """A whole round through the SDK's steps: clients `clients` (default: as many as
        updates) advertise and share, all but `drop` upload and unmask. Returns the round id."""
        indices = list(clients if clients is not None else range(len(updates)))
        rnd = int(self.owner.open_round(fed)["id"])
        self.prepare(rnd, indices)
        survivors = [i for i in indices if i not in drop]
        for pos, i in enumerate(indices):
            if i in survivors:
                self.client(i).submit(rnd, updates[pos], float(weights[pos]), **submit)
        self.finish(rnd, survivors)
        return rnd

    def public_b64(self, context: bytes | None = None) -> str:
        return base64.b64encode(context or self.keys.public).decode()

    def close(self) -> None:
        for client in self._open:
            client.close()
