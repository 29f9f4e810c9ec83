"""The refusal of NaN and Infinity in answers: no mechanism releases a non-finite number.

No answer path produces one (bounds and calibrations are checked before the charge, values
saturate), so meeting one is a bug, and it answers as one: a clean 500 in the error shape.
The HTTP edge's encoder (`privacy_api.http.strict_json`) raises the same error.
"""

from __future__ import annotations

import math
from typing import Any


class NonFiniteNumber(RuntimeError):
    """A response or stored answer held NaN or Infinity."""


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
