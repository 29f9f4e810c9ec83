"""Federated learning: federations, enrolment, identity keys, rounds of secure aggregation
(advertise, share, collect, unmask), masked encrypted updates and aggregates."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from apiflask import APIBlueprint
from apiflask.fields import DateTime, Field, Float, Integer, List, Nested, String
from apiflask.fields import Decimal as DecimalField
from apiflask.validators import Length, Range
from flask import Response, request
from marshmallow import ValidationError

import privacy_secagg as secagg

from ..crypto.he import update_size_bound
from ..domain.errors import InvalidRequest
from ..domain.units import delta_value, eps_value
from ..http.auth import auth, current_user
from ..http.session import db_session
from ..runtime.state import state
from ..services import federated as federated_service
from ..services.federated import FederationState, RoundState, as_utc
from .schemas_common import StrictSchema

bp = APIBlueprint("federated", __name__, url_prefix="/v1", tag="Federated learning")

_POSITIVE = Range(min=0, min_inclusive=False, max=1e6)


class Base64Bytes(Field[bytes]):
    """A base64 string in JSON, bytes once loaded."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bytes:
        if not isinstance(value, str):
            raise ValidationError("must be a base64 string")
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ValidationError("must be standard base64") from None




class DpIn(StrictSchema):
    clip_norm = Float(required=True, allow_nan=False, validate=_POSITIVE,
                      metadata={"description": "L2 norm C each client clips [w*x, w] to"})
    noise_multiplier = Float(required=True, allow_nan=False, validate=_POSITIVE,
                             metadata={"description": "sigma: the released sum carries N(0, (sigma*C)^2)"})
    noise_skippers = Integer(load_default=0, strict=True, validate=Range(0, 100_000), metadata={
        "description": "k: contributors that may skip (or reveal) their noise while the sum "
        "still carries sigma*C; each client adds sigma*C/sqrt(min_clients - k)"})


class FederationIn(StrictSchema):
    name = String(required=True, validate=Length(1, 200))
    public_context = Base64Bytes(required=True, metadata={
        "type": "string", "format": "byte",
        "description": "base64 of the TenSEAL context with parameters only (symmetric; no "
        "public, secret, relin or Galois keys)"})
    vector_length = Integer(required=True, strict=True, validate=Range(1, 50_000_000))
    min_clients = Integer(required=True, strict=True, validate=Range(1, 100_000),
                          metadata={"description": "at least 3"})
    dp = Nested(DpIn, allow_none=True, load_default=None)
    epsilon_cap = DecimalField(load_default=None, allow_none=True, allow_nan=False, places=None,
                               metadata={"description": "dp only: total epsilon over all rounds"})
    delta = DecimalField(load_default=None, allow_none=True, allow_nan=False, places=None,
                         metadata={"description": "dp only: 0 < delta < 1e-3"})


class DpOut(StrictSchema):
    clip_norm = Float()
    noise_multiplier = Float()
    noise_skippers = Integer()


class FederationOut(StrictSchema):
    id = Integer()
    name = String()
    owner_id = Integer()
    preset = String(metadata={"description": "CKKS parameter preset of the public context"})
    context_sha256 = String()
    vector_length = Integer()
    min_clients = Integer()
    max_update_bytes = Integer(metadata={"description": "upload cap for one encrypted update"})
    dp = Nested(DpOut, allow_none=True)
    epsilon_cap = Float(allow_none=True)
    delta = Float(allow_none=True)
    epsilon_spent = Float()
    delta_spent = Float()
    open_rounds = List(Integer(), metadata={"description": "rounds accepting updates now"})
    clients = List(Integer(), metadata={"description": "enrolled user ids (owner and admin only)"})
    created_at = DateTime()


class EnrollIn(StrictSchema):
    user_id = Integer(required=True, strict=True)


class EnrollmentOut(StrictSchema):
    federation_id = Integer()
    user_id = Integer()
    created_at = DateTime()


class RoundIn(StrictSchema):
    deadline_seconds = Float(load_default=None, allow_none=True, allow_nan=False,
                             validate=Range(min=0, min_inclusive=False,
                                            max=federated_service.MAX_DEADLINE_SECONDS))


class ContributorOut(StrictSchema):
    client_id = Integer()
    receipt = String(metadata={"description": "SHA-256 (hex) of the update's bytes"})


