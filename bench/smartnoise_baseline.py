"""SmartNoise SQL baseline for bench/bench_queries.py, run with the bench venv's Python.

    .venv-bench/bin/python bench/smartnoise_baseline.py DATA.npz --reps 20 --epsilon 1.0

It must not import privacy_api (the bench venv does not have our dependencies, and smartnoise-sql
pins its own sqlalchemy/pandas/opendp). DATA.npz holds the same decoded, contribution-bounded
columns the service's cache holds (written by bench_queries.py) plus the public schema as JSON.
Prints one JSON object: {"versions": ..., "load_s": ..., "queries": {name: {...}}}.

SmartNoise gets the same privacy semantics as the service: `patient_id` is the private id with
at most `max_ids` rows each, already enforced (so `sample_max_ids: False`: no per-query
reservoir sampling), public bounds from the schema, and group keys declared public
(`censor_dims: False`), as the service's group-by over public category domains.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from importlib.metadata import version
from typing import Any

import numpy as np

TABLE = "PUBLIC.patients"


def metadata(schema: dict[str, Any]) -> dict[str, Any]:
    table: dict[str, Any] = {
        "row_privacy": schema["privacy_unit"] is None,
        "max_ids": schema["max_rows"] if schema["privacy_unit"] else 1,
        "sample_max_ids": False,
        "censor_dims": False,
    }
    for c in schema["columns"]:
        if c["type"] == "id":
            table[c["name"]] = {"type": "int", "private_id": True}
        elif c["type"] in ("int", "float"):
            table[c["name"]] = {"type": c["type"], "lower": c["lower"], "upper": c["upper"],
                                "nullable": False}
        elif c["type"] == "bool":
            table[c["name"]] = {"type": "boolean", "nullable": False}
        else:
            table[c["name"]] = {"type": "string", "nullable": False}
    return {"": {"PUBLIC": {"patients": table}}}


def frame(data: Any, schema: dict[str, Any]) -> Any:
    import pandas as pd

    cols: dict[str, Any] = {}
    for c in schema["columns"]:
        arr = data[c["name"]]
        if c["type"] == "category":  # the cache holds codes; SQL filters on the labels
            cols[c["name"]] = np.asarray(c["categories"], dtype=object)[arr]
        else:
            cols[c["name"]] = arr
    return pd.DataFrame(cols)


# The benchmark's queries, mirroring bench_queries.QUERIES (same filters, columns, groups).
QUERIES: dict[str, str] = {
    "count (filtered)": f"SELECT COUNT(*) AS n FROM {TABLE} WHERE age >= 65",
    "mean (filtered)": f"SELECT AVG(cost) AS m FROM {TABLE} WHERE age >= 65",
    "group-by count": f"SELECT diagnosis, COUNT(*) AS n FROM {TABLE} GROUP BY diagnosis",
    "group-by mean": f"SELECT region, AVG(cost) AS m FROM {TABLE} GROUP BY region",
    "group-by mean (filtered)": f"SELECT region, AVG(cost) AS m FROM {TABLE} WHERE age >= 65 "
                                "GROUP BY region",
    "median": f"SELECT PERCENTILE_CONT(0.5) WITHIN GROUP (ORDER BY cost) AS med FROM {TABLE}",
}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("data")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--epsilon", type=float, default=1.0)
    p.add_argument("--queries", default=None,
                   help="JSON file {name: sql} with {table} for the table (default: QUERIES)")
    args = p.parse_args(argv)
    queries = QUERIES
    if args.queries:
        with open(args.queries) as fh:
            queries = {k: v.format(table=TABLE) for k, v in json.load(fh).items()}
    out: dict[str, Any] = {"versions": {}, "queries": {}}
    try:
        import snsql
        from snsql import Privacy

        out["versions"] = {k: version(k) for k in ("smartnoise-sql", "opendp", "pandas",
                                                   "sqlalchemy")}
    except Exception as exc:  # noqa: BLE001 - reported to the parent, never fatal
        out["error"] = f"cannot import snsql: {exc!r}"
        print(json.dumps(out))
        return
    with np.load(args.data, allow_pickle=False) as npz:
        schema = json.loads(str(npz["__schema__"]))
        df = frame(npz, schema)
    t = time.perf_counter()
    # PandasReader copies the frame into an in-memory SQLite database once, here (untimed below).
    reader = snsql.from_df(df, privacy=Privacy(epsilon=args.epsilon), metadata=metadata(schema))
    out["load_s"] = time.perf_counter() - t
    out["rows"] = len(df)
    for name, sql in queries.items():
        times: list[float] = []
        try:
            for _ in range(args.reps):
                t = time.perf_counter()
                result = reader.execute(sql)
                times.append(time.perf_counter() - t)
        except Exception as exc:  # noqa: BLE001 - an unsupported query is a result, not a crash
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            out["queries"][name] = {"error": f"{type(exc).__name__}: {msg[:120]}"}
            continue
        ms = np.asarray(times) * 1000
        out["queries"][name] = {"p50_ms": float(np.percentile(ms, 50)),
                                "p95_ms": float(np.percentile(ms, 95)), "n": len(ms),
                                "sample": [list(map(_jsonable, r)) for r in result[1:3]]}
    print(json.dumps(out))


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    return v if isinstance(v, int | float | str | bool) or v is None else str(v)


if __name__ == "__main__":
    sys.exit(main())
