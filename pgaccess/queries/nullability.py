"""Which result columns of a statement can be NULL, from the statement itself.

The statement is parsed with pglast (PostgreSQL's own parser, libpg_query). Each output
column is resolved to its source - a table column through any number of subqueries, CTEs,
views and joins, or an expression - and these rules decide (``True`` = can be NULL):

* a table column is NULL-able when the catalog says so (``attnotnull``) or when its
  relation sits on the nullable side of an outer join; a view's columns are inferred from
  the view's definition the same way;
* literals, ``count``, ``EXISTS``, ``ARRAY(...)``, ``IS [NOT] NULL``, ``row_number()`` and
  the like are never NULL; ``coalesce`` is NULL-able only when every argument is;
  operators, casts, ``CASE`` (with an ``ELSE``) and a known list of functions are NULL-able
  only when an input is;
* other aggregates are NULL-able over possibly empty input, i.e. unless the query has a
  plain ``GROUP BY`` (no grouping sets) and their arguments are not NULL-able;
* set-returning functions, parameters, scalar subqueries (unless they provably return one
  non-NULL row) and anything not understood are NULL-able.

Nothing here depends on the plan, the data, statistics or the role, so the answer is the
same on every database with the same schema. The catalog is read once per statement
(``load_catalog``), then ``infer`` is pure.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import asyncpg
from pglast import ast, parse_sql
from pglast.enums import (
    A_Expr_Kind,
    JoinType,
    SetOperation,
    SubLinkType,
)
from pglast.parser import ParseError

__all__ = ["Catalog", "Relation", "infer", "load_catalog", "one_row", "parse", "relation_names"]

# A frame of ``RANGE UNBOUNDED PRECEDING .. CURRENT ROW`` always holds the current row.
_FRAME_DEFAULT = 1058

# Never NULL whatever their input (``count`` also as a window function).
_NEVER_NULL_FUNCS = frozenset({
    "count", "now", "statement_timestamp", "transaction_timestamp", "clock_timestamp",
    "gen_random_uuid", "uuid_generate_v4", "random", "pi", "concat", "jsonb_build_object",
    "json_build_object", "jsonb_build_array", "json_build_array", "row_number", "rank",
    "dense_rank", "percent_rank", "cume_dist", "current_database", "current_schema",
    "version", "txid_current", "pg_backend_pid", "grouping",
})
# Not NULL when no argument is NULL (strict and total on their domain).
_STRICT_TOTAL_FUNCS = frozenset({
    "lower", "upper", "length", "char_length", "character_length", "octet_length",
    "bit_length", "trim", "btrim", "ltrim", "rtrim", "lpad", "rpad", "replace", "left",
    "right", "substr", "reverse", "repeat", "initcap", "md5", "sha256", "starts_with",
    "abs", "round", "trunc", "floor", "ceil", "ceiling", "sign", "mod", "power", "sqrt",
    "exp", "ln", "log", "date_trunc", "date_part", "extract", "to_char", "to_timestamp",
    "to_date", "age", "make_date", "make_timestamp", "make_timestamptz", "make_interval",
    "timezone", "format", "concat_ws", "quote_ident", "quote_literal", "to_jsonb", "to_json",
    "jsonb_typeof", "json_typeof", "jsonb_array_length", "array_to_string", "cardinality",
    "array_append", "array_prepend", "array_cat", "array_remove", "array_replace",
    "encode", "decode", "int4", "int8", "text", "numeric", "bool", "ntile", "split_part",
    "regexp_replace", "translate", "strpos", "position", "overlay", "chr", "ascii",
    "to_hex", "date", "isfinite", "justify_days", "justify_hours", "justify_interval",
    "jsonb_set", "jsonb_insert", "jsonb_strip_nulls", "greatest", "least", "num_nonnulls",
    "num_nulls", "host", "inet_client_addr", "pg_typeof", "coalesce",
})
# Aggregates: NULL-able over empty input; with a plain GROUP BY each group has a row, so
# these give a value when their arguments cannot be NULL.
_GROUP_SAFE_AGGS = frozenset({
    "min", "max", "sum", "avg", "array_agg", "string_agg", "json_agg", "jsonb_agg",
    "json_object_agg", "jsonb_object_agg", "bool_and", "bool_or", "every", "bit_and",
    "bit_or", "bit_xor",
})
_OTHER_AGGS = frozenset({
    "stddev", "stddev_pop", "stddev_samp", "variance", "var_pop", "var_samp", "corr",
    "covar_pop", "covar_samp", "regr_slope", "regr_intercept", "regr_count", "regr_r2",
    "regr_avgx", "regr_avgy", "regr_sxx", "regr_syy", "regr_sxy", "mode",
    "percentile_cont", "percentile_disc", "xmlagg", "range_agg", "range_intersect_agg",
})
_AGGREGATES = _GROUP_SAFE_AGGS | _OTHER_AGGS | {"count"}
# Window functions whose value comes from the current row when the frame is the default.
_FRAME_ROW_FUNCS = frozenset({"first_value", "last_value"})


@dataclass(frozen=True, slots=True)
class Col:
    name: str
    nullable: bool


@dataclass(frozen=True, slots=True)
class Relation:
    """A table or view as the catalog describes it."""

    columns: tuple[tuple[str, bool], ...]  # (name, can be NULL) in column order
    definition: str | None = None  # a view's SELECT, inferred instead of the catalog


@dataclass
class Catalog:
    """The relations a statement names, keyed by ``relation_key``."""

    relations: dict[str, Relation | None] = field(default_factory=dict)
    _views: dict[str, list[Col] | None] = field(default_factory=dict)

    def columns(self, key: str) -> list[Col] | None:
        rel = self.relations.get(key)
        if rel is None:
            return None
        if rel.definition is None:
            return [Col(n, nullable) for n, nullable in rel.columns]
        if key not in self._views:
            self._views[key] = None  # a cycle resolves to "unknown"
            inferred = infer(parse(rel.definition), self)
            if inferred is not None and len(inferred) == len(rel.columns):
                self._views[key] = [Col(n, c) for (n, _), c in zip(rel.columns, inferred,
                                                                    strict=True)]
        return self._views[key]


def parse(sql: str) -> Any:
    """The first statement of ``sql``, or None when pglast cannot parse it."""
    try:
        stmts = parse_sql(sql)
    except ParseError:
        return None
    return stmts[0].stmt if stmts else None


def relation_key(rv: Any) -> str:
    parts = [p for p in (rv.schemaname, rv.relname) if p]
    return ".".join('"' + p.replace('"', '""') + '"' for p in parts)


def _is(node: Any, cls: type | tuple[type, ...]) -> bool:
    """isinstance without narrowing: pglast's attributes are typed as optional everywhere."""
    return isinstance(node, cls)