class RoundOut(StrictSchema):
    id = Integer()
    federation_id = Integer()
    status = String(metadata={"description": "open | aggregated | failed"})
    received = Integer()
    min_clients = Integer()
    contributors = List(Nested(ContributorOut))
    deadline = DateTime(allow_none=True)
    created_at = DateTime()
    closed_at = DateTime(allow_none=True)
    epsilon_charged = Float()
    delta_charged = Float()
    failure_reason = String(allow_none=True)
    stage = String(metadata={"description": "advertise | share | collect | unmask | released | failed"})
    threshold = Integer(allow_none=True,
                        metadata={"description": "Shamir threshold t, fixed when advertise ends"})
    advertised = List(Integer(), metadata={"description": "clients whose signed round keys are in (U1)"})
    shared = List(Integer(), metadata={"description": "clients that posted shares to every advertiser (U2)"})
    survivors = List(Integer(), metadata={
        "description": "from stage unmask: clients whose update is in the sum (U3)"})
    dropped = List(Integer(), metadata={
        "description": "from stage unmask: shared but did not upload (U2 - U3)"})
    unmasked = List(Integer(), metadata={"description": "survivors that posted unmasking shares"})


class ReceiptOut(StrictSchema):
    receipt = String()


def _b64(description: str) -> Base64Bytes:
    return Base64Bytes(required=True, metadata={"type": "string", "format": "byte",
                                                "description": description})


class IdentityIn(StrictSchema):
    identity_key = _b64("the client's Ed25519 identity public key (32 bytes)")


class RosterEntryOut(StrictSchema):
    client_id = Integer()
    identity_key = String(metadata={"format": "byte"})
    fingerprint = String(metadata={"description": "SHA-256 of the key, to compare out of band"})


class AdvertisementIn(StrictSchema):
    c_public = _b64("X25519 public key for encrypting shares (32 bytes)")
    s_public = _b64("X25519 public key for pairwise masks (32 bytes)")
    signature = _b64("Ed25519 signature of secagg.advertisement_message (64 bytes)")


class AdvertisementOut(StrictSchema):
    client_id = Integer()
    c_public = String(metadata={"format": "byte"})
    s_public = String(metadata={"format": "byte"})
    signature = String(metadata={"format": "byte"})


class RoundKeysOut(StrictSchema):
    threshold = Integer()
    keys = List(Nested(AdvertisementOut))


class ShareIn(StrictSchema):
    recipient_id = Integer(required=True, strict=True)
    share = _b64("AES-GCM blob of the sender's Shamir shares for this recipient")


class SharesIn(StrictSchema):
    shares = List(Nested(ShareIn), required=True, validate=Length(1, 100_000))


class ShareOut(StrictSchema):
    sender_id = Integer()
    share = String(metadata={"format": "byte"})


class SharesOut(StrictSchema):
    shares = List(Nested(ShareOut))


class ClientShareIn(StrictSchema):
    client_id = Integer(required=True, strict=True)
    share = _b64("a 32-byte Shamir share")


class UnmaskIn(StrictSchema):
    self_seed_shares = List(Nested(ClientShareIn), required=True, validate=Length(0, 100_000),
                            metadata={"description": "one per survivor"})
    s_key_shares = List(Nested(ClientShareIn), required=True, validate=Length(0, 100_000),
                        metadata={"description": "one per dropped client"})


class AcceptedOut(StrictSchema):
    accepted = Integer()


class ConsistencyIn(StrictSchema):
    signature = _b64("Ed25519 signature of secagg.consistency_message over the round's "
                     "survivor and dropped sets (64 bytes)")


class ConsistencySignatureOut(StrictSchema):
    client_id = Integer()
    signature = String(metadata={"format": "byte"})


class ConsistencyOut(StrictSchema):
    signatures = List(Nested(ConsistencySignatureOut))


def _by_client(items: list[dict[str, Any]], key: str, field: str) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    for item in items:
        if item[key] in out:
            raise InvalidRequest(f"client {item[key]} appears twice",
                                 {field: [f"client {item[key]} appears twice"]})
        out[item[key]] = item["share"]
    return out


def _text(data: bytes) -> str:
    return base64.b64encode(data).decode()


