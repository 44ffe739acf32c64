"""``python -m pgaccess demo``: the main job on the embedded default, end to end.

Starts the development cluster under ``.pgaccess/`` (or uses ``--dsn``/``DATABASE_URL``),
applies the migrations, seeds the reference data, runs tenant-scoped queries through the
repositories and the unit of work - showing that RLS keeps tenants apart - and ends with the
health report. Exit code: the health report's (0 ok, 1 degraded, 2 down).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from .cli import add_dsn, parser, resolve_dsn, role_dsns, run, table
from .config import Settings
from .database import Database
from .health import check
from .health.cli import render
from .migrate import Migrator
from .reference import ACME_ID, GLOBEX_ID, ProjectRepository, TenantRepository
from .seed import SeedRunner, discover_seeders


def main(argv: Sequence[str] | None = None) -> int:
    p = parser(
        "pgaccess demo",
        "Migrate and seed the embedded dev cluster, query as two tenants, print health.",
        "python -m pgaccess demo",
    )
    add_dsn(p)
    args = p.parse_args(argv)

    async def body() -> int:
        owner = await resolve_dsn(args.dsn)
        print("== migrate")
        await Migrator(owner, "migrations", echo=lambda line: print("  " + line)).up()
        app, admin = role_dsns(owner)
        async with Database(Settings(min_size=1), dsn=app, admin_dsn=admin, sql_dir="sql") as db:
            print("== seed")
            timings = await SeedRunner(db, discover_seeders("seeders")).run()
            print("  " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in timings.items()))
            for tenant_id in (ACME_ID, GLOBEX_ID):
                async with db.transaction(tenant=tenant_id, readonly=True) as uow:
                    tenant = await uow.repo(TenantRepository).find_by_id(tenant_id)
                    projects = uow.repo(ProjectRepository)
                    page = await projects.find_page(limit=3)
                    counts = await projects.counts_by_status()
                    total = await projects.count()
                assert tenant is not None
                print(f"== as tenant {tenant.name} ({tenant.domain}): {total} projects visible")
                print(table(["project", "status", "tenant_id"],
                            [(p.name, p.status, p.tenant_id) for p in page.rows]))
                print("  by status: " + ", ".join(f"{c.status}={c.n}" for c in counts))
            async with db.transaction() as uow:
                unscoped = await uow.fetchval("SELECT count(*) FROM projects")
            print(f"== without a tenant: {unscoped} projects visible (RLS fails closed)")
            print("== pool")
            s = db.pool.stats()
            print(f"  size={s.size} idle={s.idle} acquires={s.acquires} discarded={s.connections_discarded}")
            print("== health")
            report = await check(db, migrations_dir="migrations")
            print(render(report))
            return report.exit_code

    return run(body)


if __name__ == "__main__":
    sys.exit(main())
