"""The dry-run plan: what ``up`` would do, per database and tenant schema, without doing it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pglast import parse_sql
from pglast.parser import ParseError

from .files import MigrationFile
from .findings import Finding, one_line
from .lint import LintReport
from .locks import locks
from .state import Drift


@dataclass
class PlannedStatement:
    line: int
    sql: str
    locks: list[str]

    def as_json(self) -> dict[str, Any]:
        return {"line": self.line, "sql": self.sql, "locks": self.locks}


@dataclass
class PlannedFile:
    scope: str
    file: MigrationFile
    statements: list[PlannedStatement]
    findings: list[Finding]

    @property
    def bookkeeping(self) -> list[str]:
        f = self.file
        kind = "repeatable" if f.repeatable else "versioned"
        record = (f"INSERT INTO pgaccess.schema_migrations (scope {self.scope!r}, version "
                  f"{f.version!r}, kind {kind!r}, checksum {f.checksum[:12]}...)")
        if f.transactional:
            return [f"{record} in the file's own transaction"]
        return [f"UPSERT pgaccess.migration_progress after each of its {len(self.statements)} "
                "statement(s)", f"{record} and DELETE its migration_progress row, in one transaction"]

    def as_json(self) -> dict[str, Any]:
        f = self.file
        return {
            "version": f.version, "name": f.name, "path": str(f.path), "repeatable": f.repeatable,
            "transactional": f.transactional, "lock_timeout": f.lock_timeout,
            "statement_timeout": f.statement_timeout,
            "statements": [s.as_json() for s in self.statements],
            "findings": [x.as_json() for x in self.findings],
            "bookkeeping": self.bookkeeping,
        }


def plan_file(scope: str, f: MigrationFile, lint: LintReport | None) -> PlannedFile:
    statements = []
    for st in f.statements:
        try:
            taken = [lock for raw in parse_sql(st.text) if raw.stmt is not None
                     for lock in locks(raw.stmt)]
        except ParseError:
            taken = ["unknown (does not parse)"]
        statements.append(PlannedStatement(st.line, one_line(st.code, 200), taken))
    findings = [x for x in (lint.findings if lint else []) if x.file == str(f.path)]
    return PlannedFile(scope, f, statements, findings)


@dataclass
class Plan:
    database: str
    shared: list[PlannedFile] = field(default_factory=list)
    core: list[PlannedFile] = field(default_factory=list)  # pgaccess's own schema, applied first
    tenants: dict[str, list[str]] = field(default_factory=dict)  # schema -> pending versions
    tenant_files: dict[str, PlannedFile] = field(default_factory=dict)  # version -> planned file
    drift: list[Drift] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)  # why `up` would refuse to start
    lint: LintReport | None = None

    @property
    def versions(self) -> list[str]:
        return [p.file.version for p in self.shared]

    def totals(self) -> dict[str, int]:
        tenant_files = sum(len(v) for v in self.tenants.values())
        tenant_statements = sum(len(self.tenant_files[v].statements)
                                for vs in self.tenants.values() for v in vs)
        return {
            "shared_files": len(self.shared),
            "shared_statements": sum(len(p.statements) for p in self.shared),
            "tenant_schemas": sum(1 for v in self.tenants.values() if v),
            "tenant_files": tenant_files,
            "tenant_statements": tenant_statements,
            "lint_findings": len(self.lint.blocking) if self.lint else 0,
            "lint_waived": len(self.lint.waived) if self.lint else 0,
        }

    def as_json(self) -> dict[str, Any]:
        return {
            "database": self.database,
            "core": [p.as_json() for p in self.core],
            "shared": [p.as_json() for p in self.shared],
            "tenants": self.tenants,
            "tenant_files": {v: p.as_json() for v, p in self.tenant_files.items()},
            "drift": [d.__dict__ for d in self.drift],
            "refusals": self.refusals,
            "totals": self.totals(),
        }

    def render(self) -> list[str]:
        out = [f"database {self.database}"]
        out += [f"  would apply pgaccess core schema {p.file.label}" for p in self.core]
        for p in self.shared:
            out += _render_file(p, "  ")
        groups: dict[tuple[str, ...], list[str]] = {}
        for schema, versions in self.tenants.items():
            if versions:
                groups.setdefault(tuple(versions), []).append(schema)
        for group, schemas in groups.items():
            shown = ", ".join(schemas[:5]) + (f" and {len(schemas) - 5} more" if len(schemas) > 5 else "")
            out.append(f"  tenant schemas ({len(schemas)}): {shown}")
            for v in group:
                out += _render_file(self.tenant_files[v], "    ")
        t = self.totals()
        out.append(
            f"total: {t['shared_files']} shared file(s), {t['shared_statements']} statement(s); "
            f"{t['tenant_files']} tenant file application(s) over {t['tenant_schemas']} "
            f"schema(s), {t['tenant_statements']} statement(s); {t['lint_findings']} lint "
            f"finding(s), {t['lint_waived']} waived")
        out += [f"up would refuse: {r}" for r in self.refusals]
        return out


def _render_file(p: PlannedFile, indent: str) -> list[str]:
    f = p.file
    mode = "one transaction" if f.transactional else "no transaction, statement by statement"
    timeouts = f"lock_timeout={f.lock_timeout}" + (
        f", statement_timeout={f.statement_timeout}" if f.statement_timeout else "")
    out = [f"{indent}would apply {f.label} ({mode}; {timeouts})"]
    for st in p.statements:
        lock = "; ".join(st.locks) if st.locks else "no table lock"
        out.append(f"{indent}  line {st.line}: {st.sql}")
        out.append(f"{indent}    locks: {lock}")
        for x in p.findings:
            if x.line == st.line:
                out.append(f"{indent}    {'WAIVED' if x.waived else 'LINT'}: {x}")
    out += [f"{indent}  bookkeeping: {b}" for b in p.bookkeeping]
    return out
