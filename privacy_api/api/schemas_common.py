"""Schemas shared by several blueprints."""

from __future__ import annotations

import datetime as dt
from typing import Any

from apiflask import Schema
from apiflask.fields import DateTime, Dict, Integer, List, String
from apiflask.validators import Length, Range
from marshmallow import RAISE, ValidationError, pre_load

# Row ids are 32-bit INTEGER columns; a larger id can name nothing, and would overflow the driver.
ID_RANGE = Range(-(2**31), 2**31 - 1)


def _iso_utc(value: dt.datetime) -> str:
    # SQLite hands timestamps back naive (they are stored in UTC); RFC 3339 needs an offset.
    return (value if value.tzinfo else value.replace(tzinfo=dt.UTC)).isoformat()


class StrictSchema(Schema):
    """Unknown fields are an error: a typo must not silently change a privacy parameter."""

    class Meta:
        unknown = RAISE

    def on_bind_field(self, field_name: str, field_obj: Any) -> None:
        if isinstance(field_obj, DateTime):
            field_obj.SERIALIZATION_FUNCS = {**field_obj.SERIALIZATION_FUNCS, "iso": _iso_utc}
        if (isinstance(field_obj, Integer) and (field_name == "id" or field_name.endswith("_id"))
                and not any(isinstance(v, Range) for v in field_obj.validators)):
            field_obj.validators = [*field_obj.validators, ID_RANGE]

    @pre_load
    def _refuse_overlong_lists(self, data: Any, **_: Any) -> Any:
        # marshmallow checks Length only after loading every element: refuse a list that is
        # too long up front, so a million-element list costs a len(), not a million errors.
        if not isinstance(data, dict):
            return data
        errors: dict[str, list[str]] = {}
        for name, field in self.load_fields.items():
            value = data.get(field.data_key or name)
            caps = [v.max for v in field.validators if isinstance(v, Length) and v.max is not None]
            if isinstance(field, List) and isinstance(value, list) and caps and len(value) > min(caps):
                errors[field.data_key or name] = [f"Longer than maximum length {min(caps)}."]
        if errors:
            raise ValidationError(errors)
        return data


class ErrorOut(Schema):
    code = String(required=True)
    message = String(required=True)
    details = Dict(required=True)
