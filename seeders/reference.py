"""Seeders of the reference schema: three tenants with users and projects, plus --scale.

Deterministic: ids are UUIDv5 of natural keys, timestamps count from a fixed date, names
come from generators seeded by (run seed, tenant). Idempotent: every insert skips rows
whose key exists, so running twice adds nothing.
"""

from __future__ import annotations

import datetime as dt
import uuid

from pgaccess.reference import INITECH_ID, SEEDED_TENANTS, ProjectRepository, UserRepository
from pgaccess.seed import Seeder, TenantSeeder
from pgaccess.uow import UnitOfWork

NAMESPACE = uuid.UUID("7d3f2b8e-5b1a-4c1e-9f0a-6b2c1d0e9a11")
EPOCH = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
USERS_PER_TENANT = 5
PROJECTS_PER_TENANT = 20
SCALE_PROJECTS_PER_TENANT = 1000

WORDS = ["apollo", "borealis", "cobalt", "delta", "ember", "falcon", "granite", "helix",
         "ion", "juniper", "krypton", "lumen", "meridian", "nimbus", "orion", "pulsar"]
ROLES = ["owner", "admin", "member", "member", "viewer"]
STATUSES = ["active", "active", "paused", "done"]


def stable_id(*parts: object) -> uuid.UUID:
    return uuid.uuid5(NAMESPACE, ":".join(map(str, parts)))


class Tenants(TenantSeeder):
    """Acme, Globex (active) and Initech (suspended), with their documented ids."""

    tables = ("tenants",)

    async def seed(self, uow: UnitOfWork) -> None:
        rows = [
            (tid, name, domain, "suspended" if tid == INITECH_ID else "active",
             "pro" if name == "Acme" else "free", EPOCH)
            for tid, (name, domain) in SEEDED_TENANTS.items()
        ]
        await uow.executemany(
            "INSERT INTO tenants (id, name, domain, status, plan, created_at, updated_at) "
            "VALUES ($1, $2, $3, $4::tenant_status, $5, $6, $6) ON CONFLICT (id) DO NOTHING",
            rows,
        )


class Users(Seeder):
    depends_on = (Tenants,)
    tables = ("users",)

    async def seed(self, uow: UnitOfWork) -> None:
        for tid in SEEDED_TENANTS:
            rng = self.ctx.random_for("users", tid)
            async with uow.scoped_tenant(tid):
                rows = [
                    {
                        "id": stable_id(tid, "user", i),
                        "email": f"user{i}@{SEEDED_TENANTS[tid][1]}",
                        "name": f"{rng.choice(WORDS).title()} {rng.choice(WORDS).title()}",
                        "role": ROLES[i % len(ROLES)],
                        "created_at": EPOCH + dt.timedelta(minutes=i),
                    }
                    for i in range(USERS_PER_TENANT)
                ]
                await uow.repo(UserRepository).insert_many(rows, skip_existing=True)


class Projects(Seeder):
    depends_on = (Users,)
    tables = ("projects",)

    async def seed(self, uow: UnitOfWork) -> None:
        for tid in SEEDED_TENANTS:
            rng = self.ctx.random_for("projects", tid)
            async with uow.scoped_tenant(tid):
                rows = [
                    {
                        "id": stable_id(tid, "project", i),
                        "owner_id": stable_id(tid, "user", i % USERS_PER_TENANT),
                        "name": f"{rng.choice(WORDS)}-{i:03d}",
                        "status": STATUSES[i % len(STATUSES)],
                        "metadata": {"priority": rng.randint(1, 5)},
                        "created_at": EPOCH + dt.timedelta(hours=i),
                        "updated_at": EPOCH + dt.timedelta(hours=i),
                    }
                    for i in range(PROJECTS_PER_TENANT)
                ]
                await uow.repo(ProjectRepository).insert_many(rows, skip_existing=True)


class Scale(Seeder):
    """``--scale N``: N more tenants with 1,000 projects each, generated in the server.

    Runs in the system context without a tenant (the admin policy admits every row), as
    one INSERT ... SELECT per table: the fastest load that still goes through RLS checks.
    Re-running it adds nothing: scale tenants that already have projects are skipped.
    """

    depends_on = (Projects,)

    async def seed(self, uow: UnitOfWork) -> None:
        n = self.ctx.scale
        if n <= 0:
            return
        seed = str(self.ctx.seed)
        await uow.execute("SET LOCAL work_mem = '256MB'")  # the sort below stays in memory
        await uow.execute(
            "INSERT INTO tenants (id, name, domain, created_at, updated_at) "
            "SELECT md5($1 || ':tenant:' || i)::uuid, 'Scale ' || i, 'scale-' || i || '.localhost', "
            "$2::timestamptz, $2::timestamptz FROM generate_series(1, $3) AS i "
            "ON CONFLICT (domain) DO NOTHING",
            seed, EPOCH, n,
        )
        await uow.execute(
            "INSERT INTO projects (tenant_id, id, name, status, metadata, created_at, updated_at) "
            "SELECT t.id, md5(t.id::text || ':' || j)::uuid, 'project-' || j, "
            "(ARRAY['active','active','paused','done'])[1 + j % 4]::project_status, "
            "jsonb_build_object('priority', 1 + j % 5), "
            "$2::timestamptz + j * interval '1 minute', $2::timestamptz + j * interval '1 minute' "
            "FROM tenants t CROSS JOIN generate_series(1, $3) AS j "
            "WHERE t.domain LIKE 'scale-%' AND t.id = md5($1 || ':tenant:' || "
            "split_part(split_part(t.domain, '.', 1), '-', 2))::uuid "
            # Idempotent per tenant (its projects come in this one statement or not at all);
            # cheaper than ON CONFLICT, whose speculative insertion costs ~10% on 1M rows.
            "AND NOT EXISTS (SELECT 1 FROM projects p WHERE p.tenant_id = t.id) "
            # Key order makes the primary-key inserts append to the index's right edge.
            "ORDER BY 1, 2",
            seed, EPOCH, SCALE_PROJECTS_PER_TENANT,
        )

    async def truncate(self, uow: UnitOfWork) -> None:
        await uow.execute("DELETE FROM projects WHERE tenant_id IN "
                          "(SELECT id FROM tenants WHERE domain LIKE 'scale-%')")
        await uow.execute("DELETE FROM tenants WHERE domain LIKE 'scale-%'")
