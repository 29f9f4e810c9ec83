from __future__ import annotations

from typing import Any

from apiflask import APIBlueprint
from apiflask.fields import Boolean, DateTime, Dict, Float, Integer, List, Nested, String
from apiflask.validators import Length, OneOf, Range
from flask import request
from marshmallow import RAISE

from ..domain.units import delta_value, eps_value
from ..http.auth import auth, current_user
from ..http.memory import release_freed_memory
from ..http.session import db_session
from ..runtime.state import state
from ..services import datasets as datasets_service
from ..services import erasure, exploration
from ..services.dummy_data import DEFAULT_DUMMY_ROWS, DEFAULT_DUMMY_SEED, MAX_DUMMY_ROWS, MAX_DUMMY_SEED
from ..storage.dataset_schema import COLUMN_TYPES, MAX_CATEGORIES
from ..storage.models import Dataset, User
from .schemas_common import StrictSchema

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
    record_ids = List(List(Integer()), metadata={
        "description": "datasets without a privacy unit only: the stored records' ids as "
                       "inclusive [first, last] ranges (the handle for erasing one record)"})


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
    out: dict[str, Any] = {"inserted": result.inserted, "version": result.version}
    if result.record_ids is not None:
        out["record_ids"] = [list(r) for r in result.record_ids]
    return out


class DummyQuery(StrictSchema):
    rows = Integer(load_default=DEFAULT_DUMMY_ROWS, validate=Range(1, MAX_DUMMY_ROWS))
    seed = Integer(load_default=DEFAULT_DUMMY_SEED, validate=Range(0, MAX_DUMMY_SEED))


class DummyOut(StrictSchema):
    dataset_id = Integer()
    dummy = Boolean()
    seed = Integer()
    rows = Integer()
    columns = List(String(), metadata={"description": "the schema's column names, in order"})
    records = List(Dict(), metadata={"description": "synthetic rows, as an upload sends them"})


@bp.get("/datasets/<int:dataset_id>/dummy")
@bp.auth_required(auth)
@bp.input(DummyQuery, location="query", arg_name="q", unknown=RAISE)
@bp.output(DummyOut)
@bp.doc(summary="Synthetic rows from the public schema alone (free exploration data)",
        description="Deterministic in seed; reads no record. Numbers uniform within the "
                    "bounds, categories and booleans uniform, privacy units synthetic with at "
                    "most max_rows rows each. Anyone who may see the dataset may fetch them.")
def dummy(dataset_id: int, q: dict[str, Any]) -> dict[str, Any]:
    return exploration.fetch_dummy(db_session(), current_user(), dataset_id, rows=q["rows"],
                                   seed=q["seed"])


class ErasureOut(StrictSchema):
    deleted = Integer(metadata={"description": "records deleted (0: none matched; nothing "
                                               "changed)"})
    version = Integer(metadata={"description": "the dataset's version afterwards (a new one "
                                               "when records were deleted)"})
    wal_checkpointed = Boolean(allow_none=True, metadata={
        "description": "SQLite: the WAL was checkpointed and truncated, so the deleted tokens "
                       "are gone from the database files; null on PostgreSQL (see "
                       "docs/operations.md: VACUUM)"})


def _erasure_out(result: erasure.ErasureResult, dataset_id: int) -> dict[str, Any]:
    if result.deleted:  # the decrypted rows of the erased records leave this process's memory
        state().cache.invalidate(dataset_id)
    return {"deleted": result.deleted, "version": result.version,
            "wal_checkpointed": result.wal_checkpointed}


@bp.delete("/datasets/<int:dataset_id>/units/<path:unit>")
@bp.auth_required(auth, roles=["owner", "admin"])
@bp.doc(summary="Erase a data subject: every record of one privacy-unit value",
        description="Deletes every record whose privacy-unit column holds the value (URL-"
                    "encoded; as uploaded), makes a new dataset version, and is audited. "
                    "Released answers stay released. No matching record: 200, deleted 0.",
        responses={404: "no such dataset", 422: "the dataset has no privacy unit"})
@bp.output(ErasureOut)
def erase_unit(dataset_id: int, unit: str) -> dict[str, Any]:
    s = state()
    result = erasure.erase_unit(s.db, s.keyring, current_user(), dataset_id, unit)
    return _erasure_out(result, dataset_id)


@bp.delete("/datasets/<int:dataset_id>/records/<int:record_id>")
@bp.auth_required(auth, roles=["owner", "admin"])
@bp.doc(summary="Erase one record by id",
        description="The ids are in the upload answer's record_ids (datasets without a "
                    "privacy unit). No such record: 200, deleted 0.",
        responses={404: "no such dataset"})
@bp.output(ErasureOut)
def erase_record(dataset_id: int, record_id: int) -> dict[str, Any]:
    result = erasure.erase_record(state().db, current_user(), dataset_id, record_id)
    return _erasure_out(result, dataset_id)


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


