from __future__ import annotations

from typing import Any

from apiflask import APIBlueprint
from apiflask.fields import Boolean, DateTime, Float, Integer, List, Nested, String
from apiflask.validators import Length, OneOf, Range
from flask import request

from ..auth import auth, current_user
from ..dataset_schema import COLUMN_TYPES, MAX_CATEGORIES
from ..memory import release_freed_memory
from ..models import Dataset, User
from ..services import datasets as datasets_service
from ..state import state
from ..units import delta_value, eps_value
from .schemas_common import StrictSchema
from .session import db_session

bp = APIBlueprint("datasets", __name__, url_prefix="/v1", tag="Datasets")


class ColumnIn(StrictSchema):
    name = String(required=True, validate=Length(1, 64))
    type = String(required=True, validate=OneOf(COLUMN_TYPES))
    lower = Float(allow_none=True, allow_nan=False)
    upper = Float(allow_none=True, allow_nan=False)
    categories = List(String(validate=Length(1, 200)), allow_none=True, validate=Length(max=MAX_CATEGORIES))


class PrivacyUnitIn(StrictSchema):
    column = String(required=True)
    max_rows = Integer(load_default=1, validate=Range(1, 1000), strict=True)


class DatasetIn(StrictSchema):
    name = String(required=True, validate=Length(1, 200))
    columns = List(Nested(ColumnIn), required=True, validate=Length(1, 200))
    privacy_unit = Nested(PrivacyUnitIn, allow_none=True, load_default=None)
    epsilon_cap = Float(allow_none=True, load_default=None, allow_nan=False,
                        validate=Range(min=0, min_inclusive=False, max=1e6))
    delta_cap = Float(allow_none=True, load_default=None, allow_nan=False,
                      validate=Range(min=0, max=1, max_inclusive=False))


class ColumnOut(StrictSchema):
    name = String()
    type = String()
    lower = Float()
    upper = Float()
    categories = List(String())


class PrivacyUnitOut(StrictSchema):
    column = String()
    max_rows = Integer()


class DatasetOut(StrictSchema):
    id = Integer()
    name = String()
    owner_id = Integer()
    columns = List(Nested(ColumnOut))
    privacy_unit = Nested(PrivacyUnitOut, allow_none=True)
    epsilon_cap = Float(allow_none=True)
    delta_cap = Float(allow_none=True)
    created_at = DateTime()
    rows = Integer(metadata={"description": "owner and admin only"})
    version = Integer(metadata={"description": "owner and admin only"})
    epsilon_spent = Float(metadata={"description": "owner and admin only"})
    delta_spent = Float(metadata={"description": "owner and admin only"})
    deleted = Boolean()


class UploadOut(StrictSchema):
    inserted = Integer()
    version = Integer()


def dump_dataset(dataset: Dataset, user: User) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": dataset.id,
        "name": dataset.name,
        "owner_id": dataset.owner_id,
        "columns": dataset.columns,
        "privacy_unit": (
            {"column": dataset.privacy_unit_column, "max_rows": dataset.privacy_unit_max_rows}
            if dataset.privacy_unit_column else None
        ),
        "epsilon_cap": float(eps_value(dataset.epsilon_cap)) if dataset.epsilon_cap else None,
        "delta_cap": float(delta_value(dataset.delta_cap)) if dataset.delta_cap else None,
        "created_at": dataset.created_at,
    }
    if user.role == "admin" or dataset.owner_id == user.id:
        out.update(rows=dataset.rows, version=dataset.version,
                   epsilon_spent=float(eps_value(dataset.epsilon_spent)),
                   delta_spent=float(delta_value(dataset.delta_spent)))
    return out


@bp.post("/datasets")
@bp.auth_required(auth, roles=["owner", "admin"])
@bp.input(DatasetIn, arg_name="body")
@bp.output(DatasetOut, status_code=201)
def create_dataset(body: dict[str, Any]) -> dict[str, Any]:
    user = current_user()
    dataset = datasets_service.create_dataset(
        db_session(), state().keyring, user,
        name=body["name"], columns=body["columns"], privacy_unit=body["privacy_unit"],
        epsilon_cap=body["epsilon_cap"], delta_cap=body["delta_cap"],
    )
    return dump_dataset(dataset, user)


@bp.get("/datasets")
@bp.auth_required(auth)
@bp.output(DatasetOut(many=True))
def list_datasets() -> list[dict[str, Any]]:
    user = current_user()
    return [dump_dataset(d, user) for d in datasets_service.visible_datasets(db_session(), user)]


@bp.get("/datasets/<int:dataset_id>")
@bp.auth_required(auth)
@bp.output(DatasetOut)
def get_dataset(dataset_id: int) -> dict[str, Any]:
    user = current_user()
    return dump_dataset(datasets_service.get_visible_dataset(db_session(), user, dataset_id), user)


_UPLOAD_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"type": "array", "items": {"type": "object"}}},
            "application/x-ndjson": {"schema": {"type": "string"}},
            "text/csv": {"schema": {"type": "string"}},
        },
    }
}


@bp.post("/datasets/<int:dataset_id>/records")
@bp.auth_required(auth, roles=["owner", "admin"])
@bp.doc(
    summary="Upload records (all or nothing)",
    description="JSON array of objects, NDJSON or CSV with a header row. 422 lists bad rows.",
    responses={201: "records stored", 409: "the data key was rotated meanwhile; nothing written",
               413: "body too large", 415: "unsupported content type",
               422: "invalid rows; nothing written"},
)
@bp.output(UploadOut, status_code=201)
def upload_records(dataset_id: int) -> dict[str, Any]:
    s = state()
    try:
        result = datasets_service.upload_records(
            db_session(), s.keyring, current_user(), dataset_id,
            request.content_type or "", request.stream, encrypt_chunk=s.cache.encrypt_chunk,
        )
    finally:
        # the parse's chunks are freed by now, but glibc would keep their pages resident
        release_freed_memory()
    return {"inserted": result.inserted, "version": result.version}


@bp.delete("/datasets/<int:dataset_id>")
@bp.auth_required(auth, roles=["owner", "admin"])
@bp.output({}, status_code=204)
def delete_dataset(dataset_id: int) -> str:
    session = db_session()
    datasets_service.delete_dataset(session, current_user(), dataset_id)
    # committed first: a worker loading the dataset until now finds it deleted afterwards
    # and removes its copy itself (columns.ColumnCache._after_write)
    session.commit()
    state().cache.invalidate(dataset_id)
    state().keyring.forget()
    return ""


