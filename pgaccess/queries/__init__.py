"""Named SQL loaded by aiosql, run through the unit of work.

``load_queries("sql/")`` parses every ``*.sql`` file with aiosql's loader and returns a
:class:`QuerySet`. Two things are added on top of aiosql, as a thin adapter rather than a fork:

* parameters inside dollar-quoted bodies (``$$ ... :x ... $$``) are not taken as
  parameters (aiosql 15's parser does not know dollar quotes);
* every call goes through the unit of work, so it is timed, logged (without values), mapped
  to typed errors, and checked for missing or unknown parameter names.

A malformed file, a duplicate query name or an unknown query name raises
:class:`~pgaccess.errors.QueryLoadError` naming the file and line.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import aiosql
from aiosql.adapters.asyncpg import AsyncPGAdapter
from aiosql.queries import Queries
from aiosql.query_loader import QueryLoader
from aiosql.types import QueryDatum, SQLOperationType

from ..errors import ParameterError, QueryLoadError


class Runner(Protocol):
    """What named queries run on: an executor (a unit of work or autocommit statements)."""

    async def run(self, method: Any, sql: str, args: Sequence[Any], name: str | None,
                  *, vetted: bool = False) -> Any: ...


__all__ = ["NamedQuery", "QuerySet", "load_queries", "load_queries_from_str"]

_DOLLAR_QUOTE = re.compile(r"\$(?P<tag>[A-Za-z_][A-Za-z_0-9]*)?\$.*?\$(?P=tag)?\$", re.DOTALL)
_MASK = "pgaccessmask{}x"

OPERATIONS = {
    SQLOperationType.SELECT: "select",
    SQLOperationType.SELECT_ONE: "select_one",
    SQLOperationType.SELECT_VALUE: "select_value",
    SQLOperationType.INSERT_RETURNING: "insert_returning",
    SQLOperationType.INSERT_UPDATE_DELETE: "execute",
    SQLOperationType.INSERT_UPDATE_DELETE_MANY: "execute_many",
    SQLOperationType.SCRIPT: "script",
}


def mask_dollar_quotes(sql: str) -> tuple[str, dict[str, str]]:
    """Replace each ``$tag$...$tag$`` body by a colon-free token; return text and the map."""
    masks: dict[str, str] = {}

    def _sub(m: re.Match[str]) -> str:
        token = _MASK.format(len(masks))
        masks[token] = m.group(0)
        return token

    return _DOLLAR_QUOTE.sub(_sub, sql), masks


def unmask(sql: str, masks: dict[str, str]) -> str:
    for token, original in masks.items():
        sql = sql.replace(token, original)
    return sql


# aiosql's documented extension is a QueryLoader subclass (``loader_cls``); the hook it offers
# for a query's text, ``_make_query_datum``, and the adapter's parameter order, ``var_sorted``,
# are not public. aiosql is pinned below its next major version, and both are checked here, at
# import, so an incompatible aiosql fails loudly instead of mis-parsing queries.
if not callable(getattr(QueryLoader, "_make_query_datum", None)) or not hasattr(
    AsyncPGAdapter(), "var_sorted"  # type: ignore[no-untyped-call,unused-ignore]
):
    raise ImportError(
        f"pgaccess needs aiosql 15.x (found {getattr(aiosql, '__version__', '?')}): "
        "QueryLoader._make_query_datum or AsyncPGAdapter.var_sorted is missing; "
        "install 'aiosql>=15,<16'"
    )


class _Loader(QueryLoader):
    """aiosql's loader, with dollar-quoted bodies hidden from its parameter parser."""

    def _make_query_datum(
        self, query: str, ns_parts: list[str], floc: tuple[Path | str, int]
    ) -> QueryDatum:
        masked, masks = mask_dollar_quotes(query)
        datum: QueryDatum = super()._make_query_datum(masked, ns_parts, floc)
        if masks:
            datum = datum._replace(sql=unmask(datum.sql, masks))
        return datum


class _Adapter(AsyncPGAdapter):  # type: ignore[misc,unused-ignore]
    """aiosql's asyncpg adapter, calling through the unit of work (``conn`` is a UoW)."""

    def maybe_order_params(self, query_name: str, parameters: Any) -> list[Any]:
        names = self.var_sorted[query_name]
        if isinstance(parameters, dict):
            missing = [n for n in names if n not in parameters]
            unknown = [k for k in parameters if k not in names]
            if missing or unknown:
                raise ParameterError(
                    f"query {query_name}: "
                    + (f"missing parameters {missing}" if missing else "")
                    + ("; " if missing and unknown else "")
                    + (f"unknown parameters {unknown}" if unknown else "")
                    + f"; it takes {names or 'no parameters'}"
                )
            return [parameters[n] for n in names]
        raise ParameterError(f"query {query_name}: pass parameters by name ({names})")

    async def select(  # type: ignore[override,unused-ignore]
        self, conn: Runner, query_name: str, sql: str, parameters: Any, record_class: Any = None
    ) -> AsyncIterator[Any]:
        args = self.maybe_order_params(query_name, parameters)
        for row in await conn.run("fetch", sql, args, query_name, vetted=True):
            yield row

    async def select_one(
        self, conn: Runner, query_name: str, sql: str, parameters: Any, record_class: Any = None
    ) -> Any:
        args = self.maybe_order_params(query_name, parameters)
        return await conn.run("fetchrow", sql, args, query_name, vetted=True)

    async def select_value(
        self, conn: Runner, query_name: str, sql: str, parameters: Any
    ) -> Any:
        args = self.maybe_order_params(query_name, parameters)
        return await conn.run("fetchval", sql, args, query_name, vetted=True)

    async def insert_returning(
        self, conn: Runner, query_name: str, sql: str, parameters: Any
    ) -> Any:
        args = self.maybe_order_params(query_name, parameters)
        row = await conn.run("fetchrow", sql, args, query_name, vetted=True)
        if row is None:
            return None
        return row[0] if len(row) == 1 else row

    async def insert_update_delete(
        self, conn: Runner, query_name: str, sql: str, parameters: Any
    ) -> int:
        args = self.maybe_order_params(query_name, parameters)
        status: str = await conn.run("execute", sql, args, query_name, vetted=True)
        tail = status.rsplit(" ", 1)[-1]
        return int(tail) if tail.isdigit() else 0

    async def insert_update_delete_many(
        self, conn: Runner, query_name: str, sql: str, parameters: Any
    ) -> None:
        rows = [self.maybe_order_params(query_name, p) for p in parameters]
        await conn.run("executemany", sql, (rows,), query_name, vetted=True)

    async def execute_script(self, conn: Runner, sql: str) -> str:
        result: str = await conn.run("execute", sql, (), None, vetted=True)
        return result


