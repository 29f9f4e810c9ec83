"""The one place JSON request bodies are parsed: webargs' ``json`` location, strict about keys.

Python's ``json`` (like orjson) keeps the last of duplicate keys, so ``{"epsilon": 0.01,
"epsilon": 5}`` would be read as ε 5 while a proxy, a log or a reviewer reading the first key
sees 0.01. A body naming a key twice, at any depth, is refused with 422 naming the key.

APIFlask's ``@input`` loads bodies through one webargs parser; registering our loader for its
``json`` location covers every JSON body the API validates. Record uploads are parsed by
``services/uploads.py`` (streamed), not here.
"""

from __future__ import annotations

import json
from typing import Any

from apiflask.schema_adapters.marshmallow import parser
from flask import Request
from marshmallow import Schema
from webargs import core
from webargs.flaskparser import is_json_request

from ..domain.errors import InvalidRequest


class DuplicateKey(InvalidRequest):
    """A JSON object in the body names the same key twice."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise DuplicateKey(f"the JSON body names the key {key!r} more than once",
                                   {"duplicate_key": key})
            seen.add(key)
    return out


def loads_unique(data: bytes | str) -> Any:
    """``json.loads`` that refuses duplicate keys (raises DuplicateKey)."""
    return json.loads(data, object_pairs_hook=_unique_keys)


def _load_json(req: Request, schema: Schema) -> Any:
    if not is_json_request(req):
        return core.missing
    data = req.get_data(cache=True)
    try:
        return loads_unique(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        # Malformed (or empty) body: let webargs answer exactly as it always has (400, or
        # `missing` for an empty body). DuplicateKey is not a ValueError, so it propagates.
        return parser.load_json(req, schema)


_installed = False


def init_json_bodies() -> None:
    """Make every ``@input`` JSON body go through :func:`loads_unique` (idempotent)."""
    global _installed
    if not _installed:
        parser.location_loader("json")(_load_json)
        _installed = True
