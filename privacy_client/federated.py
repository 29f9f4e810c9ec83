"""Federated learning client: coordinate federations, submit encrypted updates, decrypt means.

Trust model (DESIGN.md §5): the federation's CKKS secret context is made with `generate_keys`
and shared among the federation's clients only; its owner registers the *public* context. The
server adds ciphertexts and never sees an update, a weight or a decrypted aggregate.

What the SDK checks so that a client need not trust the server blindly:

* after `submit`, that the receipt the server returns is the SHA-256 of the exact bytes sent;
* before `aggregate` returns, that the round lists this client's receipt among its contributors
  and that the decrypted sums count as many contributions as the published list.

Failures of those checks raise `VerificationError` subclasses, which carry the HTTP status of
the answer that failed the check and a snake_case `code`, like every other SDK error.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt

from .client import DEFAULT_TIMEOUT, Client
from .errors import PrivacyApiError
from .he import AggregateSums, DistributedGaussian, Preset, context_preset, decrypt_sums, encrypt_update

__all__ = [
    "ContributionMissing",
    "FederatedClient",
    "ReceiptMismatch",
    "VerificationError",
]

UPDATE_CONTENT_TYPE = "application/octet-stream"


class VerificationError(PrivacyApiError):
    """The server answered, but its answer failed a check the SDK makes (see module docstring)."""


class ReceiptMismatch(VerificationError):
    """`submit`: the receipt is not the SHA-256 of the bytes sent (code `receipt_mismatch`).

    The server did not acknowledge what this client sent: treat the update as not accepted.
    """


class ContributionMissing(VerificationError):
    """`aggregate`: this client's receipt is not among the round's contributors, or the
    aggregate sums a different number of updates than the contributor list shows
    (code `contribution_missing`)."""


class FederatedClient(Client):
    """A federated client (or a federation's owner) of the privacy-api.

    `secret_context` is the federation's secret CKKS context from `generate_keys`; clients need
    it to encrypt and decrypt. An owner who only coordinates (create, enrol, open and close
    rounds) passes None and never holds the secret key. Everything `Client` offers is
    inherited: the same transport, context management and typed `PrivacyApiError` tree.

    Guarantee with a DP federation: `submit` clips the vector it encrypts, ``[w*x, w]``, to the
    federation's L2 norm C and adds Gaussian noise sigma*C/sqrt(min_clients) drawn from a
    CSPRNG-seeded generator (`DistributedGaussian`), so a released sum of at least
    `min_clients` honest updates carries noise sigma*C; the server charges each round's
    (epsilon, delta) to the federation's budget when the round opens.
    """

    def __init__(self, base_url: str, api_key: str, secret_context: bytes | None, *,
                 transport: httpx.BaseTransport | None = None,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        super().__init__(base_url, api_key, transport=transport, timeout=timeout)
        self._secret = bytes(secret_context) if secret_context is not None else None
        self._preset: Preset | None = None
        self._federations: dict[int, dict[str, Any]] = {}
        self._receipts: dict[int, str] = {}
        self._user_id: int | None = None

    def __enter__(self) -> FederatedClient:
        return self

    # -- owners (role owner) ---------------------------------------------------------------------
    def create_federation(self, name: str, public_context: bytes, *, vector_length: int,
                          min_clients: int, dp: Mapping[str, float] | None = None,
                          epsilon_cap: float | None = None,
                          delta: float | None = None) -> dict[str, Any]:
        """Register a federation from its *public* context (`generate_keys()[1]`).

        `dp` is None or ``{"clip_norm": C, "noise_multiplier": sigma}``; a DP federation also
        needs `epsilon_cap` (total over all rounds) and `delta` (0 < delta < 1e-3). The server
        refuses a context with a secret, relinearization or Galois key (InvalidRequest, 400).
        """
        body: dict[str, Any] = {
            "name": name, "public_context": base64.b64encode(bytes(public_context)).decode(),
            "vector_length": vector_length, "min_clients": min_clients,
            "dp": dict(dp) if dp is not None else None,
        }
        if epsilon_cap is not None:
            body["epsilon_cap"] = epsilon_cap
        if delta is not None:
            body["delta"] = delta
        return self._json("POST", "/v1/federations", json=body)  # type: ignore[no-any-return]

    def enroll(self, federation_id: int, user_id: int) -> dict[str, Any]:
        """Enrol a user of role `client` in the federation."""
        return self._json("POST", f"/v1/federations/{federation_id}/clients",  # type: ignore[no-any-return]
                          json={"user_id": user_id})

    def open_round(self, federation_id: int, *, deadline_seconds: float | None = None) -> dict[str, Any]:
        """Open a round. With DP its cost is charged now; BudgetExhausted when over the cap."""
        body = {"deadline_seconds": deadline_seconds} if deadline_seconds is not None else {}
        return self._json("POST", f"/v1/federations/{federation_id}/rounds", json=body)  # type: ignore[no-any-return]

    def close_round(self, round_id: int) -> dict[str, Any]:
        """Close a round: `aggregated` with at least min_clients updates, else `failed`."""
        return self._json("POST", f"/v1/rounds/{round_id}/close")  # type: ignore[no-any-return]

    # -- everyone who can see the federation --------------------------------------------------
    def federations(self) -> list[dict[str, Any]]:
        return self._json("GET", "/v1/federations")  # type: ignore[no-any-return]

    def federation(self, federation_id: int) -> dict[str, Any]:
        return self._json("GET", f"/v1/federations/{federation_id}")  # type: ignore[no-any-return]

    def round(self, round_id: int) -> dict[str, Any]:
        """``{"id", "federation_id", "status", "received", "min_clients", "contributors", ...}``."""
        return self._json("GET", f"/v1/rounds/{round_id}")  # type: ignore[no-any-return]

    # -- clients (role client) ------------------------------------------------------------------
    def submit(self, round_id: int, update: npt.ArrayLike, weight: float, *,
               rng: np.random.Generator | None = None) -> str:
        """Encrypt `update` (1-D, the federation's vector_length) weighted by `weight` (> 0, e.g.
        the local sample count) and send it to an open round. Returns the receipt.

        Applies the federation's clipping and noise when it uses DP (`rng` only for tests;
        default CSPRNG). Raises ValueError for an update of the wrong length or a secret
        context of another preset, Conflict (409) for a second update or a closed round,
        Forbidden (403) when not enrolled, ReceiptMismatch if the server acknowledges other
        bytes than those sent.
        """
        rnd = self.round(round_id)
        fed = self._federation_params(int(rnd["federation_id"]))
        secret = self._require_secret()
        self._check_preset(fed)
        vector = np.asarray(update, dtype=np.float64)
        if vector.shape != (fed["vector_length"],):
            raise ValueError(f"update has shape {vector.shape}; this federation expects "
                             f"({fed['vector_length']},)")
        dp = None
        if fed.get("dp"):
            dp = DistributedGaussian(clip_norm=float(fed["dp"]["clip_norm"]),
                                     noise_multiplier=float(fed["dp"]["noise_multiplier"]),
                                     min_clients=int(fed["min_clients"]))
        payload = encrypt_update(secret, vector, weight, dp=dp, rng=rng)
        resp = self._request("POST", f"/v1/rounds/{round_id}/updates", content=payload,
                             headers={"Content-Type": UPDATE_CONTENT_TYPE})
        receipt = str(resp.json().get("receipt", ""))
        expected = hashlib.sha256(payload).hexdigest()
        if receipt != expected:
            raise ReceiptMismatch(resp.status_code, "receipt_mismatch",
                                  "the server's receipt is not the SHA-256 of the update sent",
                                  {"receipt": receipt, "expected": expected})
        self._receipts[round_id] = receipt
        return receipt

    def receipt(self, round_id: int) -> str | None:
        """The receipt of this client's update to a round, if it was submitted from here."""
        return self._receipts.get(round_id)

    def aggregate_sums(self, round_id: int, *, receipt: str | None = None,
                       verify: bool = True) -> AggregateSums:
        """The round's decrypted sums (sum of w*x, sum of w, contributions).

        With `verify` (the default) this client's receipt (from `submit`, or pass `receipt`)
        must be listed among the round's contributors, and the aggregate must sum exactly the
        listed updates; otherwise ContributionMissing. Conflict (409) unless the round is
        aggregated.
        """
        secret = self._require_secret()
        # The aggregate first: the server refuses it (409) unless the round is aggregated, and
        # an aggregated round's contributor list no longer changes.
        resp = self._request("GET", f"/v1/rounds/{round_id}/aggregate")
        rnd = self.round(round_id)
        fed = self._federation_params(int(rnd["federation_id"]))
        contributors = rnd.get("contributors") or []
        if verify:
            mine = receipt or self._receipts.get(round_id)
            me = self._my_id()
            listed = any(c.get("client_id") == me and c.get("receipt") == mine for c in contributors)
            if mine is None or not listed:
                raise ContributionMissing(
                    resp.status_code, "contribution_missing",
                    "this client's receipt is not among the round's contributors"
                    if mine else "no receipt of this client for this round to verify",
                    {"round_id": round_id, "receipt": mine})
        sums = decrypt_sums(secret, resp.content, int(fed["vector_length"]))
        if verify and sums.contributions != len(contributors):
            raise ContributionMissing(
                resp.status_code, "contribution_missing",
                f"the aggregate sums {sums.contributions} updates; the round lists "
                f"{len(contributors)} contributors", {"round_id": round_id})
        return sums

    def aggregate(self, round_id: int, *, receipt: str | None = None,
                  verify: bool = True) -> npt.NDArray[np.float64]:
        """The round's weighted mean ``sum(w*x) / sum(w)``, after the checks of
        `aggregate_sums`. Absolute error ~1e-8 from CKKS, plus the DP noise / sum(w) in a DP
        federation. ValueError if the (noisy) summed weight is not positive."""
        sums = self.aggregate_sums(round_id, receipt=receipt, verify=verify)
        if not sums.total_weight > 0:
            raise ValueError(f"summed weight is {sums.total_weight:.3g}; cannot form a mean")
        mean: npt.NDArray[np.float64] = sums.weighted_sum / sums.total_weight
        return mean

    # -- plumbing --------------------------------------------------------------------------------
    def _require_secret(self) -> bytes:
        if self._secret is None:
            raise ValueError("this needs the federation's secret context; pass it to FederatedClient")
        return self._secret

    def _federation_params(self, federation_id: int) -> dict[str, Any]:
        # A federation's parameters never change, so one lookup serves every round.
        if federation_id not in self._federations:
            self._federations[federation_id] = self.federation(federation_id)
        return self._federations[federation_id]

    def _check_preset(self, fed: Mapping[str, Any]) -> None:
        if self._preset is None:
            self._preset = context_preset(self._require_secret())
        if self._preset.name != fed["preset"]:
            raise ValueError(f"the secret context is preset {self._preset.name}; this federation "
                             f"uses {fed['preset']}: wrong key for this federation")

    def _my_id(self) -> int:
        if self._user_id is None:
            self._user_id = int(self.me()["id"])
        return self._user_id
