"""Static lock and compatibility rules over migration files, on pglast parse trees.

Files are read in order as one sequence, so a constraint added ``NOT VALID`` in one file and
validated in a later one is known when a third statement relies on it. A table created in the
same file is exempt from every rule: nobody else can be using it yet.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from pglast import ast, parse_sql
from pglast.enums import AlterTableType, ConstrType, NullTestType, ObjectType
from pglast.parser import ParseError
from pglast.visitors import Visitor

from .files import MigrationFile
from .findings import Finding, one_line
from .locks import name
from .split import Statement

# Volatile functions that commonly appear as column defaults. User-defined functions are not
# looked up (that needs a database); waive or restructure if one of yours is volatile.
VOLATILE = frozenset({
    "random", "gen_random_uuid", "uuid_generate_v1", "uuid_generate_v1mc", "uuid_generate_v4",
    "uuidv4", "uuidv7", "clock_timestamp", "timeofday", "nextval", "random_normal",
    "txid_current", "pg_current_xact_id",
})
_SERIAL = frozenset({"serial", "serial4", "bigserial", "serial8", "smallserial", "serial2"})


@dataclass
class ParsedStatement:
    statement: Statement
    node: ast.Node | None  # None when it does not parse
    error: str | None = None


def parse(f: MigrationFile) -> list[ParsedStatement]:
    out: list[ParsedStatement] = []
    for st in f.statements:
        try:
            raws = parse_sql(st.text)
        except ParseError as exc:
            out.append(ParsedStatement(st, None, str(exc.args[0])))
            continue
        out.extend(ParsedStatement(st, raw.stmt) for raw in raws)
    return out


@dataclass
class _SetState:
    """What earlier statements of the sequence established."""

    not_null_checks: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (table, col)
    validated: set[tuple[str, str]] = field(default_factory=set)  # (table, col) proven not null


def check_sequence(files: Sequence[MigrationFile]) -> dict[str, list[Finding]]:
    """Raw (not yet waiver-filtered) findings per file path, for files in order."""
    state = _SetState()
    return {str(f.path): list(_FileChecker(f, state).run()) for f in files}


class _FileChecker:
    def __init__(self, f: MigrationFile, state: _SetState) -> None:
        self.f = f
        self.state = state
        self.created: set[str] = set()
        self.not_valid_here: set[str] = set()

    def run(self) -> Iterator[Finding]:
        for p in parse(self.f):
            if p.node is None:
                yield self._finding("unparsable", "?", p.statement, detail=f"does not parse: {p.error}")
                continue
            yield from self._check(p.node, p.statement)

    def _finding(self, rule: str, table: str, st: Statement, detail: str | None = None) -> Finding:
        return Finding(rule, table, str(self.f.path), st.line, one_line(st.code), detail)

    def _existing(self, rv: ast.RangeVar | None) -> bool:
        return rv is not None and _relname(rv) not in self.created

    def _check(self, node: ast.Node, st: Statement) -> Iterator[Finding]:
        if isinstance(node, ast.CreateStmt):
            self.created.add(_relname(node.relation))
        elif isinstance(node, ast.CreateTableAsStmt) and node.into is not None:
            self.created.add(_relname(node.into.rel))
        elif isinstance(node, ast.IndexStmt):
            yield from self._index(node, st)
        elif isinstance(node, ast.AlterTableStmt) and node.objtype == ObjectType.OBJECT_TABLE:
            for cmd in node.cmds or ():
                yield from self._alter(node.relation, cmd, st)
        elif isinstance(node, ast.RenameStmt):
            yield from self._rename(node, st)
        elif isinstance(node, ast.VacuumStmt):
            if any(o.defname == "full" for o in node.options or ()):
                for r in node.rels or ():
                    if self._existing(r.relation):
                        yield self._finding("vacuum-full", name(r.relation), st)
                if not node.rels:
                    yield self._finding("vacuum-full", "every table", st)
        elif isinstance(node, ast.ClusterStmt) and (
                node.relation is None or self._existing(node.relation)):
            yield self._finding("cluster", name(node.relation) if node.relation else
                                    "every clustered table", st)

    def _index(self, node: ast.IndexStmt, st: Statement) -> Iterator[Finding]:
        if node.concurrent and self.f.transactional:
            yield self._finding("concurrently-in-transaction", name(node.relation), st)
        elif not node.concurrent and self._existing(node.relation):
            yield self._finding("index-not-concurrent", name(node.relation), st)

    def _alter(self, rel: ast.RangeVar | None, cmd: ast.AlterTableCmd, st: Statement) -> Iterator[Finding]:
        table = name(rel)
        sub = cmd.subtype
        if sub == AlterTableType.AT_ValidateConstraint:
            yield from self._validate(rel, str(cmd.name), st)
            return
        if isinstance(cmd.def_, ast.Constraint) and sub == AlterTableType.AT_AddConstraint:
            self._remember_not_null_check(rel, cmd.def_)
        if not self._existing(rel):
            return
        if sub == AlterTableType.AT_AlterColumnType:
            yield self._finding("alter-column-type", table, st)
        elif sub == AlterTableType.AT_AddColumn and isinstance(cmd.def_, ast.ColumnDef):
            yield from self._add_column(table, cmd.def_, st)
        elif sub == AlterTableType.AT_SetNotNull:
            if (_relname(rel), cmd.name) not in self.state.validated:
                yield self._finding("set-not-null", table, st)
        elif sub == AlterTableType.AT_AddConstraint and isinstance(cmd.def_, ast.Constraint):
            yield from self._constraint(table, cmd.def_, st)
        elif sub == AlterTableType.AT_DropColumn:
            yield self._finding("drop-column", table, st, detail=(
                f"dropping column {cmd.name}: application code still selecting or inserting it "
                "breaks the moment it goes"))

    def _add_column(self, table: str, col: ast.ColumnDef, st: Statement) -> Iterator[Finding]:
        type_name = str(col.typeName.names[-1].sval) if col.typeName and col.typeName.names else ""
        for c in col.constraints or ():
            if c.contype == ConstrType.CONSTR_DEFAULT and _volatile_call(c.raw_expr):
                yield self._finding("add-column-rewrite", table, st, detail=(
                    f"column {col.colname}: the volatile default {_volatile_call(c.raw_expr)}() "
                    "is evaluated per row, so PostgreSQL rewrites the whole table"))
            elif c.contype in (ConstrType.CONSTR_IDENTITY, ConstrType.CONSTR_GENERATED):
                yield self._finding("add-column-rewrite", table, st)
            else:
                yield from self._constraint(table, c, st)
        if type_name in _SERIAL:
            yield self._finding("add-column-rewrite", table, st, detail=(
                f"column {col.colname}: {type_name} defaults to nextval(), evaluated per row, "
                "so PostgreSQL rewrites the whole table"))

    def _constraint(self, table: str, c: ast.Constraint, st: Statement) -> Iterator[Finding]:
        if c.contype in (ConstrType.CONSTR_FOREIGN, ConstrType.CONSTR_CHECK):
            if c.skip_validation:
                if c.conname and self.f.transactional:
                    self.not_valid_here.add(str(c.conname))
            else:
                yield self._finding("constraint-not-valid", table, st)
        elif c.contype in (ConstrType.CONSTR_UNIQUE, ConstrType.CONSTR_PRIMARY) and not c.indexname:
            yield self._finding("unique-without-index", table, st)

    def _validate(self, rel: ast.RangeVar | None, conname: str, st: Statement) -> Iterator[Finding]:
        if conname in self.not_valid_here:
            yield self._finding("validate-in-same-transaction", name(rel), st)
        column = self.state.not_null_checks.get(conname)
        if column is not None:
            self.state.validated.add(column)

    def _remember_not_null_check(self, rel: ast.RangeVar | None, c: ast.Constraint) -> None:
        expr = c.raw_expr
        if (c.contype == ConstrType.CONSTR_CHECK and c.conname and isinstance(expr, ast.NullTest)
                and expr.nulltesttype == NullTestType.IS_NOT_NULL
                and isinstance(expr.arg, ast.ColumnRef) and expr.arg.fields):
            column = str(expr.arg.fields[-1].sval)
            self.state.not_null_checks[str(c.conname)] = (_relname(rel), column)
            if not c.skip_validation:
                self.state.validated.add((_relname(rel), column))

    def _rename(self, node: ast.RenameStmt, st: Statement) -> Iterator[Finding]:
        renamed = {ObjectType.OBJECT_TABLE: "table", ObjectType.OBJECT_COLUMN: "column",
                   ObjectType.OBJECT_VIEW: "view", ObjectType.OBJECT_MATVIEW: "materialized view"}
        what = renamed.get(node.renameType) if node.renameType is not None else None
        if what and self._existing(node.relation):
            old = node.subname if node.renameType == ObjectType.OBJECT_COLUMN else name(node.relation)
            yield self._finding("rename", name(node.relation), st, detail=(
                f"renaming {what} {old} to {node.newname}: application code using the old name "
                "breaks the moment it changes"))


class _FuncNames(Visitor):
    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def visit_FuncCall(self, ancestors: object, node: ast.FuncCall) -> None:
        if node.funcname:
            self.names.append(str(node.funcname[-1].sval).lower())


def _relname(rv: ast.RangeVar | None) -> str:
    return str(rv.relname) if rv is not None else "?"


def _volatile_call(expr: ast.Node | None) -> str | None:
    if expr is None:
        return None
    v = _FuncNames()
    v(expr)
    return next((n for n in v.names if n in VOLATILE), None)
