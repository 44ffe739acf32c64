"""Applying one migration file to one scope: in a transaction, or statement by statement.

Transactional files run whole in one transaction with ``SET LOCAL lock_timeout`` (and
``statement_timeout`` if the file sets one); a lock timeout rolls the file back and retries it
with backoff. ``-- pgaccess: no-transaction`` files run statement by statement, record their
progress after each one and resume after the last statement done; a lock timeout retries just
that statement. A file is recorded in ``pgaccess.schema_migrations`` only when it is complete
and has passed the ``before_commit`` check (the RLS gate), in the same transaction.
"""

from __future__ import annotations

import contextlib
import functools
import getpass
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg

from ..errors import MigrationError
from .files import MigrationFile, checksum
from .retry import LOCK_NOT_AVAILABLE, LockRetry, with_sqlstate
from .split import Statement
from .tenants import quote_ident

RECORD_SQL = (
    "INSERT INTO pgaccess.schema_migrations "
    "(scope, version, name, kind, checksum, duration_ms, applied_by) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (scope, version) DO UPDATE SET "
    "checksum = EXCLUDED.checksum, applied_at = now(), duration_ms = EXCLUDED.duration_ms"
)
PROGRESS_SQL = (
    "INSERT INTO pgaccess.migration_progress (scope, version, checksum, statements_done) "
    "VALUES ($1, $2, $3, $4) ON CONFLICT (scope, version) DO UPDATE "
    "SET checksum = EXCLUDED.checksum, statements_done = EXCLUDED.statements_done"
)
PROGRESS_DONE_SQL = "DELETE FROM pgaccess.migration_progress WHERE scope = $1 AND version = $2"


@dataclass
class Applier:
    echo: Callable[[str], None]
    retry: LockRetry
    before: Callable[[asyncpg.Connection], Awaitable[object]] | None = None
    before_commit: Callable[[asyncpg.Connection, MigrationFile, object], Awaitable[None]] | None = None

    async def apply(self, con: asyncpg.Connection, f: MigrationFile, scope: str,
                    schema: str | None) -> None:
        start = time.perf_counter()
        where = f" to {schema}" if schema else ""
        try:
            if f.transactional:
                await self.retry.run(f"{f.label}{where}",
                                     lambda: self._transactional(con, f, scope, schema, start),
                                     self.echo)
            else:
                await self._statements(con, f, scope, schema, start)
        finally:
            if not con.is_closed():
                await con.execute("RESET ALL")
        self.echo(f"applied {f.label}{where} in {(time.perf_counter() - start) * 1000:.0f} ms")

    async def _transactional(self, con: asyncpg.Connection, f: MigrationFile, scope: str,
                             schema: str | None, start: float) -> None:
        async with con.transaction():
            await con.execute(_settings(f, schema, local=True))
            baseline = await self.before(con) if self.before else None
            for st in f.statements:
                await execute(con, f, st)
            if self.before_commit:
                await self.before_commit(con, f, baseline)
            await record(con, f, scope, start)

    async def _statements(self, con: asyncpg.Connection, f: MigrationFile, scope: str,
                          schema: str | None, start: float) -> None:
        statements = f.statements
        progress = await con.fetchrow(
            "SELECT statements_done, checksum FROM pgaccess.migration_progress "
            "WHERE scope = $1 AND version = $2", scope, f.version)
        done = 0
        # Resume only if the statements already run are unchanged (the failing one and those
        # after it may have been fixed since).
        if progress and progress["checksum"] == prefix_checksum(statements, progress["statements_done"]):
            done = progress["statements_done"]
        if done:
            self.echo(f"resuming {f.label} after statement {done}/{len(statements)}")
        await con.execute(_settings(f, schema, local=False))
        baseline = await self.before(con) if self.before and not done else None
        where = f" to {schema}" if schema else ""
        for index, st in enumerate(statements[done:], start=done + 1):
            await self.retry.run(f"{f.label}{where} statement {index}",
                                 functools.partial(_execute_reporting_invalid, con, f, st), self.echo)
            await con.execute(PROGRESS_SQL, scope, f.version, prefix_checksum(statements, index), index)
        async with con.transaction():
            if self.before_commit and baseline is not None:
                await self.before_commit(con, f, baseline)
            await record(con, f, scope, start)
            await con.execute(PROGRESS_DONE_SQL, scope, f.version)


def _settings(f: MigrationFile, schema: str | None, *, local: bool) -> str:
    set_ = "SET LOCAL" if local else "SET"
    parts = [f"{set_} lock_timeout = '{f.lock_timeout}'"]
    if f.statement_timeout is not None:
        parts.append(f"{set_} statement_timeout = '{f.statement_timeout}'")
    if schema:
        parts.append(f"{set_} search_path = {quote_ident(schema)}")
    return "; ".join(parts)


async def _execute_reporting_invalid(con: asyncpg.Connection, f: MigrationFile, st: Statement) -> None:
    try:
        await execute(con, f, st)
    except MigrationError as exc:
        invalid = await con.fetch(
            "SELECT indexrelid::regclass::text AS name FROM pg_index WHERE NOT indisvalid")
        if invalid:
            names = ", ".join(r["name"] for r in invalid)
            # Not retried even after a lock timeout: the index must be dropped first.
            raise MigrationError(
                f"{exc}\ninvalid index(es) left behind: {names}; DROP INDEX CONCURRENTLY "
                "them before re-running"
            ) from exc.__cause__
        raise


async def execute(con: asyncpg.Connection, f: MigrationFile, st: Statement) -> None:
    """Run one statement; a failure names the file, line and SQLSTATE."""
    try:
        await con.execute(st.text)
    except asyncpg.PostgresError as exc:
        line = st.line
        position = getattr(exc, "position", None)
        if position:
            with contextlib.suppress(ValueError):
                line = f.sql.count("\n", 0, st.start + int(position) - 1) + 1
        sqlstate = getattr(exc, "sqlstate", None)
        hint = ""
        if sqlstate == LOCK_NOT_AVAILABLE:
            hint = (f"; the statement waited longer than lock_timeout={f.lock_timeout} for a "
                    "lock held by another session: retry when the table is less busy, or "
                    "raise it with a '-- pgaccess: lock_timeout=30s' header")
        raise with_sqlstate(MigrationError(
            f"{f.path}:{line}: migration {f.version} failed with SQLSTATE {sqlstate or '?'}: "
            f"{exc}{hint}. Nothing of this file was "
            + ("applied." if f.transactional else "applied past the statements before it.")
        ), sqlstate) from exc


async def record(con: asyncpg.Connection, f: MigrationFile, scope: str, start: float) -> None:
    await con.execute(
        RECORD_SQL, scope, f.version, f.name, "repeatable" if f.repeatable else "versioned",
        f.checksum, int((time.perf_counter() - start) * 1000), who())


def prefix_checksum(statements: tuple[Statement, ...], count: int) -> str:
    return checksum("\n;\n".join(st.text for st in statements[:count]))


def who() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
