"""Make /openapi.json say exactly what the handlers accept and how they fail.

apispec loses facts our schemas state, so a client (or a fuzzer) built from the document
sends requests the handlers then refuse:

- ``Range(min_inclusive=False)`` becomes an inclusive ``minimum`` (we add ``exclusiveMinimum``);
- Decimal bounds and defaults are rendered as strings (we render numbers);
- a required ``Raw`` field that refuses null becomes ``{}``, which allows null;
- a nullable ``Nested`` field admits any object in its null branch (we admit only null);
- a JSON body whose schema has required fields is not marked required.

It documents the error responses every operation can give under the contract (API.md):
400 malformed body, 403 role or rights, 413 body too large, 429 rate limited, all in the one
error shape ``{code, message, details}``. And ``<int:...>`` path segments accept only the
32-bit id range, so a huge id is a 404 instead of a database overflow (500).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from apiflask import APIFlask
from apispec import APISpec, BasePlugin
from apispec.ext.marshmallow import MarshmallowPlugin
from marshmallow import fields
from marshmallow.validate import Range
from werkzeug.routing import IntegerConverter

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["code", "message", "details"],
    "properties": {
        "code": {"type": "string", "description": "snake_case error code"},
        "message": {"type": "string"},
        "details": {"type": "object"},
    },
}
_ERROR_REF = {"$ref": "#/components/schemas/HTTPError"}
_BODY_METHODS = frozenset({"post", "put", "patch"})
_NOT_NULL = [{"type": "string"}, {"type": "number"}, {"type": "boolean"},
             {"type": "array", "items": {}}, {"type": "object"}]


def _field_attributes(self: Any, field: fields.Field[Any], ret: dict[str, Any], **_: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for validator in field.validators:
        if isinstance(validator, Range):
            if validator.min is not None and not validator.min_inclusive:
                out["exclusiveMinimum"] = True
            if validator.max is not None and not validator.max_inclusive:
                out["exclusiveMaximum"] = True
    if isinstance(field, fields.Decimal):
        for key in ("minimum", "maximum", "default"):
            if isinstance(ret.get(key), str | Decimal):
                out[key] = float(ret[key])
    if type(field) is fields.Raw and not field.allow_none and "type" not in ret:
        out["anyOf"] = _NOT_NULL
    if isinstance(field, fields.Nested) and field.allow_none and "anyOf" in ret:
        # apispec's null branch is "any object"; make it "null only".
        out["anyOf"] = [ret["anyOf"][0], {"type": "object", "nullable": True, "enum": [None]}]
    return out


class ContractPlugin(BasePlugin):
    """apispec plugin: the field fixes above, and the contract's error responses."""

    def init_spec(self, spec: APISpec) -> None:
        self.spec = spec
        for plugin in spec.plugins:
            if isinstance(plugin, MarshmallowPlugin) and plugin.converter is not None:
                plugin.converter.add_attribute_function(_field_attributes)  # type: ignore[no-untyped-call]

    def operation_helper(self, path: str | None = None, operations: dict[str, Any] | None = None,
                         **kwargs: Any) -> None:
        for method, operation in (operations or {}).items():
            self._require_body_with_required_fields(operation)
            responses = operation.setdefault("responses", {})
            extra: dict[str, str] = {}
            if method in _BODY_METHODS:
                extra["400"] = "Malformed request body"
                extra["413"] = "Request body larger than the service accepts"
            if operation.get("security"):
                extra["403"] = "The API key's role, or the caller's rights on the object, do not allow this"
            extra["429"] = "Rate limit exceeded; retry after the Retry-After header's seconds"
            for status, description in extra.items():
                responses.setdefault(status, {
                    "description": description,
                    "content": {"application/json": {"schema": dict(_ERROR_REF)}},
                })

    def _require_body_with_required_fields(self, operation: dict[str, Any]) -> None:
        # A missing JSON body is validated as {}: if the schema has required fields, the
        # body is required, and the document should say so.
        body = operation.get("requestBody")
        if not body or "required" in body:
            return
        schema = body.get("content", {}).get("application/json", {}).get("schema", {})
        ref = schema.get("$ref", "") if isinstance(schema, dict) else ""
        component = self.spec.components.schemas.get(ref.rsplit("/", 1)[-1], {}) if ref else schema
        if isinstance(component, dict) and component.get("required"):
            body["required"] = True


def _at_most(limit: int) -> str:
    """A regex for the decimal numbers 0..limit (so larger ones do not match the route)."""
    digits = str(limit)
    n = len(digits)
    alternatives = [rf"\d{{1,{n - 1}}}"] if n > 1 else []
    for i, char in enumerate(digits):
        if char != "0":
            rest = rf"\d{{{n - i - 1}}}" if n - i - 1 else ""
            alternatives.append(f"{digits[:i]}[0-{int(char) - 1}]{rest}")
    alternatives.append(digits)
    return "(?:" + "|".join(alternatives) + ")"


class BoundedIntConverter(IntegerConverter):
    """``<int:...>`` segments beyond the 32-bit id range match no route: 404 for any method.

    (A ``max=`` check in ``to_python`` would make Werkzeug answer 405 for some methods.)
    """

    regex = _at_most(2**31 - 1)


def init_openapi(app: APIFlask) -> None:
    """Call before any route is registered (the int converter applies to rules added later)."""
    app.url_map.converters["int"] = BoundedIntConverter
    app.config["HTTP_ERROR_SCHEMA"] = ERROR_SCHEMA
    app.config["VALIDATION_ERROR_SCHEMA"] = ERROR_SCHEMA
    app.spec_plugins.append(ContractPlugin())
