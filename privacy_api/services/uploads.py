"""Parse an upload body (JSON array, NDJSON or CSV) into encoded record plaintexts.

Every row is validated against the public schema before anything is written; errors are
gathered (up to a limit) so one 422 lists the bad rows.
"""

from __future__ import annotations

import codecs
import csv
from collections.abc import Iterable, Iterator
from typing import IO, Any

import orjson

from ..dataset_schema import RowEncoder, RowError
from ..errors import BadRequest, InvalidRequest, UnsupportedMediaType

MAX_REPORTED_ERRORS = 100


class RowErrors:
    def __init__(self) -> None:
        self.errors: list[dict[str, Any]] = []
        self.count = 0

    def add(self, row: int, message: str) -> None:
        self.count += 1
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append({"row": row, "error": message})

    def raise_if_any(self) -> None:
        if self.count:
            raise InvalidRequest(
                f"{self.count} invalid row(s); nothing was written",
                {"rows": self.errors, "invalid_rows": self.count},
            )


CHUNK_ROWS = 8192


def encode_upload(encoder: RowEncoder, content_type: str, stream: IO[bytes]) -> list[bytes]:
    """Every row's plaintext, or InvalidRequest listing the bad rows."""
    errors = RowErrors()
    out = [p for chunk in iter_encoded(encoder, content_type, stream, errors) for p in chunk]
    errors.raise_if_any()
    return out


def iter_encoded(encoder: RowEncoder, content_type: str, stream: IO[bytes], errors: RowErrors,
                 chunk_rows: int = CHUNK_ROWS) -> Iterator[list[bytes]]:
    """Yield the plaintexts of valid rows in chunks, so the caller can encrypt one chunk while
    the next is parsed; invalid rows are recorded in `errors` (the caller must check it before
    writing anything)."""
    mime = content_type.split(";")[0].strip().lower()
    if mime in ("application/json", ""):
        rows: Iterable[Any] = _json_array(stream.read())
        yield from _chunks(_encode_mappings(encoder, rows, errors), chunk_rows)
    elif mime in ("application/x-ndjson", "application/ndjson", "application/jsonl"):
        yield from _chunks(_encode_mappings(encoder, _ndjson(stream), errors), chunk_rows)
    elif mime in ("text/csv", "application/csv"):
        yield from _chunks(_encode_csv(encoder, stream, errors), chunk_rows)
    else:
        raise UnsupportedMediaType(
            "records must be application/json, application/x-ndjson or text/csv",
            {"content_type": mime},
        )


def _chunks(items: Iterable[bytes], size: int) -> Iterator[list[bytes]]:
    chunk: list[bytes] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _json_array(data: bytes) -> list[Any]:
    try:
        rows = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"malformed JSON: {exc}") from None
    if not isinstance(rows, list):
        raise InvalidRequest("body must be a JSON array of objects")
    return rows


def _ndjson(stream: IO[bytes]) -> Iterator[Any]:
    for lineno, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            yield orjson.loads(line)
        except orjson.JSONDecodeError:
            raise BadRequest(f"line {lineno} is not valid JSON", {"line": lineno}) from None


def _encode_mappings(encoder: RowEncoder, rows: Iterable[Any], errors: RowErrors) -> Iterator[bytes]:
    encode = encoder.encode_mapping
    for i, row in enumerate(rows):
        try:
            yield encode(row)
        except RowError as exc:
            errors.add(i, str(exc))


def _encode_csv(encoder: RowEncoder, stream: IO[bytes], errors: RowErrors) -> Iterator[bytes]:
    text = codecs.getreader("utf-8")(stream, errors="strict")
    reader = csv.reader(text)
    try:
        header = next(reader)
    except StopIteration:
        return
    except (UnicodeDecodeError, csv.Error) as exc:
        raise BadRequest(f"malformed CSV: {exc}") from None
    header = [h.strip() for h in header]
    missing = [n for n in encoder.names if n not in header]
    extra = [h for h in header if h not in encoder.name_set]
    if missing or extra or len(set(header)) != len(header):
        raise InvalidRequest(
            "CSV header must name each schema column exactly once",
            {"missing": missing, "unknown": extra},
        )
    order = [header.index(n) for n in encoder.names]
    width = len(header)
    encode = encoder.encode_values
    try:
        for i, values in enumerate(reader):
            if len(values) != width:
                if not values:
                    continue
                errors.add(i, f"expected {width} fields, got {len(values)}")
                continue
            try:
                yield encode(values, order)
            except RowError as exc:
                errors.add(i, str(exc))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise BadRequest(f"malformed CSV: {exc}") from None
