"""Schemas shared by several blueprints."""

from __future__ import annotations

from apiflask import Schema
from apiflask.fields import Dict, String
from marshmallow import RAISE


class StrictSchema(Schema):
    """Unknown fields are an error: a typo must not silently change a privacy parameter."""

    class Meta:
        unknown = RAISE


class ErrorOut(Schema):
    code = String(required=True)
    message = String(required=True)
    details = Dict(required=True)
