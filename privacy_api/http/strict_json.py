"""The app's JSON encoder: it refuses NaN and Infinity instead of writing them.

Python's json module writes ``NaN``/``Infinity`` by default, which is not JSON: a client would
fail to parse the body, or parse it into a value no mechanism released. Reaching this refusal
is a bug (see `services.non_finite`), and it answers as one: a clean 500 in the error shape.
"""

from __future__ import annotations

from typing import Any

from flask.json.provider import DefaultJSONProvider

# refuse_non_finite is re-exported for code written before it moved to services.non_finite.
from ..services.non_finite import NonFiniteNumber as NonFiniteNumber
from ..services.non_finite import refuse_non_finite as refuse_non_finite


class StrictJSONProvider(DefaultJSONProvider):
    def dumps(self, obj: Any, **kwargs: Any) -> str:
        kwargs["allow_nan"] = False
        try:
            return super().dumps(obj, **kwargs)
        except ValueError as exc:
            if "Out of range float values" in str(exc):
                raise NonFiniteNumber("refused to encode a non-finite number") from None
            raise
