"""A dataset's public schema and the codec between JSON/CSV rows and record plaintext.

The schema (types, bounds, category domains) is public: the DP layer relies on it, never on
the data, for sensitivities and group keys. A record's plaintext is a compact JSON list in
column order with categories stored as their index in the public domain.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard

import orjson

from mechanisms import MechanismError
from mechanisms.moments import check_release_bounds

from ..domain.names import fold, name_problem, normal_name
from ..domain.unit_ids import unit_hash as unit_hash  # re-exported
from ..domain.unit_ids import unit_hashes as unit_hashes  # re-exported

COLUMN_TYPES = ("float", "int", "category", "bool", "id")
NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
MAX_COLUMNS = 200
MAX_CATEGORIES = 10_000


class SchemaError(ValueError):
    def __init__(self, errors: dict[str, list[str]]) -> None:
        super().__init__("invalid dataset schema")
        self.errors = errors


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    lower: float | None = None
    upper: float | None = None
    categories: tuple[str, ...] = ()

    @property
    def numeric(self) -> bool:
        return self.type in ("float", "int")

    @property
    def groupable(self) -> bool:
        return self.type in ("category", "bool")

    def domain(self) -> list[Any]:
        """Public group keys of a category/bool column."""
        if self.type == "bool":
            return [False, True]
        return list(self.categories)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "type": self.type}
        if self.numeric:
            out["lower"], out["upper"] = self.lower, self.upper
        if self.type == "category":
            out["categories"] = list(self.categories)
        return out


@dataclass(frozen=True)
class DatasetSchema:
    columns: tuple[Column, ...]
    privacy_unit_column: str | None = None
    privacy_unit_max_rows: int = 1

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)

    def has(self, name: str) -> bool:
        return any(c.name == name for c in self.columns)

    @classmethod
    def from_model(cls, columns: Sequence[Mapping[str, Any]], unit: str | None,
                   max_rows: int) -> DatasetSchema:
        return cls(tuple(_column_from_dict(c) for c in columns), unit, max_rows)


def _column_from_dict(c: Mapping[str, Any]) -> Column:
    return Column(
        name=c["name"], type=c["type"], lower=c.get("lower"), upper=c.get("upper"),
        categories=tuple(c.get("categories") or ()),
    )


def _finite_number(v: Any) -> TypeGuard[int | float]:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def parse_schema(columns: Sequence[Mapping[str, Any]], privacy_unit: Mapping[str, Any] | None
                 ) -> DatasetSchema:
    """Validate a schema from the API, gathering every problem into one SchemaError."""
    errors: dict[str, list[str]] = {}

    def err(where: str, msg: str) -> None:
        errors.setdefault(where, []).append(msg)

    if not columns:
        err("columns", "at least one column is required")
    if len(columns) > MAX_COLUMNS:
        err("columns", f"at most {MAX_COLUMNS} columns")
    parsed: list[Column] = []
    seen: set[str] = set()
    seen_folded: set[str] = set()
    for i, c in enumerate(columns):
        where = f"columns.{i}"
        name, typ = c.get("name"), c.get("type")
        # fullmatch: with match(), "$" also matches before a trailing newline ("age\n").
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            err(where, "name must match [A-Za-z_][A-Za-z0-9_]{0,63}")
            continue
        if name in seen:
            err(where, f"duplicate column {name!r}")
        elif name.casefold() in seen_folded:
            # "Age" next to "age": one header or SQL identifier would read as the other.
            err(where, f"column {name!r} differs from another column only in letter case")
        seen.add(name)
        seen_folded.add(name.casefold())
        if typ not in COLUMN_TYPES:
            err(where, f"type must be one of {', '.join(COLUMN_TYPES)}")
            continue
        lower, upper, cats = c.get("lower"), c.get("upper"), c.get("categories")
        if typ in ("float", "int"):
            if not (_finite_number(lower) and _finite_number(upper)):
                err(where, "numeric columns need finite public bounds lower and upper")
                continue
            if not lower < upper:
                err(where, "lower must be below upper")
                continue
            if typ == "int" and not (float(lower).is_integer() and float(upper).is_integer()):
                err(where, "int bounds must be integers")
                continue
            try:  # refused now, or every sum/mean/variance on them would fail after its charge
                check_release_bounds(float(lower), float(upper))
            except MechanismError as exc:
                err(where, str(exc))
                continue
            parsed.append(Column(name, typ, float(lower), float(upper)))
        elif typ == "category":
            if (not isinstance(cats, list) or not cats
                    or not all(isinstance(x, str) and x for x in cats)):
                err(where, "category columns need a non-empty list of non-empty strings")
                continue
            if len(set(cats)) != len(cats):
                err(where, "categories must be unique")
                continue
            problem = _category_problem(cats)
            if problem:
                err(where, problem)
                continue
            if len(cats) > MAX_CATEGORIES:
                err(where, f"at most {MAX_CATEGORIES} categories")
                continue
            parsed.append(Column(name, typ, categories=tuple(cats)))
        else:
            parsed.append(Column(name, typ))
        if typ not in ("float", "int") and (lower is not None or upper is not None):
            err(where, "bounds apply only to float and int columns")
        if typ != "category" and cats is not None:
            err(where, "categories apply only to category columns")
    unit_col: str | None = None
    max_rows = 1
    if privacy_unit is not None:
        unit_col = privacy_unit.get("column")
        max_rows = privacy_unit.get("max_rows", 1)
        if not isinstance(unit_col, str) or unit_col not in seen:
            err("privacy_unit.column", "must name a column of the schema")
        if not isinstance(max_rows, int) or isinstance(max_rows, bool) or not 1 <= max_rows <= 1000:
            err("privacy_unit.max_rows", "must be an integer from 1 to 1000")
    if errors:
        raise SchemaError(errors)
    return DatasetSchema(tuple(parsed), unit_col, max_rows)


# ---------------------------------------------------------------------------------------------
# Row codec

Converter = Callable[[Any], Any]


class RowError(ValueError):
    pass


def _float(v: Any) -> float:
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            raise RowError("not a number") from None
    if not _finite_number(v):
        raise RowError("must be a finite number")
    return float(v)


def _int(v: Any) -> int:
    if isinstance(v, str):
        try:
            v = int(v)
        except ValueError:
            raise RowError("not an integer") from None
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if not isinstance(v, int) or isinstance(v, bool):
        raise RowError("must be an integer")
    if abs(v) > 2**53:
        raise RowError("integer out of range")
    return v


_TRUE = {"true", "1", "yes", "t"}
_FALSE = {"false", "0", "no", "f"}


def _bool(v: Any) -> int:
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, str):
        s = v.strip().lower()
        if s in _TRUE:
            return 1
        if s in _FALSE:
            return 0
    raise RowError("must be a boolean")


def _id(v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, str | int) or v == "":
        raise RowError("must be a non-empty string or integer")
    s = str(v)
    if len(s) > 200:
        raise RowError("identifier longer than 200 characters")
    return s


def _category_problem(cats: list[str]) -> str | None:
    """Category values are matched exactly against uploaded values, so they are not silently
    normalised: a value must already be NFC, and must not look like another one."""
    folded: dict[str, str] = {}
    for value in cats:
        problem = name_problem(value)
        if problem:
            return f"category {value!r} {problem}"
        if normal_name(value) != value:
            return f"category {value!r} must be in Unicode NFC form"
        key = fold(value)
        if key in folded:
            return f"categories {folded[key]!r} and {value!r} differ only in case or compatibility form"
        folded[key] = value
    return None


def _category(domain: tuple[str, ...]) -> Converter:
    index = {c: i for i, c in enumerate(domain)}

    def convert(v: Any) -> int:
        try:
            return index[v]
        except (KeyError, TypeError):
            raise RowError("not in the column's public categories") from None

    return convert


def converters(schema: DatasetSchema) -> list[Converter]:
    out: list[Converter] = []
    for c in schema.columns:
        if c.type == "float":
            out.append(_float)
        elif c.type == "int":
            out.append(_int)
        elif c.type == "bool":
            out.append(_bool)
        elif c.type == "id":
            out.append(_id)
        else:
            out.append(_category(c.categories))
    return out


_MAX_EXACT_INT = 2**53


class _Fallback(Exception):
    """A column chunk the fast path does not handle; the row-by-row path decides."""


def _plaintext(values: Sequence[Any]) -> bytes:
    """A record's plaintext: its values as a JSON array.

    Copied to an exact-size bytes object: orjson returns small outputs inside a ~4 KiB
    allocation, so a chunk of 8,192 plaintexts held ~32 MiB instead of ~0.5 MiB (measured with
    tracemalloc; it set an upload's peak memory, issue 12).
    """
    return bytes(memoryview(orjson.dumps(values)))


def _fast_column(col: Column, convert: Converter) -> Callable[[list[Any]], list[Any]]:
    """Convert a whole column of a chunk at once, exactly as `convert` would value by value.

    The common cases use C builtins over the column (map(int), map(float), one dict lookup per
    distinct value); anything else converts value by value. Raises (RowError or any other
    exception) when some value is invalid: the caller then encodes row by row to say which.
    """
    if col.type == "float":
        def floats(values: list[Any]) -> list[Any]:
            kinds = set(map(type, values))
            if kinds == {float}:
                out = values
            elif kinds <= {str, int, float}:
                out = list(map(float, values))
            else:
                return list(map(convert, values))
            # a sum of finite floats is finite unless it overflows (then: the slow path)
            if not math.isfinite(sum(out)):
                raise _Fallback
            return out
        return floats
    if col.type == "int":
        def ints(values: list[Any]) -> list[Any]:
            kinds = set(map(type, values))
            if kinds == {int}:
                out = values
            elif kinds == {str}:
                out = list(map(int, values))
            else:
                return list(map(convert, values))
            if out and (max(out) > _MAX_EXACT_INT or min(out) < -_MAX_EXACT_INT):
                raise _Fallback
            return out
        return ints
    if col.type == "id":
        def ids(values: list[Any]) -> list[Any]:
            if set(map(type, values)) != {str}:
                return list(map(convert, values))
            lengths = list(map(len, values))
            if min(lengths) == 0 or max(lengths) > 200:
                raise _Fallback
            return values
        return ids
    if col.type == "category":
        index = {c: i for i, c in enumerate(col.categories)}
        return lambda values: list(map(index.__getitem__, values))

    def bools(values: list[Any]) -> list[Any]:
        kinds = set(map(type, values))
        if kinds == {bool}:
            return list(map(int, values))
        if kinds == {str}:  # one call per distinct string ("true", "0", ...)
            table = {v: convert(v) for v in set(values)}
            return list(map(table.__getitem__, values))
        return list(map(convert, values))
    return bools


class RowEncoder:
    """Validates rows (mappings or CSV value lists) and encodes them as plaintext bytes."""

    def __init__(self, schema: DatasetSchema) -> None:
        self.schema = schema
        self.names = schema.names
        self.name_set = set(self.names)
        self.convert = converters(schema)
        self._fast = [_fast_column(c, f) for c, f in zip(schema.columns, self.convert, strict=True)]

    def encode_mappings(self, rows: Sequence[Any]) -> list[bytes] | None:
        """Plaintexts of a chunk of rows if every row is valid, else None (then encode row by
        row with `encode_mapping` to learn which rows are bad and why).

        Column by column: the same values and bytes as `encode_mapping`, several times faster.
        """
        names, name_set, width = self.names, self.name_set, len(self.names)
        for row in rows:
            if type(row) is not dict or len(row) != width or row.keys() != name_set:
                return None
        try:
            columns = [fast([row[name] for row in rows])
                       for name, fast in zip(names, self._fast, strict=True)]
        except Exception:  # noqa: BLE001 - any problem: the row-by-row path reports it
            return None
        return list(map(_plaintext, zip(*columns, strict=True)))

    def encode_value_rows(self, rows: Sequence[Sequence[Any]], order: Sequence[int]
                          ) -> list[bytes] | None:
        """Like `encode_mappings`, for CSV rows of the header's width (see `encode_values`)."""
        try:
            columns = [fast([row[pos] for row in rows])
                       for pos, fast in zip(order, self._fast, strict=True)]
        except Exception:  # noqa: BLE001 - any problem: the row-by-row path reports it
            return None
        return list(map(_plaintext, zip(*columns, strict=True)))

    def encode_mapping(self, row: Any) -> bytes:
        if not isinstance(row, dict):
            raise RowError("each record must be a JSON object")
        if len(row) != len(self.names) or row.keys() != self.name_set:
            missing = [n for n in self.names if n not in row]
            extra = [k for k in row if k not in self.name_set]
            parts = []
            if missing:
                parts.append(f"missing {', '.join(missing)}")
            if extra:
                parts.append(f"unknown {', '.join(map(str, extra[:5]))}")
            raise RowError("; ".join(parts) or "wrong columns")
        values = []
        for name, conv in zip(self.names, self.convert, strict=True):
            try:
                values.append(conv(row[name]))
            except RowError as exc:
                raise RowError(f"{name}: {exc}") from None
        return _plaintext(values)

    def encode_values(self, values: Sequence[Any], order: Sequence[int]) -> bytes:
        """Encode a CSV row whose i-th schema column sits at position order[i]."""
        out = []
        for name, conv, pos in zip(self.names, self.convert, order, strict=True):
            try:
                out.append(conv(values[pos]))
            except RowError as exc:
                raise RowError(f"{name}: {exc}") from None
        return _plaintext(out)


def decode_rows(plaintexts: Iterable[bytes]) -> list[list[Any]]:
    return orjson.loads(b"[" + b",".join(plaintexts) + b"]")  # type: ignore[no-any-return]
