"""The app's JSON encoder: it refuses NaN and Infinity instead of writing them.

Python's json module writes ``NaN``/``Infinity`` by default, which is not JSON: a client would
fail to parse the body, or parse it into a value no mechanism released. No answer path produces
a non-finite number (bounds and calibrations are checked before the charge, values saturate),
so reaching this refusal is a bug, and it answers as one: a clean 500 in the error shape.
"""

from __future__ import annotations

import math
from typing import Any

from flask.json.provider import DefaultJSONProvider


class NonFiniteNumber(RuntimeError):
    """A response or stored answer held NaN or Infinity."""


class StrictJSONProvider(DefaultJSONProvider):
    def dumps(self, obj: Any, **kwargs: Any) -> str:
        kwargs["allow_nan"] = False
        try:
            return super().dumps(obj, **kwargs)
        except ValueError as exc:
            if "Out of range float values" in str(exc):
                raise NonFiniteNumber("refused to encode a non-finite number") from None
            raise


def refuse_non_finite(value: Any) -> None:
    """Raise NonFiniteNumber if ``value`` (nested dicts/lists of JSON values) holds NaN or ±inf.

    For bodies encoded with orjson, which writes NaN as null without complaint."""
    if isinstance(value, float):
        if not math.isfinite(value):
            raise NonFiniteNumber("refused to store a non-finite number")
    elif isinstance(value, dict):
        for item in value.values():
            refuse_non_finite(item)
    elif isinstance(value, list | tuple):
        for item in value:
            refuse_non_finite(item)