def _walk(node: Any) -> Iterator[Any]:
    if isinstance(node, ast.Node):
        yield node
        for slot in getattr(type(node), "__slots__", ()):
            yield from _walk(getattr(node, slot, None))
    elif isinstance(node, tuple | list):
        for item in node:
            yield from _walk(item)


def relation_names(stmt: Any) -> set[str]:
    return {relation_key(n) for n in _walk(stmt) if _is(n, ast.RangeVar)}


async def load_catalog(con: asyncpg.Connection, stmt: Any) -> Catalog:
    """Read the relations ``stmt`` names (and, for views, the ones their definitions name)."""
    catalog = Catalog()
    pending = relation_names(stmt)
    while pending:
        keys = sorted(pending)
        rows = await con.fetch(
            """
            SELECT r.key, c.relkind,
                   CASE WHEN c.relkind IN ('v', 'm') THEN pg_get_viewdef(c.oid) END AS def,
                   array_agg(a.attname::text ORDER BY a.attnum) AS names,
                   array_agg(NOT a.attnotnull ORDER BY a.attnum) AS nullable
            FROM unnest($1::text[]) AS r(key)
            JOIN pg_class c ON c.oid = to_regclass(r.key)
            JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
            GROUP BY r.key, c.oid, c.relkind
            """,
            keys,
        )
        catalog.relations.update(dict.fromkeys(keys))
        pending = set()
        for r in rows:
            catalog.relations[r["key"]] = Relation(tuple(zip(r["names"], r["nullable"],
                                                             strict=True)), r["def"])
            if r["def"]:
                pending |= relation_names(parse(r["def"]))
        pending -= set(catalog.relations)
    return catalog


