"""Federated learning: federations, enrolment, rounds, encrypted updates and aggregates."""

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

from ..auth import auth, current_user
from ..crypto.he import update_size_bound
from ..services import federated as federated_service
from ..services.federated import FederationState, RoundState, as_utc
from ..state import state
from ..units import delta_value, eps_value
from .schemas_common import StrictSchema
from .session import db_session

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


class FederationIn(StrictSchema):
    name = String(required=True, validate=Length(1, 200))
    public_context = Base64Bytes(required=True, metadata={
        "type": "string", "format": "byte",
        "description": "base64 of the public TenSEAL context (no secret, relin or Galois keys)"})
    vector_length = Integer(required=True, strict=True, validate=Range(1, 50_000_000))
    min_clients = Integer(required=True, strict=True, validate=Range(2, 100_000))
    dp = Nested(DpIn, allow_none=True, load_default=None)
    epsilon_cap = DecimalField(load_default=None, allow_none=True, allow_nan=False, places=None,
                               metadata={"description": "dp only: total epsilon over all rounds"})
    delta = DecimalField(load_default=None, allow_none=True, allow_nan=False, places=None,
                         metadata={"description": "dp only: 0 < delta < 1e-3"})


class DpOut(StrictSchema):
    clip_norm = Float()
    noise_multiplier = Float()


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


class ReceiptOut(StrictSchema):
    receipt = String()


def dump_federation(view: FederationState) -> dict[str, Any]:
    federation = view.federation
    dp = None
    if federation.dp_noise_multiplier is not None:
        dp = {"clip_norm": federation.dp_clip_norm,
              "noise_multiplier": federation.dp_noise_multiplier}
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
        db_session(), current_user(), federation_id, deadline_seconds=body["deadline_seconds"]))


@bp.get("/rounds/<int:round_id>")
@bp.auth_required(auth, roles=["owner", "admin", "client"])
@bp.output(RoundOut)
def get_round(round_id: int) -> dict[str, Any]:
    return dump_round(federated_service.get_round(db_session(), current_user(), round_id))


@bp.post("/rounds/<int:round_id>/updates")
@bp.auth_required(auth, roles=["client"])
@bp.output(ReceiptOut, status_code=202)
@bp.doc(
    summary="Submit one encrypted update",
    description="Body: the SDK's serialized encrypted update (`application/octet-stream`). "
    "One update per client per round; the receipt is the SHA-256 of the bytes received.",
    responses={
        202: "accepted into the round's encrypted sum",
        400: "malformed, wrong length or wrong parameters",
        403: "not enrolled in the round's federation",
        409: "round not open, past its deadline, or a second update",
        413: "larger than any valid update for this federation",
        415: "not application/octet-stream",
    },
)
def submit_update(round_id: int) -> dict[str, Any]:
    receipt = federated_service.submit_update(
        state().db, current_user(), round_id, content_type=request.content_type or "",
        stream=request.stream, content_length=request.content_length)
    return {"receipt": receipt}


@bp.post("/rounds/<int:round_id>/close")
@bp.auth_required(auth, roles=["owner"])
@bp.output(RoundOut)
def close_round(round_id: int) -> dict[str, Any]:
    return dump_round(federated_service.close_round(db_session(), current_user(), round_id))


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
    data = federated_service.round_aggregate(db_session(), current_user(), round_id)
    return Response(data, mimetype="application/octet-stream")