@dataclass(frozen=True, slots=True)
class NamedQuery:
    """One named query: what aiosql parsed, and where it came from."""

    name: str
    operation: str
    sql: str
    params: tuple[str, ...]
    file: str
    line: int
    doc: str


class QuerySet:
    """The queries of a directory. ``qs[name]`` describes one; ``qs.bind(uow)`` runs them."""

    def __init__(self, data: list[QueryDatum], adapter: _Adapter) -> None:
        self._adapter = adapter
        self._queries = Queries(cast(Any, adapter), kwargs_only=True).load_from_list(data)
        self.queries: dict[str, NamedQuery] = {}
        for d in data:
            self.queries[d.query_name] = NamedQuery(
                name=d.query_name,
                operation=OPERATIONS[d.operation_type],
                sql=d.sql,
                params=tuple(adapter.var_sorted.get(d.query_name, ())),
                file=str(d.floc[0]),
                line=int(d.floc[1]),
                doc=d.doc_comments,
            )

    def __getitem__(self, name: str) -> NamedQuery:
        try:
            return self.queries[name]
        except KeyError:
            raise QueryLoadError(
                f"no query named {name!r}; known: {', '.join(sorted(self.queries)) or 'none'}"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self.queries

    def __iter__(self) -> Any:
        return iter(self.queries.values())

    def __len__(self) -> int:
        return len(self.queries)

    def bind(self, uow: Runner) -> BoundQueries:
        return BoundQueries(self, uow)

    async def call(self, uow: Runner, name: str, params: dict[str, Any]) -> Any:
        """Run query ``name`` in ``uow``; selects return a list of records."""
        query = self[name]
        fn = getattr(self._queries, name)
        if query.operation == "select":
            return [row async for row in fn(uow, **params)]
        if query.operation == "execute_many":
            return await fn(uow, params.get("rows", []))
        return await fn(uow, **params)


class BoundQueries:
    """``uow.q``: attribute access to the named queries, bound to a unit of work."""

    __slots__ = ("_qs", "_uow")

    def __init__(self, qs: QuerySet, uow: Runner) -> None:
        self._qs = qs
        self._uow = uow

    def __getattr__(self, name: str) -> Any:
        qs, uow = self._qs, self._uow
        query = qs[name]  # raises QueryLoadError for an unknown name

        async def run(*args: Any, **params: Any) -> Any:
            if args and not query.params:
                raise ParameterError(f"query {name} takes no parameters; got {len(args)}")
            if args:
                example = ", ".join(f"{p}=..." for p in query.params)
                raise ParameterError(f"query {name}: pass parameters by name, not position: "
                                     f"uow.q.{name}({example})")
            return await qs.call(uow, name, params)

        run.__name__ = name
        return run


def _load(data_of: Any, where: str) -> QuerySet:
    adapter = _Adapter()  # type: ignore[no-untyped-call,unused-ignore]
    loader = _Loader(cast(Any, adapter), None, attribute=None, mandatory_parameters=True)
    try:
        data: list[QueryDatum] = data_of(loader)
    except (aiosql.SQLParseException, aiosql.SQLLoadException) as exc:
        raise QueryLoadError(f"{exc} (in {where})") from exc
    except UnicodeDecodeError as exc:
        raise QueryLoadError(f"{where}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from exc
    seen: dict[str, QueryDatum] = {}
    for d in data:
        if d.query_name in seen:
            first = seen[d.query_name]
            raise QueryLoadError(
                f"duplicate query name {d.query_name!r}: {d.floc[0]}:{d.floc[1]} and "
                f"{first.floc[0]}:{first.floc[1]}; query names are global across files"
            )
        seen[d.query_name] = d
    return QuerySet(data, adapter)


def load_queries(path: str | Path) -> QuerySet:
    """Load every ``*.sql`` file under ``path`` (a directory or one file), sorted by name."""
    root = Path(path)
    if not root.exists():
        raise QueryLoadError(f"SQL path {root} does not exist")
    files = sorted(root.rglob("*.sql")) if root.is_dir() else [root]

    def data_of(loader: _Loader) -> list[QueryDatum]:
        out: list[QueryDatum] = []
        for f in files:
            raw = f.read_bytes()
            if b"\x00" in raw:
                raise QueryLoadError(f"{f}: binary file (NUL bytes); named SQL files are text")
            out += loader.load_query_data_from_sql(raw.decode("utf-8"), [], f)
        return out

    return _load(data_of, str(root))


def load_queries_from_str(sql: str, name: str = "<string>") -> QuerySet:
    return _load(lambda loader: loader.load_query_data_from_sql(sql, [], name), name)