# -- scopes ---------------------------------------------------------------------------------

_AMBIGUOUS = Col("?ambiguous?", True)


@dataclass
class Item:
    """What a FROM item contributes: names for qualified and unqualified references, and
    the columns ``*`` expands to. ``star is None`` when the columns are not known."""

    qualified: dict[str, list[Col] | None]
    unqualified: dict[str, Col]
    star: list[Col] | None

    def nullified(self) -> Item:
        def null(cols: list[Col] | None) -> list[Col] | None:
            return None if cols is None else [replace(c, nullable=True) for c in cols]

        return Item({k: null(v) for k, v in self.qualified.items()},
                    {k: replace(c, nullable=True) for k, c in self.unqualified.items()},
                    null(self.star))


def _merge_unqualified(*maps: dict[str, Col]) -> dict[str, Col]:
    out: dict[str, Col] = {}
    for m in maps:
        for k, c in m.items():
            out[k] = _AMBIGUOUS if k in out else c
    return out


def _item_of(name: str, cols: list[Col] | None) -> Item:
    return Item({name: cols}, {c.name: c for c in cols or []}, cols)


@dataclass
class Scope:
    catalog: Catalog
    item: Item
    parent: Scope | None = None
    ctes: dict[str, list[Col] | None] = field(default_factory=dict)
    grouped: bool = False  # plain GROUP BY: every group has at least one row
    rollup: bool = False  # grouping sets: grouped columns read NULL in super-aggregate rows
    in_aggregate: bool = False

    def cte(self, name: str) -> tuple[bool, list[Col] | None]:
        scope: Scope | None = self
        while scope is not None:
            if name in scope.ctes:
                return True, scope.ctes[name]
            scope = scope.parent
        return False, None

    def column(self, fields: Sequence[str]) -> bool:
        """Can the column reference ``fields`` be NULL? Unknown references can."""
        scope: Scope | None = self
        while scope is not None:
            found = _lookup(scope.item, fields)
            if found is not None:
                return found.nullable or (self.rollup and not self.in_aggregate and scope is self)
            scope = scope.parent
        return True


def _lookup(item: Item, fields: Sequence[str]) -> Col | None:
    if len(fields) == 1:
        col = item.unqualified.get(fields[0])
        return None if col is _AMBIGUOUS else col
    if fields[-2] in item.qualified:
        cols = item.qualified[fields[-2]]
        if cols is None:
            return Col(fields[-1], True)
        return next((c for c in cols if c.name == fields[-1]), None)
    return None


# -- statements -----------------------------------------------------------------------------


def infer(stmt: Any, catalog: Catalog, parent: Scope | None = None) -> list[bool] | None:
    """For each output column of ``stmt``: can it be NULL? None when not understood."""
    cols = _statement(stmt, catalog, parent)
    return None if cols is None else [c.nullable for c in cols]


def _statement(stmt: Any, catalog: Catalog, parent: Scope | None) -> list[Col] | None:
    if _is(stmt, ast.SelectStmt):
        return _select(stmt, catalog, parent)
    if _is(stmt, (ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt)):
        return _dml(stmt, catalog, parent)
    return None


def _with(stmt: Any, catalog: Catalog, parent: Scope | None) -> Scope | None:
    """A scope holding the CTEs of ``stmt.withClause`` (or ``parent`` when there are none)."""
    wc = getattr(stmt, "withClause", None)
    if wc is None:
        return parent
    scope = Scope(catalog, Item({}, {}, []), parent)
    for cte in wc.ctes or ():
        names = [n.sval for n in cte.aliascolnames or ()]

        def named(cols: list[Col] | None, names: list[str] = names) -> list[Col] | None:
            if cols is None or not names:
                return cols
            return [Col(names[i] if i < len(names) else c.name, c.nullable)
                    for i, c in enumerate(cols)]

        query = cte.ctequery
        if wc.recursive and _is(query, ast.SelectStmt) and query.op != SetOperation.SETOP_NONE:
            scope.ctes[cte.ctename] = named(_statement(query.larg, catalog, scope))
            for _ in range(3):  # the recursive term may widen nullability; settle it
                cols = named(_statement(query, catalog, scope))
                if cols is None or cols == scope.ctes[cte.ctename]:
                    break
                scope.ctes[cte.ctename] = cols
        else:
            cols = named(_statement(query, catalog, scope))
        scope.ctes[cte.ctename] = cols
    return scope


