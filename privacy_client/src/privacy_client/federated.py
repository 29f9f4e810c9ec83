"""Federated learning client: coordinate federations, run secure-aggregation rounds, decrypt means.

Trust model (DESIGN.md §5): the federation's CKKS secret context is made with `generate_keys`
and shared among the federation's clients only; its owner registers the parameters-only
context. Clients encrypt symmetrically and mask their ciphertexts (Bonawitz et al., CCS 2017,
double masking; `privacy_secagg`): the server adds masked ciphertexts, and neither it nor
it together with fewer than t clients learns an individual update.

A round, driven by `FederatedClient.participate` (or step by step, for tests and schedulers):

1. **advertise** (`advertise`): fresh X25519 round keys, signed with this client's Ed25519
   identity key (registered once per federation; kept in the state directory).
2. **share** (`share`): verify every peer's advertisement against the pinned roster (trust on
   first use: a peer's identity key is pinned the first time it is seen, a changed key is
   refused with `IdentityChanged`), check the threshold floors, and send each peer an
   encrypted Shamir share of this client's self seed and mask key.
3. **collect** (`submit`): open the shares received, encrypt ``[w*x, w, check]`` and add the
   self and pairwise masks to the ciphertexts' coefficients before upload.
4. **unmask** (`unmask`): sign the survivor and dropped sets the server names, wait for t
   survivors' signatures on exactly those sets (consistency check), then reveal self-seed
   shares for the survivors and s-key shares for the dropped; never both kinds for one client
   (refusals raise `UnmaskRefused`: the server calls this client dropped, names a client in
   both sets, names a client that did not share, changes the sets it named before, or relays a
   signature that is not over these sets).

Round state (round secrets, verified keys, received shares, what was revealed) lives in a
local file per round (mode 0600, directory `state_dir`), written before each message is sent,
so a client that restarts mid-round resumes from it and never reveals anything twice
differently.

What the SDK checks so that a client need not trust the server blindly:

* after `submit`, that the receipt the server returns is the SHA-256 of the exact bytes sent;
* before `aggregate` returns, that the round lists this client's receipt among its contributors,
  that the decrypted sums count as many contributions as the published list, and that the
  check slot matches (`AggregateForged`: the server replaced the sum or added a plaintext to
  it; shifts below ~1e-7 times the norm of the check coefficients are not detectable).

Failures of those checks raise `VerificationError` subclasses, which carry the HTTP status of
the answer that failed the check and a snake_case `code`, like every other SDK error.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt

from .client import DEFAULT_TIMEOUT, Client
from .errors import Conflict, PrivacyApiError
from .extras import require_extra
from .he import (
    CHECK_TOLERANCE,
    AggregateSums,
    DistributedGaussian,
    Preset,
    context_preset,
    decrypt_sums,
    encrypt_update,
)
from .seal_codec import data_moduli

try:
    import privacy_secagg as secagg
except ImportError as exc:  # the protocol core comes with the [federated] extra
    require_extra("federated", "FederatedClient", exc)
    raise

__all__ = [
    "AggregateForged",
    "ContributionMissing",
    "FederatedClient",
    "IdentityChanged",
    "MIN_CLIENTS_FLOOR",
    "ReceiptMismatch",
    "RoundFailed",
    "UnmaskRefused",
    "VerificationError",
]

UPDATE_CONTENT_TYPE = "application/octet-stream"
MIN_CLIENTS_FLOOR = 3
_STATE_VERSION = 1


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


class AggregateForged(VerificationError):
    """`aggregate`: the decrypted sums fail the keyed check slot (code `aggregate_forged`):
    the server replaced the aggregate or added a plaintext to it."""


class IdentityChanged(VerificationError):
    """A peer's identity key differs from the one pinned for it, or an advertisement's
    signature does not verify under the pinned key (code `identity_changed`). Compare
    `FederatedClient.roster_fingerprints()` out of band before trusting a new key."""


class UnmaskRefused(VerificationError):
    """The server asked for unmasking shares this client must not give (code `unmask_refused`).
    """


class RoundFailed(PrivacyApiError):
    """`participate`: the round failed (below its floors) or did not finish in time."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: Any) -> bytes:
    return base64.b64decode(str(text), validate=True)


