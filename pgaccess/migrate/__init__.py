"""Plain SQL migrations: ordered, checksummed, locked, multi-tenant.

``Migrator(dsn, "migrations").up()`` applies pending ``NNNN_name.sql`` files in version
order, each in one transaction (or statement by statement for files headed
``-- pgaccess: no-transaction``), then repeatable files whose checksum changed, then the
``tenant/`` set to every tenant schema. Bookkeeping lives in ``pgaccess.schema_migrations``
(always schema-qualified). Concurrent runners serialise on a session advisory lock held by
a dedicated, otherwise idle connection. See the README's "Deploying migrations".
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import hashlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from ..errors import MigrationError
from ..log import get_logger
from ..sqlsplit import SplitError, split_statements

log = get_logger("migrate")

LOCK_KEY = 0x7067616363657373  # "pgaccess"
SHARED_SCOPE = "shared"
_NAME = re.compile(r"^(?P<version>\d+)_(?P<name>[A-Za-z0-9][A-Za-z0-9_\-]*)(?P<down>\.down)?\.sql$")
_HEADER = re.compile(r"^--\s*pgaccess:\s*(?P<body>.*)$")
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

BOOKKEEPING = """
CREATE SCHEMA IF NOT EXISTS pgaccess;
-- Other roles may call the narrow function below, never read the tables themselves.
GRANT USAGE ON SCHEMA pgaccess TO PUBLIC;
CREATE TABLE IF NOT EXISTS pgaccess.schema_migrations (
    scope       text NOT NULL,
    version     text NOT NULL,
    name        text NOT NULL,
    kind        text NOT NULL DEFAULT 'versioned',
    checksum    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    duration_ms integer NOT NULL DEFAULT 0,
    applied_by  text NOT NULL DEFAULT current_user,
    PRIMARY KEY (scope, version)
);
CREATE TABLE IF NOT EXISTS pgaccess.migration_progress (
    scope       text NOT NULL,
    version     text NOT NULL,
    checksum    text NOT NULL,
    statements_done integer NOT NULL,
    PRIMARY KEY (scope, version)
);
-- Versions and checksums only (no who/when), for health checks run as the app role.
CREATE OR REPLACE FUNCTION pgaccess.migration_versions()
    RETURNS TABLE (scope text, version text, kind text, checksum text)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog
    AS $fn$ SELECT scope, version, kind, checksum FROM pgaccess.schema_migrations $fn$;
