"""GET /v1/ledger/export: the ledger's hash chains as NDJSON, for an auditor (admins only)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import orjson
from apiflask import APIBlueprint
from apiflask.fields import AwareDateTime, String
from apiflask.validators import Regexp
from flask import Response
from marshmallow import RAISE

from ..http.auth import auth
from ..runtime.state import state
from ..services.ledger_audit import export_lines
from .schemas_common import StrictSchema

bp = APIBlueprint("ledger", __name__, url_prefix="/v1", tag="Ledger")


class ExportQuery(StrictSchema):
    budget = String(load_default=None, validate=Regexp(r"^(budget/\d{1,12}/\d{1,12}|federation/\d{1,12})$"),
                    metadata={"description": "one chain: budget/{user_id}/{dataset_id} or "
                                             "federation/{federation_id}"})
    since = AwareDateTime(load_default=None, default_timezone=dt.UTC,
                          metadata={"description": "only entries created at or after this time "
                                                   "(ISO 8601); links and heads still verify"})


_EXPORT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "NDJSON, one object a line: a header `{\"type\": \"export\"}`, one "
                         "`{\"type\": \"head\"}` per budget (its chain's length, head hash and "
                         "spent), then every entry `{\"type\": \"entry\", ..., \"prev_hash\", "
                         "\"hash\"}` in chain order. `privacy-api verify-ledger --export FILE` "
                         "checks it with no database and no server secret.",
          "content": {"application/x-ndjson": {"schema": {"type": "string"}}}},
    403: {"description": "not an admin"},
}


@bp.get("/ledger/export")
@bp.auth_required(auth, roles=["admin"])
@bp.input(ExportQuery, location="query", arg_name="q", unknown=RAISE)
@bp.doc(summary="Export the ledger's hash chains (NDJSON)", responses=_EXPORT_RESPONSES)
def export_ledger(q: dict[str, Any]) -> Response:
    db = state().db

    def lines() -> Iterator[bytes]:
        # a generator: entries are read and written a batch at a time, in constant memory
        for line in export_lines(db, chain=q["budget"], since=q["since"]):
            yield orjson.dumps(line) + b"\n"

    return Response(lines(), mimetype="application/x-ndjson")
