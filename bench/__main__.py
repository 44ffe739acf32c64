"""pgaccess benchmarks, side by side with raw asyncpg, aiosql, SQLAlchemy and psycopg.

    python -m bench                 # full run on a throwaway cluster (a few minutes)
    python -m bench --smoke         # tiny data, one short round: CI runs this so it cannot rot
    python -m bench --dsn URL       # against your server (a superuser DSN; creates a database)
    python -m bench --out bench/RESULTS.md
    python -m bench --previous f2cd32b  # and an earlier pgaccess's unit of work (git revision)

Every table shows ops/s, p50 and p99 and the ratio to the hand-written raw-asyncpg RLS floor
measured in the same run: each burst of an implementation runs between two floor bursts and
is compared with their mean, round by round (the median over rounds is reported). No
assertions: numbers are reported, never tested.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import secrets
import shutil
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg

from pgaccess import Database, Settings
from pgaccess.config import with_database, with_user
from pgaccess.devdb.clone import (
    Project,
    build_template,
    clone_database,
    drop_database,
    open_test_database,
)
from pgaccess.devdb.clone import admin_exec as _admin_exec
from pgaccess.devdb.pgbouncer import TemporaryPgBouncer
from pgaccess.devdb.servers import start_test_server
from pgaccess.migrate import Migrator
from pgaccess.pool import init_json_codecs
from pgaccess.reference import ProjectRepository, TenantRepository
from pgaccess.seed import SeedRunner, discover_seeders
from pgaccess.testing import RollbackDatabase

from .proxy import RoundTripProxy

Op = Callable[[int], Awaitable[Any]]
COLS = "tenant_id, id, owner_id, name, status, metadata, created_at, updated_at"
FLOOR = "asyncpg RLS floor"
PLAIN = "asyncpg no RLS (WHERE)"  # the default pool: the statement, then asyncpg's reset
AUTOCOMMIT = "pgaccess autocommit"
UOW = "pgaccess unit of work"
PROJECT = Project(Path("migrations"), Path("sql"), Path("seeders"))


@dataclass
class Result:
    impl: str
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0
    ops: int = 0
    round_trips: float | None = None
    bursts: list[float] = field(default_factory=list)  # ops/s of each burst, in order
    ratios: list[float] = field(default_factory=list)  # per round, to the adjacent floor bursts

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.seconds if self.seconds else 0.0

    @property
    def ratio(self) -> float:
        """Median over rounds of this burst's ops/s over its neighbouring floor bursts'."""
        return statistics.median(self.ratios) if self.ratios else 1.0

    def pct(self, p: float) -> float:
        if not self.latencies:
            return 0.0
        data = sorted(self.latencies)
        return data[min(len(data) - 1, int(p * len(data)))] * 1000


@dataclass
class Env:
    owner_dsn: str
    socket: str | None
    signed_dsn: str
    signing_key: str
    tenants: list[uuid.UUID]
    projects: dict[uuid.UUID, list[uuid.UUID]]
    domains: list[str]
    smoke: bool
    previous: tuple[str, Any] | None = None  # (revision, its pgaccess package), --previous


async def run_burst(op: Op, concurrency: int, seconds: float, result: Result, offset: int) -> None:
    # The previous burst's garbage is collected before this one starts, not during it.
    gc.collect()
    stop = time.perf_counter() + seconds
    counter = offset

    async def worker() -> None:
        nonlocal counter
        while time.perf_counter() < stop:
            counter += 1
            start = time.perf_counter()
            await op(counter)
            result.latencies.append(time.perf_counter() - start)
            result.ops += 1

    ops_before = result.ops
    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    result.seconds += elapsed
    result.bursts.append((result.ops - ops_before) / elapsed)


# -- implementations -------------------------------------------------------------------


async def noop_reset(con: asyncpg.Connection) -> None:
    return None


async def make_impls(env: Env, dsn: str, pool_size: int) -> tuple[dict[str, dict[str, Op]], Callable[[], Awaitable[None]]]:
    """Per workload, per implementation, an async op(i). ``dsn`` is the owner DSN to use."""
    app, admin = with_user(dsn, "pgaccess_app"), with_user(dsn, "pgaccess_admin")
    settings = Settings(min_size=pool_size, max_size=pool_size, acquire_timeout=30)
    db = await Database(settings, dsn=app, admin_dsn=admin, sql_dir="sql").open()
    # Same decoding work for every asyncpg-based implementation: jsonb as Python objects.
    floor = await asyncpg.create_pool(app, min_size=pool_size, max_size=pool_size, reset=noop_reset,
                                      init=init_json_codecs)
    plain = await asyncpg.create_pool(dsn, min_size=pool_size, max_size=pool_size,  # owner: no RLS
                                      init=init_json_codecs)
    # The floor's transaction shape without RLS (owner role, tenant in WHERE): isolates
    # what the policy itself costs.
    plain_tx = await asyncpg.create_pool(dsn, min_size=pool_size, max_size=pool_size,
                                         reset=noop_reset, init=init_json_codecs)
    closers: list[Callable[[], Awaitable[Any]]] = [db.close, floor.close, plain.close, plain_tx.close]
    tenants, projects, domains = env.tenants, env.projects, env.domains

    def pick(i: int) -> tuple[uuid.UUID, uuid.UUID]:
        t = tenants[i % len(tenants)]
        ids = projects[t]
        return t, ids[(i * 7919) % len(ids)]

    by_id = f"SELECT {COLS} FROM projects WHERE id = $1"
    by_id_where = f"SELECT {COLS} FROM projects WHERE tenant_id = $1 AND id = $2"
    page = f"SELECT {COLS} FROM projects ORDER BY created_at, id LIMIT 50"
    page_where = f"SELECT {COLS} FROM projects WHERE tenant_id = $1 ORDER BY created_at, id LIMIT 50"
    insert = f"INSERT INTO projects (tenant_id, name) VALUES ($1, $2) RETURNING {COLS}"

    async def floor_tx(t: uuid.UUID, fn: Callable[[Any], Awaitable[Any]]) -> Any:
        async with floor.acquire() as con:
            await con.execute(f"BEGIN; SET LOCAL app.tenant_id = '{t}'")
            try:
                out = await fn(con)
            except BaseException:
                await con.execute("ROLLBACK")
                raise
            await con.execute("COMMIT")
            return out

    # pgaccess ops, for any Database (plain, signed, behind PgBouncer, an earlier pgaccess's)
    def pga_lookup(database: Any, repo: Any = ProjectRepository) -> Op:
        async def op(i: int) -> Any:
            t, p = pick(i)
            async with database.transaction(tenant=t) as uow:
                return await uow.repo(repo).find_by_id(p)
        return op

    def pga_page(database: Any, repo: Any = ProjectRepository) -> Op:
        async def op(i: int) -> Any:
            t, _ = pick(i)
            async with database.transaction(tenant=t, readonly=True) as uow:
                return await uow.repo(repo).find_page(limit=50)
        return op

    def pga_lookup_readonly(database: Database) -> Op:
        async def op(i: int) -> Any:
            t, p = pick(i)
            async with database.transaction(tenant=t, readonly=True) as uow:
                return await uow.repo(ProjectRepository).find_by_id(p)
        return op

    def pga_lookup_autocommit(database: Database) -> Op:
        async def op(i: int) -> Any:
            t, p = pick(i)
            return await database.autocommit(tenant=t).repo(ProjectRepository).find_by_id(p)
        return op

    def pga_insert(database: Any, repo: Any = ProjectRepository) -> Op:
        async def op(i: int) -> Any:
            t, _ = pick(i)
            async with database.transaction(tenant=t) as uow:
                return await uow.repo(repo).insert(name=f"w3-{i}")
        return op

    # W1 ---------------------------------------------------------------------------------
    w1_pga = pga_lookup(db)

    async def w1_floor(i: int) -> Any:
        t, p = pick(i)
        return await floor_tx(t, lambda con: con.fetchrow(by_id, p))

    async def w1_plain(i: int) -> Any:
        t, p = pick(i)
        return await plain.fetchrow(by_id_where, t, p)

    signed = await Database(settings.replace(tenant_signing_key=env.signing_key),
                            dsn=with_user(_same_server(dsn, env.signed_dsn), "pgaccess_app"), sql_dir="sql").open()
    closers.append(signed.close)

    w1_signed = pga_lookup(signed)

    async def w1_two(i: int) -> Any:
        t, p = pick(i)
        async with db.transaction(tenant=t) as uow:
            repo = uow.repo(ProjectRepository)
            return await repo.find_by_id(p), await repo.exists(p)
    async def no_rls_tx(fn: Callable[[Any], Awaitable[Any]]) -> Any:
        async with plain_tx.acquire() as con:
            await con.execute("BEGIN")
            out = await fn(con)
            await con.execute("COMMIT")
            return out

    async def w1_plain_tx(i: int) -> Any:
        t, p = pick(i)
        return await no_rls_tx(lambda con: con.fetchrow(by_id_where, t, p))

    impls: dict[str, dict[str, Op]] = {
        "W1 point lookup": {UOW: w1_pga, AUTOCOMMIT: pga_lookup_autocommit(db),
                            FLOOR: w1_floor, PLAIN: w1_plain,
                            "asyncpg no RLS, same transaction shape": w1_plain_tx,
                            "pgaccess, signed tenant context": w1_signed,
                            "pgaccess, read-only unit of work": pga_lookup_readonly(db),
                            "pgaccess unit of work, two statements": w1_two},
        "W2 first page of 50": {},
        "W3 insert one": {},
        "W6 find_by_domain": {},
    }

    # W2 ---------------------------------------------------------------------------------
    async def w2_floor(i: int) -> Any:
        t, _ = pick(i)
        return await floor_tx(t, lambda con: con.fetch(page))

    async def w2_plain(i: int) -> Any:
        t, _ = pick(i)
        return await plain.fetch(page_where, t)

    async def w2_plain_tx(i: int) -> Any:
        t, _ = pick(i)
        return await no_rls_tx(lambda con: con.fetch(page_where, t))

    async def w2_pga_autocommit(i: int) -> Any:
        t, _ = pick(i)
        return await db.autocommit(tenant=t, readonly=True).repo(ProjectRepository).find_page(limit=50)

    impls["W2 first page of 50"] = {UOW: pga_page(db), AUTOCOMMIT: w2_pga_autocommit, FLOOR: w2_floor,
                                    PLAIN: w2_plain,
                                    "asyncpg no RLS, same transaction shape": w2_plain_tx}

    # W3 ---------------------------------------------------------------------------------
    w3_pga = pga_insert(db)

    async def w3_floor(i: int) -> Any:
        t, _ = pick(i)
        return await floor_tx(t, lambda con: con.fetchrow(insert, t, f"w3-{i}"))

    async def w3_plain(i: int) -> Any:
        t, _ = pick(i)
        async with plain.acquire() as con, con.transaction():
            return await con.fetchrow(insert, t, f"w3-{i}")

    async def w3_pga_autocommit(i: int) -> Any:
        t, _ = pick(i)
        return await db.autocommit(tenant=t).repo(ProjectRepository).insert(name=f"w3-{i}")

    async def w3_plain_autocommit(i: int) -> Any:
        t, _ = pick(i)
        return await plain.fetchrow(insert, t, f"w3-{i}")

    impls["W3 insert one"] = {UOW: w3_pga, AUTOCOMMIT: w3_pga_autocommit, FLOOR: w3_floor,
                              PLAIN: w3_plain_autocommit, "asyncpg no RLS, explicit transaction": w3_plain}

    if env.previous is not None:  # an earlier pgaccess's unit of work, side by side
        rev, prev = env.previous
        pdb = await prev.Database(prev.Settings(min_size=pool_size, max_size=pool_size,
                                                acquire_timeout=30), dsn=app, sql_dir="sql").open()
        closers.append(pdb.close)
        prev_repo = prev.reference.ProjectRepository
        label = f"pgaccess {rev} unit of work"
        impls["W1 point lookup"][label] = pga_lookup(pdb, prev_repo)
        impls["W2 first page of 50"][label] = pga_page(pdb, prev_repo)
        impls["W3 insert one"][label] = pga_insert(pdb, prev_repo)

    # Through PgBouncer (transaction pooling, statement cache off; PgBouncer 1.18 has no
    # prepared-statement support), same pool size on the client side.
    if env.socket is not None and (shutil.which("pgbouncer") or Path("/usr/sbin/pgbouncer").exists()):
        bouncer = TemporaryPgBouncer(Path(env.socket).parent, int(env.socket.rsplit(".", 1)[1]),
                                     pool_size=pool_size)
        bdb = await Database(settings.replace(statement_cache_size=0),
                             dsn=bouncer.dsn("pgaccess_app", urlsplit(dsn).path.lstrip("/")),
                             sql_dir="sql").open()

        async def stop_bouncer() -> None:
            await bdb.close()
            bouncer.stop()

        closers.append(stop_bouncer)

        impls["W1 point lookup"]["pgaccess via PgBouncer"] = pga_lookup(bdb)
        impls["W3 insert one"]["pgaccess via PgBouncer"] = pga_insert(bdb)

    # W6 ---------------------------------------------------------------------------------
    async def w6_pga(i: int) -> Any:
        async with db.transaction(readonly=True) as uow:
            return await uow.repo(TenantRepository).find_by_domain(domains[i % len(domains)])

    async def w6_floor(i: int) -> Any:
        async with floor.acquire() as con:
            return await con.fetchrow("SELECT * FROM tenants WHERE domain = $1", domains[i % len(domains)])

    impls["W6 find_by_domain"] = {UOW: w6_pga, FLOOR: w6_floor}

    # Other libraries (same SQL, tenant filter in WHERE, no RLS: they have no tenancy) ----
    try:
        import aiosql

        q = aiosql.from_str(
            f"-- name: get(tenant_id, id)^\n{by_id_where.replace('$1', ':tenant_id').replace('$2', ':id')};\n"
            f"-- name: page(tenant_id)\n{page_where.replace('$1', ':tenant_id')};\n",
            "asyncpg",
        )

        async def w1_aiosql(i: int) -> Any:
            t, p = pick(i)
            return await q.get(plain, tenant_id=t, id=p)

        async def w2_aiosql(i: int) -> Any:
            t, _ = pick(i)
            return [r async for r in q.page(plain, tenant_id=t)]

        impls["W1 point lookup"]["aiosql (WHERE)"] = w1_aiosql
        impls["W2 first page of 50"]["aiosql (WHERE)"] = w2_aiosql
    except ImportError:
        pass
    try:
        import psycopg_pool

        conninfo = _conninfo(dsn)
        ppool = psycopg_pool.AsyncConnectionPool(conninfo, min_size=pool_size, max_size=pool_size, open=False)
        await ppool.open(wait=True)
        closers.append(ppool.close)
        sql1 = by_id_where.replace("$1", "%s").replace("$2", "%s")
        sql2 = page_where.replace("$1", "%s")

        async def w1_psycopg(i: int) -> Any:
            t, p = pick(i)
            async with ppool.connection() as con:
                cur = await con.execute(sql1, (t, p))
                return await cur.fetchone()

        async def w2_psycopg(i: int) -> Any:
            t, _ = pick(i)
            async with ppool.connection() as con:
                cur = await con.execute(sql2, (t,))
                return await cur.fetchall()

        impls["W1 point lookup"]["psycopg 3 (WHERE)"] = w1_psycopg
        impls["W2 first page of 50"]["psycopg 3 (WHERE)"] = w2_psycopg
    except ImportError:
        pass
    try:
        sa = await _sqlalchemy(dsn, pool_size)
        closers.append(sa["close"])

        async def w1_sa(i: int) -> Any:
            t, p = pick(i)
            return await sa["get"](t, p)

        async def w2_sa(i: int) -> Any:
            t, _ = pick(i)
            return await sa["page"](t)

        impls["W1 point lookup"]["SQLAlchemy 2 ORM (WHERE)"] = w1_sa
        impls["W2 first page of 50"]["SQLAlchemy 2 ORM (WHERE)"] = w2_sa
    except ImportError:
        pass

    async def close() -> None:
        for c in closers:
            await c()

    return impls, close


def _same_server(dsn: str, other: str) -> str:
    """``other``'s database on ``dsn``'s server (the round-trip proxy rewrites the host)."""
    return with_database(dsn, urlsplit(other).path.lstrip("/"))


def _conninfo(dsn: str) -> str:
    parts = urlsplit(dsn)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    host = query.get("host") or parts.hostname or "localhost"
    port = query.get("port") or str(parts.port or 5432)
    return f"host={host} port={port} user={parts.username} dbname={parts.path.lstrip('/')}"


async def _sqlalchemy(dsn: str, pool_size: int) -> dict[str, Any]:
    from .sa_models import make

    parts = urlsplit(dsn)
    netloc = parts.netloc if parts.hostname else f"{parts.username}@"
    return make(f"postgresql+asyncpg://{netloc}/{parts.path.lstrip('/')}?{parts.query}", pool_size)


# -- measurements ----------------------------------------------------------------------


async def interleaved(ops: dict[str, Op], baseline: str, concurrency: int, rounds: int,
                      burst: float) -> list[Result]:
    """Every implementation once per round, each between two bursts of ``baseline``: its
    ratio is taken against the mean of its two neighbours, which cancels the drift of a
    shared machine's speed. The order rotates each round so no implementation always
    follows the same other."""
    results = {name: Result(name) for name in ops}
    for name, op in ops.items():  # warm-up
        await run_burst(op, concurrency, min(0.2, burst), Result(name), 0)
    base, others = results[baseline], [n for n in ops if n != baseline]
    for r in range(rounds):
        offset = r * 1_000_000
        await run_burst(ops[baseline], concurrency, burst, base, offset)
        for name in others[r % len(others):] + others[:r % len(others)]:
            await run_burst(ops[name], concurrency, burst, results[name], offset)
            await run_burst(ops[baseline], concurrency, burst, base, offset)
            before, after = base.bursts[-2:]
            results[name].ratios.append(results[name].bursts[-1] / ((before + after) / 2))
    return list(results.values())


async def measure_workloads(env: Env, rounds: int, burst: float) -> list[tuple[str, int, list[Result]]]:
    impls, close = await make_impls(env, env.owner_dsn, pool_size=10)
    out: list[tuple[str, int, list[Result]]] = []
    try:
        for workload, ops in impls.items():
            for concurrency in (1, 16):
                results = await interleaved(ops, FLOOR, concurrency, rounds, burst)
                out.append((workload, concurrency, results))
                print(render_table(workload, concurrency, results), flush=True)
    finally:
        await close()
    return out


async def count_round_trips(env: Env, n: int) -> dict[tuple[str, str], float]:
    """Round trips per operation (concurrency 1) through the counting proxy."""
    if env.socket is None:
        return {}
    proxy = await RoundTripProxy(env.socket).start()
    parts = urlsplit(env.owner_dsn)
    dsn = f"postgresql://{parts.username}@127.0.0.1:{proxy.port}{parts.path}"
    impls, close = await make_impls(env, dsn, pool_size=1)
    counts: dict[tuple[str, str], float] = {}
    try:
        for workload, ops in impls.items():
            for name, op in ops.items():
                if "PgBouncer" in name:  # its server side bypasses the counting proxy
                    continue
                await op(0)  # warm (prepare statements)
                before = proxy.round_trips
                for i in range(n):
                    await op(i + 1)
                counts[(workload, name)] = (proxy.round_trips - before) / n
    finally:
        await close()
        await proxy.stop()
    return counts


async def measure_bulk(env: Env, rows: int, reps: int) -> list[tuple[str, float]]:
    """W4: seconds to insert ``rows`` projects, several ways."""
    app = with_user(env.owner_dsn, "pgaccess_app")
    admin = with_user(env.owner_dsn, "pgaccess_admin")
    db = await Database(Settings(min_size=1, max_size=2), dsn=app, admin_dsn=admin, sql_dir="sql").open()
    t = env.tenants[0]
    data = [{"name": f"bulk-{i}", "status": "paused"} for i in range(rows)]
    results: dict[str, list[float]] = {}

    async def timed(name: str, fn: Callable[[], Awaitable[Any]]) -> None:
        start = time.perf_counter()
        await fn()
        results.setdefault(name, []).append(time.perf_counter() - start)

    # Built before timing: the system context names the tenant in every row.
    system_data = [{"tenant_id": t, **r} for r in data]

    async def pga(method: str, system: bool) -> None:
        ctx = db.transaction(system=True, reason="bench") if system else db.transaction(tenant=t)
        async with ctx as uow:
            rows_ = system_data if system else data
            await uow.repo(ProjectRepository).insert_many(rows_, method=method)  # type: ignore[arg-type]

    async def row_by_row(pipelined: bool) -> None:
        """The hand-written RLS way: asyncpg's pipelined executemany, or one await per row."""
        insert = "INSERT INTO projects (tenant_id, name, status) VALUES ($1, $2, $3)"
        con = await asyncpg.connect(app)
        try:
            await con.execute(f"BEGIN; SET LOCAL app.tenant_id = '{t}'")
            if pipelined:
                await con.executemany(insert, [(t, r["name"], r["status"]) for r in data])
            else:
                for r in data:
                    await con.execute(insert, t, r["name"], r["status"])
            await con.execute("COMMIT")
        finally:
            await con.close()

    async def raw_copy() -> None:
        con = await asyncpg.connect(env.owner_dsn)  # superuser: RLS does not apply
        try:
            await con.copy_records_to_table("projects", records=[(t, r["name"], r["status"]) for r in data],
                                            columns=["tenant_id", "name", "status"])
        finally:
            await con.close()

    async def crossover(n: int, method: str) -> None:
        async with db.transaction(tenant=t) as uow:
            await uow.repo(ProjectRepository).insert_many(data[:n], method=method)  # type: ignore[arg-type]

    try:
        # Where COPY->temp starts to beat unnest (sets COPY_THRESHOLD in pgaccess.repository).
        for n in (200, 1000, 2000, 5000):
            if n <= rows:
                for _ in range(5):
                    await timed(f"crossover {n:>5} rows: unnest", lambda n=n: crossover(n, "unnest"))
                    await timed(f"crossover {n:>5} rows: COPY->temp", lambda n=n: crossover(n, "copy"))
        await timed("asyncpg one INSERT per await, row by row (RLS; one run)", lambda: row_by_row(False))
        for _ in range(reps):
            await timed("asyncpg executemany, pipelined (RLS)", lambda: row_by_row(True))
            await timed("pgaccess insert_many unnest (RLS)", lambda: pga("unnest", False))
            await timed("pgaccess insert_many COPY->temp->INSERT (RLS)", lambda: pga("copy", False))
            await timed("pgaccess insert_many system context (admin, auto)", lambda: pga("auto", True))
            await timed("asyncpg copy_records_to_table (owner, no RLS)", raw_copy)
    finally:
        await db.close()
    return [(name, statistics.median(v)) for name, v in results.items()]


