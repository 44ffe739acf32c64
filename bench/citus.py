"""Single-tenant work through a Citus coordinator next to one plain PostgreSQL, in one run.

    python -m bench.citus            # 5 rounds of 2 s bursts per line (about 2 minutes)
    python -m bench.citus --smoke    # 1 round of 0.5 s bursts (under a minute)

Both servers are throwaway clusters started here from the local binaries (Citus: coordinator +
2 workers, 32 shards, built with ../shared/citus/build.sh), migrated with the reference schema
(0006 distributes it on Citus) and seeded the same way. Every operation is a pgaccess unit of
work for one tenant at 8-way concurrency. "router" lines carry an explicit ``tenant_id = $n``
predicate (Citus sends them to one shard); "RLS only" lines leave the tenant to the policy
(Citus fans them out to every shard). Ratio = Citus ops/s / single-server ops/s, the median
over rounds in which both ran back to back. Exit code 0, or 1 when a cluster fails to start.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from pgaccess import Database
from pgaccess.citus import task_count
from pgaccess.cluster import temporary_cluster
from pgaccess.config import with_database
from pgaccess.devdb.citus import TemporaryCitusCluster, citus_database, migrate_and_seed
from pgaccess.errors import ConfigError
from pgaccess.reference import ACME_ID, GLOBEX_ID, INITECH_ID

ROOT = Path(__file__).resolve().parent.parent
TENANTS = (ACME_ID, GLOBEX_ID, INITECH_ID)
CONCURRENCY = 8
Op = Callable[[Database, int], Awaitable[Any]]


def operations(ids: dict[uuid.UUID, list[uuid.UUID]]) -> dict[str, Op]:
    def pick(i: int) -> tuple[uuid.UUID, uuid.UUID]:
        t = TENANTS[i % len(TENANTS)]
        return t, ids[t][i % len(ids[t])]

    async def lookup_router(db: Database, i: int) -> Any:
        t, key = pick(i)
        async with db.transaction(tenant=t) as uow:
            return await uow.fetchrow(
                "SELECT * FROM projects WHERE tenant_id = $1 AND id = $2", t, key)

    async def lookup_rls(db: Database, i: int) -> Any:
        t, key = pick(i)
        async with db.transaction(tenant=t) as uow:
            return await uow.fetchrow("SELECT * FROM projects WHERE id = $1", key)

    async def page_router(db: Database, i: int) -> Any:
        t, _ = pick(i)
        async with db.transaction(tenant=t) as uow:
            return await uow.fetch(
                "SELECT * FROM projects WHERE tenant_id = $1 ORDER BY created_at, id LIMIT 50", t)

    async def page_rls(db: Database, i: int) -> Any:
        t, _ = pick(i)
        async with db.transaction(tenant=t) as uow:
            return await uow.fetch("SELECT * FROM projects ORDER BY created_at, id LIMIT 50")

    async def insert(db: Database, i: int) -> Any:
        t, _ = pick(i)
        async with db.transaction(tenant=t) as uow:
            return await uow.execute(
                "INSERT INTO projects (tenant_id, name) VALUES ($1, 'bench')", t)

    return {
        "W1 point lookup, router": lookup_router,
        "W1 point lookup, RLS only": lookup_rls,
        "W2 first page of 50, router": page_router,
        "W2 first page of 50, RLS only": page_rls,
        "W3 insert one (router)": insert,
    }


async def burst(db: Database, op: Op, seconds: float) -> float:
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker(offset: int) -> None:
        nonlocal done
        i = offset
        while time.perf_counter() < deadline:
            await op(db, i)
            done += 1
            i += CONCURRENCY

    start = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(CONCURRENCY)))
    return done / (time.perf_counter() - start)


async def project_ids(db: Database) -> dict[uuid.UUID, list[uuid.UUID]]:
    async with db.transaction(system=True) as uow:
        rows = await uow.fetch("SELECT tenant_id, id FROM projects ORDER BY tenant_id, id")
    out: dict[uuid.UUID, list[uuid.UUID]] = {t: [] for t in TENANTS}
    for r in rows:
        out.setdefault(r["tenant_id"], []).append(r["id"])
    return out


async def plan_tasks(db: Database) -> dict[str, int | None]:
    t = ACME_ID
    async with db.transaction(tenant=t) as uow:
        key = await uow.fetchval("SELECT id FROM projects LIMIT 1")
        return {
            "router": task_count(await uow.fetchval(
                "EXPLAIN (FORMAT JSON) SELECT * FROM projects WHERE tenant_id = $1 AND id = $2",
                t, key)),
            "RLS only": task_count(await uow.fetchval(
                "EXPLAIN (FORMAT JSON) SELECT * FROM projects WHERE id = $1", key)),
        }


async def run(rounds: int, seconds: float) -> None:
    single = temporary_cluster("pgaccess-bench-single-")
    citus = TemporaryCitusCluster(workers=2, shard_count=32)
    try:
        citus.start()
        from pgaccess.devdb.clone import admin_exec as _admin_exec

        await _admin_exec(single.dsn(), 'CREATE DATABASE "bench"')
        single_dsn = with_database(single.dsn(), "bench")
        citus_dsn = await citus.create_database("bench")
        for dsn in (single_dsn, citus_dsn):
            await migrate_and_seed(dsn, ROOT)
        size = dict(min_size=CONCURRENCY, max_size=CONCURRENCY)
        async with citus_database(single_dsn, ROOT / "sql", **size) as sdb, \
                citus_database(citus_dsn, ROOT / "sql", **size) as cdb:
            ids = await project_ids(sdb)
            cids = await project_ids(cdb)
            ops_single, ops_citus = operations(ids), operations(cids)
            for op in (*ops_single.values(), *ops_citus.values()):  # connections, plans, caches
                await burst(sdb if op in ops_single.values() else cdb, op, 0.2)
            tasks = await plan_tasks(cdb)
            print(f"Citus plan of a point lookup: router {tasks['router']} task(s), "
                  f"RLS only {tasks['RLS only']} task(s)")
            print(f"{CONCURRENCY} concurrent units of work, {rounds} round(s) of {seconds:g} s\n")
            print(f"{'operation':32} {'single ops/s':>13} {'Citus ops/s':>12} {'ratio':>7}")
            for name in ops_single:
                pairs = []
                for _ in range(rounds):
                    s = await burst(sdb, ops_single[name], seconds)
                    c = await burst(cdb, ops_citus[name], seconds)
                    pairs.append((s, c))
                s_med = statistics.median(p[0] for p in pairs)
                c_med = statistics.median(p[1] for p in pairs)
                ratio = statistics.median(p[1] / p[0] for p in pairs)
                print(f"{name:32} {s_med:13.0f} {c_med:12.0f} {ratio:7.2f}")
    finally:
        citus.destroy()
        single.destroy()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.citus",
        description="pgaccess through a Citus coordinator vs one PostgreSQL (single-tenant work).",
        epilog="example: python -m bench.citus --smoke",
    )
    parser.add_argument("--smoke", action="store_true", help="one short round (under a minute)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args(argv)
    rounds, seconds = (1, 0.5) if args.smoke else (args.rounds, args.seconds)
    try:
        asyncio.run(run(rounds, seconds))
    except ConfigError as exc:
        print(f"bench.citus: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
