"""Analyst and data-owner client: queries, estimates, budgets and batched uploads."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from .errors import PrivacyApiError, TransportError, UploadFailed, error_for

DEFAULT_TIMEOUT = 60.0


class Client:
    """A context-managed client for the privacy-api REST contract.

    `transport` is injectable (tests pass `httpx.WSGITransport(app=app)` to run against the
    real app in-process). Every non-2xx answer raises a `PrivacyApiError` subclass.
    """

    def __init__(self, base_url: str, api_key: str, *, transport: httpx.BaseTransport | None = None,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        self._http = httpx.Client(base_url=base_url.rstrip("/"), transport=transport,
                                  timeout=timeout,
                                  headers={"Authorization": f"Bearer {api_key}",
                                           "User-Agent": "privacy-client/0.1"})

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- plumbing --------------------------------------------------------------------------------
    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            resp = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise TransportError(0, "transport_error", str(exc)) from exc
        if resp.status_code >= 400:
            try:
                body: Any = resp.json()
            except ValueError:
                body = resp.text
            raise error_for(resp.status_code, body)
        return resp

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        resp = self._request(method, path, **kwargs)
        return resp.json() if resp.content else None

    # -- analysts --------------------------------------------------------------------------------
    def query(self, dataset_id: int, *, as_frame: bool = False, **spec: Any) -> Any:
        """Run a DP query, e.g. `query(1, aggregate="mean", column="cost", epsilon=0.1)`.

        Charges `epsilon` (and `delta`) to your budget unless the identical query was already
        answered on this dataset version (then `replayed` is true and nothing is charged).
        Raises BudgetExhausted when the budget cannot pay; nothing is charged then.
        Returns the JSON answer, or with `as_frame=True` a pandas DataFrame (see `sql`; without
        the `[pandas]` extra that raises ImportError before the query is sent).
        """
        if as_frame:
            from .frames import require_pandas

            require_pandas()  # before the query: a missing extra must not cost budget
        body = self._json("POST", f"/v1/datasets/{dataset_id}/query", json=_spec(spec))
        if as_frame:
            from .frames import query_frame

            return query_frame(body, spec["aggregate"])
        return body

    def sql(self, dataset_id: int, sql: str, *, epsilon: float | str, delta: float | None = None,
            mechanism: str | None = None, shares: Mapping[str, float] | None = None,
            as_frame: bool = True) -> Any:
        """Run one DP SQL SELECT; returns a pandas DataFrame (`as_frame=False`: the JSON).

        The frame has the selected columns in order, then `<name>_ci95_low`/`<name>_ci95_high`
        for each aggregate; `df.attrs` holds `query_id`, `epsilon_spent`, `delta_spent`,
        `replayed`, `budget` and `aggregates` (each aggregate's share of ε/δ and its noise).
        `epsilon` (and `delta`) is the whole statement's, split across its aggregates (equal
        shares, or in proportion to `shares` by output column name) and charged once.
        Raises InvalidRequest (nothing charged) for an unsupported statement: its `details`
        name the construct and its position; BudgetExhausted when the budget cannot pay;
        ImportError naming the `[pandas]` extra, before anything is sent, if pandas is missing.
        """
        if as_frame:
            from .frames import require_pandas

            require_pandas()  # before the query: a missing extra must not cost budget
        body = self._json("POST", f"/v1/datasets/{dataset_id}/sql",
                          json=_spec({"sql": sql, "epsilon": epsilon, "delta": delta,
                                      "mechanism": mechanism, "shares": shares}))
        if as_frame:
            from .frames import sql_frame

            return sql_frame(body)
        return body

    def sql_estimate(self, dataset_id: int, sql: str, **body: Any) -> dict[str, Any]:
        """Cost and expected accuracy of each aggregate of a SQL statement; spends nothing."""
        return self._json("POST", f"/v1/datasets/{dataset_id}/sql/estimate",  # type: ignore[no-any-return]
                          json=_spec({"sql": sql, **body}))

    def estimate(self, dataset_id: int, **spec: Any) -> dict[str, Any]:
        """Cost and expected accuracy of a query, without spending anything."""
        return self._json("POST", f"/v1/datasets/{dataset_id}/query/estimate", json=_spec(spec))  # type: ignore[no-any-return]

    def budgets(self, *, user_id: int | None = None, dataset_id: int | None = None) -> list[dict[str, Any]]:
        params = {k: v for k, v in {"user_id": user_id, "dataset_id": dataset_id}.items() if v is not None}
        return self._json("GET", "/v1/budgets", params=params)  # type: ignore[no-any-return]

    def queries(self, *, dataset_id: int | None = None) -> list[dict[str, Any]]:
        params = {"dataset_id": dataset_id} if dataset_id is not None else {}
        return self._json("GET", "/v1/queries", params=params)  # type: ignore[no-any-return]

    def me(self) -> dict[str, Any]:
        return self._json("GET", "/v1/me")  # type: ignore[no-any-return]

    # -- datasets --------------------------------------------------------------------------------
    def datasets(self) -> list[dict[str, Any]]:
        return self._json("GET", "/v1/datasets")  # type: ignore[no-any-return]

    def dataset(self, dataset_id: int) -> dict[str, Any]:
        return self._json("GET", f"/v1/datasets/{dataset_id}")  # type: ignore[no-any-return]

    def create_dataset(self, name: str, columns: Sequence[Mapping[str, Any]], *,
                       privacy_unit: Mapping[str, Any] | None = None,
                       epsilon_cap: float | None = None, delta_cap: float | None = None) -> dict[str, Any]:
        body = {"name": name, "columns": list(columns), "privacy_unit": privacy_unit,
                "epsilon_cap": epsilon_cap, "delta_cap": delta_cap}
        return self._json("POST", "/v1/datasets", json=body)  # type: ignore[no-any-return]

    def upload_records(self, dataset_id: int, rows_or_path: Iterable[Mapping[str, Any]] | str | Path,
                       *, batch_size: int = 10_000, progress: bool = True,
                       resume_from: int = 0) -> dict[str, int]:
        """Upload rows (an iterable of dicts) or a file (.csv, .ndjson/.jsonl, .json) in batches.

        Each batch is stored all or nothing. If a batch fails, `UploadFailed.rows_done` says
        how many rows are stored; call again with `resume_from=rows_done` to continue.
        Returns {"inserted", "version"}.
        """
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        total, batches = _batches(rows_or_path, batch_size, resume_from)
        done, version = resume_from, 0
        bar = _progress(total, resume_from, enabled=progress)
        try:
            for content_type, body, n in batches:
                try:
                    out = self._json("POST", f"/v1/datasets/{dataset_id}/records", content=body,
                                     headers={"Content-Type": content_type})
                except PrivacyApiError as exc:
                    raise UploadFailed(exc, done) from exc
                done += n
                version = out["version"]
                if bar is not None:
                    bar.update(n)
        finally:
            if bar is not None:
                bar.close()
        return {"inserted": done - resume_from, "version": version}


def _spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in spec.items() if v is not None}


def _progress(total: int | None, initial: int, *, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="rows", desc="upload", disable=None)


def _batches(source: Iterable[Mapping[str, Any]] | str | Path, size: int, skip: int
             ) -> tuple[int | None, Iterator[tuple[str, bytes, int]]]:
    if isinstance(source, str | Path):
        path = Path(source)
        if path.suffix.lower() == ".csv":
            return _count_lines(path) - 1, _csv_batches(path, size, skip)
        if path.suffix.lower() in (".ndjson", ".jsonl"):
            return _count_lines(path), _json_batches(_ndjson_rows(path), size, skip)
        rows = json.loads(path.read_text())
        return len(rows), _json_batches(iter(rows), size, skip)
    rows_list = source if isinstance(source, Sequence) else None
    total = len(rows_list) if rows_list is not None else None
    return total, _json_batches(iter(source), size, skip)


def _count_lines(path: Path) -> int:
    with path.open("rb") as fh:
        return sum(1 for line in fh if line.strip())


def _ndjson_rows(path: Path) -> Iterator[Any]:
    with path.open("rb") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


def _json_batches(rows: Iterator[Any], size: int, skip: int) -> Iterator[tuple[str, bytes, int]]:
    for _ in range(skip):
        next(rows, None)
    batch: list[Any] = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield "application/json", json.dumps(batch).encode(), len(batch)
            batch = []
    if batch:
        yield "application/json", json.dumps(batch).encode(), len(batch)


def _csv_batches(path: Path, size: int, skip: int) -> Iterator[tuple[str, bytes, int]]:
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        for _ in range(skip):
            next(reader, None)
        while True:
            buf = io.StringIO()
            writer = csv.writer(buf)
            writer.writerow(header)
            n = 0
            for row in reader:
                writer.writerow(row)
                n += 1
                if n == size:
                    break
            if not n:
                return
            yield "text/csv", buf.getvalue().encode(), n
