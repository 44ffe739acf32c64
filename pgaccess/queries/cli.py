"""``python -m pgaccess.queries check|gen`` (also ``pgaccess queries``).

``check`` prepares and explains every named query (as the app role, RLS on) on ``--dsn`` or
``$DATABASE_URL`` or, without either, on a throwaway server (PostgreSQL binaries of this
machine, or ``$PGACCESS_TEST_DSN``) migrated from ``--migrations``; it reports parameters and
columns with types and nullability and fails on broken queries, operator mismatches,
``IN :list``, row classes that disagree and a stale lock file. ``check --offline`` verifies
the Python side against the lock file without a database. ``gen`` writes row classes and a
typed ``Queries`` class (``queries(uow).name(...)``) for mypy.

Exit codes: 0 ok, 1 problems found (each names file and line), 2 usage.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg

from ..cli import EXIT_FAIL, EXIT_OK, parser, print_json, run, table
from ..config import with_database, with_user
from ..errors import PgAccessError
from . import load_queries
from .check import check_queries, load_lock, load_row_classes, lock_data, offline_errors
from .gen import generate


@asynccontextmanager
async def database(dsn: str | None, migrations: str) -> AsyncIterator[tuple[str, str, str | None]]:
    """(owner, app, admin DSNs): ``dsn`` (then ``$DATABASE_URL``), with the system context on
    ``$PGACCESS_ADMIN_URL`` when set; else a throwaway server migrated from ``migrations``."""
    dsn = dsn or os.environ.get("DATABASE_URL")
    if dsn:
        yield dsn, dsn, os.environ.get("PGACCESS_ADMIN_URL")
        return
    async with throwaway_database(migrations) as dsns:
        yield dsns


@asynccontextmanager
async def throwaway_database(migrations: str) -> AsyncIterator[tuple[str, str, str | None]]:
    """A private cluster (or ``$PGACCESS_TEST_DSN``'s server) with a migrated database."""
    from ..cluster import temporary_cluster
    from ..migrate import Migrator

    cluster = None
    server_dsn = os.environ.get("PGACCESS_TEST_DSN")
    if server_dsn is None:
        cluster = temporary_cluster(prefix="pgaccess-check-")
        server_dsn = cluster.dsn()
    name = f"pgaccess_queries_check_{os.getpid()}"
    try:
        await _admin(server_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)',
                     f'CREATE DATABASE "{name}"')
        owner = with_database(server_dsn, name)
        await Migrator(owner, migrations, echo=lambda _: None).up()
        con = await asyncpg.connect(owner)
        try:
            has_app = await con.fetchval("SELECT 1 FROM pg_roles WHERE rolname = 'pgaccess_app'")
        finally:
            await con.close()
        if has_app:
            yield owner, with_user(owner, "pgaccess_app"), with_user(owner, "pgaccess_admin")
        else:
            yield owner, owner, None
    finally:
        if cluster is not None:
            cluster.destroy()
        else:
            await _admin(server_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _admin(dsn: str, *statements: str) -> None:
    con = await asyncpg.connect(dsn)
    try:
        for statement in statements:
            await con.execute(statement)
    finally:
        await con.close()


def main(argv: Sequence[str] | None = None) -> int:
    p = parser(
        "pgaccess queries",
        "Check named SQL against a real database, or generate row classes from it.",
        "python -m pgaccess.queries check --rows pgaccess.reference.rows --json",
    )
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("check", "gen"):
        c = sub.add_parser(name)
        c.add_argument("--dsn", help="database URL (default: $DATABASE_URL, else a throwaway "
                       "server migrated from --migrations); $PGACCESS_ADMIN_URL checks "
                       "`-- context: system` queries")
        c.add_argument("--sql", default="sql", help="named SQL directory (default: sql)")
        c.add_argument("--migrations", default="migrations",
                       help="migrations for the throwaway database when --dsn is not given")
        c.add_argument("--rows", help="module whose dataclasses are the row classes (-- row: Name)")
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
        try:
            queries = load_queries(args.sql)
        except PgAccessError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_FAIL
        rows = load_row_classes(args.rows)
        if args.command == "check":
            lock_path = Path(args.lock or Path(args.sql) / "queries.lock.json")
            if args.offline:
                errors = offline_errors(queries, load_lock(lock_path), rows)
                for e in errors:
                    print(e, file=sys.stderr)
                if not errors:
                    print(f"ok: {len(queries)} queries match {lock_path}")
                return EXIT_FAIL if errors else EXIT_OK
            async with database(args.dsn, args.migrations) as (_, app_dsn, admin_dsn):
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
        async with database(args.dsn, args.migrations) as (owner, app_dsn, admin_dsn):
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
