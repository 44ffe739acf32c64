"""``Migrator``: status, lint, plan, up (shared, repeatable, tenant schemas), down, baseline."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from ..config import redact
from ..errors import MigrationError
from ..log import get_logger
from ..schema import CORE_SCOPE, SUPERSEDED, core_files
from .apply import Applier, execute
from .files import MigrationFile, down_file, load_directory, new_file
from .lint import (
    LintFailed,
    LintReport,
    RlsGate,
    catalogue_waivers,
    lint_database,
    lint_files,
)
from .plan import Plan, plan_file
from .retry import LockRetry
from .session import connect, migration_lock
from .state import (
    SHARED_SCOPE,
    AppliedMigration,
    Drift,
    Status,
    applied_and_schemas,
    compare,
    tenant_status,
)
from .tenants import Rollout, RolloutReport, quote_ident, roll_out, tenant_schema_name

log = get_logger("migrate")


@dataclass
class UpReport:
    applied: list[str] = field(default_factory=list)  # shared and repeatable versions
    rollout: RolloutReport | None = None
    lint: LintReport | None = None
    core: list[str] = field(default_factory=list)  # pgaccess core schema versions

    def as_json(self) -> dict[str, Any]:
        return {"applied": self.applied, "core": self.core,
                "tenants": self.rollout.as_json() if self.rollout else None,
                "lint": self.lint.as_json() if self.lint else None}


@dataclass
class _Pending:
    core: list[MigrationFile]
    shared: list[MigrationFile]
    repeatable: list[MigrationFile]
    tenants: dict[str, list[MigrationFile]]
    drift: list[Drift]
    lint: LintReport | None
    out_of_order: str | None


class Migrator:
    """Applies pgaccess's core schema, then a directory of SQL migrations, to one database.

    ``core=False`` leaves the core schema out (a database that does not use pgaccess's
    tenancy); ``app_role``/``admin_role`` name the roles the core schema creates and the
    lint checks grants for.
    """

    def __init__(
        self,
        dsn: str,
        directory: str | Path = "migrations",
        *,
        lock_timeout: float = 120.0,
        allow_out_of_order: bool = False,
        tenant_prefix: str = "tenant_",
        echo: Callable[[str], None] | None = None,
        progress: Callable[[int, int], None] | None = None,
        lock_retry: LockRetry | None = None,
        app_role: str | None = "pgaccess_app",
        admin_role: str = "pgaccess_admin",
        core: bool = True,
    ) -> None:
        self.dsn = dsn
        self.directory = Path(directory)
        self.lock_wait = lock_timeout  # for the runners' advisory lock, not lock_timeout
        self.allow_out_of_order = allow_out_of_order
        self.tenant_prefix = tenant_prefix
        self.echo = echo or (lambda line: log.info("migrate", message=line))
        self.progress = progress or (lambda done, total: None)
        self.lock_retry = lock_retry or LockRetry()
        self.app_role = app_role
        self.admin_role = admin_role
        self.core = core

    # -- files ---------------------------------------------------------------------------

    def files(self) -> list[MigrationFile]:
        if not self.directory.is_dir():
            raise MigrationError(f"migrations directory {self.directory} does not exist")
        return load_directory(self.directory)

    def repeatable_files(self) -> list[MigrationFile]:
        return load_directory(self.directory / "repeatable", repeatable=True)

    def tenant_files(self) -> list[MigrationFile]:
        return load_directory(self.directory / "tenant")

    def core_files(self) -> list[MigrationFile]:
        return core_files(self.app_role or "pgaccess_app", self.admin_role) if self.core else []

    def all_files(self) -> list[MigrationFile]:
        return self.files() + self.repeatable_files() + self.tenant_files()

    def new(self, description: str) -> Path:
        """Create the next numbered empty file (no database involved)."""
        return new_file(self.directory, description)

    # -- reading the database ----------------------------------------------------------------

    async def status(self) -> Status:
        files, repeatables, tenant_files = self.files(), self.repeatable_files(), self.tenant_files()
        con = await connect(self.dsn)
        try:
            applied_all, schemas = await applied_and_schemas(
                con, tenant_prefix=self.tenant_prefix if tenant_files else None)
        finally:
            await con.close()
        status = compare([a for a in applied_all if a.scope == SHARED_SCOPE], files, repeatables,
                         SUPERSEDED if self.core else ())
        status.tenants, tenant_drift = tenant_status(applied_all, schemas, tenant_files)
        status.drift += tenant_drift
        core = self._core_status(applied_all)
        status.core_applied, status.core_pending = core.applied, core.pending
        status.drift += core.drift
        return status

    def _core_status(self, applied_all: list[AppliedMigration]) -> Status:
        core = compare([a for a in applied_all if a.scope == CORE_SCOPE], self.core_files(), [])
        core.drift = [Drift(d.version, f"pgaccess core {d.name}", d.reason) for d in core.drift]
        return core

    async def verify(self) -> list[Drift]:
        return (await self.status()).drift

    def lint_files(self) -> LintReport:
        """The static lock rules on every file (no database involved)."""
        report = lint_files(self.files() + self.repeatable_files())
        report.findings += lint_files(self.tenant_files()).findings
        return report

    async def lint(self) -> LintReport:
        """The static rules on every file and the catalogue RLS rules on the database."""
        report = self.lint_files()
        con = await connect(self.dsn)
        try:
            db = await lint_database(con, catalogue_waivers(self.all_files()), self.app_role)
        finally:
            await con.close()
        report.findings += db.findings
        return report

    async def plan(self, *, to: str | None = None, tenant: Any = None, tenants: bool = True) -> Plan:
        """What ``up`` would do, statement by statement, with locks and lint findings."""
        con = await connect(self.dsn)
        try:
            pending = await self._pending(con, to, tenant, tenants, lint=True)
        finally:
            await con.close()
        plan = Plan(redact(self.dsn), drift=pending.drift, lint=pending.lint)
        plan.core = [plan_file(CORE_SCOPE, f, None) for f in pending.core]
        plan.shared = [plan_file(SHARED_SCOPE, f, pending.lint)
                       for f in pending.shared + pending.repeatable]
        for schema, files in pending.tenants.items():
            plan.tenants[schema] = [f.version for f in files]
            for f in files:
                if f.version not in plan.tenant_files:
                    plan.tenant_files[f.version] = plan_file("<tenant schema>", f, pending.lint)
        if pending.drift:
            plan.refusals.append(_drift_message(pending.drift))
        if pending.lint and pending.lint.blocking:
            plan.refusals.append(f"{len(pending.lint.blocking)} unwaived lint finding(s)")
        if pending.out_of_order:
            plan.refusals.append(pending.out_of_order)
        return plan

    async def _pending(self, con: asyncpg.Connection, to: str | None, tenant: Any,
                       tenants: bool, *, lint: bool) -> _Pending:
        files = self.files()
        target = [f for f in files if to is None or int(f.version) <= int(to)]
        repeatables = self.repeatable_files() if to is None else []
        tenant_files = self.tenant_files() if tenants else []
        applied_all, schemas = await applied_and_schemas(
            con, tenant_prefix=self.tenant_prefix if tenant_files and tenant is None else None)
        shared_applied = [a for a in applied_all if a.scope == SHARED_SCOPE]
        superseded = SUPERSEDED if self.core else ()
        status = compare(shared_applied, target, repeatables, superseded)
        core = self._core_status(applied_all)
        drift = compare(shared_applied, files, [], superseded).drift + core.drift
        if tenant is not None and tenant_files:
            schemas = [tenant_schema_name(tenant, self.tenant_prefix)]
        by_scope: dict[str, list[AppliedMigration]] = {}
        for a in applied_all:
            by_scope.setdefault(a.scope, []).append(a)
        plan: dict[str, list[MigrationFile]] = {}
        for schema in schemas if tenant_files else []:
            sub = compare(by_scope.get(schema, []), tenant_files, [])
            plan[schema] = sub.pending
            drift += [Drift(d.version, f"{schema}:{d.name}", d.reason) for d in sub.drift]
        report = None
        if lint:
            shared_pending = status.pending + status.repeatable_pending
            tenant_pending = {f.path: f for fs in plan.values() for f in fs}
            report = lint_files(files + self.repeatable_files(), report_on=shared_pending)
            report.findings += lint_files(tenant_files, report_on=list(tenant_pending.values())).findings
        return _Pending(core.pending, status.pending, status.repeatable_pending, plan, drift, report,
                        self._out_of_order(shared_applied, status.pending))

    # -- applying --------------------------------------------------------------------------

    async def up(self, *, to: str | None = None, dry_run: bool = False, tenant: Any = None,
                 tenants: bool = True, lint: bool = True, allow_drift: bool = False,
                 rollout: Rollout | None = None) -> list[str]:
        """Apply what is pending; return the shared versions applied (or planned)."""
        if dry_run:
            plan = await self.plan(to=to, tenant=tenant, tenants=tenants)
            for line in plan.render():
                self.echo(line)
            return plan.versions
        report = await self.up_report(to=to, tenant=tenant, tenants=tenants, lint=lint,
                                      allow_drift=allow_drift, rollout=rollout)
        return report.applied

    async def up_report(self, *, to: str | None = None, tenant: Any = None, tenants: bool = True,
                        lint: bool = True, allow_drift: bool = False,
                        rollout: Rollout | None = None) -> UpReport:
        """``up`` with the per-tenant rollout report. Nothing is applied if the lint or the
        drift check refuses; raises :class:`RolloutFailed` (with the report) on tenant failures."""
        report = UpReport()
        async with migration_lock(self.dsn, self.lock_wait) as work:
            pending = await self._pending(work, to, tenant, tenants, lint=lint)
            if pending.out_of_order:
                raise MigrationError(pending.out_of_order)
            if pending.drift and not allow_drift:
                raise MigrationError(_drift_message(pending.drift) + "; nothing was applied. "
                                     "Restore the files, or pass --allow-drift")
            if not lint:
                log.warning("migration_lint_skipped", directory=str(self.directory))
                self.echo("lint skipped (--no-lint)")
            elif pending.lint and pending.lint.blocking:
                raise LintFailed(
                    f"refusing to apply anything: {len(pending.lint.blocking)} unwaived lint "
                    "finding(s) (waive one with `-- pgaccess:nolint RULE: reason` before the "
                    "statement, or pass --no-lint):\n"
                    + "\n".join(f"  {x}" for x in pending.lint.blocking), pending.lint.blocking)
            report.lint = pending.lint
            core = Applier(lambda line: self.echo(f"pgaccess core: {line}"), self.lock_retry)
            for f in pending.core:
                await core.apply(work, f, CORE_SCOPE, None)
                report.core.append(f.version)
            shared = self._applier(gate=lint)
            for f in pending.shared + pending.repeatable:
                await shared.apply(work, f, SHARED_SCOPE, None)
                report.applied.append(f.version)
            if pending.tenants:
                tenant_applier = self._applier(gate=False)

                async def apply_one(con: asyncpg.Connection, f: MigrationFile, schema: str) -> None:
                    await tenant_applier.apply(con, f, schema, schema)

                report.rollout = await roll_out(
                    pending.tenants, rollout or Rollout(), first=work,
                    connect=lambda: connect(self.dsn), apply=apply_one, progress=self.progress)
        return report

    def _applier(self, *, gate: bool) -> Applier:
        if not gate:
            return Applier(self.echo, self.lock_retry)
        rls = RlsGate(catalogue_waivers(self.all_files()), self.app_role)
        return Applier(self.echo, self.lock_retry, before=rls.before, before_commit=rls.check)

    def _out_of_order(self, applied: list[AppliedMigration], pending: list[MigrationFile]) -> str | None:
        versioned = [int(a.version) for a in applied if a.kind != "repeatable"]
        if not versioned or self.allow_out_of_order:
            return None
        highest = max(versioned)
        late = [f for f in pending if int(f.version) < highest]
        if not late:
            return None
        return (f"out-of-order migration(s) {', '.join(f.path.name for f in late)}: version lower "
                f"than the highest applied ({highest}). Renumber them after {highest}, or pass "
                "--allow-out-of-order")

    async def provision_tenant(self, tenant_id: Any) -> str:
        """Create the tenant's schema (if missing) and apply ``tenant/`` migrations to it."""
        schema = tenant_schema_name(tenant_id, self.tenant_prefix)
        files = self.tenant_files()
        async with migration_lock(self.dsn, self.lock_wait) as work:
            await work.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)}")
            applied, _ = await applied_and_schemas(work, scope=schema)
            applier = self._applier(gate=False)
            for f in compare(applied, files, []).pending:
                await applier.apply(work, f, schema, schema)
        return schema

    # -- other commands --------------------------------------------------------------------

    async def down(self, *, to: str | None = None) -> list[str]:
        files = {int(f.version): f for f in self.files()}
        reverted: list[str] = []
        async with migration_lock(self.dsn, self.lock_wait) as work:
            applied, _ = await applied_and_schemas(work, scope=SHARED_SCOPE)
            versioned = sorted((a for a in applied if a.kind != "repeatable"), key=lambda a: int(a.version))
            targets = [a for a in versioned if int(a.version) > int(to)] if to is not None else versioned[-1:]
            targets.reverse()
            missing = [a for a in targets if files.get(int(a.version)) is None
                       or files[int(a.version)].down_path is None]
            if missing:
                raise MigrationError(
                    "refusing down: no down file for " + ", ".join(
                        f"{a.version}_{a.name}" for a in missing) + "; write NNNN_name.down.sql"
                )
            for a in targets:
                down = down_file(files[int(a.version)])
                async with work.transaction():
                    for st in down.statements:
                        await execute(work, down, st)
                    await work.execute(
                        "DELETE FROM pgaccess.schema_migrations WHERE scope = $1 AND version = $2",
                        SHARED_SCOPE, a.version,
                    )
                self.echo(f"reverted {a.version} {a.name}")
                reverted.append(a.version)
        return reverted

    async def baseline(self, version: str) -> list[str]:
        files = [f for f in self.files() if int(f.version) <= int(version)]
        async with migration_lock(self.dsn, self.lock_wait) as work:
            applied, _ = await applied_and_schemas(work, scope=SHARED_SCOPE)
            if applied:
                raise MigrationError("baseline refused: this database already has applied migrations")
            async with work.transaction():
                for f in files:
                    await work.execute(
                        "INSERT INTO pgaccess.schema_migrations (scope, version, name, kind, checksum) "
                        "VALUES ($1, $2, $3, 'baseline', $4)",
                        SHARED_SCOPE, f.version, f.name, f.checksum,
                    )
        return [f.version for f in files]


def _drift_message(drift: list[Drift]) -> str:
    return ("checksum drift (as `migrate status` reports): "
            + "; ".join(f"{d.version} {d.name}: {d.reason}" for d in drift))