"""


def checksum(text: str) -> str:
    """SHA-256 of the normalised text: BOM stripped, CRLF/CR to LF."""
    normalised = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    return hashlib.sha256(normalised.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class MigrationFile:
    version: str
    name: str
    path: Path
    sql: str
    checksum: str
    transactional: bool = True
    lock_timeout: str = "5s"
    down_path: Path | None = None
    repeatable: bool = False

    @property
    def sort_key(self) -> tuple[int, str]:
        return (int(self.version), self.version) if not self.repeatable else (0, self.version)


@dataclass
class AppliedMigration:
    scope: str
    version: str
    name: str
    kind: str
    checksum: str
    applied_at: Any
    duration_ms: int
    applied_by: str


@dataclass
class Drift:
    version: str
    name: str
    reason: str


@dataclass
class Status:
    applied: list[AppliedMigration]
    pending: list[MigrationFile]
    drift: list[Drift]
    repeatable_pending: list[MigrationFile] = field(default_factory=list)
    tenants: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def up_to_date(self) -> bool:
        return not self.pending and not self.repeatable_pending and all(
            not t["pending"] for t in self.tenants.values()
        )

    def exit_code(self) -> int:
        """0 up to date, 3 something pending, 4 drift (drift wins)."""
        if self.drift:
            return 4
        return 0 if self.up_to_date else 3

    def as_json(self) -> dict[str, Any]:
        return {
            "applied": [
                {
                    "version": a.version, "name": a.name, "checksum": a.checksum,
                    "applied_at": a.applied_at.isoformat() if a.applied_at else None,
                    "duration_ms": a.duration_ms, "applied_by": a.applied_by, "kind": a.kind,
                }
                for a in self.applied
            ],
            "pending": [{"version": p.version, "name": p.name} for p in self.pending]
            + [{"version": p.version, "name": p.name} for p in self.repeatable_pending],
            "drift": [{"version": d.version, "name": d.name, "reason": d.reason} for d in self.drift],
            "tenants": self.tenants,
        }


def _read(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MigrationError(
            f"{path}: not valid UTF-8 (byte {exc.start}); save the file as UTF-8"
        ) from None


def _headers(sql: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in sql.lstrip("\ufeff").splitlines():
        m = _HEADER.match(line.strip())
        if not m:
            break
        for item in m.group("body").split(","):
            key, _, value = item.strip().partition("=")
            out[key.strip()] = value.strip() or "true"
    return out


def load_directory(directory: Path, *, repeatable: bool = False) -> list[MigrationFile]:
    """Parse the migration files of one directory (not recursive)."""
    if not directory.is_dir():
        return []
    files: dict[str, MigrationFile] = {}
    downs: dict[str, Path] = {}
    for path in sorted(directory.iterdir()):
        if not path.is_file() or path.suffix != ".sql":
            continue
        sql = _read(path)
        if repeatable:
            files[path.stem] = _migration(path.stem, path.stem, path, sql, repeatable=True)
            continue
        m = _NAME.match(path.name)
        if not m:
            raise MigrationError(
                f"{path}: bad migration file name; use NNNN_description.sql (a number or a "
                "UTC timestamp YYYYMMDDHHMMSS, then _ and letters, digits, _ or -)"
            )
        version = m.group("version")
        if m.group("down"):
            downs[version] = path
            continue
        if version in files or any(int(v) == int(version) for v in files):
            other = next(f for v, f in files.items() if int(v) == int(version))
            raise MigrationError(
                f"duplicate migration version {version}: {other.path.name} and {path.name}"
            )
        files[version] = _migration(version, m.group("name"), path, sql)
    for version, down in downs.items():
        if version not in files:
            raise MigrationError(f"{down}: down file without its up file")
        files[version] = _replace(files[version], down_path=down)
    return sorted(files.values(), key=lambda f: f.sort_key)


def _migration(version: str, name: str, path: Path, sql: str, repeatable: bool = False) -> MigrationFile:
    headers = _headers(sql)
    try:
        split_statements(sql)
    except SplitError as exc:
        raise MigrationError(f"{path}: {exc}") from None
    return MigrationFile(
        version=version, name=name, path=path, sql=sql, checksum=checksum(sql),
        transactional="no-transaction" not in headers,
        lock_timeout=headers.get("lock_timeout", "5s"),
        repeatable=repeatable,
    )


def _replace(f: MigrationFile, **changes: Any) -> MigrationFile:
    from dataclasses import replace

    return replace(f, **changes)


def tenant_schema_name(tenant_id: Any, prefix: str = "tenant_") -> str:
    """``tenant_<32 hex digits>`` for a UUID tenant id; validated, safe to quote."""
    from ..tenancy import parse_tenant_id

    name = prefix + parse_tenant_id(tenant_id).hex
    return validate_schema_name(name)


def validate_schema_name(name: str) -> str:
    if not _SCHEMA_NAME.match(name) or name.startswith("pg_"):
        raise MigrationError(
            f"invalid schema name {name!r}: use lower-case letters, digits and _ (max 63), "
            "not starting with a digit or pg_"
        )
    return name


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class Migrator:
    """Applies a directory of SQL migrations to one database."""

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
    ) -> None:
        self.dsn = dsn
        self.directory = Path(directory)
        self.lock_wait = lock_timeout
        self.allow_out_of_order = allow_out_of_order
        self.tenant_prefix = tenant_prefix
        self.echo = echo or (lambda line: log.info("migrate", message=line))
        self.progress = progress or (lambda done, total: None)

    # -- files ---------------------------------------------------------------------------

    def files(self) -> list[MigrationFile]:
        if not self.directory.is_dir():
            raise MigrationError(f"migrations directory {self.directory} does not exist")
        return load_directory(self.directory)

    def repeatable_files(self) -> list[MigrationFile]:
        return load_directory(self.directory / "repeatable", repeatable=True)

    def tenant_files(self) -> list[MigrationFile]:
        return load_directory(self.directory / "tenant")

    # -- connections and locking -----------------------------------------------------------

    async def _connect(self) -> asyncpg.Connection:
        from ..pool import _connect_error_message

        try:
            return await asyncpg.connect(self.dsn, timeout=10)
        except Exception as exc:
            raise MigrationError(_connect_error_message(exc, self.dsn)) from exc

    async def _locked(self) -> tuple[asyncpg.Connection, asyncpg.Connection]:
        """Take the advisory lock on a dedicated connection; return (lock_con, work_con)."""
        lock_con = await self._connect()
        deadline = time.monotonic() + self.lock_wait
        try:
            # A transaction pooler hands each transaction to any server connection, so a
            # session advisory lock would not hold. PgBouncer gives clients a made-up backend
            # pid: if it differs from the server's own, refuse.
            if lock_con.get_server_pid() != await lock_con.fetchval("SELECT pg_backend_pid()"):
                raise MigrationError(
                    "this connection goes through a connection pooler (e.g. PgBouncer in "
                    "transaction mode): the migration lock cannot work there. Run migrations "
                    "over a direct connection to PostgreSQL"
                )
            while True:
                try:
                    got = await lock_con.fetchval("SELECT pg_try_advisory_lock($1)", LOCK_KEY)
                except asyncpg.PostgresError as exc:
                    raise MigrationError(
                        f"could not take the migration lock: {exc}. Migrations need a direct "
                        "connection (not through a transaction pooler such as PgBouncer)"
                    ) from exc
                if got:
                    break
                if time.monotonic() > deadline:
                    raise MigrationError(
                        f"another migration runner held the lock for over {self.lock_wait:g}s; "
                        "wait for it to finish or find the stuck session in pg_stat_activity"
                    )
                await asyncio.sleep(0.2)
            work = await self._connect()
            if not await self._has_bookkeeping(work):
                await work.execute(BOOKKEEPING)
        except BaseException:
            await lock_con.close()
            raise
        return lock_con, work

    @staticmethod
    async def _has_bookkeeping(con: asyncpg.Connection) -> bool:
        return bool(
            await con.fetchval(
                "SELECT to_regprocedure('pgaccess.migration_versions()') IS NOT NULL"
            )
        )

    @staticmethod
    async def _unlock(lock_con: asyncpg.Connection, work: asyncpg.Connection) -> None:
        await work.close()
        try:
            await lock_con.execute("SELECT pg_advisory_unlock_all()")
        finally:
            await lock_con.close()

    # -- status ----------------------------------------------------------------------------

    async def _applied(self, con: asyncpg.Connection, scope: str | None = None) -> list[AppliedMigration]:
        if not await self._has_bookkeeping(con):
            return []
        rows = await con.fetch(
            "SELECT scope, version, name, kind, checksum, applied_at, duration_ms, applied_by "
            "FROM pgaccess.schema_migrations WHERE ($1::text IS NULL OR scope = $1) "
            "ORDER BY scope, kind DESC, length(version), version",
            scope,
        )
        return [AppliedMigration(**dict(r)) for r in rows]

    async def status(self) -> Status:
        files = self.files()
        repeatables = self.repeatable_files()
        tenant_files = self.tenant_files()
        con = await self._connect()
        try:
            applied_all = await self._applied(con)
            schemas = await self._tenant_schemas(con) if tenant_files else []
        finally:
            await con.close()
        shared = [a for a in applied_all if a.scope == SHARED_SCOPE]
        status = self._compare(shared, files, repeatables)
        by_scope: dict[str, list[AppliedMigration]] = {}
        for a in applied_all:
            by_scope.setdefault(a.scope, []).append(a)
        for schema in schemas:
            sub = self._compare(by_scope.get(schema, []), tenant_files, [])
            status.tenants[schema] = {
                "applied": len(sub.applied),
                "latest": sub.applied[-1].version if sub.applied else None,
                "pending": [p.version for p in sub.pending],
                "drift": [d.__dict__ for d in sub.drift],
            }
            status.drift += [Drift(d.version, f"{schema}:{d.name}", d.reason) for d in sub.drift]
        return status

    @staticmethod
    def _compare(
        applied: list[AppliedMigration], files: list[MigrationFile], repeatables: list[MigrationFile]
    ) -> Status:
        by_version = {f.version: f for f in files}
        by_int = {int(f.version): f for f in files}
        drift: list[Drift] = []
        versioned = [a for a in applied if a.kind != "repeatable"]
        for a in versioned:
            f = by_version.get(a.version) or by_int.get(int(a.version))
            if f is None:
                drift.append(Drift(a.version, a.name, "file missing"))
            elif a.kind != "baseline" and f.checksum != a.checksum:
                drift.append(Drift(a.version, a.name, "checksum changed since it was applied"))
        done = {int(a.version) for a in versioned}
        pending = [f for f in files if int(f.version) not in done]
        rep_applied = {a.version: a.checksum for a in applied if a.kind == "repeatable"}
        rep_pending = [r for r in repeatables if rep_applied.get(r.version) != r.checksum]
        return Status(applied=versioned + [a for a in applied if a.kind == "repeatable"],
                      pending=pending, drift=drift, repeatable_pending=rep_pending)

    async def _tenant_schemas(self, con: asyncpg.Connection) -> list[str]:
        rows = await con.fetch(
            "SELECT nspname FROM pg_namespace WHERE starts_with(nspname, $1) ORDER BY nspname",
            self.tenant_prefix,
        )
        return [r["nspname"] for r in rows]

    # -- applying --------------------------------------------------------------------------

    async def up(
        self, *, to: str | None = None, dry_run: bool = False, tenant: Any = None,
        tenants: bool = True,
    ) -> list[str]:
        """Apply what is pending; return the versions applied (or planned, with dry_run)."""
        files = self.files()
        if to is not None:
            files = [f for f in files if int(f.version) <= int(to)]
        done: list[str] = []
        lock_con, work = await self._locked()
        try:
            applied = await self._applied(work, SHARED_SCOPE)
            status = self._compare(applied, files, self.repeatable_files() if to is None else [])
            self._refuse_out_of_order(applied, status.pending)
            for f in status.pending:
                if dry_run:
                    self.echo(f"would apply {f.version} {f.name}")
                else:
                    await self._apply(work, f, SHARED_SCOPE, None)
                done.append(f.version)
            for r in status.repeatable_pending:
                if dry_run:
                    self.echo(f"would re-apply repeatable {r.name}")
                else:
                    await self._apply(work, r, SHARED_SCOPE, None)
                done.append(r.version)
            if tenants and self.tenant_files():
                if tenant is not None:
                    schemas = [tenant_schema_name(tenant, self.tenant_prefix)]
                else:
                    schemas = await self._tenant_schemas(work)
                failures = await self._up_tenants(work, schemas, dry_run)
                if failures:
                    raise MigrationError(
                        "tenant schema migrations failed in "
                        f"{len(failures)} schema(s); the others are up to date:\n"
                        + "\n".join(f"  {s}: {e}" for s, e in failures.items())
                    )
        finally:
            await self._unlock(lock_con, work)
        return done

    def _refuse_out_of_order(self, applied: list[AppliedMigration], pending: list[MigrationFile]) -> None:
        versioned = [int(a.version) for a in applied if a.kind != "repeatable"]
        if not versioned or self.allow_out_of_order:
            return
        highest = max(versioned)
        late = [f for f in pending if int(f.version) < highest]
        if late:
            names = ", ".join(f.path.name for f in late)
            raise MigrationError(
                f"out-of-order migration(s) {names}: version lower than the highest applied "
                f"({highest}). Renumber them after {highest}, or pass --allow-out-of-order"
            )

    async def _up_tenants(
        self, work: asyncpg.Connection, schemas: list[str], dry_run: bool
    ) -> dict[str, str]:
        files = self.tenant_files()
        applied_rows = await work.fetch(
            "SELECT scope, version FROM pgaccess.schema_migrations WHERE scope = ANY($1::text[])",
            schemas,
        )
        done: dict[str, set[int]] = {}
        for r in applied_rows:
            done.setdefault(r["scope"], set()).add(int(r["version"]))
        failures: dict[str, str] = {}
        for number, schema in enumerate(schemas, start=1):
            self.progress(number, len(schemas))
            for f in files:
                if int(f.version) in done.get(schema, set()):
                    continue
                if dry_run:
                    self.echo(f"would apply {f.version} {f.name} to {schema}")
                    continue
                try:
                    await self._apply(work, f, schema, schema)
                except MigrationError as exc:
                    failures[schema] = str(exc)
                    break
        return failures

    async def provision_tenant(self, tenant_id: Any) -> str:
        """Create the tenant's schema (if missing) and apply ``tenant/`` migrations to it."""
        schema = tenant_schema_name(tenant_id, self.tenant_prefix)
        lock_con, work = await self._locked()
        try:
            await work.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)}")
            failures = await self._up_tenants(work, [schema], dry_run=False)
        finally:
            await self._unlock(lock_con, work)
        if failures:
            raise MigrationError(failures[schema])
        return schema

    async def _apply(
        self, con: asyncpg.Connection, f: MigrationFile, scope: str, schema: str | None
    ) -> None:
        start = time.perf_counter()
        if f.transactional:
            await self._apply_transactional(con, f, scope, schema, start)
        else:
            await self._apply_statements(con, f, scope, schema, start)
        await con.execute("RESET ALL")
        where = f" to {schema}" if schema else ""
        self.echo(f"applied {f.version} {f.name}{where} in {(time.perf_counter() - start) * 1000:.0f} ms")

    async def _apply_transactional(
        self, con: asyncpg.Connection, f: MigrationFile, scope: str, schema: str | None,
        start: float,
    ) -> None:
        statements = split_statements(f.sql)
        tx = con.transaction()
        await tx.start()
        try:
            await con.execute(f"SET LOCAL lock_timeout = '{_duration(f.lock_timeout)}'")
            if schema:
                await con.execute(f"SET LOCAL search_path = {quote_ident(schema)}")
            for st in statements:
                await self._exec(con, f, st)
            await self._record(con, f, scope, start)
        except BaseException:
            await tx.rollback()
            raise
        await tx.commit()

    async def _apply_statements(
        self, con: asyncpg.Connection, f: MigrationFile, scope: str, schema: str | None,
        start: float,
    ) -> None:
        statements = split_statements(f.sql)
        progress = await con.fetchrow(
            "SELECT statements_done, checksum FROM pgaccess.migration_progress "
            "WHERE scope = $1 AND version = $2",
            scope, f.version,
        )
        done = 0
        # Resume only if the statements already run are unchanged (the failing one and those
        # after it may have been fixed since).
        if progress and progress["checksum"] == _prefix_checksum(statements, progress["statements_done"]):
            done = progress["statements_done"]
        if done:
            self.echo(f"resuming {f.version} {f.name} after statement {done}/{len(statements)}")
        if schema:
            await con.execute(f"SET search_path = {quote_ident(schema)}")
        await con.execute(f"SET lock_timeout = '{_duration(f.lock_timeout)}'")
        for index, st in enumerate(statements[done:], start=done + 1):
            try:
                await self._exec(con, f, st)
            except MigrationError as exc:
                invalid = await con.fetch(
                    "SELECT indexrelid::regclass::text AS name FROM pg_index WHERE NOT indisvalid"
                )
                if invalid:
                    names = ", ".join(r["name"] for r in invalid)
                    raise MigrationError(
                        f"{exc}\ninvalid index(es) left behind: {names}; DROP INDEX CONCURRENTLY "
                        "them before re-running"
                    ) from exc.__cause__
                raise
            await con.execute(
                "INSERT INTO pgaccess.migration_progress (scope, version, checksum, statements_done) "
                "VALUES ($1, $2, $3, $4) ON CONFLICT (scope, version) DO UPDATE "
                "SET checksum = EXCLUDED.checksum, statements_done = EXCLUDED.statements_done",
                scope, f.version, _prefix_checksum(statements, index), index,
            )
        async with con.transaction():
            await self._record(con, f, scope, start)
            await con.execute(
                "DELETE FROM pgaccess.migration_progress WHERE scope = $1 AND version = $2",
                scope, f.version,
            )

    async def _exec(self, con: asyncpg.Connection, f: MigrationFile, st: Any) -> None:
        try:
            await con.execute(st.text)
        except asyncpg.PostgresError as exc:
            line = st.line
            position = getattr(exc, "position", None)
            if position:
                with contextlib.suppress(ValueError):
                    line = f.sql.count("\n", 0, st.start + int(position) - 1) + 1
            hint = ""
            if getattr(exc, "sqlstate", "") == "55P03":
                hint = (f"; the statement waited longer than lock_timeout={f.lock_timeout} for a "
                        "lock held by another session: retry when the table is less busy, or "
                        "raise it with a '-- pgaccess: lock_timeout=30s' header")
            raise MigrationError(
                f"{f.path}:{line}: migration {f.version} failed with SQLSTATE "
                f"{getattr(exc, 'sqlstate', '?')}: {exc}{hint}. Nothing of this file was "
                + ("applied." if f.transactional else "applied past the statements before it.")
            ) from exc

    @staticmethod
    async def _record(con: asyncpg.Connection, f: MigrationFile, scope: str, start: float) -> None:
        await con.execute(
            "INSERT INTO pgaccess.schema_migrations "
            "(scope, version, name, kind, checksum, duration_ms, applied_by) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (scope, version) DO UPDATE SET "
            "checksum = EXCLUDED.checksum, applied_at = now(), duration_ms = EXCLUDED.duration_ms",
            scope, f.version, f.name, "repeatable" if f.repeatable else "versioned",
            f.checksum, int((time.perf_counter() - start) * 1000), _who(),
        )

    # -- other commands --------------------------------------------------------------------

    async def verify(self) -> list[Drift]:
        return (await self.status()).drift

    async def down(self, *, to: str | None = None) -> list[str]:
        files = {int(f.version): f for f in self.files()}
        lock_con, work = await self._locked()
        reverted: list[str] = []
        try:
            applied = [a for a in await self._applied(work, SHARED_SCOPE) if a.kind != "repeatable"]
            applied.sort(key=lambda a: int(a.version))
            targets = [a for a in applied if int(a.version) > int(to)] if to is not None else applied[-1:]
            targets.reverse()
            missing = [a for a in targets if files.get(int(a.version)) is None
                       or files[int(a.version)].down_path is None]
            if missing:
                raise MigrationError(
                    "refusing down: no down file for " + ", ".join(
                        f"{a.version}_{a.name}" for a in missing) + "; write NNNN_name.down.sql"
                )
            for a in targets:
                f = files[int(a.version)]
                assert f.down_path is not None
                down_sql = _read(f.down_path)
                down = _replace(f, sql=down_sql, path=f.down_path)
                async with work.transaction():
                    for st in split_statements(down_sql):
                        await self._exec(work, down, st)
                    await work.execute(
                        "DELETE FROM pgaccess.schema_migrations WHERE scope = $1 AND version = $2",
                        SHARED_SCOPE, a.version,
                    )
                self.echo(f"reverted {a.version} {a.name}")
                reverted.append(a.version)
        finally:
            await self._unlock(lock_con, work)
        return reverted

    async def baseline(self, version: str) -> list[str]:
        files = [f for f in self.files() if int(f.version) <= int(version)]
        lock_con, work = await self._locked()
        try:
            if await self._applied(work, SHARED_SCOPE):
                raise MigrationError("baseline refused: this database already has applied migrations")
            async with work.transaction():
                for f in files:
                    await work.execute(
                        "INSERT INTO pgaccess.schema_migrations (scope, version, name, kind, checksum) "
                        "VALUES ($1, $2, $3, 'baseline', $4)",
                        SHARED_SCOPE, f.version, f.name, f.checksum,
                    )
        finally:
            await self._unlock(lock_con, work)
        return [f.version for f in files]

    def new(self, description: str) -> Path:
        slug = re.sub(r"[^A-Za-z0-9]+", "_", description.strip()).strip("_").lower()
        if not slug:
            raise MigrationError("give the migration a description, e.g. `new add_invoices`")
        self.directory.mkdir(parents=True, exist_ok=True)
        existing = load_directory(self.directory)
        width = max((len(f.version) for f in existing), default=4)
        number = max((int(f.version) for f in existing), default=0) + 1
        path = self.directory / f"{number:0{width}d}_{slug}.sql"
        path.write_text(f"-- {description.strip()}\n")
        return path

    async def lint(self) -> list[str]:
        from .lint import rls_lint

        con = await self._connect()
        try:
            return await rls_lint(con)
        finally:
            await con.close()


def _prefix_checksum(statements: list[Any], count: int) -> str:
    return checksum("\n;\n".join(st.text for st in statements[:count]))


def _duration(value: str) -> str:
    if not re.fullmatch(r"\d+(ms|s|min)?", value):
        raise MigrationError(f"bad lock_timeout header value {value!r}; use e.g. 500ms, 5s, 1min")
    return value


def _who() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