def _select(stmt: Any, catalog: Catalog, parent: Scope | None) -> list[Col] | None:
    outer = _with(stmt, catalog, parent)
    if stmt.op != SetOperation.SETOP_NONE:
        left = _statement(stmt.larg, catalog, outer)
        right = _statement(stmt.rarg, catalog, outer)
        if left is None or right is None or len(left) != len(right):
            return None
        if stmt.op == SetOperation.SETOP_UNION:
            return [Col(a.name, a.nullable or b.nullable) for a, b in zip(left, right, strict=True)]
        if stmt.op == SetOperation.SETOP_INTERSECT:
            return [Col(a.name, a.nullable and b.nullable) for a, b in zip(left, right, strict=True)]
        return left
    if stmt.valuesLists:
        rows = [[_nullable(e, Scope(catalog, Item({}, {}, []), outer)) for e in row]
                for row in stmt.valuesLists]
        return [Col(f"column{i + 1}", any(r[i] for r in rows)) for i in range(len(rows[0]))]
    scope = Scope(catalog, _from_list(stmt.fromClause or (), catalog, outer), outer)
    groups = stmt.groupClause or ()
    scope.rollup = any(_is(g, ast.GroupingSet) for g in groups)
    scope.grouped = bool(groups) and not scope.rollup
    return _targets(stmt.targetList or (), scope)


def _targets(targets: Sequence[Any], scope: Scope) -> list[Col] | None:
    out: list[Col] = []
    for t in targets:
        val = t.val
        if _is(val, ast.ColumnRef) and isinstance(val.fields[-1], ast.A_Star):
            star = _star(scope.item, [f.sval for f in val.fields[:-1]])
            if star is None:
                return None
            out += [replace(c, nullable=c.nullable or scope.rollup) for c in star]
            continue
        out.append(Col(t.name or _figure_name(val), _nullable(val, scope)))
    return out


def _star(item: Item, qualifier: list[str]) -> list[Col] | None:
    if not qualifier:
        return item.star
    return item.qualified.get(qualifier[-1])


def _dml(stmt: Any, catalog: Catalog, parent: Scope | None) -> list[Col] | None:
    clause = getattr(stmt, "returningClause", None)  # pglast 8; 7 has returningList
    returning = clause.exprs if clause is not None else getattr(stmt, "returningList", None)
    if not returning:
        return []
    outer = _with(stmt, catalog, parent)
    target = _range_var(stmt.relation, catalog, outer)
    extra = getattr(stmt, "fromClause", None) or getattr(stmt, "usingClause", None) or ()
    item = _cross([target, _from_list(extra, catalog, outer)]) if extra else target
    return _targets(returning, Scope(catalog, item, outer))


# -- FROM -----------------------------------------------------------------------------------


def _from_list(items: Sequence[Any], catalog: Catalog, scope: Scope | None) -> Item:
    built: list[Item] = []
    for node in items:
        # LATERAL items see the ones before them.
        local = Scope(catalog, _cross(built), scope) if built else scope
        built.append(_from_item(node, catalog, local))
    return _cross(built)


def _cross(items: list[Item]) -> Item:
    qualified: dict[str, list[Col] | None] = {}
    star: list[Col] | None = []
    for it in items:
        qualified.update(it.qualified)
        star = None if star is None or it.star is None else star + it.star
    return Item(qualified, _merge_unqualified(*(it.unqualified for it in items)), star)


def _from_item(node: Any, catalog: Catalog, scope: Scope | None) -> Item:
    if _is(node, ast.RangeVar):
        return _range_var(node, catalog, scope)
    if _is(node, ast.RangeSubselect):
        cols = _statement(node.subquery, catalog, scope)
        return _aliased(node.alias, "subquery", cols)
    if _is(node, ast.JoinExpr):
        return _join(node, catalog, scope)
    # Functions in FROM (set-returning), table samples, XMLTABLE...: columns unknown.
    alias = getattr(node, "alias", None)
    name = alias.aliasname if alias is not None else "?function?"
    return Item({name: None}, {}, None)


