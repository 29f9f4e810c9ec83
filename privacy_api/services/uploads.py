"""Parse an upload body (JSON array, NDJSON or CSV) into encoded record plaintexts.

Every row is validated against the public schema before anything is written; errors are
gathered (up to a limit) so one 422 lists the bad rows. Every format is parsed as a stream, in
chunks of rows, so memory stays a few chunks whatever the body's size (issue 12: a 26.7 MB JSON
body used to peak at 890 MB, parsed whole).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import IO, Any

import ijson
import orjson

from ..domain.errors import BadRequest, InvalidRequest, UnsupportedMediaType
from ..storage.dataset_schema import RowEncoder, RowError

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
# An NDJSON line longer than this is refused rather than read into memory whole.
MAX_LINE_BYTES = 1024 * 1024
READ_BYTES = 64 * 1024


@dataclass(frozen=True)
class BadRow:
    """A JSON-array element that cannot be a record, with why (reported as that row's error)."""

    message: str


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
        yield from _encode_mappings(encoder, _chunks(_json_array(stream), chunk_rows), errors)
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


def _json_array(stream: IO[bytes]) -> Iterator[Any]:
    """The elements of a top-level JSON array, one at a time.

    Built from ijson's prefix-free event stream rather than `ijson.items`: items tracks a
    path string per nesting level, so a 200 kB body of nested brackets costs gigabytes there,
    while here nesting costs one counter. A record is a flat object; an element that is not
    (an array, or an object holding a container or a repeated key) becomes a BadRow.
    """
    events = ijson.basic_parse(_RawBody(stream), use_float=True, buf_size=READ_BYTES)
    try:
        first = next(events, None)
        if first is None:
            raise BadRequest("malformed JSON: the body is empty")
        if first[0] != "start_array":
            raise InvalidRequest("body must be a JSON array of objects")
        depth = 0  # inside the current element
        row: dict[str, Any] | None = None
        key = ""
        problem = ""
        for event, value in events:
            if depth == 0:
                if event == "end_array":
                    break
                if event == "start_map":
                    row, depth, problem = {}, 1, ""
                elif event == "start_array":
                    row, depth, problem = None, 1, "each record must be a JSON object"
                else:
                    yield value  # a scalar: the encoder reports it
                continue
            if event in ("start_map", "start_array"):
                depth += 1
                problem = problem or f"{key}: values must be numbers, strings, booleans or null"
            elif event in ("end_map", "end_array"):
                depth -= 1
                if depth == 0:
                    yield BadRow(problem) if problem or row is None else row
            elif depth == 1 and row is not None:
                if event == "map_key":
                    key = value
                    if key in row:
                        problem = problem or f"{key}: the column appears twice"
                else:
                    row[key] = value
        for _ in events:  # anything after the array is an error (ijson: "trailing garbage")
            pass
    except ijson.JSONError as exc:
        raise BadRequest(f"malformed JSON: {_first_line(exc)}") from None


def _first_line(exc: Exception) -> str:
    # ijson's messages quote the input around the error on further lines: keep them out
    return str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__


class _RawBody(io.RawIOBase):
    """The request body as a raw stream for buffered readers; closing it leaves the body open."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if not len(buffer):  # Werkzeug's stream takes a 0-byte read for a disconnect
            return 0
        data = self._stream.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)


def _ndjson(stream: IO[bytes]) -> Iterator[Any]:
    # io's C reader finds the line ends; the request stream's own readline reads byte by byte
    buffered = io.BufferedReader(_RawBody(stream), READ_BYTES)
    lineno = 0
    while line := buffered.readline(MAX_LINE_BYTES):
        lineno += 1
        if len(line) == MAX_LINE_BYTES and not line.endswith(b"\n"):
            raise BadRequest(f"line {lineno} is longer than {MAX_LINE_BYTES} bytes",
                             {"line": lineno})
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
                if isinstance(row, BadRow):
                    errors.add(i, row.message)
                    continue
                try:
                    encoded.append(encoder.encode_mapping(row))
                except RowError as exc:
                    errors.add(i, str(exc))
        start += len(chunk)
        if encoded:
            yield encoded


def _encode_csv(encoder: RowEncoder, stream: IO[bytes], errors: RowErrors, chunk_rows: int
                ) -> Iterator[list[bytes]]:
    # utf-8-sig: Excel (and most Windows tools) start a CSV export with a BOM.
    # Decoded and split into lines by io's C code as it streams, chunk by chunk.
    text = io.TextIOWrapper(io.BufferedReader(_RawBody(stream), READ_BYTES), encoding="utf-8-sig",
                            newline="")
    reader = csv.reader(text)
    try:
        header = next(reader)
    except StopIteration:
        return
    except (csv.Error, UnicodeDecodeError) as exc:
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
    except (csv.Error, UnicodeDecodeError) as exc:
        raise BadRequest(f"malformed CSV: {exc}") from None
