"""Seeders: ordering, determinism, idempotence, --fresh, environments, rollback."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import asyncpg
import pytest

from pgaccess import Database, SeedError
from pgaccess.seed import SeedContext, Seeder, SeedRunner, discover_seeders, order_seeders
from pgaccess.uow import UnitOfWork

REFERENCE = discover_seeders("seeders")


class A(Seeder):
    async def seed(self, uow: UnitOfWork) -> None:
        pass


class B(Seeder):
    depends_on = (A,)

    async def seed(self, uow: UnitOfWork) -> None:
        pass


class C(Seeder):
    depends_on = ("B", A)

    async def seed(self, uow: UnitOfWork) -> None:
        pass


def test_dependency_order() -> None:
    assert order_seeders([C, B, A]) == [A, B, C]
    assert [s.__name__ for s in order_seeders(REFERENCE)] == ["Tenants", "Users", "Projects", "Scale"]


def test_cycle_is_an_error_naming_it() -> None:
    class X(Seeder):
        depends_on: ClassVar[tuple[type[Seeder] | str, ...]] = ("Y",)

        async def seed(self, uow: UnitOfWork) -> None:
            pass

    class Y(Seeder):
        depends_on = (X,)

        async def seed(self, uow: UnitOfWork) -> None:
            pass

    with pytest.raises(SeedError, match="cycle: X -> Y -> X"):
        order_seeders([X, Y])
    with pytest.raises(SeedError, match="unknown seeder 'Y'"):
        order_seeders([X])


async def table_hashes(owner_dsn: str) -> dict[str, str]:
    con = await asyncpg.connect(owner_dsn)
    try:
        out = {}
        for table in ("tenants", "users", "projects"):
            text = await con.fetchval(
                f"SELECT string_agg(t::text, E'\\n' ORDER BY t::text) FROM {table} t")
            out[table] = hashlib.sha256((text or "").encode()).hexdigest()
        return out
    finally:
        await con.close()


async def test_deterministic_idempotent_and_fresh(db: Database, db_dsn: str) -> None:
    # db is a clone of the seeded template: seeding again adds nothing
    before = await table_hashes(db_dsn)
    await SeedRunner(db, REFERENCE, env="test").run()
    assert await table_hashes(db_dsn) == before
    await SeedRunner(db, REFERENCE, env="test", fresh=True).run()
    assert await table_hashes(db_dsn) == before  # same seed, same bytes
    await SeedRunner(db, REFERENCE, env="test", fresh=True, seed=7).run()
    after = await table_hashes(db_dsn)
    assert after["tenants"] == before["tenants"] and after["users"] != before["users"]


async def test_scale_adds_tenants_with_projects(db: Database, db_dsn: str) -> None:
    await SeedRunner(db, REFERENCE, env="test", scale=3).run()
    await SeedRunner(db, REFERENCE, env="test", scale=3).run()  # idempotent at scale too
    con = await asyncpg.connect(db_dsn)
    try:
        assert await con.fetchval("SELECT count(*) FROM tenants WHERE domain LIKE 'scale-%'") == 3
        assert await con.fetchval("SELECT count(*) FROM projects") == 60 + 3000
    finally:
        await con.close()


async def test_production_and_staging_are_refused_without_the_flag(db: Database) -> None:
    for env in ("production", "staging"):
        with pytest.raises(SeedError, match=f"refusing to seed {env}.*--allow-production"):
            SeedRunner(db, REFERENCE, env=env)
    SeedRunner(db, REFERENCE, env="production", allow_production=True)
    with pytest.raises(SeedError, match="unknown environment"):
        SeedRunner(db, REFERENCE, env="prod")
    with pytest.raises(SeedError, match="unknown seeder"):
        SeedRunner(db, REFERENCE, only=["Nope"])


async def test_a_failing_seeder_rolls_everything_back(db: Database, db_dsn: str) -> None:
    class Wipe(Seeder):
        async def seed(self, uow: UnitOfWork) -> None:
            await uow.execute("DELETE FROM projects")

    class Broken(Seeder):
        depends_on = (Wipe,)

        async def seed(self, uow: UnitOfWork) -> None:
            raise RuntimeError("boom")

    before = await table_hashes(db_dsn)
    with pytest.raises(SeedError, match="seeder Broken failed: RuntimeError: boom; nothing was written"):
        await SeedRunner(db, [Wipe, Broken], env="test").run()
    assert await table_hashes(db_dsn) == before


async def test_tenant_seeding_is_checked_by_rls(db: Database) -> None:
    from pgaccess.reference import ACME_ID, GLOBEX_ID

    class Wrong(Seeder):
        async def seed(self, uow: UnitOfWork) -> None:
            async with uow.scoped_tenant(ACME_ID):
                await uow.execute("INSERT INTO projects (tenant_id, name) VALUES ($1, 'x')", GLOBEX_ID)

    with pytest.raises(SeedError, match="row-level security"):
        await SeedRunner(db, [Wrong], env="test").run()


def test_seed_context_random_is_stable() -> None:
    a, b = SeedContext(seed=1), SeedContext(seed=1)
    assert a.random_for("x", 1).random() == b.random_for("x", 1).random()
    assert SeedContext(seed=2).random_for("x", 1).random() != a.random_for("x", 1).random()


def test_cli_refuses_production_with_exit_1(db_dsn: str) -> None:
    r = subprocess.run([sys.executable, "-m", "pgaccess.seed", "--dsn", db_dsn, "--env", "production"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "refusing to seed production" in r.stderr
    ok = subprocess.run([sys.executable, "-m", "pgaccess.seed", "--dsn", db_dsn, "--only", "Tenants",
                         "--json"], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and '"Tenants"' in ok.stdout


def test_discover_reports_import_errors(tmp_path: Path) -> None:
    (tmp_path / "bad.py").write_text("raise ImportError('nope')\n")
    with pytest.raises(SeedError, match="bad.py: import failed"):
        discover_seeders(tmp_path)
    with pytest.raises(SeedError, match="does not exist"):
        discover_seeders(tmp_path / "missing")