def dump_federation(view: FederationState) -> dict[str, Any]:
    federation = view.federation
    dp = None
    if federation.dp_noise_multiplier is not None:
        dp = {"clip_norm": federation.dp_clip_norm,
              "noise_multiplier": federation.dp_noise_multiplier,
              "noise_skippers": federation.dp_noise_skippers}
    out: dict[str, Any] = {
        "id": federation.id, "name": federation.name, "owner_id": federation.owner_id,
        "preset": federation.preset, "context_sha256": view.context.fingerprint,
        "vector_length": federation.vector_length, "min_clients": federation.min_clients,
        "max_update_bytes": update_size_bound(view.context, federation.vector_length), "dp": dp,
        "epsilon_cap": float(eps_value(federation.epsilon_cap)) if federation.epsilon_cap else None,
        "delta": float(delta_value(federation.delta)) if federation.delta else None,
        "epsilon_spent": float(eps_value(federation.epsilon_spent)),
        "delta_spent": float(delta_value(federation.delta_spent)),
        "open_rounds": view.open_rounds, "created_at": as_utc(federation.created_at),
    }
    if view.clients is not None:
        out["clients"] = view.clients
    return out


def dump_round(state_: RoundState) -> dict[str, Any]:
    rnd = state_.round
    return {
        "id": rnd.id, "federation_id": rnd.federation_id, "status": rnd.status,
        "received": rnd.received, "min_clients": rnd.min_clients,
        "contributors": [{"client_id": c.client_id, "receipt": c.receipt}
                         for c in state_.contributors],
        "deadline": as_utc(rnd.deadline_at), "created_at": as_utc(rnd.created_at),
        "closed_at": as_utc(rnd.closed_at),
        "epsilon_charged": float(eps_value(rnd.epsilon_charged)),
        "delta_charged": float(delta_value(rnd.delta_charged)),
        "failure_reason": rnd.failure_reason,
        "stage": rnd.stage, "threshold": rnd.threshold,
        "advertised": state_.progress.advertised, "shared": state_.progress.shared,
        "survivors": state_.progress.survivors, "dropped": state_.progress.dropped,
        "unmasked": state_.progress.unmasked,
    }


@bp.post("/federations")
@bp.auth_required(auth, roles=["owner"])
@bp.input(FederationIn, arg_name="body")
@bp.output(FederationOut, status_code=201)
@bp.doc(responses={400: "public context refused (secret/evaluation keys, unknown parameters)"})
def create_federation(body: dict[str, Any]) -> dict[str, Any]:
    settings = state().settings
    return dump_federation(federated_service.create_federation(
        db_session(), current_user(), name=body["name"], public_context_bytes=body["public_context"],
        vector_length=body["vector_length"], min_clients=body["min_clients"], dp=body["dp"],
        epsilon_cap=body["epsilon_cap"], delta=body["delta"],
        max_context_bytes=settings.max_context_bytes,
        max_update_bytes=min(settings.max_update_bytes, settings.max_content_length),
        keyring=state().keyring,
    ))


@bp.get("/federations")
@bp.auth_required(auth, roles=["owner", "admin", "client"])
@bp.output(FederationOut(many=True))
def list_federations() -> list[dict[str, Any]]:
    return [dump_federation(f) for f in federated_service.list_federations(db_session(), current_user())]


@bp.get("/federations/<int:federation_id>")
@bp.auth_required(auth, roles=["owner", "admin", "client"])
@bp.output(FederationOut)
def get_federation(federation_id: int) -> dict[str, Any]:
    return dump_federation(
        federated_service.get_federation(db_session(), current_user(), federation_id))


@bp.post("/federations/<int:federation_id>/clients")
@bp.auth_required(auth, roles=["owner"])
@bp.input(EnrollIn, arg_name="body")
@bp.output(EnrollmentOut, status_code=201)
def enroll_client(federation_id: int, body: dict[str, Any]) -> Any:
    return federated_service.enroll_client(db_session(), current_user(), federation_id,
                                           body["user_id"])


@bp.post("/federations/<int:federation_id>/rounds")
@bp.auth_required(auth, roles=["owner"])
@bp.input(RoundIn, arg_name="body")
@bp.output(RoundOut, status_code=201)
@bp.doc(responses={403: "budget_exhausted: the round's epsilon would exceed the cap; nothing charged"})
def open_round(federation_id: int, body: dict[str, Any]) -> dict[str, Any]:
    return dump_round(federated_service.open_round(
        db_session(), current_user(), federation_id, state().keyring,
        deadline_seconds=body["deadline_seconds"]))


