"""Parse an upload body (JSON array, NDJSON or CSV) into encoded record plaintexts.

Every row is validated against the public schema before anything is written; errors are
gathered (up to a limit) so one 422 lists the bad rows.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from itertools import islice
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
        rows = _json_array(_read_body(stream))
        chunks: Iterable[list[Any]] = (rows[i:i + chunk_rows] for i in range(0, len(rows), chunk_rows))
        yield from _encode_mappings(encoder, chunks, errors)
    elif mime in ("application/x-ndjson", "application/ndjson", "application/jsonl"):
        yield from _encode_mappings(encoder, _chunks(_ndjson(stream), chunk_rows), errors)
    elif mime in ("text/csv", "application/csv"):
        yield from _encode_csv(encoder, stream, errors, chunk_rows)
    else:
        raise UnsupportedMediaType(
            "records must be application/json, application/x-ndjson or text/csv",
            {"content_type": mime},
        )


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def _read_body(stream: IO[bytes]) -> bytes:
    data = stream.read()
    # A size-limited request stream's read() stops quietly at the limit; reading on past it is
    # what raises 413 (RequestEntityTooLarge) when the body was longer.
    stream.read(1)
    return data


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


def _encode_mappings(encoder: RowEncoder, chunks: Iterable[list[Any]], errors: RowErrors
                     ) -> Iterator[list[bytes]]:
    start = 0
    for chunk in chunks:
        encoded = encoder.encode_mappings(chunk)
        if encoded is None:  # some row is invalid: find which, row by row
            encoded = []
            for i, row in enumerate(chunk, start):
                try:
                    encoded.append(encoder.encode_mapping(row))
                except RowError as exc:
                    errors.add(i, str(exc))
        start += len(chunk)
        if encoded:
            yield encoded


def _encode_csv(encoder: RowEncoder, stream: IO[bytes], errors: RowErrors, chunk_rows: int
                ) -> Iterator[list[bytes]]:
    # the whole body, as for JSON: decoding and splitting it in C is far cheaper than a
    # Python-level stream reader, and the body size is bounded by MAX_CONTENT_LENGTH
    try:
        # utf-8-sig: Excel (and most Windows tools) start a CSV export with a BOM.
        text = _read_body(stream).decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"malformed CSV: {exc}") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as exc:
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
    start = 0
    try:
        for chunk in _chunks(reader, chunk_rows):
            encoded = None
            if set(map(len, chunk)) == {width}:
                encoded = encoder.encode_value_rows(chunk, order)
            if encoded is None:  # blank or invalid rows: row by row
                encoded = []
                for i, values in enumerate(chunk, start):
                    if len(values) != width:
                        if values:
                            errors.add(i, f"expected {width} fields, got {len(values)}")
                        continue
                    try:
                        encoded.append(encoder.encode_values(values, order))
                    except RowError as exc:
                        errors.add(i, str(exc))
            start += len(chunk)
            if encoded:
                yield encoded
    except csv.Error as exc:
        raise BadRequest(f"malformed CSV: {exc}") from None