def _range_var(rv: Any, catalog: Catalog, scope: Scope | None) -> Item:
    is_cte, cols = (False, None)
    if rv.schemaname is None and scope is not None:
        is_cte, cols = scope.cte(rv.relname)
    if not is_cte:
        cols = catalog.columns(relation_key(rv))
    name = rv.alias.aliasname if rv.alias is not None else rv.relname
    item = _aliased(rv.alias, name, cols)
    if rv.alias is None and rv.schemaname and cols is not None:
        item.qualified[f"{rv.schemaname}.{rv.relname}"] = item.qualified[name]
    return item


def _aliased(alias: Any, default: str, cols: list[Col] | None) -> Item:
    name = alias.aliasname if alias is not None else default
    if cols is not None and alias is not None and alias.colnames:
        names = [n.sval for n in alias.colnames]
        cols = [Col(names[i] if i < len(names) else c.name, c.nullable) for i, c in enumerate(cols)]
    return _item_of(name, cols)


def _join(node: Any, catalog: Catalog, scope: Scope | None) -> Item:
    left = _from_item(node.larg, catalog, scope)
    right = _from_item(node.rarg, catalog, scope)
    kind = node.jointype
    left_out = left.nullified() if kind in (JoinType.JOIN_RIGHT, JoinType.JOIN_FULL) else left
    right_out = right.nullified() if kind in (JoinType.JOIN_LEFT, JoinType.JOIN_FULL) else right
    if node.usingClause:
        common = [n.sval for n in node.usingClause]
    elif node.isNatural:
        right_names = {c.name for c in right.star or []}
        common = [c.name for c in left.star or [] if c.name in right_names]
    else:
        common = []
    merged: list[Col] = []
    for name in common:
        lc, rc = left.unqualified.get(name), right.unqualified.get(name)
        if kind == JoinType.JOIN_FULL:
            nullable = lc is None or rc is None or lc.nullable or rc.nullable
        else:
            src = rc if kind == JoinType.JOIN_RIGHT else lc
            nullable = src is None or src.nullable
        merged.append(Col(name, nullable))
    star: list[Col] | None = None
    if left_out.star is not None and right_out.star is not None:
        star = merged + [c for c in left_out.star if c.name not in common] + \
            [c for c in right_out.star if c.name not in common]
    qualified = {**left_out.qualified, **right_out.qualified}
    unqualified = _merge_unqualified(
        {k: c for k, c in left_out.unqualified.items() if k not in common},
        {k: c for k, c in right_out.unqualified.items() if k not in common},
    )
    unqualified.update({c.name: c for c in merged})
    if node.join_using_alias is not None:
        qualified[node.join_using_alias.aliasname] = merged
    if node.alias is not None:
        return _aliased(node.alias, node.alias.aliasname, star)
    return Item(qualified, unqualified, star)


# -- expressions ----------------------------------------------------------------------------


def _figure_name(node: Any) -> str:
    """The name PostgreSQL gives an unnamed output column (FigureColname)."""
    if _is(node, ast.ColumnRef):
        last = node.fields[-1]
        return last.sval if _is(last, ast.String) else "?column?"
    if _is(node, ast.FuncCall):
        return str(node.funcname[-1].sval)
    if _is(node, ast.TypeCast):
        inner = _figure_name(node.arg)
        return inner if inner != "?column?" else str(node.typeName.names[-1].sval)
    names = {ast.CoalesceExpr: "coalesce", ast.CaseExpr: "case", ast.A_ArrayExpr: "array",
             ast.RowExpr: "row"}
    return names.get(type(node), "?column?")


def _all(nodes: Any, scope: Scope) -> bool:
    """True when no node of ``nodes`` can be NULL."""
    return all(not _nullable(n, scope) for n in nodes or ())