def default_state_dir() -> Path:
    """Where round state is kept unless `state_dir` is given: $PRIVACY_CLIENT_STATE_DIR, else
    ~/.local/state/privacy-client."""
    env = os.environ.get("PRIVACY_CLIENT_STATE_DIR")
    return Path(env) if env else Path.home() / ".local" / "state" / "privacy-client"


class FederatedClient(Client):
    """A federated client (or a federation's owner) of the privacy-api.

    `secret_context` is the federation's secret CKKS context from `generate_keys`; clients need
    it to encrypt and decrypt. An owner who only coordinates (create, enrol, open and close
    rounds) passes None and never holds the secret key. `state_dir` holds this client's
    identity key, pinned rosters and per-round state (files 0600; default
    `default_state_dir()`); give each client its own. Everything `Client` offers is inherited:
    the same transport, context management and typed `PrivacyApiError` tree.

    Guarantee with a DP federation: `submit` clips the vector it encrypts, ``[w*x, w]``, to the
    federation's L2 norm C and adds Gaussian noise sigma*C/sqrt(min_clients - k) drawn from a
    CSPRNG-seeded generator (`DistributedGaussian`), k the federation's `noise_skippers`. A
    released sum has at least min_clients contributions, so if at most k of them skipped (or
    reveal) their noise it still carries noise sigma*C: the (epsilon, delta) the server charges
    each round, when the round opens, holds against the server colluding with k clients.
    """

    def __init__(self, base_url: str, api_key: str, secret_context: bytes | None, *,
                 transport: httpx.BaseTransport | None = None,
                 timeout: float = DEFAULT_TIMEOUT,
                 state_dir: str | os.PathLike[str] | None = None) -> None:
        super().__init__(base_url, api_key, transport=transport, timeout=timeout)
        self._secret = bytes(secret_context) if secret_context is not None else None
        self._preset: Preset | None = None
        self._federations: dict[int, dict[str, Any]] = {}
        self._receipts: dict[int, str] = {}
        self._user_id: int | None = None
        self._state_root = Path(state_dir) if state_dir is not None else default_state_dir()
        self._identity: secagg.IdentityKey | None = None
        self._registered: set[int] = set()

    def __enter__(self) -> FederatedClient:
        return self

    # -- owners (role owner) ---------------------------------------------------------------------
    def create_federation(self, name: str, public_context: bytes, *, vector_length: int,
                          min_clients: int, dp: Mapping[str, float] | None = None,
                          epsilon_cap: float | None = None,
                          delta: float | None = None) -> dict[str, Any]:
        """Register a federation from its parameters-only context (`generate_keys()[1]`).

        `min_clients` must be at least 3 (ValueError here, 422 from the server). `dp` is None or
        ``{"clip_norm": C, "noise_multiplier": sigma, "noise_skippers": k}`` (k optional, default
        0); a DP federation also needs `epsilon_cap` (total over all rounds) and `delta`
        (0 < delta < 1e-3). The server refuses a context with any key in it (InvalidRequest).
        """
        if min_clients < MIN_CLIENTS_FLOOR:
            raise ValueError(f"min_clients must be at least {MIN_CLIENTS_FLOOR}")
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
        """Open a round (stage advertise). `deadline_seconds` bounds each stage: at its end the
        stage closes with whoever posted. With DP the round's cost is charged now;
        BudgetExhausted when over the cap."""
        body = {"deadline_seconds": deadline_seconds} if deadline_seconds is not None else {}
        return self._json("POST", f"/v1/federations/{federation_id}/rounds", json=body)  # type: ignore[no-any-return]

    def close_round(self, round_id: int) -> dict[str, Any]:
        """End the round's current stage now with whoever posted (clients that did not are
        dropped); the round fails if that leaves it below its floors."""
        return self._json("POST", f"/v1/rounds/{round_id}/close")  # type: ignore[no-any-return]

    # -- everyone who can see the federation --------------------------------------------------
    def federations(self) -> list[dict[str, Any]]:
        return self._json("GET", "/v1/federations")  # type: ignore[no-any-return]

    def federation(self, federation_id: int) -> dict[str, Any]:
        return self._json("GET", f"/v1/federations/{federation_id}")  # type: ignore[no-any-return]

    def round(self, round_id: int) -> dict[str, Any]:
        """``{"id", "federation_id", "status", "stage", "threshold", "advertised", "shared",
        "survivors", "dropped", "received", "min_clients", "contributors", ...}``."""
        return self._json("GET", f"/v1/rounds/{round_id}")  # type: ignore[no-any-return]

    # -- identity and roster --------------------------------------------------------------------
    def identity_fingerprint(self) -> str:
        """This client's identity key fingerprint, to read out to the coordinator."""
        return secagg.fingerprint(self._identity_key().public_bytes())

    def register_identity(self, federation_id: int) -> None:
        """Register this client's identity key with the federation (idempotent). Conflict if a
        different key is registered for this client already."""
        if federation_id in self._registered:
            return
        self._json("POST", f"/v1/federations/{federation_id}/identity",
                   json={"identity_key": _b64(self._identity_key().public_bytes())})
        self._registered.add(federation_id)

    def roster_fingerprints(self, federation_id: int) -> dict[int, str]:
        """Fingerprints of the identity keys this client has pinned for the federation's
        clients (client id -> fingerprint), after pinning any new ones the server lists.
        Compare them with the coordinator's list out of band."""
        pinned = self._pinned_roster(federation_id)
        return {cid: secagg.fingerprint(key) for cid, key in sorted(pinned.items())}

    def _pinned_roster(self, federation_id: int) -> dict[int, bytes]:
        path = self._path(f"roster-{federation_id}.json")
        pinned: dict[int, bytes] = {}
        if path.exists():
            pinned = {int(k): bytes.fromhex(v) for k, v in json.loads(path.read_text()).items()}
        listed = self._json("GET", f"/v1/federations/{federation_id}/roster")
        changed = False
        for entry in listed:
            cid, key = int(entry["client_id"]), _unb64(entry["identity_key"])
            if cid in pinned and pinned[cid] != key:
                raise IdentityChanged(
                    200, "identity_changed",
                    f"the server lists another identity key for client {cid} than the one "
                    "pinned; refusing to trust it", {"client_id": cid,
                                                     "pinned": secagg.fingerprint(pinned[cid]),
                                                     "listed": secagg.fingerprint(key)})
            if cid not in pinned:
                pinned[cid] = key
                changed = True
        me = self._my_id()
        mine = self._identity_key().public_bytes()
        if me in pinned and pinned[me] != mine:
            raise IdentityChanged(200, "identity_changed",
                                  "the server lists another identity key for this client",
                                  {"client_id": me})
        if changed:
            self._write(path, {str(k): v.hex() for k, v in pinned.items()})
        return pinned

    # -- a round, in one call ------------------------------------------------------------------
    def participate(self, round_id: int, update: npt.ArrayLike, weight: float, *,
                    timeout: float = 600.0, poll: float = 0.2,
                    rng: np.random.Generator | None = None) -> npt.NDArray[np.float64]:
        """Take part in a round from start to end and return its verified weighted mean.

        Advertises, shares, uploads the masked update and helps unmask, polling the round's
        stage every `poll` seconds; resumes from the local round state after a restart.
        Raises RoundFailed if the round fails or has not been released after `timeout`
        seconds, and every check error of the steps (IdentityChanged, UnmaskRefused, ...).
        """
        give_up = time.monotonic() + timeout
        while True:
            rnd = self.round(round_id)
            stage, state = rnd.get("stage"), self._load_round(round_id)
            if rnd["status"] == "failed":
                raise RoundFailed(409, "round_failed", f"round {round_id} failed: "
                                  f"{rnd.get('failure_reason')}", {"round_id": round_id})
            if rnd["status"] == "aggregated":
                return self.aggregate(round_id)
            self._check_not_left_out(rnd, state)
            if stage == "advertise" and "secrets" not in state:
                self.advertise(round_id)
            elif stage == "share" and not state.get("shared"):
                self.share(round_id)
            elif stage == "collect" and "receipt" not in state and state.get("shared"):
                self.submit(round_id, update, weight, rng=rng)
            elif (stage == "unmask" and "unmask" not in state and "receipt" in state
                  and self.unmask(round_id)):
                continue
            elif time.monotonic() > give_up:
                raise RoundFailed(408, "round_timeout",
                                  f"round {round_id} was not released within {timeout} s",
                                  {"round_id": round_id, "stage": stage})
            else:
                time.sleep(poll)

    def _check_not_left_out(self, rnd: Mapping[str, Any], state: Mapping[str, Any]) -> None:
        """A stage this client missed cannot be made up: say so instead of waiting forever."""
        stage, me = rnd.get("stage"), self._my_id()
        missed = None
        if stage != "advertise" and me not in (rnd.get("advertised") or []):
            missed = "advertise"
        elif stage in ("collect", "unmask") and me not in (rnd.get("shared") or []):
            missed = "share"
        elif stage == "unmask" and "receipt" not in state:
            missed = "collect"
        if missed is not None:
            raise RoundFailed(409, "round_missed",
                              f"round {rnd.get('id')} moved past its {missed} stage without this "
                              "client; it cannot take part in this round",
                              {"round_id": rnd.get("id"), "stage": stage})

    # -- the steps -----------------------------------------------------------------------------
    def advertise(self, round_id: int) -> None:
        """Stage advertise: make, persist and post this client's signed round keys."""
        rnd = self.round(round_id)
        fid = int(rnd["federation_id"])
        self._require_secret()
        self.register_identity(fid)
        state = self._load_round(round_id)
        if "secrets" not in state:
            state.update(federation_id=fid, secrets=secagg.RoundSecrets.generate().to_bytes().hex())
            self._save_round(round_id, state)
        secrets_ = secagg.RoundSecrets.from_bytes(bytes.fromhex(state["secrets"]))
        binding = secagg.round_binding(fid, round_id)
        me = self._my_id()
        message = secagg.advertisement_message(binding, me, secrets_.c_public, secrets_.s_public)
        try:
            self._json("POST", f"/v1/rounds/{round_id}/keys", json={
                "c_public": _b64(secrets_.c_public), "s_public": _b64(secrets_.s_public),
                "signature": _b64(self._identity_key().sign(message))})
        except Conflict as exc:
            if "already advertised" not in exc.message:  # a resumed client posted before
                raise

    def share(self, round_id: int) -> None:
        """Stage share: verify every advertisement against the pinned roster, check the
        threshold floors, then post one encrypted share to every advertiser."""
        state = self._load_round(round_id)
        if "secrets" not in state:
            raise ValueError("this client did not advertise keys for this round")
        if state.get("shared"):
            return
        fid = int(state["federation_id"])
        fed = self._federation_params(fid)
        keys = self._json("GET", f"/v1/rounds/{round_id}/keys")
        threshold = int(keys["threshold"])
        ads = {int(a["client_id"]): a for a in keys["keys"]}
        me = self._my_id()
        secrets_ = secagg.RoundSecrets.from_bytes(bytes.fromhex(state["secrets"]))
        if len(ads) < max(MIN_CLIENTS_FLOOR, int(fed["min_clients"])):
            raise UnmaskRefused(200, "unmask_refused",
                                f"only {len(ads)} clients advertised; the federation needs "
                                f"{fed['min_clients']} (and at least {MIN_CLIENTS_FLOOR})")
        try:
            secagg.check_threshold(threshold, len(ads))
        except secagg.SecAggError as exc:
            raise UnmaskRefused(200, "unmask_refused", str(exc)) from None
        mine = ads.get(me)
        if mine is None or _unb64(mine["c_public"]) != secrets_.c_public \
                or _unb64(mine["s_public"]) != secrets_.s_public:
            raise IdentityChanged(200, "identity_changed",
                                  "the server relays other round keys for this client")
        verified = self._verify_advertisements(fid, round_id, ads)
        peers_c = {cid: c for cid, (c, _) in verified.items()}
        blobs = secagg.share_secrets(secrets_, me, peers_c, threshold,
                                     secagg.round_binding(fid, round_id))
        state.update(threshold=threshold,
                     keys={str(c): [cp.hex(), sp.hex()] for c, (cp, sp) in verified.items()})
        self._save_round(round_id, state)
        try:
            self._json("POST", f"/v1/rounds/{round_id}/shares", json={"shares": [
                {"recipient_id": cid, "share": _b64(blob)} for cid, blob in sorted(blobs.items())]})
        except Conflict as exc:
            if "already posted" not in exc.message:
                raise
        state["shared"] = True
        self._save_round(round_id, state)

    def _verify_advertisements(self, federation_id: int, round_id: int,
                               ads: Mapping[int, Mapping[str, Any]]) -> dict[int, tuple[bytes, bytes]]:
        pinned = self._pinned_roster(federation_id)
        binding = secagg.round_binding(federation_id, round_id)
        out: dict[int, tuple[bytes, bytes]] = {}
        for cid, ad in sorted(ads.items()):
            if cid not in pinned:
                raise IdentityChanged(200, "identity_changed",
                                      f"client {cid} advertised keys but has no identity key",
                                      {"client_id": cid})
            c_public, s_public = _unb64(ad["c_public"]), _unb64(ad["s_public"])
            message = secagg.advertisement_message(binding, cid, c_public, s_public)
            try:
                secagg.verify_signature(pinned[cid], message, _unb64(ad["signature"]))
            except secagg.SecAggError:
                raise IdentityChanged(
                    200, "identity_changed",
                    f"client {cid}'s round keys are not signed by its pinned identity key "
                    "(substituted by the server?)", {"client_id": cid}) from None
            out[cid] = (c_public, s_public)
        return out

    def submit(self, round_id: int, update: npt.ArrayLike, weight: float, *,
               rng: np.random.Generator | None = None) -> str:
        """Stage collect: open the shares received, then encrypt, mask and upload `update`
        (1-D, the federation's vector_length) weighted by `weight` (> 0, e.g. the local sample
        count). Returns the receipt.

        Applies the federation's clipping and noise when it uses DP (`rng` only for tests;
        default CSPRNG). Raises ValueError for an update of the wrong length, a secret context
        of another preset, or a client that did not share; Conflict (409) for a second update
        or a round not in its collect stage, Forbidden (403) when not enrolled,
        ReceiptMismatch if the server acknowledges other bytes than those sent.
        """
        state = self._load_round(round_id)
        if not state.get("shared"):
            raise ValueError("this client has not completed the share stage of this round")
        if "receipt" in state:
            self._receipts[round_id] = state["receipt"]
            return str(state["receipt"])
        fid = int(state["federation_id"])
        fed = self._federation_params(fid)
        secret = self._require_secret()
        self._check_preset(fed)
        vector = np.asarray(update, dtype=np.float64)
        if vector.shape != (fed["vector_length"],):
            raise ValueError(f"update has shape {vector.shape}; this federation expects "
                             f"({fed['vector_length']},)")
        me = self._my_id()
        secrets_ = secagg.RoundSecrets.from_bytes(bytes.fromhex(state["secrets"]))
        keys = {int(c): (bytes.fromhex(v[0]), bytes.fromhex(v[1])) for c, v in state["keys"].items()}
        binding = secagg.round_binding(fid, round_id)
        if "shares" not in state:
            received = self._json("GET", f"/v1/rounds/{round_id}/shares")["shares"]
            shares: dict[str, list[Any]] = {}
            for item in received:
                sender = int(item["sender_id"])
                if sender not in keys:
                    raise VerificationError(200, "unknown_sender",
                                            f"a share from client {sender}, who did not advertise")
                share = secagg.open_share(_unb64(item["share"]), me, sender, secrets_,
                                          keys[sender][0], binding)
                shares[str(sender)] = [share.index, share.self_seed_share.hex(),
                                       share.s_key_share.hex()]
            if str(me) not in shares:
                raise VerificationError(200, "share_missing",
                                        "the server did not relay this client's own share")
            if len(shares) < int(state["threshold"]):
                raise VerificationError(200, "share_missing",
                                        f"only {len(shares)} clients shared; threshold is "
                                        f"{state['threshold']}")
            state["shares"] = shares
            self._save_round(round_id, state)
        assert self._preset is not None
        moduli = data_moduli(self._preset.name)
        if len(moduli) != 1:  # pragma: no cover - every shipped preset is single-level
            raise ValueError("masking supports single-prime presets only")
        chunks = self._preset.chunk_count(int(fed["vector_length"]))
        mask = secagg.client_mask(
            secrets_, me, {int(c): keys[int(c)][1] for c in state["shares"]},
            [moduli[0]] * chunks, self._preset.poly_modulus_degree, binding)
        dp = None
        if fed.get("dp"):
            skippers = int(fed["dp"].get("noise_skippers") or 0)
            dp = DistributedGaussian(clip_norm=float(fed["dp"]["clip_norm"]),
                                     noise_multiplier=float(fed["dp"]["noise_multiplier"]),
                                     min_clients=int(fed["min_clients"]) - skippers)
        payload = encrypt_update(secret, vector, weight, dp=dp, rng=rng,
                                 check_binding=binding, mask=mask)
        expected = hashlib.sha256(payload).hexdigest()
        # Remember every payload sent: if an answer is lost and a retry hears "already
        # submitted", the receipt the server names must be one of them.
        state.setdefault("sent", []).append(expected)
        self._save_round(round_id, state)
        try:
            resp = self._request("POST", f"/v1/rounds/{round_id}/updates", content=payload,
                                 headers={"Content-Type": UPDATE_CONTENT_TYPE})
        except Conflict as exc:
            earlier = exc.details.get("receipt")
            if earlier is None or earlier not in state["sent"]:
                raise
            state["receipt"] = self._receipts[round_id] = str(earlier)
            self._save_round(round_id, state)
            return str(earlier)
        receipt = str(resp.json().get("receipt", ""))
        if receipt != expected:
            raise ReceiptMismatch(resp.status_code, "receipt_mismatch",
                                  "the server's receipt is not the SHA-256 of the update sent",
                                  {"receipt": receipt, "expected": expected})
        self._receipts[round_id] = receipt
        state["receipt"] = receipt
        self._save_round(round_id, state)
        return receipt

    def unmask(self, round_id: int) -> bool:
        """Stage unmask: reveal self-seed shares of the survivors and s-key shares of the
        dropped, as the server names them, after checking that this client is a survivor,
        the two sets are disjoint, every named client shared with this client, the survivors
        reach the threshold, and the sets are those named before if this client already
        answered (UnmaskRefused otherwise; nothing is sent then).

        Consistency check (Bonawitz et al. 2017): this client first signs the sets with its
        identity key and posts the signature, and reveals only once at least t survivors have
        signed exactly the same sets (verified against the pinned roster), so a server cannot
        show different survivor sets to different clients. Returns True once this client's
        shares are posted, False while fewer than t survivors have signed (call again)."""
        state = self._load_round(round_id)
        if state.get("unmask"):
            return True
        if "receipt" not in state:
            raise UnmaskRefused(200, "unmask_refused",
                                "this client did not upload to this round; it does not unmask")
        rnd = self.round(round_id)
        if rnd.get("stage") != "unmask":
            raise Conflict(409, "conflict", f"round is in stage {rnd.get('stage')}, not unmask")
        survivors = sorted(int(c) for c in rnd.get("survivors") or [])
        dropped = sorted(int(c) for c in rnd.get("dropped") or [])
        me = self._my_id()
        shares = state["shares"]
        problems = []
        if me not in survivors:
            problems.append("the server claims this client dropped, but it uploaded")
        if set(survivors) & set(dropped):
            problems.append(f"clients {sorted(set(survivors) & set(dropped))} are named both "
                            "survivor and dropped")
        unknown = sorted(c for c in (*survivors, *dropped) if str(c) not in shares)
        if unknown:
            problems.append(f"clients {unknown} did not share with this client")
        if len(survivors) < int(state["threshold"]):
            problems.append(f"{len(survivors)} survivors are below the threshold "
                            f"{state['threshold']}")
        previous = state.get("unmask_sets")
        if previous is not None and previous != {"survivors": survivors, "dropped": dropped}:
            problems.append("the server changed the survivor / dropped sets it named before")
        if problems:
            raise UnmaskRefused(200, "unmask_refused", "; ".join(problems),
                                {"survivors": survivors, "dropped": dropped})
        # Persist the sets before signing or revealing anything: a resumed client answers the
        # same, and never signs two different sets.
        state["unmask_sets"] = {"survivors": survivors, "dropped": dropped}
        self._save_round(round_id, state)
        fid = int(state["federation_id"])
        binding = secagg.round_binding(fid, round_id)
        if not state.get("confirmed"):
            message = secagg.consistency_message(binding, survivors, dropped)
            try:
                self._json("POST", f"/v1/rounds/{round_id}/consistency",
                           json={"signature": _b64(self._identity_key().sign(message))})
            except Conflict as exc:
                if "already signed" not in exc.message:  # a resumed client signed before
                    raise
            state["confirmed"] = True
            self._save_round(round_id, state)
        listed = self._json("GET", f"/v1/rounds/{round_id}/consistency")["signatures"]
        signatures = {int(item["client_id"]): _unb64(item["signature"]) for item in listed}
        try:
            secagg.verify_consistency(binding, survivors, dropped, signatures,
                                      self._pinned_roster(fid), int(state["threshold"]))
        except secagg.TooFewSignatures:
            return False
        except secagg.SecAggError as exc:
            raise UnmaskRefused(200, "unmask_refused", str(exc),
                                {"survivors": survivors, "dropped": dropped}) from None
        body = {
            "self_seed_shares": [{"client_id": u, "share": _b64(bytes.fromhex(shares[str(u)][1]))}
                                 for u in survivors],
            "s_key_shares": [{"client_id": d, "share": _b64(bytes.fromhex(shares[str(d)][2]))}
                             for d in dropped],
        }
        try:
            self._json("POST", f"/v1/rounds/{round_id}/unmask", json=body)
        except Conflict as exc:
            if "already posted" not in exc.message:
                raise
        state["unmask"] = True
        self._save_round(round_id, state)
        return True

    def receipt(self, round_id: int) -> str | None:
        """The receipt of this client's update to a round, if it was submitted from here."""
        if round_id not in self._receipts:
            stored = self._load_round(round_id).get("receipt")
            if stored is not None:
                self._receipts[round_id] = str(stored)
        return self._receipts.get(round_id)

    def aggregate_sums(self, round_id: int, *, receipt: str | None = None,
                       verify: bool = True) -> AggregateSums:
        """The round's decrypted sums (sum of w*x, sum of w, contributions, check residual).

        With `verify` (the default) this client's receipt (from `submit`, or pass `receipt`)
        must be listed among the round's contributors, the aggregate must sum exactly the
        listed updates (else ContributionMissing), and the check slot must match (else
        AggregateForged). Conflict (409) unless the round is aggregated.
        """
        secret = self._require_secret()
        # The aggregate first: the server refuses it (409) unless the round is aggregated, and
        # an aggregated round's contributor list no longer changes.
        resp = self._request("GET", f"/v1/rounds/{round_id}/aggregate")
        rnd = self.round(round_id)
        fid = int(rnd["federation_id"])
        fed = self._federation_params(fid)
        contributors = rnd.get("contributors") or []
        if verify:
            mine = receipt or self.receipt(round_id)
            me = self._my_id()
            listed = any(c.get("client_id") == me and c.get("receipt") == mine for c in contributors)
            if mine is None or not listed:
                raise ContributionMissing(
                    resp.status_code, "contribution_missing",
                    "this client's receipt is not among the round's contributors"
                    if mine else "no receipt of this client for this round to verify",
                    {"round_id": round_id, "receipt": mine})
        sums = decrypt_sums(secret, resp.content, int(fed["vector_length"]),
                            check_binding=secagg.round_binding(fid, round_id))
        if verify and sums.contributions != len(contributors):
            raise ContributionMissing(
                resp.status_code, "contribution_missing",
                f"the aggregate sums {sums.contributions} updates; the round lists "
                f"{len(contributors)} contributors", {"round_id": round_id})
        assert sums.check_residual is not None
        tolerance = CHECK_TOLERANCE * math.sqrt(max(sums.contributions, 1))
        if verify and not abs(sums.check_residual) <= tolerance:
            raise AggregateForged(
                resp.status_code, "aggregate_forged",
                "the aggregate fails the check slot: it is not the sum of the clients' updates "
                "(replaced, or shifted by the server)",
                {"round_id": round_id, "residual": sums.check_residual, "tolerance": tolerance})
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
            fed = self.federation(federation_id)
            if int(fed["min_clients"]) < MIN_CLIENTS_FLOOR:
                raise ValueError(f"federation {federation_id} has min_clients "
                                 f"{fed['min_clients']} < {MIN_CLIENTS_FLOOR}: refusing to take part")
            self._federations[federation_id] = fed
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

    # Local state: one directory per client user, files written atomically with mode 0600.
    def _path(self, name: str) -> Path:
        directory = self._state_root / f"client-{self._my_id()}"
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        return directory / name

    def _write(self, path: Path, data: Any) -> None:
        tmp = path.with_suffix(path.suffix + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(data, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)

    def _identity_key(self) -> secagg.IdentityKey:
        if self._identity is None:
            path = self._path("identity.json")
            if path.exists():
                stored = json.loads(path.read_text())
                self._identity = secagg.IdentityKey.from_private_bytes(bytes.fromhex(stored["ed25519"]))
            else:
                self._identity = secagg.IdentityKey.generate()
                self._write(path, {"ed25519": self._identity.private_bytes().hex()})
        return self._identity

    def _load_round(self, round_id: int) -> dict[str, Any]:
        path = self._path(f"round-{round_id}.json")
        if not path.exists():
            return {}
        data: dict[str, Any] = json.loads(path.read_text())
        if data.get("version") != _STATE_VERSION:
            raise ValueError(f"round state file {path} has an unknown version")
        return data

    def _save_round(self, round_id: int, state: dict[str, Any]) -> None:
        state["version"] = _STATE_VERSION
        self._write(self._path(f"round-{round_id}.json"), state)
