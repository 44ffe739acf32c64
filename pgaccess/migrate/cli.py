"""``python -m pgaccess.migrate [--dsn DSN] [--dir DIR] COMMAND`` (also ``pgaccess migrate``).

Exit codes: 0 ok / up to date, 1 failure, 2 usage, 3 pending (status), 4 drift
(status, verify), 5 lint findings.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ..cli import EXIT_FAIL, EXIT_OK, Progress, add_dsn, parser, print_json, resolve_dsn, run, table
from . import Migrator

EXIT_PENDING, EXIT_DRIFT, EXIT_LINT = 3, 4, 5


def main(argv: Sequence[str] | None = None) -> int:
    p = parser(
        "pgaccess migrate",
        "Apply plain SQL migrations (shared, repeatable and per-tenant-schema) safely.",
        "python -m pgaccess.migrate up && python -m pgaccess.migrate status --json",
    )
    add_dsn(p)
    p.add_argument("--dir", default="migrations", help="migrations directory (default: migrations)")
    p.add_argument("--allow-out-of-order", action="store_true",
                   help="apply files numbered below the highest applied version")
    p.add_argument("--lock-wait", type=float, default=120.0,
                   help="seconds to wait for another runner's lock (default 120)")
    sub = p.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="apply pending migrations (the release step)")
    up.add_argument("--to", help="stop after this version")
    up.add_argument("--dry-run", action="store_true", help="print the plan, apply nothing")
    up.add_argument("--tenant", help="only this tenant's schema for tenant/ migrations")
    up.add_argument("--no-lint", action="store_true", help="skip the RLS lint after up")
    st = sub.add_parser("status", help="applied, pending and drift; exit 0/3/4")
    st.add_argument("--json", action="store_true")
    sub.add_parser("verify", help="every applied file exists with the same checksum")
    new = sub.add_parser("new", help="create the next numbered empty file")
    new.add_argument("description")
    down = sub.add_parser("down", help="revert the last migration (or down to --to)")
    down.add_argument("--to")
    base = sub.add_parser("baseline", help="mark an existing database as migrated up to VERSION")
    base.add_argument("version")
    lint = sub.add_parser("lint", help="check RLS on tenant tables; exit 5 on findings")
    lint.add_argument("--json", action="store_true")
    prov = sub.add_parser("provision", help="create a tenant's schema and migrate it")
    prov.add_argument("tenant_id")
    args = p.parse_args(argv)

    if args.command == "new":
        def create() -> int:
            print(Migrator("postgresql://unused@localhost/x", args.dir).new(args.description))
            return EXIT_OK
        return run(create)

    async def body() -> int:
        m = Migrator(await resolve_dsn(args.dsn), args.dir, lock_timeout=args.lock_wait,
                     allow_out_of_order=args.allow_out_of_order, echo=print,
                     progress=Progress("tenant schemas"))
        if args.command == "up":
            done = await m.up(to=args.to, dry_run=args.dry_run, tenant=args.tenant)
            if not done:
                print("nothing to apply; database is up to date")
            if not args.dry_run and not args.no_lint:
                findings = await m.lint()
                for f in findings:
                    print(f"lint: {f}", file=sys.stderr)
                if findings:
                    return EXIT_LINT
            return EXIT_OK
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
            reverted = await m.down(to=args.to)
            if not reverted:
                print("nothing to revert")
            return EXIT_OK
        if args.command == "baseline":
            marked = await m.baseline(args.version)
            print(f"baselined {len(marked)} migration(s) up to {args.version}")
            return EXIT_OK
        if args.command == "lint":
            findings = await m.lint()
            if args.json:
                print_json({"findings": findings})
            else:
                for f in findings:
                    print(f)
                if not findings:
                    print("ok: no RLS findings")
            return EXIT_LINT if findings else EXIT_OK
        if args.command == "provision":
            print(await m.provision_tenant(args.tenant_id))
            return EXIT_OK
        return EXIT_FAIL

    return run(body)


def _print_status(status: object) -> None:
    from . import Status

    assert isinstance(status, Status)
    rows = [(a.version, a.name, a.kind, a.checksum[:12], a.applied_at, f"{a.duration_ms} ms",
             a.applied_by) for a in status.applied]
    print(table(["version", "name", "kind", "checksum", "applied_at", "duration", "by"], rows))
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