def _nullable(node: Any, scope: Scope) -> bool:
    if _is(node, ast.A_Const):
        return bool(node.isnull)
    if _is(node, ast.ColumnRef):
        return scope.column([f.sval for f in node.fields if _is(f, ast.String)])
    if _is(node, (ast.TypeCast, ast.CollateClause)):
        return _nullable(node.arg, scope)
    if _is(node, (ast.NullTest, ast.BooleanTest)):
        return False
    if _is(node, ast.A_Expr):
        if node.kind in (A_Expr_Kind.AEXPR_DISTINCT, A_Expr_Kind.AEXPR_NOT_DISTINCT):
            return False
        if node.kind == A_Expr_Kind.AEXPR_NULLIF:
            return True
        if node.kind in (A_Expr_Kind.AEXPR_OP_ANY, A_Expr_Kind.AEXPR_OP_ALL):
            return True  # the array may hold NULLs
        args = [node.lexpr, *(node.rexpr if isinstance(node.rexpr, tuple) else [node.rexpr])]
        return not _all([a for a in args if a is not None], scope)
    if _is(node, ast.BoolExpr):
        return not _all(node.args, scope)
    if _is(node, ast.CoalesceExpr):
        return all(_nullable(a, scope) for a in node.args)
    if _is(node, ast.MinMaxExpr):
        return all(_nullable(a, scope) for a in node.args)
    if _is(node, ast.CaseExpr):
        if node.defresult is None:
            return True
        return not (_all([w.result for w in node.args], scope) and _all([node.defresult], scope))
    if _is(node, (ast.SQLValueFunction, ast.A_ArrayExpr, ast.RowExpr)):
        return False
    if _is(node, ast.SubLink):
        return _sublink(node, scope)
    if _is(node, ast.FuncCall):
        return _func(node, scope)
    return True  # parameters, subscripts, field selection, XML, ...: not proven


def _func(node: Any, scope: Scope) -> bool:
    name = node.funcname[-1].sval
    args = node.args or ()
    if name == "count":
        return False
    if node.over is not None:
        default_frame = node.over.frameOptions == _FRAME_DEFAULT and node.agg_filter is None
        if name in _NEVER_NULL_FUNCS or name == "ntile":
            return bool(args) and not _all(args, scope)
        if name in ("lag", "lead"):
            return not (len(args) == 3 and _all(args, scope))
        if name in _FRAME_ROW_FUNCS or name in _GROUP_SAFE_AGGS:
            return not (default_frame and _all(args, scope))
        return True
    if name in _AGGREGATES:
        inner = replace(scope, in_aggregate=True)
        return not (scope.grouped and name in _GROUP_SAFE_AGGS and node.agg_filter is None
                    and _all(args, inner))
    if name in _NEVER_NULL_FUNCS and len(node.funcname) == 1:
        return False
    schema = node.funcname[0].sval if len(node.funcname) == 2 else "pg_catalog"
    if name in _STRICT_TOTAL_FUNCS and schema == "pg_catalog":
        return not _all(args, scope)
    return True


def _sublink(node: Any, scope: Scope) -> bool:
    kind = node.subLinkType
    if kind in (SubLinkType.EXISTS_SUBLINK, SubLinkType.ARRAY_SUBLINK):
        return False
    sub = node.subselect
    cols = _statement(sub, scope.catalog, scope)
    if kind in (SubLinkType.ANY_SUBLINK, SubLinkType.ALL_SUBLINK):
        return not (cols is not None and not any(c.nullable for c in cols)
                    and node.testexpr is not None and not _nullable(node.testexpr, scope))
    if kind == SubLinkType.EXPR_SUBLINK:
        return cols is None or len(cols) != 1 or cols[0].nullable or not one_row(sub)
    return True


def one_row(stmt: Any) -> bool:
    """Does this SELECT always return exactly one row?"""
    if not _is(stmt, ast.SelectStmt) or stmt.op != SetOperation.SETOP_NONE:
        return False
    if stmt.valuesLists or stmt.limitCount is not None or stmt.limitOffset is not None:
        return False
    if stmt.groupClause or stmt.havingClause is not None:
        return False
    if not stmt.fromClause:
        return stmt.whereClause is None
    targets = [t.val for t in stmt.targetList or ()]
    return any(_is(v, ast.FuncCall) and v.over is None and v.funcname[-1].sval in _AGGREGATES
               for v in targets)

