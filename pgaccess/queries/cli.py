"""``python -m pgaccess.queries check|gen`` (also ``pgaccess queries``).

``check`` prepares and explains every named query (as the app role, RLS on) on ``--dsn`` or
``$DATABASE_URL`` or, without either, on a throwaway server (the one the tests would use:
``$PGACCESS_TEST_DSN``, this machine's PostgreSQL binaries or a container) migrated from the
project's migrations, with its app and admin roles; it reports parameters and
columns with types and nullability and fails on broken queries, operator mismatches,
``IN :list``, row classes that disagree and a stale lock file. ``check --offline`` verifies
the Python side against the lock file without a database. ``gen`` writes row classes and a
typed ``Queries`` class (``queries(uow).name(...)``) for mypy. ``--sql``, ``--migrations``
and ``--rows`` default to ``[tool.pgaccess]`` (``PGACCESS_SQL``, ... override it).

Exit codes: 0 ok, 1 problems found (each names file and line), 2 usage.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg

from ..cli import EXIT_FAIL, EXIT_OK, load_project, parser, print_json, run, table
from ..config import with_database, with_user
from ..errors import ConfigError, PgAccessError
from ..project import ProjectConfig
from . import load_queries
from .check import check_queries, load_lock, load_row_classes, lock_data, offline_errors
from .gen import generate


@asynccontextmanager
async def database(dsn: str | None, project: ProjectConfig) -> AsyncIterator[tuple[str, str, str | None]]:
    """(owner, app, admin DSNs): ``dsn`` (then ``$DATABASE_URL``), with the system context on
    ``$PGACCESS_ADMIN_URL`` when set; else a throwaway server migrated from the project."""
    dsn = dsn or os.environ.get("DATABASE_URL")
    if dsn:
        yield dsn, dsn, os.environ.get("PGACCESS_ADMIN_URL")
        return
    async with throwaway_database(project) as dsns:
        yield dsns


@asynccontextmanager
async def throwaway_database(project: ProjectConfig) -> AsyncIterator[tuple[str, str, str | None]]:
    """A database migrated from the project's migrations on the server the tests would use
    (:func:`pgaccess.devdb.servers.start_test_server`); app and admin DSNs log in as the
    project's roles when the migrations created them."""
    from ..devdb.clone import admin_exec, drop_database, unique_name
    from ..devdb.servers import start_test_server
    from ..migrate import Migrator

    server = await asyncio.to_thread(start_test_server)
    name = unique_name("pgaccess_queries_check")
    try:
        await admin_exec(server.dsn, f'CREATE DATABASE "{name}"')
        owner = with_database(server.dsn, name)
        await Migrator(owner, project.migrations, echo=lambda _: None,
                       app_role=project.app_role, admin_role=project.admin_role,
                       core=project.core_schema,
                       tenant_prefix=project.tenant_schema_prefix).up()
        con = await asyncpg.connect(owner)
        try:
            has_app = await con.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", project.app_role)
        finally:
            await con.close()
        if has_app:
            yield owner, with_user(owner, project.app_role), with_user(owner, project.admin_role)
        else:
            yield owner, owner, None
    finally:
        if server.owned:
            await asyncio.to_thread(server.stop)
        else:
            await drop_database(server.dsn, name)


def row_classes(project: ProjectConfig) -> dict[str, type[Any]]:
    """The dataclasses of the configured ``rows`` module, importable from the project's root."""
    if not project.rows:
        return {}
    if str(project.root) not in sys.path:
        sys.path.insert(0, str(project.root))  # the project's package, not installed
    try:
        return load_row_classes(project.rows)
    except ImportError as exc:
        raise ConfigError(
            f"rows = {project.rows!r} (from {project.sources.get('rows', 'default')}) cannot "
            f"be imported: {exc}; set rows in [tool.pgaccess] or pass --rows MODULE") from None


def main(argv: Sequence[str] | None = None) -> int:
    p = parser(
        "pgaccess queries",
        "Check named SQL against a real database, or generate row classes from it.",
        "pgaccess queries check --json   # sql, migrations and rows from [tool.pgaccess]",
    )
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("check", "gen"):
        c = sub.add_parser(name)
        c.add_argument("--dsn", help="database URL (default: $DATABASE_URL, else a throwaway "
                       "server migrated from --migrations); $PGACCESS_ADMIN_URL checks "
                       "`-- context: system` queries")
        c.add_argument("--sql", help="named SQL directory (default: sql of [tool.pgaccess])")
        c.add_argument("--migrations", help="migrations for the throwaway database when --dsn "
                       "is not given (default: migrations of [tool.pgaccess])")
        c.add_argument("--rows", help="module whose dataclasses are the row classes (-- row: "
                       "Name; default: rows of [tool.pgaccess])")
    check = sub.choices["check"]
    check.add_argument("--lock", help="lock file (default: SQL_DIR/queries.lock.json)")
    check.add_argument("--update-lock", action="store_true", help="write the lock file")
    check.add_argument("--offline", action="store_true", help="verify against the lock file only")
    check.add_argument("--json", action="store_true")
    gen = sub.choices["gen"]
    gen.add_argument("--out", help="write here (default: stdout)")
    gen.add_argument("--check", action="store_true", help="fail if --out is not up to date")
    args = p.parse_args(argv)

    async def body() -> int:
        project = load_project(sql=args.sql, migrations=args.migrations, rows=args.rows)
        try:
            queries = load_queries(project.sql)
        except PgAccessError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_FAIL
        rows = row_classes(project)
        if args.command == "check":
            lock_path = Path(args.lock or project.sql / "queries.lock.json")
            if args.offline:
                errors = offline_errors(queries, load_lock(lock_path), rows)
                for e in errors:
                    print(e, file=sys.stderr)
                if not errors:
                    print(f"ok: {len(queries)} queries match {lock_path}")
                return EXIT_FAIL if errors else EXIT_OK
            async with database(args.dsn, project) as (_, app_dsn, admin_dsn):
                report = await check_queries(app_dsn, queries, admin_dsn=admin_dsn, row_classes=rows)
            data = lock_data(report)
            if args.update_lock:
                lock_path.write_text(_json(data))
            elif lock_path.exists() and load_lock(lock_path) != data:
                report.errors.append(f"{lock_path} is stale: the database describes the queries "
                                     "differently; run check --update-lock and commit it")
            if args.json:
                print_json(report.as_json())
            else:
                print(table(["query", "file", "op", "params", "columns"], [
                    (q.name, f"{q.file}:{q.line}", q.operation,
                     ", ".join(f"{x.name}: {x.type}" for x in q.params),
                     ", ".join(f"{c.name}: {c.python_type}{'?' if c.nullable else ''}" for c in q.columns))
                    for q in report.queries]))
                for e in report.errors:
                    print(f"error: {e}", file=sys.stderr)
            return EXIT_FAIL if report.errors else EXIT_OK
        async with database(args.dsn, project) as (owner, app_dsn, admin_dsn):
            report = await check_queries(app_dsn, queries, admin_dsn=admin_dsn, row_classes={})
            text = await generate(owner, report)
        if args.check:
            current = Path(args.out).read_text() if args.out and Path(args.out).exists() else ""
            if current != text:
                print(f"error: {args.out} is out of date; run `python -m pgaccess.queries gen "
                      f"--out {args.out}`", file=sys.stderr)
                return EXIT_FAIL
            print(f"ok: {args.out} is up to date")
        elif args.out:
            Path(args.out).write_text(text)
        else:
            print(text, end="")
        return EXIT_OK

    return run(body)


def _json(data: object) -> str:
    import json

    return json.dumps(data, indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    sys.exit(main())
