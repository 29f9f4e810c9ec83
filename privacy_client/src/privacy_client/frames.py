"""Answers as pandas DataFrames (the `[pandas]` extra). pandas is imported only when a frame
is asked for, so the SDK works without it.

Every frame carries the release's bookkeeping in `df.attrs`: `query_id`, `epsilon_spent`,
`delta_spent`, `replayed`, `budget` and, for SQL, `aggregates` (each one's share of ε/δ and
its noise). The numbers are the noisy released values; `<name>_ci95_low/high` bound the true
value with 95% confidence (see the server's docs for which intervals are exact).
"""

from __future__ import annotations

from typing import Any

from .extras import require_extra


def require_pandas() -> Any:
    """pandas, or the ImportError naming the extra. `Client` calls this before it sends a
    query that is to come back as a frame, so a missing extra charges no budget."""
    try:
        import pandas as pd
    except ImportError as exc:  # pandas comes with the [pandas] extra
        require_extra("pandas", "DataFrames (Client.sql, as_frame=True)", exc)
        raise
    return pd


def _attrs(body: dict[str, Any]) -> dict[str, Any]:
    keys = ("query_id", "epsilon_spent", "delta_spent", "replayed", "budget", "aggregates",
            "dummy")
    return {k: body[k] for k in keys if k in body}


def sql_frame(body: dict[str, Any]) -> Any:
    """The /sql answer as a DataFrame: the selected columns in order, then
    `<name>_ci95_low` and `<name>_ci95_high` for each aggregate."""
    pd = require_pandas()
    columns: list[str] = body["columns"]
    names = {a["column"] for a in body["aggregates"]}
    aggregate_at = [i for i, c in enumerate(columns) if c in names]
    data: dict[str, list[Any]] = {name: [row[i] for row in body["rows"]]
                                  for i, name in enumerate(columns)}
    for i in aggregate_at:
        data[f"{columns[i]}_ci95_low"] = [ci[i][0] for ci in body["ci95"]]
        data[f"{columns[i]}_ci95_high"] = [ci[i][1] for ci in body["ci95"]]
    df = pd.DataFrame(data)
    df.attrs.update(_attrs(body))
    return df


def query_frame(body: dict[str, Any], aggregate: str) -> Any:
    """A /query answer as a DataFrame: one row (a single value) or one row per group, with
    the group keys (a numeric histogram bin as `<col>_low`/`<col>_high`), the value under
    the aggregate's name, and its 95% interval."""
    pd = require_pandas()
    name = "count" if aggregate == "histogram" else aggregate
    result = body["result"]
    if not isinstance(result, list):
        ci = body["accuracy"]["ci95"]
        df = pd.DataFrame({name: [result], f"{name}_ci95_low": [ci[0]],
                           f"{name}_ci95_high": [ci[1]]})
    else:
        records = []
        for cell in result:
            row: dict[str, Any] = {}
            for key, value in cell["group"].items():
                if isinstance(value, list):  # a numeric histogram bin [low, high)
                    row[f"{key}_low"], row[f"{key}_high"] = value
                else:
                    row[key] = value
            row[name] = cell["value"]
            row[f"{name}_ci95_low"], row[f"{name}_ci95_high"] = cell["ci95"]
            records.append(row)
        df = pd.DataFrame.from_records(records)
    df.attrs.update(_attrs(body))
    return df


def dummy_frame(body: dict[str, Any]) -> Any:
    """GET /dummy rows as a DataFrame, one column per schema column."""
    pd = require_pandas()
    df = pd.DataFrame.from_records(body["records"], columns=body["columns"])
    df.attrs.update({"dummy": True, "seed": body["seed"], "dataset_id": body["dataset_id"]})
    return df