async def measure_operations(server_dsn: str, smoke: bool, own_server: bool) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    project = PROJECT
    tpl = f"bench_tpl_{os.getpid()}"
    await build_template(server_dsn, project, tpl, "test")
    await quiesce(server_dsn)
    times = [await clone_database(server_dsn, tpl, f"bench_clone_{i}", file_copy=own_server)
             for i in range(5 if smoke else 20)]
    for i in range(len(times)):
        await drop_database(server_dsn, f"bench_clone_{i}")
    out.append(("per-test database clone from template (median)", f"{statistics.median(times):.1f} ms"))

    shared = f"bench_shared_{os.getpid()}"
    await clone_database(server_dsn, tpl, shared)
    tx_times = []
    for _ in range(5 if smoke else 50):
        start = time.perf_counter()
        rdb = RollbackDatabase(with_database(server_dsn, shared), project)
        await rdb.open()
        async with rdb.transaction():
            pass
        await rdb.close()
        tx_times.append((time.perf_counter() - start) * 1000)
    out.append(("rollback-per-test fixture overhead (db_tx, median)", f"{statistics.median(tx_times):.1f} ms"))
    await drop_database(server_dsn, shared)

    n_schemas = 20 if smoke else 200
    sdb = f"bench_schemas_{os.getpid()}"
    m = Migrator(await migrated_database(server_dsn, sdb), "migrations", echo=lambda _: None)
    for _ in range(n_schemas):
        await m.provision_tenant(uuid.uuid4())
    status_times = []
    for _ in range(5):
        start = time.perf_counter()
        await m.status()
        status_times.append((time.perf_counter() - start) * 1000)
    out.append((f"migrate status with {n_schemas} tenant schemas (median)", f"{statistics.median(status_times):.1f} ms"))
    await drop_database(server_dsn, sdb)

    scale = 5 if smoke else 1000
    seed_db = f"bench_seed_{os.getpid()}"
    owner = await migrated_database(server_dsn, seed_db)
    async with open_test_database(owner, PROJECT, min_size=0, leak_threshold=0) as db:
        start = time.perf_counter()
        await SeedRunner(db, discover_seeders("seeders"), env="test", scale=scale).run()
        seconds = time.perf_counter() - start
    out.append((f"seeding {scale * 1000 + 60:,} rows (--scale {scale})", f"{seconds:.2f} s"))
    await drop_database(server_dsn, seed_db)
    await _admin_exec(server_dsn, f'ALTER DATABASE "{tpl}" IS_TEMPLATE false')
    await drop_database(server_dsn, tpl)

    from pgaccess.pool import Pool

    n = 2000 if smoke else 20000
    async with Pool(Settings(min_size=1, max_size=1), server_dsn) as pool:
        start = time.perf_counter()
        for _ in range(n):  # what units of work and autocommit use; the reset rides their
            con = await pool.checkout()  # first round trip (pool.acquire() is closed at release)
            await pool.release(con)
        ours = (time.perf_counter() - start) / n * 1e6
    apool = await asyncpg.create_pool(server_dsn, min_size=1, max_size=1)
    start = time.perf_counter()
    for _ in range(n // 10):
        con = await apool.acquire()
        await apool.release(con)
    theirs = (time.perf_counter() - start) / (n // 10) * 1e6
    await apool.close()
    out.append(("pool checkout+release, pgaccess (the reset rides the first statement)", f"{ours:.1f} µs"))
    out.append(("pool acquire+release, asyncpg default (RESET round trip)", f"{theirs:.1f} µs"))
    return out


# -- setup and report ------------------------------------------------------------------


async def quiesce(server_dsn: str, limit: float = 60.0) -> None:
    """CHECKPOINT, then wait (up to ``limit`` s) for autovacuum workers to finish.

    The workloads before leave dirty buffers and autovacuum work behind; the operational
    figures describe a test run on a quiet server, so they start from one.
    """
    con = await asyncpg.connect(server_dsn)
    try:
        await con.execute("CHECKPOINT")
        deadline = time.monotonic() + limit
        busy = "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'"
        while time.monotonic() < deadline:
            if not await con.fetchval(busy):
                break
            await asyncio.sleep(0.2)
    finally:
        await con.close()


async def migrated_database(server_dsn: str, name: str) -> str:
    """Create database ``name`` on the server, apply the migrations; return its owner DSN."""
    await _admin_exec(server_dsn, f'CREATE DATABASE "{name}"')
    owner = with_database(server_dsn, name)
    await Migrator(owner, "migrations", echo=lambda _: None).up()
    return owner


async def prepare(server_dsn: str, socket: str | None, tenants: int, smoke: bool) -> Env:
    name = f"bench_{os.getpid()}"
    owner = await migrated_database(server_dsn, name)
    async with open_test_database(owner, PROJECT, min_size=0, leak_threshold=0) as db:
        await SeedRunner(db, discover_seeders("seeders"), env="test", scale=tenants).run()
    con = await asyncpg.connect(owner)
    try:
        await con.execute("ANALYZE")
        rows = await con.fetch("SELECT t.id, t.domain FROM tenants t WHERE domain LIKE 'scale-%' ORDER BY domain")
        ids = [r["id"] for r in rows]
        projects: dict[uuid.UUID, list[uuid.UUID]] = {t: [] for t in ids}
        for r in await con.fetch("SELECT tenant_id, id FROM projects WHERE tenant_id = ANY($1)", ids):
            projects[r["tenant_id"]].append(r["id"])
    finally:
        await con.close()
    # A copy with the signed tenant context switched on (migration 0003 + a key).
    key = secrets.token_hex(32)
    await _admin_exec(server_dsn, f'CREATE DATABASE "{name}_signed" TEMPLATE "{name}"')
    signed = with_database(server_dsn, f"{name}_signed")
    await _admin_exec(signed, f"SELECT app.enable_signed_tenant_context(decode('{key}', 'hex'))")
    return Env(owner, socket, signed, key, ids, projects, [r["domain"] for r in rows], smoke)


def load_previous(rev: str) -> tuple[str, Any]:
    """pgaccess as it was at git revision ``rev``, importable as ``pgaccess_prev``."""
    import importlib
    import subprocess
    import tarfile
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="pgaccess-prev-"))
    archive = subprocess.run(["git", "archive", rev, "pgaccess"], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=__import__("io").BytesIO(archive)) as tar:
        tar.extractall(root, filter="data")
    (root / "pgaccess").rename(root / "pgaccess_prev")
    sys.path.insert(0, str(root))
    module = importlib.import_module("pgaccess_prev")
    importlib.import_module("pgaccess_prev.reference")
    return rev, module


