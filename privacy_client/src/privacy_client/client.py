"""Analyst and data-owner client: queries, estimates, budgets and batched uploads."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

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
            self._raise_for(resp)
        return resp

    @staticmethod
    def _raise_for(resp: httpx.Response) -> None:
        try:
            body: Any = resp.json()
        except ValueError:
            body = resp.text
        raise error_for(resp.status_code, body)

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
        With `dummy=True` (and optionally `dummy_seed=`, `dummy_rows=`) the query runs on
        synthetic rows drawn from the public schema alone (see `dummy`): free, never in the
        ledger, answer marked `"dummy": true` and `query_id` None. Develop queries this way.
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
            as_frame: bool = True, dummy: bool = False, dummy_seed: int | None = None,
            dummy_rows: int | None = None) -> Any:
        """Run one DP SQL SELECT; returns a pandas DataFrame (`as_frame=False`: the JSON).

        The frame has the selected columns in order, then `<name>_ci95_low`/`<name>_ci95_high`
        for each aggregate; `df.attrs` holds `query_id`, `epsilon_spent`, `delta_spent`,
        `replayed`, `budget` and `aggregates` (each aggregate's share of ε/δ and its noise).
        `epsilon` (and `delta`) is the whole statement's, split across its aggregates (equal
        shares, or in proportion to `shares` by output column name) and charged once.
        Raises InvalidRequest (nothing charged) for an unsupported statement: its `details`
        name the construct and its position; BudgetExhausted when the budget cannot pay;
        ImportError naming the `[pandas]` extra, before anything is sent, if pandas is missing.
        `dummy=True` runs the statement on dummy rows (see `dummy`) for free: nothing is
        charged or logged, and `df.attrs["dummy"]` is True.
        """
        if as_frame:
            from .frames import require_pandas

            require_pandas()  # before the query: a missing extra must not cost budget
        body = self._json("POST", f"/v1/datasets/{dataset_id}/sql",
                          json=_spec({"sql": sql, "epsilon": epsilon, "delta": delta,
                                      "mechanism": mechanism, "shares": shares,
                                      "dummy": dummy or None, "dummy_seed": dummy_seed,
                                      "dummy_rows": dummy_rows}))
        if as_frame:
            from .frames import sql_frame

            return sql_frame(body)
        return body

    def dummy(self, dataset_id: int, *, rows: int = 1000, seed: int = 0,
              as_frame: bool = False) -> Any:
        """Synthetic rows drawn from the dataset's public schema alone (bounds, categories,
        privacy unit): no record is read, nothing is charged, and the same seed gives the same
        rows. At most 10,000 rows. Returns a list of dicts, or with `as_frame=True` a pandas
        DataFrame (`attrs["dummy"]` True, `attrs["seed"]` the seed)."""
        if as_frame:
            from .frames import require_pandas

            require_pandas()
        body = self._json("GET", f"/v1/datasets/{dataset_id}/dummy",
                          params={"rows": rows, "seed": seed})
        if as_frame:
            from .frames import dummy_frame

            return dummy_frame(body)
        return body["records"]

    def sql_estimate(self, dataset_id: int, sql: str, **body: Any) -> dict[str, Any]:
        """Cost and expected accuracy of each aggregate of a SQL statement; spends nothing."""
        return self._json("POST", f"/v1/datasets/{dataset_id}/sql/estimate",  # type: ignore[no-any-return]
                          json=_spec({"sql": sql, **body}))

    def estimate(self, dataset_id: int, **spec: Any) -> dict[str, Any]:
        """Cost and expected accuracy of a query, without spending anything."""
        return self._json("POST", f"/v1/datasets/{dataset_id}/query/estimate", json=_spec(spec))  # type: ignore[no-any-return]

    def budgets(self, *, user_id: int | None = None, dataset_id: int | None = None) -> list[dict[str, Any]]:
        """Budgets you may read. Each has `epsilon_total`/`delta_total` (the limit per renewal
        period, or for the budget's whole life without renewal), `epsilon_spent`/`delta_spent`
        (this period), `epsilon_remaining`/`delta_remaining` (the period's, or less under a
        lifetime cap), `renewal_period` (None, "daily", "weekly", "monthly"), `period_start`,
        `period_ends_at`, `lifetime_epsilon_spent`/`lifetime_delta_spent` (all periods: renewal
        grows your total privacy loss by up to the limit each period), the optional
        `lifetime_epsilon_cap`/`lifetime_delta_cap`, and the ledger chain's `ledger_entries`
        and `ledger_head` (a hash you can keep to check the ledger later)."""
        params = {k: v for k, v in {"user_id": user_id, "dataset_id": dataset_id}.items() if v is not None}
        return self._json("GET", "/v1/budgets", params=params)  # type: ignore[no-any-return]

    def set_budget(self, user_id: int, dataset_id: int, *, epsilon: float | str,
                   delta: float | str = 0, **options: Any) -> dict[str, Any]:
        """Admin: grant or change a budget. `options`, each left as it is when not given:
        `frozen`, `renewal_period` ("none", "daily", "weekly", "monthly"), `lifetime_epsilon_cap`
        and `lifetime_delta_cap` (None: no cap). Raises Conflict below what is spent."""
        body = {"epsilon": epsilon, "delta": delta, **options}
        return self._json("PUT", f"/v1/budgets/{user_id}/{dataset_id}", json=body)  # type: ignore[no-any-return]

    def export_ledger(self, *, budget: str | None = None,
                      since: str | None = None) -> Iterator[dict[str, Any]]:
        """Admin: the ledger's hash chains as parsed NDJSON lines, streamed (GET /v1/ledger/export).
        Write them to a file and check it with `privacy-api verify-ledger --export FILE`."""
        params = {k: v for k, v in {"budget": budget, "since": since}.items() if v is not None}
        with self._http.stream("GET", "/v1/ledger/export", params=params) as resp:
            if resp.status_code >= 400:
                resp.read()
                self._raise_for(resp)
            for line in resp.iter_lines():
                if line.strip():
                    yield json.loads(line)

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

    def erase_unit(self, dataset_id: int, unit: str | int) -> dict[str, Any]:
        """Erase a data subject: delete every record of this privacy-unit value (as uploaded).
        Returns {"deleted", "version", "wal_checkpointed"}; deleted 0 when none matched."""
        path = f"/v1/datasets/{dataset_id}/units/{quote(str(unit), safe='')}"
        return self._json("DELETE", path)  # type: ignore[no-any-return]

    def erase_record(self, dataset_id: int, record_id: int) -> dict[str, Any]:
        """Delete one record by id (a unit-less dataset's upload answer lists them)."""
        return self._json("DELETE", f"/v1/datasets/{dataset_id}/records/{int(record_id)}")  # type: ignore[no-any-return]

    def upload_records(self, dataset_id: int, rows_or_path: Iterable[Mapping[str, Any]] | str | Path,
                       *, batch_size: int = 10_000, progress: bool = True,
                       resume_from: int = 0) -> dict[str, Any]:
        """Upload rows (an iterable of dicts) or a file (.csv, .ndjson/.jsonl, .json) in batches.

        Each batch is stored all or nothing. If a batch fails, `UploadFailed.rows_done` says
        how many rows are stored; call again with `resume_from=rows_done` to continue.
        Returns {"inserted", "version"}, plus "record_ids" (inclusive [first, last] id ranges
        of every batch's records) for a dataset without a privacy unit: the ids
        `erase_record` takes.
        """
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        total, batches = _batches(rows_or_path, batch_size, resume_from)
        done, version = resume_from, 0
        record_ids: list[list[int]] | None = None
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
                if "record_ids" in out:
                    record_ids = (record_ids or []) + out["record_ids"]
                if bar is not None:
                    bar.update(n)
        finally:
            if bar is not None:
                bar.close()
        result: dict[str, Any] = {"inserted": done - resume_from, "version": version}
        if record_ids is not None:
            result["record_ids"] = record_ids
        return result


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
