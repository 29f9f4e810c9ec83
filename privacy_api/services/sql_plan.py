"""Translate an analyst's SQL SELECT into the JSON endpoint's query plans, never executing it.

sqlglot parses the text into an AST; this module walks the AST with a whitelist and builds,
for every aggregate in the SELECT list, the same JSON plan spec an analyst could have sent to
`/query`, then validates it with `query_plan.build_plan`, the JSON endpoint's own validator.
So a statement gets exactly the releases (and the costs) of its JSON equivalents, whatever
the mechanisms do.

Anything the walk does not know is refused with an `SqlRefused` (422 `invalid_request`) that
names the construct and where it is in the text. HAVING, ORDER BY, LIMIT and OFFSET are kept
as a small post-processing program over the noisy table: they read released numbers only.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

from ..domain.errors import InvalidRequest
from ..storage.dataset_schema import DatasetSchema
from .query_plan import QueryPlan, build_plan

MAX_SQL_CHARS = 10_000
MAX_AGGREGATES = 16

# SQL aggregate -> (plan aggregate, note on what is released)
_SIMPLE: dict[type[exp.Expr], tuple[str, str | None]] = {
    exp.Sum: ("sum", None),
    exp.Avg: ("mean", None),
    exp.VariancePop: ("variance", None),
    exp.Variance: ("variance", "released as the population variance: the n/(n-1) correction "
                               "would need the private row count (it is below the noise)"),
    exp.StddevPop: ("std", None),
    exp.Stddev: ("std", "released as the population standard deviation"),
    exp.StddevSamp: ("std", "released as the population standard deviation"),
}
_SQL_NAMES: dict[type[exp.Expr], str] = {
    exp.Sum: "SUM", exp.Avg: "AVG", exp.VariancePop: "VAR_POP", exp.Variance: "VARIANCE",
    exp.StddevPop: "STDDEV_POP", exp.Stddev: "STDDEV", exp.StddevSamp: "STDDEV_SAMP",
    exp.Count: "COUNT", exp.Median: "MEDIAN", exp.ApproxQuantile: "APPROX_QUANTILE",
    exp.PercentileCont: "PERCENTILE_CONT", exp.PercentileDisc: "PERCENTILE_DISC",
}
_COMPARISONS: dict[type[exp.Expr], str] = {
    exp.EQ: "==", exp.NEQ: "!=", exp.LT: "<", exp.LTE: "<=", exp.GT: ">", exp.GTE: ">=",
}
_NEGATED = {"==": "!=", "!=": "==", "<": ">=", "<=": ">", ">": "<=", ">=": "<"}
_FLIPPED = {"==": "==", "!=": "!=", "<": ">", "<=": ">=", ">": "<", ">=": "<="}
# Select clauses a DP statement may use; any other one present is refused by its name.
_CLAUSES = {"expressions", "from_", "where", "group", "having", "order", "limit", "offset"}
_CLAUSE_NAMES = {
    "with_": "WITH (common table expression)", "joins": "JOIN", "distinct": "SELECT DISTINCT",
    "qualify": "QUALIFY", "windows": "WINDOW", "laterals": "LATERAL", "into": "SELECT INTO",
    "sample": "TABLESAMPLE", "locks": "FOR UPDATE", "pivots": "PIVOT", "connect": "CONNECT BY",
    "sort": "SORT BY", "cluster": "CLUSTER BY", "distribute": "DISTRIBUTE BY",
}


_SUPPORTED = sorted(set(_SQL_NAMES.values()) | {"VAR_SAMP", "WIDTH_BUCKET"})
_NESTED = (exp.Select, exp.Subquery, exp.Union, exp.Exists, exp.Window, exp.Distinct)


class SqlRefused(InvalidRequest):
    """A statement the DP SQL dialect does not support (or cannot parse); nothing is charged."""

    def __init__(self, construct: str, node: exp.Expr | None, message: str,
                 sql: str = "", **extra: Any) -> None:
        details: dict[str, Any] = {"construct": construct, **position(node, sql), **extra}
        super().__init__(message, details)


def position(node: exp.Expr | None, sql: str = "") -> dict[str, Any]:
    """Where a node starts in the text (line, column, character offset), from the first token
    sqlglot recorded inside it; {} when it recorded none (e.g. a keyword-only clause)."""
    if node is None:
        return {}
    best: dict[str, Any] | None = None
    for n in node.walk():
        meta = n.meta
        if "start" in meta and (best is None or meta["start"] < best["start"]):
            best = meta
    if best is None:
        return {}
    return _where(sql, best["start"]) if sql else {"line": best.get("line"),
                                                    "col": best.get("col"),
                                                    "offset": best["start"]}


def _where(sql: str, offset: int) -> dict[str, Any]:
    # sqlglot's own col is the token's last column; analysts want where it starts (1-based)
    return {"line": sql.count("\n", 0, offset) + 1,
            "col": offset - (sql.rfind("\n", 0, offset) + 1) + 1,
            "offset": offset, "text": sql[offset:offset + 40]}


@dataclass(frozen=True)
class SelectedAggregate:
    """One aggregate of the SELECT list and the plan that releases it."""

    name: str           # output column (its alias, or the SQL text of the call)
    function: str       # the SQL function, e.g. "AVG"
    spec: dict[str, Any]  # the equivalent JSON plan body (without epsilon/mechanism)
    plan: QueryPlan
    note: str | None


@dataclass(frozen=True)
class OutputColumn:
    name: str
    kind: Literal["group", "bucket", "aggregate"]
    index: int  # group column's position in group_by, or aggregate's position


@dataclass(frozen=True)
class Statement:
    columns: tuple[OutputColumn, ...]
    aggregates: tuple[SelectedAggregate, ...]
    group_by: tuple[str, ...]
    histogram_column: str | None  # GROUP BY WIDTH_BUCKET(col, ...): one row per bin
    having: Callable[[dict[str, Any]], bool] | None
    order_by: tuple[tuple[int, bool], ...]  # (output column index, descending)
    limit: int | None
    offset: int


def parse_statement(schema: DatasetSchema, table: str, sql: str) -> Statement:
    """Parse and validate one SELECT; raise SqlRefused naming the first unsupported construct.

    Translations are memoized per (schema, table, text): an analyst re-running a statement
    with another ε (or a dashboard refreshing it) skips the parse. A Statement is immutable
    and depends on nothing but those three public inputs; refusals are not cached."""
    if len(sql) > MAX_SQL_CHARS:
        raise SqlRefused("statement", None, f"a statement has at most {MAX_SQL_CHARS} characters")
    return _memoized(schema, table, sql)


def translate(schema: DatasetSchema, table: str, sql: str) -> Statement:
    """`parse_statement` without the memo (what a statement seen for the first time costs)."""
    if len(sql) > MAX_SQL_CHARS:
        raise SqlRefused("statement", None, f"a statement has at most {MAX_SQL_CHARS} characters")
    try:
        trees: list[Any] = list(sqlglot.parse(sql))
    except SqlglotError as exc:
        errors = getattr(exc, "errors", None) or [{}]
        first = errors[0]
        raise SqlRefused("syntax", None, f"not valid SQL: {first.get('description') or exc}",
                         line=first.get("line"), col=first.get("col")) from None
    except (RecursionError, ValueError, TypeError, IndexError, KeyError, AttributeError):
        # sqlglot is robust, but garbage must never become a 5xx
        raise SqlRefused("syntax", None, "not valid SQL") from None
    trees = [t for t in trees if t is not None]
    if len(trees) != 1:
        raise SqlRefused("statements", trees[1] if len(trees) > 1 else None,
                         f"send exactly one SELECT statement (got {len(trees)})", sql)
    return _Translator(schema, table, sql).statement(trees[0])


_memoized = functools.lru_cache(maxsize=512)(translate)


class _Translator:
    def __init__(self, schema: DatasetSchema, table: str, sql: str) -> None:
        self.schema, self.table, self.sql = schema, table, sql
        self.table_alias: str | None = None
        self.bins = 0
        self.lower_names = {c.name.lower(): c.name for c in schema.columns}

    def refuse(self, construct: str, node: exp.Expr | None, message: str,
               **extra: Any) -> SqlRefused:
        refused = SqlRefused(construct, node, message, self.sql, **extra)
        if "offset" not in refused.details:
            # a keyword-only clause (DISTINCT, a LIMIT without position...) records no
            # position in the AST: find its keyword among the statement's tokens
            first = construct.split()[-1].upper()
            for token in self.tokens():
                if token.text.upper() == first:
                    refused.details.update(_where(self.sql, token.start))
                    break
        return refused

    def tokens(self) -> list[Any]:
        try:
            return list(sqlglot.tokenize(self.sql))
        except SqlglotError:
            return []

    # -- statement -------------------------------------------------------------------------------
    def statement(self, tree: Any) -> Statement:
        if isinstance(tree, exp.Union | exp.Intersect | exp.Except):
            name = type(tree).__name__.upper()
            raise self.refuse(name, tree, f"{name} combines several queries: send each on its own")
        if not isinstance(tree, exp.Select):
            raise self.refuse(type(tree).__name__.upper(), tree,
                              "only SELECT statements are supported (nothing is ever written)")
        for key, value in tree.args.items():
            if key not in _CLAUSES and value not in (None, False, [], ""):
                name = _CLAUSE_NAMES.get(key, key.upper())
                node = value if isinstance(value, exp.Expr) else (
                    value[0] if isinstance(value, list) and value else tree)
                raise self.refuse(name, node, f"{name} is not supported in DP SQL")
        self.check_from(tree)
        self.check_no_subqueries(tree)
        group_items = tree.args["group"].expressions if tree.args.get("group") else []
        select_items = list(tree.expressions)
        if not select_items:
            raise self.refuse("SELECT list", tree, "select at least one aggregate")
        aliases = {}
        for item in select_items:
            if isinstance(item, exp.Alias):
                aliases[item.alias.lower()] = item.this
        group_by, histogram = self.group_by(group_items, select_items, aliases)
        where, where_nodes = self.where(tree.args.get("where"))

        columns: list[OutputColumn] = []
        aggregates: list[SelectedAggregate] = []
        names: set[str] = set()
        for item in select_items:
            name, body = self.output_name(item)
            if name.lower() in names:
                raise self.refuse("duplicate column name", item,
                                  f"two output columns are named {name!r}: give one an alias")
            names.add(name.lower())
            group_pos = self.group_key_of(body, group_by, histogram)
            if group_pos is not None:
                columns.append(OutputColumn(name, "bucket" if group_pos < 0 else "group",
                                            max(group_pos, 0)))
                continue
            spec_base = {"where": where, "group_by": list(group_by)}
            agg = self.aggregate(body, name, spec_base, histogram, where_nodes)
            columns.append(OutputColumn(name, "aggregate", len(aggregates)))
            aggregates.append(agg)
        if not aggregates:
            raise self.refuse("SELECT list", tree, "select at least one aggregate (COUNT(*), "
                              "SUM, AVG, ...): group keys alone are public and need no query")
        if len(aggregates) > MAX_AGGREGATES:
            raise self.refuse("SELECT list", tree, f"at most {MAX_AGGREGATES} aggregates")
        out_cols = tuple(columns)
        having = self.having(tree.args.get("having"), out_cols, select_items)
        order_by = self.order_by(tree.args.get("order"), out_cols, select_items)
        limit = self.count_clause(tree.args.get("limit"), "LIMIT")
        offset = self.count_clause(tree.args.get("offset"), "OFFSET") or 0
        return Statement(out_cols, tuple(aggregates), group_by, histogram, having, order_by,
                         limit, offset)

    def check_from(self, tree: exp.Select) -> None:
        from_ = tree.args.get("from_")
        if from_ is None:
            raise self.refuse("FROM", tree, f"select FROM {self.table}")
        source = from_.this
        if not isinstance(source, exp.Table) or not isinstance(source.this, exp.Identifier):
            raise self.refuse("subquery" if isinstance(source, exp.Subquery) else "FROM", source,
                              f"select FROM the dataset's table {self.table!r} only")
        for key, value in source.args.items():
            if key not in ("this", "alias") and value not in (None, False, [], ""):
                name = "JOIN" if key == "joins" else f"table {key}"
                raise self.refuse(name, source, f"{name} is not supported in DP SQL")
        if source.name.lower() != self.table.lower():
            raise self.refuse("unknown table", source,
                              f"unknown table {source.name!r}: this dataset's table is {self.table!r}")
        alias = source.args.get("alias")
        if alias is not None:
            if alias.args.get("columns"):
                raise self.refuse("column aliases", alias, "table column aliases are not supported")
            self.table_alias = alias.name.lower()

    def check_no_subqueries(self, tree: exp.Select) -> None:
        # one isinstance per node against the whole forbidden set (this walk is most of the
        # translator's own cost); the offender is named only once found
        for node in tree.walk():
            if node is tree or not isinstance(node, _NESTED):
                continue
            if isinstance(node, exp.Window):
                raise self.refuse("window function", node,
                                  "window functions (OVER ...) are not supported in DP SQL")
            if isinstance(node, exp.Distinct):
                raise self.refuse("DISTINCT aggregate", node,
                                  "DISTINCT inside an aggregate is not supported: its "
                                  "sensitivity is unbounded without a privacy-unit bound")
            raise self.refuse("subquery", node, "subqueries are not supported in DP SQL")

    # -- names -----------------------------------------------------------------------------------
    def column(self, node: exp.Expr) -> str:
        """The schema name of a column reference (case-insensitive, optionally qualified)."""
        if not isinstance(node, exp.Column) or not isinstance(node.this, exp.Identifier):
            raise self.refuse("expression", node, "expected a column name here")
        qualifier = node.table
        if node.args.get("db") or node.args.get("catalog"):
            raise self.refuse("qualified column", node, "qualify a column by the table at most")
        if qualifier and qualifier.lower() not in {self.table.lower(), self.table_alias}:
            raise self.refuse("unknown table", node, f"unknown table {qualifier!r}")
        name = node.name
        if self.schema.has(name):
            return name
        if name.lower() in self.lower_names:
            return self.lower_names[name.lower()]
        raise self.refuse("unknown column", node, f"unknown column {name!r}",
                          known=[c.name for c in self.schema.columns])

    def output_name(self, item: exp.Expr) -> tuple[str, exp.Expr]:
        if isinstance(item, exp.Alias):
            return item.alias, item.this
        if isinstance(item, exp.Column) and isinstance(item.this, exp.Identifier):
            return self.column(item), item
        return item.sql(), item

    # -- group by --------------------------------------------------------------------------------
    def group_by(self, items: Sequence[exp.Expr], select_items: Sequence[exp.Expr],
                 aliases: dict[str, exp.Expr]) -> tuple[tuple[str, ...], str | None]:
        names: list[str] = []
        histogram: str | None = None
        for item in items:
            node = item
            if isinstance(node, exp.Literal) and not node.is_string:
                pos = int(node.this) if node.this.isdigit() else 0
                if not 1 <= pos <= len(select_items):
                    raise self.refuse("GROUP BY position", node,
                                      f"GROUP BY {node.this}: no such SELECT item")
                sel = select_items[pos - 1]
                node = sel.this if isinstance(sel, exp.Alias) else sel
            elif (isinstance(node, exp.Column) and not node.table
                  and not self.schema.has(node.name) and node.name.lower() in aliases
                  and node.name.lower() not in self.lower_names):
                node = aliases[node.name.lower()]
            if isinstance(node, exp.WidthBucket):
                if items and len(items) > 1:
                    raise self.refuse("GROUP BY WIDTH_BUCKET", item,
                                      "a histogram (GROUP BY WIDTH_BUCKET) groups by nothing else")
                histogram = self.width_bucket(node)
                continue
            if not isinstance(node, exp.Column):
                raise self.refuse("GROUP BY expression", item,
                                  "group by public category or bool columns, or WIDTH_BUCKET(col, "
                                  "lower, upper, n) over a numeric column's public bounds")
            name = self.column(node)
            col = self.schema.column(name)
            if not col.groupable:
                raise self.refuse("non-public group key", item,
                                  f"{name!r} is {col.type}: group only by category or bool "
                                  "columns (their keys are public); for a numeric column use "
                                  "WIDTH_BUCKET over its public bounds")
            if name in names:
                raise self.refuse("GROUP BY", item, f"{name!r} is grouped twice")
            names.append(name)
        return tuple(names), histogram

    def width_bucket(self, node: exp.WidthBucket) -> str:
        name = self.column(node.this)
        col = self.schema.column(name)
        if not col.numeric:
            raise self.refuse("WIDTH_BUCKET", node, f"WIDTH_BUCKET needs a numeric column; "
                              f"group by {name!r} directly (its categories are public)")
        assert col.lower is not None and col.upper is not None
        lo = self.number(node.args.get("min_value"))
        hi = self.number(node.args.get("max_value"))
        n = self.number(node.args.get("num_buckets"))
        if lo != col.lower or hi != col.upper:
            raise self.refuse("WIDTH_BUCKET bounds", node,
                              f"WIDTH_BUCKET over {name!r} must span its public bounds "
                              f"[{col.lower:g}, {col.upper:g}] (bins over other bounds would "
                              "need a filter: add one to WHERE)")
        if not float(n).is_integer() or n < 1:
            raise self.refuse("WIDTH_BUCKET", node, "the number of buckets is a positive integer")
        self.bins = int(n)
        return name

    def group_key_of(self, body: exp.Expr, group_by: tuple[str, ...],
                     histogram: str | None) -> int | None:
        """Position of a non-aggregate SELECT item among the group keys (-1: the histogram
        bucket); None when it is an aggregate. Refuses a bare column outside GROUP BY."""
        if isinstance(body, exp.WidthBucket):
            if histogram is None or self.width_bucket(body) != histogram:
                raise self.refuse("WIDTH_BUCKET outside GROUP BY", body,
                                  "select WIDTH_BUCKET only as the statement's GROUP BY key")
            return -1
        if isinstance(body, exp.Column):
            name = self.column(body)
            if name not in group_by:
                raise self.refuse("bare column outside GROUP BY", body,
                                  f"{name!r} is neither aggregated nor in GROUP BY")
            return group_by.index(name)
        if isinstance(body, exp.Star):
            raise self.refuse("SELECT *", body, "SELECT * would release rows: select aggregates")
        return None

    # -- aggregates ------------------------------------------------------------------------------
    def aggregate(self, node: exp.Expr, name: str, base: dict[str, Any],
                  histogram: str | None, where_nodes: list[exp.Expr]) -> SelectedAggregate:
        note: str | None = None
        quantile: float | None = None
        column: str | None
        if isinstance(node, exp.Count):
            arg = node.this
            if node.expressions:
                raise self.refuse("COUNT", node, "COUNT takes one argument")
            if isinstance(arg, exp.Star):
                column = None
            else:
                # records have no NULLs (uploads refuse them), so COUNT(col) counts rows
                self.column(arg)
                column = None
            aggregate = "count"
        elif type(node) in _SIMPLE:
            aggregate, note = _SIMPLE[type(node)]
            if node.expressions if hasattr(node, "expressions") else False:
                raise self.refuse(_SQL_NAMES[type(node)], node, "takes one column")
            column = self.column(node.this)
        elif isinstance(node, exp.Median):
            aggregate, column, quantile = "quantile", self.column(node.this), 0.5
        elif isinstance(node, exp.ApproxQuantile):
            aggregate, column = "quantile", self.column(node.this)
            quantile = self.number(node.args.get("quantile"))
        elif isinstance(node, exp.WithinGroup) and isinstance(
                node.this, exp.PercentileCont | exp.PercentileDisc):
            order = node.expression
            items = order.expressions if isinstance(order, exp.Order) else []
            if len(items) != 1 or not isinstance(items[0], exp.Ordered):
                raise self.refuse("WITHIN GROUP", node, "WITHIN GROUP (ORDER BY one column)")
            aggregate, column = "quantile", self.column(items[0].this)
            quantile = self.number(node.this.this)
            if items[0].args.get("desc"):
                quantile = 1.0 - quantile
        elif isinstance(node, exp.Column | exp.Star | exp.WidthBucket):
            raise AssertionError("handled by group_key_of")
        elif isinstance(node, exp.Anonymous):
            raise self.refuse("unknown function", node, f"unknown function {node.name}()",
                              supported=_SUPPORTED)
        elif isinstance(node, exp.Func) and not isinstance(node, exp.Binary):
            raise self.refuse("unsupported function", node,
                              f"{node.sql_name()}() is not a supported DP aggregate",
                              supported=_SUPPORTED)
        else:
            raise self.refuse(f"expression {type(node).__name__}", node,
                              "each SELECT item is a group key or one aggregate call (arithmetic "
                              "on aggregates: compute it from the returned table)")
        if isinstance(node, exp.Func):
            for inner in node.find_all(exp.AggFunc):
                if inner is not node and not isinstance(node, exp.WithinGroup):
                    raise self.refuse("nested aggregate", inner, "aggregates cannot be nested")
        spec: dict[str, Any] = {"aggregate": aggregate, "column": column, **base}
        if quantile is not None:
            spec["quantile"] = quantile
        if histogram is not None:
            if aggregate != "count":
                raise self.refuse("aggregate in a histogram", node,
                                  "GROUP BY WIDTH_BUCKET releases counts: select COUNT(*) only")
            spec = {"aggregate": "histogram", "column": histogram, "bins": self.bins,
                    "where": base["where"], "group_by": []}
        try:
            plan = build_plan(self.schema, spec)
        except InvalidRequest as exc:
            where_key = next((k for k in exc.details if k.startswith("where.")), None)
            at: exp.Expr = node
            if where_key is not None and int(where_key.split(".")[1]) < len(where_nodes):
                at = where_nodes[int(where_key.split(".")[1])]
            raise self.refuse("plan", at, f"{name}: " + "; ".join(
                f"{k}: {m}" for k, msgs in exc.details.items() for m in msgs),
                errors=exc.details) from None
        fn = _SQL_NAMES.get(type(node.this) if isinstance(node, exp.WithinGroup) else type(node),
                            type(node).__name__.upper())
        return SelectedAggregate(name, fn, spec, plan, note)

    def number(self, node: exp.Expr | None) -> float:
        if isinstance(node, exp.Neg):
            return -self.number(node.this)
        if isinstance(node, exp.Paren):
            return self.number(node.this)
        if isinstance(node, exp.Literal) and not node.is_string:
            try:
                value = float(node.this)
            except ValueError:
                value = math.nan
            if math.isfinite(value):
                return value
        raise self.refuse("literal", node, "expected a finite number here")

    def literal(self, node: exp.Expr) -> Any:
        if isinstance(node, exp.Boolean):
            return bool(node.this)
        if isinstance(node, exp.Literal) and node.is_string:
            return node.this
        if isinstance(node, exp.Null):
            raise self.refuse("NULL", node, "records have no NULLs: compare with a value")
        value = self.number(node)
        return int(value) if value.is_integer() and abs(value) < 2**53 else value

    # -- where -----------------------------------------------------------------------------------
    def where(self, clause: exp.Expr | None) -> tuple[list[dict[str, Any]],
                                                             list[exp.Expr]]:
        """The WHERE clause as the JSON plan's conjunction of filters (and the node of each)."""
        if clause is None:
            return [], []
        filters: list[tuple[dict[str, Any], exp.Expr]] = []
        self.conjuncts(clause.this, False, filters)
        return [f for f, _ in filters], [n for _, n in filters]

    def conjuncts(self, node: exp.Expr, negated: bool,
                  out: list[tuple[dict[str, Any], exp.Expr]]) -> None:
        if isinstance(node, exp.Paren):
            return self.conjuncts(node.this, negated, out)
        if isinstance(node, exp.Not):
            return self.conjuncts(node.this, not negated, out)
        if isinstance(node, exp.And) and not negated:
            self.conjuncts(node.this, False, out)
            return self.conjuncts(node.expression, False, out)
        if isinstance(node, exp.Or) and negated:  # NOT (a OR b) = NOT a AND NOT b
            self.conjuncts(node.this, True, out)
            return self.conjuncts(node.expression, True, out)
        if isinstance(node, exp.Or | exp.And):  # a OR b, or NOT (a AND b) = NOT a OR NOT b
            out.append((self.disjunction(node, negated), node))
            return None
        out.append((self.atom(node, negated), node))
        return None

    def disjunction(self, node: exp.Expr, negated: bool) -> dict[str, Any]:
        """OR over one category or bool column becomes `in` (the domain is public, so each
        branch's set of values is known); OR across columns is not a plan filter."""
        branches: list[tuple[exp.Expr, bool]] = []

        def collect(n: exp.Expr, neg: bool) -> None:
            if isinstance(n, exp.Paren):
                collect(n.this, neg)
            elif isinstance(n, exp.Not):
                collect(n.this, not neg)
            elif (isinstance(n, exp.Or) and not neg) or (isinstance(n, exp.And) and neg):
                collect(n.this, neg)
                collect(n.expression, neg)
            else:
                branches.append((n, neg))

        collect(node, negated)
        column: str | None = None
        values: list[Any] = []
        for branch, neg in branches:
            f = self.atom(branch, neg)
            col = self.schema.column(f["column"])
            if f["op"] not in ("==", "in") or not col.groupable:
                raise self.refuse("OR", node, "OR is supported between values of one category or "
                                  "bool column (it becomes IN); an OR across columns or ranges "
                                  "is not a DP plan filter: run one query per branch")
            if column is not None and f["column"] != column:
                raise self.refuse("OR across columns", node,
                                  f"OR mixes {column!r} and {f['column']!r}: OR is supported "
                                  "between values of one category or bool column")
            column = f["column"]
            values += f["value"] if f["op"] == "in" else [f["value"]]
        assert column is not None
        return {"column": column, "op": "in", "value": _unique(values)}

    def atom(self, node: exp.Expr, negated: bool) -> dict[str, Any]:
        if isinstance(node, exp.And | exp.Or):
            return self.disjunction(node, negated)
        if type(node) in _COMPARISONS:
            op = _COMPARISONS[type(node)]
            left, right = node.this, node.expression
            if not isinstance(left, exp.Column) and isinstance(right, exp.Column):
                left, right, op = right, left, _FLIPPED[op]
            name = self.column(left)
            value = self.literal(right)
            return self.negate({"column": name, "op": op, "value": value}, negated, node)
        if isinstance(node, exp.In):
            if node.args.get("query") is not None:
                raise self.refuse("subquery", node.args["query"],
                                  "subqueries are not supported in DP SQL")
            name = self.column(node.this)
            return self.negate({"column": name, "op": "in",
                                "value": [self.literal(v) for v in node.expressions]},
                               negated, node)
        if isinstance(node, exp.Between):
            name = self.column(node.this)
            f = {"column": name, "op": "between",
                 "value": [self.literal(node.args["low"]), self.literal(node.args["high"])]}
            return self.negate(f, negated, node)
        if isinstance(node, exp.Is):
            target = node.expression
            if not isinstance(target, exp.Boolean):
                raise self.refuse("IS", node, "IS TRUE / IS FALSE only (records have no NULLs)")
            return self.negate({"column": self.column(node.this), "op": "==",
                                "value": bool(target.this)}, negated, node)
        if isinstance(node, exp.Column):  # WHERE smoker
            name = self.column(node)
            if self.schema.column(name).type != "bool":
                raise self.refuse("condition", node, f"{name!r} is not a bool column: compare it")
            return {"column": name, "op": "==", "value": not negated}
        if isinstance(node, exp.Boolean):
            raise self.refuse("constant condition", node,
                              "WHERE TRUE/FALSE: drop the condition or filter on a column")
        raise self.refuse(f"condition {type(node).__name__}", node,
                          "WHERE supports comparisons, IN, BETWEEN, IS TRUE/FALSE, AND, OR, NOT")

    def negate(self, f: dict[str, Any], negated: bool, node: exp.Expr) -> dict[str, Any]:
        if not negated:
            return f
        if f["op"] in _NEGATED:
            return {**f, "op": _NEGATED[f["op"]]}
        col = self.schema.column(f["column"])
        if f["op"] == "in" and col.groupable:  # NOT IN over a public domain: the complement
            excluded = f["value"]
            return {**f, "value": [v for v in col.domain() if v not in excluded] or excluded}
        raise self.refuse(f"NOT {f['op'].upper()}", node,
                          f"NOT {f['op'].upper()} over a numeric column is two ranges, not one "
                          "plan filter: split the query or invert the range")

    # -- post-processing -------------------------------------------------------------------------
    def output_ref(self, node: exp.Expr, columns: tuple[OutputColumn, ...],
                   select_items: Sequence[exp.Expr], clause: str) -> int:
        """The output column an ORDER BY / HAVING term names: alias, group column, an
        aggregate written as in the SELECT list, or (ORDER BY only) a 1-based position."""
        if isinstance(node, exp.Literal) and not node.is_string and clause == "ORDER BY":
            pos = int(node.this) if node.this.isdigit() else 0
            if 1 <= pos <= len(columns):
                return pos - 1
        if isinstance(node, exp.Column) and not node.table:
            for i, c in enumerate(columns):
                if c.name.lower() == node.name.lower():
                    return i
        for i, item in enumerate(select_items):
            body = item.this if isinstance(item, exp.Alias) else item
            if body == node:
                return i
        raise self.refuse(f"{clause} term", node,
                          f"{clause} may refer only to the selected columns (by alias, by the "
                          "same expression, or by position): anything else was not released")

    def having(self, clause: exp.Expr | None, columns: tuple[OutputColumn, ...],
               select_items: Sequence[exp.Expr]) -> Callable[[dict[str, Any]], bool] | None:
        if clause is None:
            return None
        names = [c.name for c in columns]

        def compile_(node: exp.Expr) -> Callable[[dict[str, Any]], Any]:
            if isinstance(node, exp.Paren):
                return compile_(node.this)
            if isinstance(node, exp.And | exp.Or):
                a, b = compile_(node.this), compile_(node.expression)
                if isinstance(node, exp.And):
                    return lambda r: bool(a(r)) and bool(b(r))
                return lambda r: bool(a(r)) or bool(b(r))
            if isinstance(node, exp.Not):
                inner = compile_(node.this)
                return lambda r: not inner(r)
            if type(node) in _COMPARISONS:
                a, b = compile_(node.this), compile_(node.expression)
                op = _COMPARISONS[type(node)]
                return lambda r: _compare(op, a(r), b(r))
            if isinstance(node, exp.Between):
                v, lo, hi = (compile_(node.this), compile_(node.args["low"]),
                             compile_(node.args["high"]))
                return lambda r: _compare("<=", lo(r), v(r)) and _compare("<=", v(r), hi(r))
            if isinstance(node, exp.Literal | exp.Boolean | exp.Neg):
                value = self.literal(node)
                return lambda r: value
            idx = self.output_ref(node, columns, select_items, "HAVING")
            key = names[idx]
            return lambda r: r[key]

        predicate = compile_(clause.this)
        return lambda row: bool(predicate(row))

    def order_by(self, clause: exp.Expr | None, columns: tuple[OutputColumn, ...],
                 select_items: Sequence[exp.Expr]) -> tuple[tuple[int, bool], ...]:
        if clause is None:
            return ()
        out = []
        for item in clause.expressions:
            target = item.this if isinstance(item, exp.Ordered) else item
            out.append((self.output_ref(target, columns, select_items, "ORDER BY"),
                        bool(item.args.get("desc"))))
        return tuple(out)

    def count_clause(self, clause: exp.Expr | None, name: str) -> int | None:
        if clause is None:
            return None
        node = clause.args.get("expression")
        if not isinstance(node, exp.Literal) or node.is_string or not node.this.isdigit():
            raise self.refuse(name, clause, f"{name} takes a non-negative integer")
        if isinstance(clause, exp.Limit) and clause.args.get("offset") is not None:
            raise self.refuse(name, clause, "write LIMIT n OFFSET m")
        return min(int(node.this), 10**9)


def _unique(values: list[Any]) -> list[Any]:
    seen: list[Any] = []
    for v in values:
        if not any(type(v) is type(s) and v == s for s in seen):
            seen.append(v)
    return seen


def _compare(op: str, a: Any, b: Any) -> bool:
    try:
        if op == "==":
            return bool(a == b)
        if op == "!=":
            return bool(a != b)
        if op == "<":
            return bool(a < b)
        if op == "<=":
            return bool(a <= b)
        if op == ">":
            return bool(a > b)
        return bool(a >= b)
    except TypeError:  # e.g. a category compared with a number: no row matches
        return False


def split_shares(total_units: int, weights: Sequence[Decimal]) -> list[int]:
    """Split an integer number of budget quanta in proportion to `weights`, exactly: the
    shares add up to `total_units` (the floors, then one quantum each to the first ones)."""
    whole = sum(weights)
    shares = [int(total_units * w // whole) for w in weights]
    for i in range(total_units - sum(shares)):
        shares[i % len(shares)] += 1
    return shares