@bp.get("/rounds/<int:round_id>")
@bp.auth_required(auth, roles=["owner", "admin", "client"])
@bp.output(RoundOut)
def get_round(round_id: int) -> dict[str, Any]:
    return dump_round(federated_service.get_round(db_session(), current_user(), round_id,
                                                  state().keyring))


@bp.post("/rounds/<int:round_id>/updates")
@bp.auth_required(auth, roles=["client"])
@bp.output(ReceiptOut, status_code=202)
@bp.doc(
    summary="Submit one encrypted update",
    description="Body: the SDK's serialized encrypted update (`application/octet-stream`). "
    "One update per client per round; the receipt is the SHA-256 of the bytes received.",
    responses={
        202: "accepted into the round's encrypted (masked) sum",
        400: "malformed, wrong length or wrong parameters",
        403: "not enrolled in the round's federation",
        409: "round not in its collect stage, past its deadline, a second update, or the "
        "client did not complete the share stage",
        413: "larger than any valid update for this federation",
        415: "not application/octet-stream",
    },
)
def submit_update(round_id: int) -> dict[str, Any]:
    receipt = federated_service.submit_update(
        state().db, state().keyring, current_user(), round_id, content_type=request.content_type or "",
        stream=request.stream, content_length=request.content_length)
    return {"receipt": receipt}


@bp.post("/rounds/<int:round_id>/close")
@bp.auth_required(auth, roles=["owner"])
@bp.output(RoundOut)
def close_round(round_id: int) -> dict[str, Any]:
    return dump_round(federated_service.close_round(db_session(), current_user(), round_id,
                                                    state().keyring))


_AGGREGATE_RESPONSES: dict[int | str, dict[str, str | dict[str, dict[str, Any]]]] = {
    200: {"description": "the encrypted sums (decrypt with the SDK)",
          "content": {"application/octet-stream": {"schema": {"type": "string",
                                                              "format": "binary"}}}},
    409: {"description": "the round is open or failed"},
}


@bp.get("/rounds/<int:round_id>/aggregate")
@bp.auth_required(auth, roles=["owner", "client"])
@bp.doc(
    summary="Download the encrypted aggregate",
    responses=_AGGREGATE_RESPONSES,
)
def round_aggregate(round_id: int) -> Response:
    data = federated_service.round_aggregate(db_session(), current_user(), round_id,
                                             state().keyring)
    return Response(data, mimetype="application/octet-stream")


# --------------------------------------------------------------------------------------------
# Identity keys and the secure-aggregation stages


@bp.post("/federations/<int:federation_id>/identity")
@bp.auth_required(auth, roles=["client"])
@bp.input(IdentityIn, arg_name="body")
@bp.output(RosterEntryOut)
@bp.doc(summary="Register this client's Ed25519 identity key (once; 409 if it would change)",
        responses={409: "another identity key is registered for this client",
                   422: "not a 32-byte Ed25519 public key"})
def register_identity(federation_id: int, body: dict[str, Any]) -> dict[str, Any]:
    entry = federated_service.register_identity(db_session(), current_user(), federation_id,
                                                body["identity_key"])
    return _roster_entry(entry)


def _roster_entry(entry: federated_service.RosterEntry) -> dict[str, Any]:
    return {"client_id": entry.client_id, "identity_key": _text(entry.identity_key),
            "fingerprint": secagg.fingerprint(entry.identity_key)}


@bp.get("/federations/<int:federation_id>/roster")
@bp.auth_required(auth, roles=["owner", "admin", "client"])
@bp.output(RosterEntryOut(many=True))
@bp.doc(summary="Enrolled clients' identity keys (SDKs pin them on first use)")
def get_roster(federation_id: int) -> list[dict[str, Any]]:
    return [_roster_entry(e) for e in
            federated_service.roster(db_session(), current_user(), federation_id)]


def _advertisement(ad: federated_service.Advertisement) -> dict[str, Any]:
    return {"client_id": ad.client_id, "c_public": _text(ad.c_public),
            "s_public": _text(ad.s_public), "signature": _text(ad.signature)}


@bp.post("/rounds/<int:round_id>/keys")
@bp.auth_required(auth, roles=["client"])
@bp.input(AdvertisementIn, arg_name="body")
@bp.output(AdvertisementOut, status_code=201)
@bp.doc(summary="Stage advertise: post this client's signed round keys",
        responses={400: "signature does not verify", 409: "wrong stage, second advertisement "
                   "or no identity key", 422: "keys of the wrong size"})
