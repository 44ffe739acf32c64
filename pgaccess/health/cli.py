"""``python -m pgaccess.health`` (also ``pgaccess health``): print the health report.

Exit codes: 0 ok, 1 degraded, 2 down - usable as a container health check or deploy gate.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from ..cli import add_dsn, load_project, parser, print_json, resolve_dsn, run, table
from ..config import Settings
from ..database import Database
from . import HealthReport, check


def render(report: HealthReport) -> str:
    rows: list[tuple[Any, ...]] = []
    for name, r in report.checks.items():
        detail = r.error or ", ".join(f"{k}={v}" for k, v in r.data.items()
                                      if k not in ("version",) and not isinstance(v, (list, dict)))
        rows.append((name, r.status, f"{r.duration_ms:.1f} ms", detail[:110]))
    out = f"status: {report.status.upper()}\n" + table(["check", "status", "took", "detail"], rows)
    if report.reasons:
        out += "\n" + "\n".join(f"! {reason}" for reason in report.reasons)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = parser(
        "pgaccess health",
        "Report database health: latency, server, statistics, pool, migrations (pgaccess's core "
        "schema always; the project's files when present - a service image without them is not "
        "degraded), and the app role's settings and privileges. Exit codes: 0 ok, 1 degraded, "
        "2 down.",
        "pgaccess health --kind ready --json || echo 'not ready'",
    )
    add_dsn(p)
    p.add_argument("--migrations",
                   help="migrations directory (default: `migrations` of [tool.pgaccess])")
    p.add_argument("--kind", choices=["live", "ready", "full"], default="full")
    p.add_argument("--timeout", type=float, default=2.0, help="seconds per check (default 2)")
    p.add_argument("--max-latency-ms", type=float, default=250.0)
    p.add_argument("--max-prepared-age", type=float, default=60.0, metavar="SECONDS",
                   help="a prepared (two-phase) transaction older than this degrades the "
                        "database check: its locks belong to no session (default 60)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    args = p.parse_args(argv)

    async def body() -> int:
        project = load_project(migrations=args.migrations)
        dsn = await resolve_dsn(args.dsn, check=False)
        db = Database(Settings(min_size=0, connect_retry_budget=min(args.timeout, 1.0),
                               connect_timeout=args.timeout), dsn=dsn)
        await db.pool.open()
        try:
            report = await check(db, kind=args.kind, migrations_dir=project.migrations,
                                 app_role=project.app_role, core=project.core_schema,
                                 timeout=args.timeout, max_latency_ms=args.max_latency_ms,
                                 max_prepared_age_s=args.max_prepared_age)
        finally:
            await db.close(timeout=args.timeout)
        if args.json:
            print_json(report.as_dict())
        else:
            print(render(report))
        return report.exit_code

    return run(body)


if __name__ == "__main__":
    sys.exit(main())
