"""``python -m pgaccess demo``: the main job on the embedded default, end to end.

Starts the development cluster under ``.pgaccess/`` (or uses ``--dsn``/``DATABASE_URL``),
applies the migrations, seeds the reference data, runs tenant-scoped queries through the
repositories and the unit of work - showing that RLS keeps tenants apart - and ends with the
health report. It runs the reference schema of a pgaccess checkout (migrations/, sql/,
seeders/ with the tenants, users and projects tables); anywhere else it says so before it
starts anything - ``pgaccess init`` makes a project of your own. Exit code: the health
report's (0 ok, 1 degraded, 2 down); 1 when the reference schema is not here.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from .cli import add_dsn, load_project, parser, resolve_dsn, role_dsns, run, table
from .config import Settings
from .database import Database
from .errors import ConfigError
from .health import check
from .health.cli import render
from .migrate import Migrator
from .project import ProjectConfig
from .reference import ACME_ID, GLOBEX_ID, ProjectRepository, TenantRepository
from .seed import DatabaseSeeder, discover_seeders

_NEEDED = ("migrations/0002_users_and_projects.sql", "sql/projects.sql", "seeders/reference.py")


def reference_project() -> ProjectConfig:
    """The project configuration, if it is the reference schema; else DemoUnavailable."""
    project = load_project()
    found = {"migrations": project.migrations, "sql": project.sql, "seeders": project.seeders}
    missing = [need for need in _NEEDED
               if not (found[need.split("/")[0]] / need.split("/", 1)[1]).is_file()]
    if missing:
        raise ConfigError(
            "pgaccess demo runs the reference schema of a pgaccess checkout and did not find "
            f"{', '.join(missing)} under {project.root} (nothing was started). Run it in a "
            "clone of the pgaccess repository, or start a project of your own with "
            "`pgaccess init` and `pgaccess migrate up`.")
    return project


def main(argv: Sequence[str] | None = None) -> int:
    p = parser(
        "pgaccess demo",
        "Migrate and seed the embedded dev cluster with the reference schema of a pgaccess "
        "checkout, query as two tenants, print health.",
        "git clone <pgaccess repository> && cd pgaccess && pgaccess demo",
    )
    add_dsn(p)
    args = p.parse_args(argv)

    async def body() -> int:
        project = reference_project()
        owner = await resolve_dsn(args.dsn)
        print("== migrate")
        await Migrator(owner, project.migrations, echo=lambda line: print("  " + line),
                       app_role=project.app_role, admin_role=project.admin_role).up()
        app, admin = role_dsns(owner, project.roles)
        async with Database(Settings(min_size=1), dsn=app, admin_dsn=admin, sql_dir=project.sql) as db:
            print("== seed")
            timings = await DatabaseSeeder(db, discover_seeders(project.seeders)).run()
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
            report = await check(db, migrations_dir=project.migrations, app_role=project.app_role)
            print(render(report))
            return report.exit_code

    return run(body)


if __name__ == "__main__":
    sys.exit(main())