def advertise(round_id: int, body: dict[str, Any]) -> dict[str, Any]:
    return _advertisement(federated_service.advertise(
        db_session(), current_user(), round_id, state().keyring, c_public=body["c_public"],
        s_public=body["s_public"], signature=body["signature"]))


@bp.get("/rounds/<int:round_id>/keys")
@bp.auth_required(auth, roles=["client"])
@bp.output(RoundKeysOut)
@bp.doc(summary="Every advertisement of the round and its threshold (409 during advertise)",
        responses={409: "stage advertise: the keys are not fixed yet"})
def round_keys(round_id: int) -> dict[str, Any]:
    keys = federated_service.round_keys(db_session(), current_user(), round_id, state().keyring)
    return {"threshold": keys.threshold, "keys": [_advertisement(a) for a in keys.advertisements]}


@bp.post("/rounds/<int:round_id>/shares")
@bp.auth_required(auth, roles=["client"])
@bp.input(SharesIn, arg_name="body")
@bp.output(AcceptedOut, status_code=202)
@bp.doc(summary="Stage share: one encrypted share blob for every advertiser (self included)",
        responses={409: "wrong stage, not an advertiser, or already shared",
                   422: "missing or unknown recipient, duplicate, or wrong blob size"})
def post_shares(round_id: int, body: dict[str, Any]) -> dict[str, Any]:
    shares = _by_client(body["shares"], "recipient_id", "shares")
    accepted = federated_service.post_shares(db_session(), current_user(), round_id,
                                             state().keyring, shares)
    return {"accepted": accepted}


@bp.get("/rounds/<int:round_id>/shares")
@bp.auth_required(auth, roles=["client"])
@bp.output(SharesOut)
@bp.doc(summary="The share blobs addressed to this client (from stage collect on)",
        responses={409: "before the collect stage"})
def get_shares(round_id: int) -> dict[str, Any]:
    shares = federated_service.my_shares(db_session(), current_user(), round_id, state().keyring)
    return {"shares": [{"sender_id": s, "share": _text(b)} for s, b in sorted(shares.items())]}


@bp.post("/rounds/<int:round_id>/consistency")
@bp.auth_required(auth, roles=["client"])
@bp.input(ConsistencyIn, arg_name="body")
@bp.output(AcceptedOut, status_code=202)
@bp.doc(summary="Stage unmask, first: sign the survivor and dropped sets (consistency check)",
        responses={400: "signature does not verify over these sets",
                   409: "wrong stage, not a survivor, or already signed",
                   422: "signature of the wrong size"})
def post_consistency(round_id: int, body: dict[str, Any]) -> dict[str, Any]:
    federated_service.post_consistency(db_session(), current_user(), round_id, state().keyring,
                                       signature=body["signature"])
    return {"accepted": 1}


@bp.get("/rounds/<int:round_id>/consistency")
@bp.auth_required(auth, roles=["client"])
@bp.output(ConsistencyOut)
@bp.doc(summary="The survivors' signatures over the survivor and dropped sets (stage unmask)",
        responses={409: "before the unmask stage"})
def get_consistency(round_id: int) -> dict[str, Any]:
    signatures = federated_service.consistency_signatures(db_session(), current_user(), round_id,
                                                          state().keyring)
    return {"signatures": [{"client_id": c, "signature": _text(sig)}
                           for c, sig in sorted(signatures.items())]}


@bp.post("/rounds/<int:round_id>/unmask")
@bp.auth_required(auth, roles=["client"])
@bp.input(UnmaskIn, arg_name="body")
@bp.output(AcceptedOut, status_code=202)
@bp.doc(summary="Stage unmask: self-seed shares of the survivors, s-key shares of the dropped",
        responses={409: "wrong stage, not a survivor, or already answered",
                   422: "not exactly the survivors / the dropped, both kinds for one client, "
                   "or a share of the wrong size"})
def post_unmask(round_id: int, body: dict[str, Any]) -> dict[str, Any]:
    seeds = _by_client(body["self_seed_shares"], "client_id", "self_seed_shares")
    keys = _by_client(body["s_key_shares"], "client_id", "s_key_shares")
    federated_service.post_unmask(db_session(), current_user(), round_id, state().keyring,
                                  self_seed=seeds, s_key=keys)
    return {"accepted": len(seeds) + len(keys)}