def render_table(workload: str, concurrency: int, results: list[Result],
                 trips: dict[tuple[str, str], float] | None = None) -> str:
    lines = [f"\n### {workload} - concurrency {concurrency}\n",
             "| implementation | ops/s | p50 ms | p99 ms | ratio to floor | ratio to asyncpg no RLS "
             "| round trips |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    plain = next((r for r in results if r.impl == PLAIN), None)
    for r in results:
        rt = (trips or {}).get((workload, r.impl))
        # Both ratios are medians against the same neighbouring floor bursts.
        to_plain = f"{r.ratio / plain.ratio:.2f}" if plain is not None and plain.ratio else ""
        lines.append(f"| {r.impl} | {r.ops_per_s:,.0f} | {r.pct(0.5):.3f} | {r.pct(0.99):.3f} | "
                     f"{r.ratio:.2f} | {to_plain} | "
                     f"{'' if rt is None else f'{rt:.1f}'} |")
    return "\n".join(lines)


def machine_notes(server_version: str, where: str) -> str:
    libs = []
    for lib in ("asyncpg", "aiosql", "SQLAlchemy", "psycopg", "psycopg-pool", "structlog", "tenacity"):
        try:
            libs.append(f"{lib} {metadata.version(lib)}")
        except metadata.PackageNotFoundError:
            libs.append(f"{lib} (not installed)")
    return (f"- machine: {os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}\n"
            f"- PostgreSQL: {server_version} ({where})\n"
            f"- libraries: {', '.join(libs)}\n")


async def main_async(args: argparse.Namespace) -> str:
    server = None
    where = "the server given by --dsn / PGACCESS_TEST_DSN"
    if args.dsn:
        server_dsn, socket = args.dsn, None
        q = parse_qs(urlsplit(args.dsn).query)
        if "host" in q and q["host"][0].startswith("/"):
            socket = f"{q['host'][0]}/.s.PGSQL.{q.get('port', ['5432'])[0]}"
    else:
        server = start_test_server()
        server_dsn = server.dsn
        socket = str(server.cluster.socket_dir / ".s.PGSQL.5432") if server.cluster else None
        if server.cluster is not None:
            where = f"throwaway cluster in {server.cluster.directory.parent}, unix socket, fsync=off"
    try:
        con = await asyncpg.connect(server_dsn)
        version = await con.fetchval("SHOW server_version")
        await con.close()
        smoke = args.smoke
        tenants = 3 if smoke else 100
        print(f"preparing {tenants} tenants x 1,000 projects ...", flush=True)
        env = await prepare(server_dsn, socket, tenants, smoke)
        if args.previous:
            env.previous = load_previous(args.previous)
        trips = await count_round_trips(env, 20 if smoke else 200)
        tables = await measure_workloads(env, rounds=1 if smoke else args.rounds, burst=0.1 if smoke else args.burst)
        await quiesce(server_dsn)
        bulk = await measure_bulk(env, 2_000 if smoke else 50_000, 1 if smoke else 5)
        ops = await measure_operations(server_dsn, smoke, own_server=server is not None)
        await drop_database(server_dsn, urlsplit(env.owner_dsn).path.lstrip("/"))
        await drop_database(server_dsn, urlsplit(env.signed_dsn).path.lstrip("/"))
    finally:
        if server is not None:
            server.stop()
    report = ["# pgaccess benchmark results\n", machine_notes(version, where),
              f"- run: `python -m bench{' --smoke' if args.smoke else ''}{f' --previous {args.previous}' if args.previous else ''}`; {args.rounds if not args.smoke else 1} "
              f"interleaved rounds of {args.burst if not args.smoke else 0.1}s per implementation; "
              "the order rotates each round and every burst starts after gc.collect(); "
              "latencies over all rounds; each burst runs between two bursts of the raw-asyncpg RLS floor, "
              "and ratio = median over rounds of its ops/s divided by the mean of those two\n"]
    for workload, concurrency, results in tables:
        report.append(render_table(workload, concurrency, results, trips))
    report.append("\n### W4 bulk insert of "
                  f"{2_000 if args.smoke else 50_000:,} projects (median seconds)\n")
    report.append("| method | seconds | rows/s |\n| --- | ---: | ---: |")
    n = 2_000 if args.smoke else 50_000
    report += [f"| {name} | {s:.3f} | {n / s:,.0f} |" for name, s in bulk if not name.startswith("crossover")]
    report.append("\n#### unnest vs COPY->temp by batch size (median of 5, seconds)\n")
    report.append("| batch | seconds |\n| --- | ---: |")
    report += [f"| {name.removeprefix('crossover ')} | {s:.4f} |" for name, s in bulk if name.startswith("crossover")]
    report.append("\n### Operational figures\n\n| what | value |\n| --- | ---: |")
    report += [f"| {k} | {v} |" for k, v in ops]
    notes = Path(__file__).with_name("notes.md")
    if notes.exists():
        report.append("\n" + notes.read_text())
    return "\n".join(report) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dsn", help="superuser DSN of a server to use (default: a throwaway cluster)")
    p.add_argument("--smoke", action="store_true", help="tiny data, one short round (CI)")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--burst", type=float, default=0.5, help="seconds per implementation per round")
    p.add_argument("--out", help="also write the markdown report here")
    p.add_argument("--previous", metavar="REV",
                   help="also run the unit of work of pgaccess at this git revision (e.g. a "
                        "release tag) on W1-W3, side by side")
    args = p.parse_args()
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    report = asyncio.run(main_async(args))
    print(report)
    if args.out:
        Path(args.out).write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
