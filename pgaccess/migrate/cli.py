"""``python -m pgaccess.migrate [--dsn DSN] [--dir DIR] COMMAND`` (also ``pgaccess migrate``).

The directory, role names and tenant schema prefix default to the project's configuration
(``[tool.pgaccess]``, see ``pgaccess config``); pgaccess's core schema is applied first.

Exit codes: 0 ok / up to date, 1 failure, 2 usage, 3 pending (status), 4 drift
(status, verify; ``up --dry-run`` when up would refuse on drift), 5 lint findings
(lint; up and ``up --dry-run`` when up refuses on them).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..cli import EXIT_OK, Progress, add_dsn, load_project, parser, print_json, resolve_dsn, run, table
from .files import new_file
from .lint import LintFailed, LintReport
from .retry import LockRetry
from .runner import Migrator
from .state import Status
from .tenants import Rollout, RolloutFailed, RolloutReport

EXIT_PENDING, EXIT_DRIFT, EXIT_LINT = 3, 4, 5


def _parser() -> argparse.ArgumentParser:
    p = parser(
        "pgaccess migrate",
        "Apply plain SQL migrations (shared, repeatable and per-tenant-schema) safely: "
        "lock-aware lint, lock-timeout retries, dry-run plans, staged tenant rollouts. "
        "Exit codes: 0 ok, 1 failure, 2 usage, 3 pending, 4 drift, 5 lint findings.",
        "pgaccess migrate up --dry-run && pgaccess migrate up --canary 5 --concurrency 4",
    )
    add_dsn(p)
    p.add_argument("--dir", help="migrations directory (default: `migrations` of [tool.pgaccess])")
    p.add_argument("--allow-out-of-order", action="store_true",
                   help="apply files numbered below the highest applied version")
    p.add_argument("--lock-wait", type=float, default=120.0,
                   help="seconds to wait for another runner's lock (default 120)")
    p.add_argument("--app-role",
                   help="the service's role, for the core schema and the lint's grant check "
                        "(default: `app_role` of [tool.pgaccess], pgaccess_app)")
    sub = p.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="lint, then apply pending migrations (the release step)")
    up.add_argument("--to", help="stop after this version")
    up.add_argument("--dry-run", action="store_true",
                    help="print statements, locks, lint findings and bookkeeping; apply nothing")
    up.add_argument("--json", action="store_true", help="machine-readable plan or report")
    up.add_argument("--tenant", help="only this tenant's schema for tenant/ migrations")
    up.add_argument("--no-lint", action="store_true", help="apply despite lint findings (logged)")
    up.add_argument("--allow-drift", action="store_true",
                    help="apply even though applied files changed since (status exit 4)")
    up.add_argument("--lock-retry-budget", type=float, default=60.0,
                    help="seconds to keep retrying a file that hit lock_timeout (default 60; 0 off)")
    up.add_argument("--canary", type=int, default=0,
                    help="migrate N tenant schemas first; stop everything if one fails")
    up.add_argument("--concurrency", type=int, default=1,
                    help="tenant schemas migrated at once, one connection each (default 1)")
    up.add_argument("--continue-on-error", action="store_true",
                    help="keep migrating other tenant schemas after one fails")
    st = sub.add_parser("status", help="applied, pending and drift; exit 0/3/4")
    st.add_argument("--json", action="store_true")
    sub.add_parser("verify", help="every applied file exists with the same checksum")
    new = sub.add_parser("new", help="create the next numbered empty file (no database)")
    new.add_argument("description")
    down = sub.add_parser("down", help="revert the last migration (or down to --to)")
    down.add_argument("--to")
    base = sub.add_parser("baseline", help="mark an existing database as migrated up to VERSION")
    base.add_argument("version")
    lint = sub.add_parser("lint", help="lock rules on the files, RLS rules on the database; exit 5")
    lint.add_argument("--json", action="store_true")
    lint.add_argument("--files-only", action="store_true",
                      help="only the static rules on the files: no database needed (for CI)")
    prov = sub.add_parser("provision", help="create a tenant's schema and migrate it")
    prov.add_argument("tenant_id")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    def migrator(dsn: str) -> Migrator:
        project = load_project(migrations=args.dir, app_role=args.app_role)
        return Migrator(dsn, project.migrations, lock_timeout=args.lock_wait,
                        allow_out_of_order=args.allow_out_of_order, echo=print,
                        progress=Progress("tenant schemas"), app_role=project.app_role,
                        admin_role=project.admin_role, core=project.core_schema,
                        tenant_prefix=project.tenant_schema_prefix,
                        lock_retry=LockRetry(budget=getattr(args, "lock_retry_budget", 60.0)))

    if args.command == "new":
        return run(lambda: print(new_file(load_project(migrations=args.dir).migrations,
                                          args.description)))
    if args.command == "lint" and args.files_only:
        return run(lambda: _print_lint(migrator("").lint_files(), args.json))

    async def body() -> int:
        m = migrator(await resolve_dsn(args.dsn))
        if args.command == "up":
            return await _up(m, args)
        if args.command == "status":
            status = await m.status()
            if args.json:
                print_json(status.as_json())
            else:
                _print_status(status)
            return status.exit_code()
        if args.command == "verify":
            drift = await m.verify()
            for d in drift:
                print(f"drift: {d.version} {d.name}: {d.reason}", file=sys.stderr)
            if not drift:
                print("ok: every applied migration matches its file")
            return EXIT_DRIFT if drift else EXIT_OK
        if args.command == "down":
            if not await m.down(to=args.to):
                print("nothing to revert")
            return EXIT_OK
        if args.command == "baseline":
            marked = await m.baseline(args.version)
            print(f"baselined {len(marked)} migration(s) up to {args.version}")
            return EXIT_OK
        if args.command == "lint":
            return _print_lint(await m.lint(), args.json)
        print(await m.provision_tenant(args.tenant_id))
        return EXIT_OK

    return run(body)


async def _up(m: Migrator, args: argparse.Namespace) -> int:
    if args.dry_run:
        plan = await m.plan(to=args.to, tenant=args.tenant)
        if args.json:
            print_json(plan.as_json())
        else:
            for line in plan.render():
                print(line)
        if plan.drift and not args.allow_drift:
            return EXIT_DRIFT
        return EXIT_LINT if plan.lint and plan.lint.blocking and not args.no_lint else EXIT_OK
    if args.json:
        m.echo = lambda line: print(line, file=sys.stderr)
    rollout = Rollout(canary=args.canary, concurrency=args.concurrency,
                      continue_on_error=args.continue_on_error)
    try:
        report = await m.up_report(to=args.to, tenant=args.tenant, lint=not args.no_lint,
                                   allow_drift=args.allow_drift, rollout=rollout)
    except LintFailed as exc:
        if args.json:
            print_json({"refused": "lint", "findings": [f.as_json() for f in exc.findings]})
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_LINT
    except RolloutFailed as exc:
        if args.json:
            print_json({"tenants": exc.report.as_json()})
        else:
            _print_rollout(exc.report)
        raise
    if args.json:
        print_json(report.as_json())
        return EXIT_OK
    if not report.applied and not (report.rollout and report.rollout.count("applied")):
        print("nothing to apply; database is up to date")
    if report.rollout and report.rollout.count("applied"):
        _print_rollout(report.rollout)
    return EXIT_OK


def _print_rollout(report: RolloutReport) -> None:
    shown = [r for r in report.results if r.status != "up_to_date"]
    rows = [(r.schema, r.phase, r.status, ", ".join(r.applied), f"{r.duration_ms} ms",
             (r.error or "").splitlines()[0][:80] if r.error else "") for r in shown]
    print(table(["schema", "phase", "status", "applied", "duration", "error"], rows))
    print(f"tenant schemas: {report.count('applied')} applied, {report.count('failed')} failed, "
          f"{report.count('skipped')} skipped, {report.count('up_to_date')} already up to date")


def _print_lint(report: LintReport, as_json: bool) -> int:
    if as_json:
        print_json(report.as_json())
    else:
        for f in report.blocking:
            print(f)
        for f in report.waived:
            print(f"waived: {f}")
        if not report.blocking:
            print(f"ok: no lint findings ({len(report.waived)} waived)")
    return EXIT_LINT if report.blocking else EXIT_OK


def _print_status(status: Status) -> None:
    rows = [(a.version, a.name, a.kind, a.checksum[:12], a.applied_at, f"{a.duration_ms} ms",
             a.applied_by) for a in status.applied]
    print(table(["version", "name", "kind", "checksum", "applied_at", "duration", "by"], rows))
    if status.core_applied or status.core_pending:
        print(f"pgaccess core schema: {len(status.core_applied)} applied"
              + (f", pending {', '.join(f.version + ' ' + f.name for f in status.core_pending)}"
                 if status.core_pending else ""))
    if status.superseded:
        print("moved into the core schema (not drift): "
              + ", ".join(f"{a.version} {a.name}" for a in status.superseded))
    for f in status.pending + status.repeatable_pending:
        print(f"pending: {f.version} {f.name}")
    for d in status.drift:
        print(f"DRIFT:   {d.version} {d.name}: {d.reason}")
    if status.tenants:
        behind = {s: t for s, t in status.tenants.items() if t["pending"]}
        print(f"tenant schemas: {len(status.tenants)}, behind: {len(behind)}")
        for s, t in list(behind.items())[:20]:
            print(f"  {s}: pending {', '.join(t['pending'])}")
    print("up to date" if status.exit_code() == 0 else "")


if __name__ == "__main__":
    sys.exit(main())
