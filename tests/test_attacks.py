"""Attack suite for tenant isolation (issue 14): SQL injected into one tenant's work.

Threat model: tenant A's attacker runs arbitrary SQL as the app role inside A's units of
work (``uow.execute``/``uow.fetch``) and autocommit statements. Each test plants something
through those doors - on every backend of the pool (pool sizes 1 and 10, signed tenant
context on and off) - then lets tenant B work, and checks GROUND TRUTH AS THE OWNER
afterwards: no row of B read by A, B's rows written only to B's table, B's results correct.

Tests marked ``xfail(strict=True)`` are breaks found in the defence: each reason says what
breaks; they flip to XPASS (a failure) once fixed, so the marker must then be removed.
Lines starting with ``ATTACK`` (visible with ``-s``) give the numbers of each run.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg
import pytest

from pgaccess import Database, InsufficientPrivilege, PgAccessError, QueryError
from pgaccess.asgi import TenantMiddleware
from pgaccess.devdb.clone import Project, open_test_database
from pgaccess.health import check
from pgaccess.reference import ProjectRepository, UserRepository
from pgaccess.tenancy import TenantContext
from pgaccess.uow import UnitOfWork

T = TypeVar("T")

CONFIGS = [(1, False), (1, True), (10, False), (10, True)]
CONFIG_IDS = ["pool1-unsigned", "pool1-signed", "pool10-unsigned", "pool10-signed"]


def with_vias(**extra: list[int]) -> pytest.MarkDecorator:
    """Every configuration through ``uow.execute``, and the configurations at the given
    indexes of CONFIGS through the other doors (``fetch=[1, 2]``): the suite stays fast."""
    cases = [pytest.param(c, "execute", id=f"{i}-execute") for c, i in zip(CONFIGS, CONFIG_IDS, strict=True)]
    for via, indexes in extra.items():
        cases += [pytest.param(CONFIGS[n], via, id=f"{CONFIG_IDS[n]}-{via}") for n in indexes]
    return pytest.mark.parametrize(("target", "via"), cases, indirect=["target"])


def report(line: str) -> None:
    print(f"ATTACK {line}")


# -- setup ------------------------------------------------------------------------------


@dataclass
class Target:
    db: Database
    dsn: str  # the owner's DSN: ground truth
    size: int
    key: str | None
    project: Project
    a: uuid.UUID  # the attacker's tenant
    b: uuid.UUID  # the victim

    @property
    def label(self) -> str:
        return f"pool={self.size} {'signed' if self.key else 'unsigned'}"

    def another_pool(self, size: int = 1) -> Database:
        """A second application instance on the same database (same role and key)."""
        return open_db(self.dsn, self.project, size, self.key)


def open_db(dsn: str, project: Project, size: int, key: str | None) -> Database:
    return open_test_database(dsn, project, min_size=0, max_size=size, tenant_signing_key=key)


async def owner(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    con = await asyncpg.connect(dsn)
    try:
        return list(await con.fetch(sql, *args))
    finally:
        await con.close()


async def enable_signing(dsn: str) -> str:
    key = secrets.token_hex(32)
    await owner(dsn, "SELECT app.enable_signed_tenant_context(decode($1, 'hex'))", key)
    return key


@pytest.fixture(params=CONFIGS, ids=CONFIG_IDS)
async def target(request: pytest.FixtureRequest, db_dsn: str, pgaccess_project: Project,
                 tenant: uuid.UUID, other_tenant: uuid.UUID) -> AsyncIterator[Target]:
    size, signed = request.param
    key = await enable_signing(db_dsn) if signed else None
    db = open_db(db_dsn, pgaccess_project, size, key)
    async with db:
        yield Target(db, db_dsn, size, key, pgaccess_project, tenant, other_tenant)


@pytest.fixture
async def signed1(db_dsn: str, pgaccess_project: Project, tenant: uuid.UUID,
                  other_tenant: uuid.UUID) -> AsyncIterator[Target]:
    """Pool of one, signing on: the strongest configuration, for the breaks."""
    key = await enable_signing(db_dsn)
    db = open_db(db_dsn, pgaccess_project, 1, key)
    async with db:
        yield Target(db, db_dsn, 1, key, pgaccess_project, tenant, other_tenant)


# -- ground truth -----------------------------------------------------------------------


@dataclass(frozen=True)
class Truth:
    projects: dict[uuid.UUID, dict[uuid.UUID, tuple[str, str]]]  # tenant -> id -> (name, status)
    users: dict[uuid.UUID, int]

    def of(self, tenant: uuid.UUID) -> dict[uuid.UUID, tuple[str, str]]:
        return self.projects.get(tenant, {})


async def ground_truth(dsn: str) -> Truth:
    projects: dict[uuid.UUID, dict[uuid.UUID, tuple[str, str]]] = {}
    for r in await owner(dsn, "SELECT tenant_id, id, name, status::text FROM public.projects"):
        projects.setdefault(r["tenant_id"], {})[r["id"]] = (r["name"], r["status"])
    users = {r["tenant_id"]: r["n"] for r in await owner(
        dsn, "SELECT tenant_id, count(*) AS n FROM public.users GROUP BY tenant_id")}
    return Truth(projects, users)


MARKER = "b-marker-"


async def assert_ground_truth(t: Target, before: Truth, *, b_markers: int = 0) -> None:
    """As the owner: A's and everyone else's rows untouched, B's rows plus exactly
    ``b_markers`` rows B wrote, nothing planted or stolen anywhere in the real tables."""
    after = await ground_truth(t.dsn)
    for tenant_id, rows in before.projects.items():
        now = after.of(tenant_id)
        assert {k: v for k, v in now.items() if k in rows} == rows, f"rows of {tenant_id} changed"
    added = {k: v for k, v in after.of(t.b).items() if k not in before.of(t.b)}
    assert len(added) == b_markers and all(n.startswith(MARKER) for n, _ in added.values())
    for tenant_id in after.projects:
        if tenant_id != t.b:
            assert set(after.of(tenant_id)) == set(before.of(tenant_id)), \
                f"rows appeared in {tenant_id}'s part of the table"
    assert after.users == before.users
    leaked = await owner(t.dsn, "SELECT count(*) FROM public.projects WHERE name ~ '^(planted|pwned|stolen)'")
    assert leaked[0][0] == 0


# -- attacker and victim helpers --------------------------------------------------------


async def on_every_backend(t: Target, tenant: uuid.UUID | None,
                           fn: Callable[[UnitOfWork], Awaitable[T]]) -> list[T]:
    """Run ``fn`` in ``t.size`` units of work held at the same time: one per backend."""
    barrier = asyncio.Barrier(t.size)

    async def one() -> T:
        async with t.db.transaction(tenant=tenant) as uow:
            await barrier.wait()
            return await fn(uow)

    return list(await asyncio.gather(*(one() for _ in range(t.size))))


async def tolerant(work: Awaitable[Any]) -> None:
    """The attacker's own statement or unit of work may fail (its own 1 ms timeout, a
    session it had killed): what matters is what it left behind."""
    with contextlib.suppress(PgAccessError):
        await work


async def plant(t: Target, statements: list[str], via: str) -> None:
    """Tenant A runs ``statements`` on every backend: through ``uow.execute`` (one simple
    query), ``uow.fetch`` (one statement at a time) or autocommit statements."""
    if via == "autocommit":
        sql = "; ".join(["SELECT pg_sleep(0.05)", *statements])  # spread over the backends
        await asyncio.gather(*(tolerant(t.db.autocommit(tenant=t.a).execute(sql))
                               for _ in range(t.size)))
        return

    async def run(uow: UnitOfWork) -> None:
        if via == "execute":
            await uow.execute("; ".join(statements))
        else:
            for statement in statements:
                await uow.fetch(statement)

    await tolerant(on_every_backend(t, t.a, run))


async def temp_relations(t: Target, name: str) -> int:
    """How many sessions hold a temporary relation ``name`` (the owner sees every pg_temp_N)."""
    rows = await owner(t.dsn, "SELECT count(*) FROM pg_catalog.pg_class WHERE relname = $1 "
                              "AND relpersistence = 't'", name)
    return int(rows[0][0])


async def victim_round(t: Target, truth: dict[uuid.UUID, tuple[str, str]], i: int) -> list[str]:
    """One of B's units of work: reads through the repository, a named query and plain
    (unqualified) SQL, and one plain INSERT; returns what was wrong."""
    wrong: list[str] = []
    async with t.db.transaction(tenant=t.b) as uow:
        page = await uow.repo(ProjectRepository).find_page(limit=1000)
        mine = {p.id: (p.name, p.status) for p in page.rows if not p.name.startswith(MARKER)}
        if mine != truth or any(p.tenant_id != t.b for p in page.rows):
            wrong.append("repository")
        active = await uow.q.projects_by_status(status="active", lim=1000)
        want_active = {k for k, (_, s) in truth.items() if s == "active"}
        if {r["id"] for r in active if not r["name"].startswith(MARKER)} != want_active:
            wrong.append("named query")
        raw = await uow.fetch("SELECT tenant_id, id, name FROM projects")
        if ({r["id"] for r in raw if not r["name"].startswith(MARKER)} != set(truth)
                or any(r["tenant_id"] != t.b for r in raw)):
            wrong.append("plain select")
        if await uow.fetchval("SELECT count(*) FROM users") != await uow.repo(UserRepository).count():
            wrong.append("users")
        await uow.execute("INSERT INTO projects (tenant_id, name) VALUES ($1, $2)", t.b, f"{MARKER}{i}")
    return wrong


async def victim_rounds(t: Target, truth: Truth, rounds: int) -> int:
    """``rounds`` units of work of B, ``t.size`` at a time; returns how many went wrong."""
    bad = 0
    for start in range(0, rounds, t.size):
        results = await asyncio.gather(*(victim_round(t, truth.of(t.b), i)
                                         for i in range(start, min(rounds, start + t.size))))
        bad += sum(1 for r in results if r)
    return bad


def rounds_for(t: Target) -> int:
    return 200 if t.size > 1 else 20


# -- 1. relation shadowing through pg_temp ----------------------------------------------


def shadow_statements(b: uuid.UUID) -> list[str]:
    return [
        "CREATE TABLE pg_temp.projects (LIKE public.projects INCLUDING DEFAULTS)",
        f"INSERT INTO pg_temp.projects (tenant_id, name) SELECT '{b}', 'planted-' || g "
        "FROM generate_series(1, 5) g",
        # the spy: a temporary view named like a real table whose WHERE calls a temporary
        # function that copies what B reads, and B's tenant setting, into A's loot table
        "CREATE TABLE pg_temp.loot (tenant text, email text)",
        "CREATE FUNCTION pg_temp.spy(t text, e text) RETURNS boolean LANGUAGE sql AS "
        "$$ INSERT INTO pg_temp.loot VALUES (t, e); SELECT true $$",
        "CREATE TEMPORARY VIEW users AS SELECT * FROM public.users u "
        "WHERE pg_temp.spy(current_setting('app.tenant_id', true), u.email)",
    ]


@with_vias(fetch=[1, 2], autocommit=[0, 3])
async def test_pg_temp_shadow_table_and_spy_view(target: Target, via: str) -> None:
    t = target
    before = await ground_truth(t.dsn)
    await plant(t, shadow_statements(t.b), via)
    planted = await temp_relations(t, "projects")
    assert planted >= 1
    rounds = rounds_for(t)
    bad = await victim_rounds(t, before, rounds)
    left = await temp_relations(t, "loot")
    report(f"pg_temp shadow [{t.label} via {via}]: A planted {planted} backends; {bad} of "
           f"{rounds} of B's units of work touched the shadow table or the spy view; "
           f"{left} loot tables left")
    assert bad == 0
    assert left == 0  # every planted backend was reset by B's next unit of work on it
    await assert_ground_truth(t, before, b_markers=rounds)


# -- 2. prepared-statement hijack -------------------------------------------------------


FIND_BY_ID = '%FROM "public"."projects" WHERE "id" = $1'


@with_vias(autocommit=[1, 2])
async def test_prepared_statement_hijack(target: Target, via: str) -> None:
    t = target
    before = await ground_truth(t.dsn)
    victim_id = next(iter(before.of(t.b)))

    async def warm(uow: UnitOfWork) -> None:  # B's statements now exist on every backend
        await uow.repo(ProjectRepository).find_by_id(victim_id)

    await on_every_backend(t, t.b, warm)
    hijack = (
        "DO $$ DECLARE s text; BEGIN FOR s IN SELECT name FROM pg_prepared_statements "
        f"WHERE statement LIKE '{FIND_BY_ID}' LOOP "
        "EXECUTE format('DEALLOCATE %I', s); "
        "EXECUTE format('PREPARE %I (uuid) AS UPDATE public.projects SET name = ''pwned'' "
        "WHERE id <> $1 RETURNING *', s); END LOOP; END $$"
    )
    if via == "autocommit":
        await asyncio.gather(*(t.db.autocommit(tenant=t.a).execute(f"{hijack}; SELECT pg_sleep(0.05)")
                               for _ in range(t.size)))
    else:
        async def run(uow: UnitOfWork) -> int:
            await uow.execute(hijack)
            return int(await uow.fetchval("SELECT count(*) FROM pg_prepared_statements WHERE from_sql"))
        hijacked = sum(await on_every_backend(t, t.a, run))
        assert hijacked == t.size
    wrong = 0
    rounds = rounds_for(t)
    for start in range(0, rounds, t.size):
        async def one() -> bool:
            async with t.db.transaction(tenant=t.b) as uow:
                found = await uow.repo(ProjectRepository).find_by_id(victim_id)
                return found is None or found.name != before.of(t.b)[victim_id][0]
        wrong += sum(await asyncio.gather(*(one() for _ in range(min(t.size, rounds - start)))))
    discarded = t.db.pool.stats().connections_discarded
    report(f"prepared-statement hijack [{t.label} via {via}]: {discarded} tampered sessions "
           f"terminated; {wrong} of {rounds} of B's find_by_id wrong")
    assert wrong == 0 and discarded >= 1
    await assert_ground_truth(t, before)


# -- 3. session state in odd spellings --------------------------------------------------


def session_spellings(b: uuid.UUID) -> list[str]:
    return [
        f"SELECT \"set_config\"('app.tenant_id', '{b}', false)",
        f"SELECT set_config/**/('app.tenant_id', '{b}', false)",
        f"SELECT pg_catalog.\"set_config\"('app.tenant_id', '{b}', false)",
        f"SELECT set_config(U&'app.tenant\\005fid', '{b}', false)",
        f"/**/SET app.tenant_id = '{b}'",
        f"SET SESSION \"app\".\"tenant_id\" TO '{b}'",
        f"DO $$ BEGIN PERFORM set_config('app.tenant_id', '{b}', false); END $$",
        f"DO $$ BEGIN EXECUTE 'SET app.tenant' || '_id = ''{b}'''; END $$",
        "CREATE FUNCTION pg_temp.f() RETURNS text LANGUAGE sql AS "
        f"$$ SELECT set_config('app.tenant_id', '{b}', false) $$; SELECT pg_temp.f()",
        "CREATE FUNCTION pg_temp.g() RETURNS void LANGUAGE plpgsql AS $$ BEGIN "
        f"EXECUTE format('SET %s = %L', U&'app.tenant\\005fid', '{b}'); END $$; SELECT pg_temp.g()",
        "SET search_path = pg_temp, public; CREATE TABLE pg_temp.projects (LIKE public.projects "
        f"INCLUDING DEFAULTS); INSERT INTO pg_temp.projects (tenant_id, name) VALUES ('{b}', 'planted')",
        "SET row_security = off",
        "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
        "SET default_transaction_read_only = on",
        # (250 ms, not 1 ms: a 1 ms timeout left by A also applies to the statements of B's
        # opening that run before its RESET ALL - see the idle_session_timeout break)
        "SELECT set_config('statement_timeout', '250', false)",
        "SET lock_timeout = 1; SET idle_in_transaction_session_timeout = 1",
        "SET default_transaction_isolation = 'serializable'",
        "LISTEN victim_channel",
        "DECLARE held CURSOR WITH HOLD FOR SELECT * FROM projects",
        "SELECT pg_advisory_lock_shared(42); SELECT pg_advisory_lock(pg_backend_pid())",
        "CREATE TEMP SEQUENCE s; SELECT nextval('s')",
        "SET SESSION AUTHORIZATION DEFAULT; SET ROLE NONE",
    ]


async def check_pristine_for_b(t: Target, truth: Truth) -> list[str]:
    """B's and a tenant-less unit of work on every backend: right rows, writable, pinned
    settings; and A still sees only A."""
    async def as_b(uow: UnitOfWork) -> list[str]:
        wrong = []
        rows = await uow.fetch("SELECT tenant_id, id FROM projects")
        if {r["id"] for r in rows} != set(truth.of(t.b)):
            wrong.append("B's rows")
        settings = await uow.fetchrow("SELECT current_setting('row_security') AS rs, "
                                      "current_setting('statement_timeout') AS st, "
                                      "current_setting('transaction_read_only') AS ro, "
                                      "current_setting('search_path') AS sp")
        assert settings is not None
        if tuple(settings) != ("on", "30s", "off", "public, pg_temp"):
            wrong.append(f"settings {tuple(settings)}")
        if await uow.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"):
            wrong.append("advisory lock")
        await uow.execute("INSERT INTO projects (tenant_id, name) VALUES ($1, 'w'); "
                          "DELETE FROM projects WHERE name = 'w'".replace("$1", f"'{t.b}'"))
        return wrong

    async def no_tenant(uow: UnitOfWork) -> list[str]:
        return [] if await uow.fetchval("SELECT count(*) FROM projects") == 0 else ["tenant-less"]

    async def as_a(uow: UnitOfWork) -> list[str]:
        ids = {r[0] for r in await uow.fetch("SELECT id FROM projects")}
        return [] if ids == set(truth.of(t.a)) else ["A's rows"]

    async def b_autocommit() -> list[str]:
        try:
            n = await t.db.autocommit(tenant=t.b).repo(ProjectRepository).count()
        except PgAccessError as exc:
            return [f"B's autocommit: {type(exc).__name__}"]
        return [] if n == len(truth.of(t.b)) else ["B's autocommit rows"]

    wrong: list[str] = []
    for found in await asyncio.gather(*(b_autocommit() for _ in range(t.size))):
        wrong += found
    for tenant, fn in ((None, no_tenant), (t.b, as_b), (t.a, as_a)):
        for found in await on_every_backend(t, tenant, fn):
            wrong += found
    return wrong


@with_vias(autocommit=[1, 2])
async def test_session_state_in_odd_spellings(target: Target, via: str) -> None:
    t = target
    before = await ground_truth(t.dsn)
    broken: dict[str, list[str]] = {}
    spellings = session_spellings(t.b)
    for statement in spellings:
        await plant(t, [statement], via)
        wrong = await check_pristine_for_b(t, before)
        if wrong:
            broken[statement] = wrong
    report(f"session state [{t.label} via {via}]: {len(broken)} of {len(spellings)} spellings "
           f"reached B, a tenant-less or A's next unit of work")
    assert broken == {}
    await assert_ground_truth(t, before)


async def test_victim_leftovers_are_gone_for_the_attacker(target: Target) -> None:
    """The other direction: what B's own code leaves on a session (a WITH HOLD cursor over
    its rows, a temporary table of its data, a listener) is gone when A gets the backend."""
    t = target

    async def leave(uow: UnitOfWork) -> None:
        await uow.execute("DECLARE b_cursor CURSOR WITH HOLD FOR SELECT name FROM projects; "
                          "CREATE TEMP TABLE b_scratch AS SELECT * FROM projects; LISTEN b_events")

    await on_every_backend(t, t.b, leave)

    async def steal(uow: UnitOfWork) -> int:
        got = 0
        for sql in ("FETCH ALL FROM b_cursor", "SELECT * FROM pg_temp.b_scratch"):
            try:
                async with uow.savepoint():
                    got += len(await uow.fetch(sql))
            except PgAccessError:
                pass
        return got

    stolen = sum(await on_every_backend(t, t.a, steal))
    report(f"victim leftovers [{t.label}]: A read {stolen} of B's rows from cursors/temp tables")
    assert stolen == 0


async def test_previous_tenants_listeners_gone_in_the_next_unit_of_work(signed1: Target) -> None:
    """The opening's reset (UNLISTEN * among it) is committed before the unit of work's
    BEGIN: the previous tenant's channels are gone from its first statement on."""
    t = signed1
    async with t.db.transaction(tenant=t.b) as uow:
        await uow.execute("LISTEN tenant_b_invoices")
    async with t.db.transaction(tenant=t.a) as uow:
        seen = await uow.fetch("SELECT pg_listening_channels()")
    report(f"listeners: A saw {[r[0] for r in seen]} in its next unit of work")
    assert seen == []


# -- 4. signed tenant context replay ----------------------------------------------------


def capture_sql(name: str, like: str, pattern: str) -> str:
    """``pg_temp.<name>(ms)``: for ``ms`` milliseconds, the ``pattern`` group of every other
    session's current query text that matches ``like`` (pg_stat_activity, as the app role)."""
    return rf"""
CREATE FUNCTION pg_temp.{name}(ms int) RETURNS SETOF text LANGUAGE plpgsql AS $$
DECLARE deadline timestamptz := clock_timestamp() + ms * interval '1 millisecond'; q text;
BEGIN
  WHILE clock_timestamp() < deadline LOOP
    PERFORM pg_stat_clear_snapshot();
    FOR q IN SELECT query FROM pg_stat_activity WHERE pid <> pg_backend_pid()
             AND query LIKE '{like}' LOOP
      RETURN NEXT substring(q from '{pattern}');
    END LOOP;
  END LOOP;
END $$"""


CAPTURE = capture_sql("capture", """%"tenant_id" = ''%.%""", """"tenant_id" = ''([0-9a-f.-]+)''""")


async def capture_while_b_works(t: Target, spy: Database, ms: int = 300) -> list[str]:
    """A, on another app instance, reads B's signed values out of pg_stat_activity while B
    runs units of work and autocommit statements; newest last."""
    stop = time.monotonic() + ms / 1000 + 0.1

    async def b_loop(n: int) -> None:
        while time.monotonic() < stop:
            if n % 2:
                await t.db.autocommit(tenant=t.b).repo(ProjectRepository).count()
            else:
                async with t.db.transaction(tenant=t.b) as uow:
                    await uow.repo(ProjectRepository).count()

    async def capture() -> list[str]:
        async with spy.transaction(tenant=t.a) as uow:
            await uow.execute(CAPTURE)
            return [r[0] for r in await uow.fetch("SELECT DISTINCT v FROM pg_temp.capture($1) v", ms)]

    loops = asyncio.gather(*(b_loop(n) for n in range(min(t.size, 4))))
    _, captured = await asyncio.gather(loops, capture())
    values = [v for v in captured if v and v.startswith(str(t.b))]
    return sorted(values, key=lambda v: int(v.split(".")[2]))


async def replay_on_every_backend(t: Target, values: list[str]) -> tuple[int, int]:
    """A sets the newest captured value for the backend it is on; (reads of B, refusals)."""
    async def replay(uow: UnitOfWork) -> tuple[int, int]:
        pid = await uow.fetchval("SELECT pg_backend_pid()")
        mine = [v for v in values if v.split(".")[1] == str(pid)]
        if not mine:
            return 0, 0
        try:
            async with uow.savepoint():
                await uow.fetchval("SELECT set_config('app.tenant_id', $1, true)", mine[-1])
                n = await uow.fetchval("SELECT count(*) FROM projects WHERE tenant_id = $1", t.b)
                return (1 if n else 0), 0
        except InsufficientPrivilege:
            return 0, 1

    results = await on_every_backend(t, t.a, replay)
    return sum(r[0] for r in results), sum(r[1] for r in results)


@pytest.mark.parametrize("size", [1, 10])
async def test_captured_signed_context_refused_from_new_pool_and_after_skew(
    db_dsn: str, pgaccess_project: Project, tenant: uuid.UUID, other_tenant: uuid.UUID, size: int
) -> None:
    key = await enable_signing(db_dsn)
    db = open_db(db_dsn, pgaccess_project, size, key)
    t = Target(db, db_dsn, size, key, pgaccess_project, tenant, other_tenant)
    before = await ground_truth(db_dsn)
    async with db, t.another_pool() as spy:
        values = await capture_while_b_works(t, spy)
        assert values, "the capture loop saw none of B's openings"
        refused = 0
        for value in values[-10:]:  # from a new pool: another backend
            with pytest.raises(InsufficientPrivilege, match="another session"):
                async with spy.transaction(tenant=t.a) as uow:
                    await uow.fetchval("SELECT set_config('app.tenant_id', $1, true)", value)
                    await uow.fetchval("SELECT count(*) FROM projects")
            refused += 1
        await asyncio.sleep(1.2)  # past the allowed skew: on its own backend
        read, late = await replay_on_every_backend(t, values)
    report(f"signed replay [pool={size}]: captured {len(values)} of B's signed values from "
           f"pg_stat_activity; {refused} of {min(10, len(values))} refused from a new pool; "
           f"after the skew {late} refused and {read} read B's rows on their own backend")
    assert read == 0
    await assert_ground_truth(t, before)


@pytest.mark.xfail(strict=True, reason=(
    "BREAK: the signed context is sent as a literal in the opening query, so another session "
    "of the app role reads it from pg_stat_activity.query; it is bound to the backend pid and a "
    "1 s skew but not to the transaction, so A replays B's value on B's backend in A's next unit "
    "of work within the skew and reads B's rows"))
@pytest.mark.parametrize("size", [1, 10])
async def test_captured_signed_context_replayed_on_same_backend_within_skew(
    db_dsn: str, pgaccess_project: Project, tenant: uuid.UUID, other_tenant: uuid.UUID, size: int
) -> None:
    key = await enable_signing(db_dsn)
    db = open_db(db_dsn, pgaccess_project, size, key)
    t = Target(db, db_dsn, size, key, pgaccess_project, tenant, other_tenant)
    async with db, t.another_pool() as spy:
        values = await capture_while_b_works(t, spy)
        read, refused = await replay_on_every_backend(t, values)
    report(f"signed replay within skew [pool={size}]: captured {len(values)}; A's units of "
           f"work read B's rows on {read} of {size} backends ({refused} refused)")
    assert values and read == 0


# -- 5. tenant middleware poisoning -----------------------------------------------------


async def test_tenant_middleware_poisoning(target: Target) -> None:
    t = target
    tenants = await owner(t.dsn, "SELECT id, domain, status::text FROM public.tenants")
    suspended = next(r for r in tenants if r["status"] != "active")
    b_domain = next(r["domain"] for r in tenants if r["id"] == t.b)
    await plant(t, [
        "CREATE TABLE pg_temp.tenants AS SELECT * FROM public.tenants",
        "UPDATE pg_temp.tenants SET status = 'active'",
        "INSERT INTO pg_temp.tenants SELECT id, name, 'evil.localhost', 'active', plan, features, "
        f"configuration, created_at, updated_at FROM public.tenants WHERE id = '{t.b}'",
    ], "execute")
    seen: list[uuid.UUID | None] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(TenantContext.current())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    mw = TenantMiddleware(app, t.db, cache_ttl=0)  # every request looks the tenant up

    async def ask(host: str, header: str | None = None) -> int:
        status: list[int] = []

        async def send(message: Any) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])

        async def receive() -> Any:
            return {"type": "http.request"}

        headers = [(b"host", host.encode())] + ([(b"x-tenant-id", header.encode())] if header else [])
        await mw({"type": "http", "path": "/projects", "headers": headers}, receive, send)
        return status[0]

    expected = [("evil.localhost", None, 404), (suspended["domain"], None, 403),
                ("x.localhost", str(suspended["id"]), 403), (b_domain, None, 200)]
    requests = 0
    poisoned = 0
    for _ in range(max(5, 2 * t.size) if t.size > 1 else 5):
        answers = await asyncio.gather(*(ask(h, x) for h, x, _ in expected))
        requests += len(answers)
        poisoned += sum(1 for got, (_, _, want) in zip(answers, expected, strict=True) if got != want)
    report(f"middleware poisoning [{t.label}]: {poisoned} of {requests} requests resolved through "
           "A's temporary tenants table")
    assert poisoned == 0
    assert set(seen) == {t.b}


# -- 6. persistent role defaults --------------------------------------------------------


PINNED_DEFAULTS = [
    "search_path = pg_temp, pg_catalog",
    "default_transaction_read_only = on",
    "row_security = off",
    "statement_timeout = '1ms'",
    "lock_timeout = '1ms'",
    "idle_in_transaction_session_timeout = '1ms'",
    "default_transaction_isolation = 'serializable'",
    "temp_tablespaces = 'pg_default'",
    "\"TimeZone\" = 'Pacific/Kiritimati'",
    "app.tenant_id = '{b}'",
]


async def reset_role_defaults(dsn: str) -> None:
    con = await asyncpg.connect(dsn)
    try:
        db = await con.fetchval("SELECT current_database()")
        await con.execute(f'ALTER ROLE pgaccess_app IN DATABASE "{db}" RESET ALL; '
                          "ALTER ROLE pgaccess_app RESET ALL")
    finally:
        await con.close()


@pytest.mark.parametrize("scope", ["in_database", "role"])
async def test_role_defaults_of_pinned_settings_do_not_apply(target: Target, scope: str) -> None:
    t = target
    before = await ground_truth(t.dsn)
    db_name = (await owner(t.dsn, "SELECT current_database()"))[0][0]
    where = f'IN DATABASE "{db_name}" ' if scope == "in_database" else ""
    # role-wide defaults reach every database of the cluster (other tests' raw connections
    # too): only harmless pinned settings there; the dangerous ones in this database only
    settings = PINNED_DEFAULTS if scope == "in_database" else [
        "transform_null_equals = on", "check_function_bodies = off", "default_transaction_deferrable = on"]
    try:
        accepted = 0
        for setting in settings:
            try:
                async with t.db.transaction(tenant=t.a) as uow:
                    await uow.execute(f"ALTER ROLE pgaccess_app {where}SET {setting.format(b=t.b)}")
                accepted += 1
            except InsufficientPrivilege:  # e.g. app.tenant_id: a placeholder needs a superuser
                pass
        async with t.another_pool(t.size) as fresh:
            fresh_t = Target(fresh, t.dsn, t.size, t.key, t.project, t.a, t.b)
            wrong = await check_pristine_for_b(fresh_t, before)
            found = await owner(t.dsn, "SELECT count(*) FROM pg_db_role_setting s JOIN pg_roles r "
                                       "ON r.oid = s.setrole WHERE r.rolname = 'pgaccess_app'")
    finally:
        await reset_role_defaults(t.dsn)
    report(f"role defaults, pinned [{t.label} {scope}]: {accepted} of {len(settings)} defaults set by A "
           f"({found[0][0]} pg_db_role_setting rows); {len(wrong)} problems in B's units of work")
    assert wrong == []
    await assert_ground_truth(t, before)


UNPINNED = {
    "synchronous_commit": "off",  # B's commits silently stop being durable
    "idle_session_timeout": "'60s'",  # the server closes pooled connections (1ms: all of them)
    "standard_conforming_strings": "off",  # backslashes in B's literals change meaning
    "default_text_search_config": "'pg_catalog.simple'",  # B's full-text results change
    "gin_fuzzy_search_limit": "1",  # B's GIN index scans silently return at most ~1 row
    "DateStyle": "'SQL, DMY'",  # B's date/text conversions change
}


async def test_role_defaults_of_unpinned_settings_reach_every_tenant(signed1: Target) -> None:
    t = signed1
    db_name = (await owner(t.dsn, "SELECT current_database()"))[0][0]
    try:
        async with t.db.transaction(tenant=t.a) as uow:
            for name, value in UNPINNED.items():
                await uow.execute(f'ALTER ROLE pgaccess_app IN DATABASE "{db_name}" SET "{name}" = {value}')
        async with t.another_pool() as fresh, fresh.transaction(tenant=t.b) as uow:
            inherited = await uow.fetch(
                "SELECT name, setting FROM pg_settings WHERE source IN ('user', 'database user', 'database')")
            escaped = await uow.fetchval(r"SELECT length('a\nb')")
    finally:
        await reset_role_defaults(t.dsn)
    report(f"role defaults, unpinned: B's new session inherited {len(inherited)} of {len(UNPINNED)} "
           f"of A's defaults ({', '.join(r['name'] for r in inherited)}); length('a\\nb') = {escaped}")
    assert inherited == []


@pytest.mark.xfail(strict=True, reason=(
    "BREAK: the app role can change what outlives its session: its own password (ALTER ROLE "
    "pgaccess_app PASSWORD ...; with password authentication every app instance is locked out "
    "at its next connect, or the attacker learns a working password) and its default "
    "privileges (ALTER DEFAULT PRIVILEGES ..., kept in pg_default_acl)"))
@pytest.mark.parametrize("change", ["password", "default_privileges"])
async def test_app_role_cannot_make_persistent_role_changes(signed1: Target, change: str) -> None:
    t = signed1
    saved = (await owner(t.dsn, "SELECT rolpassword FROM pg_authid WHERE rolname = 'pgaccess_app'"))[0][0]
    sql = {"password": "ALTER ROLE pgaccess_app PASSWORD 'chosen-by-tenant-a'",
           "default_privileges": "ALTER DEFAULT PRIVILEGES FOR ROLE pgaccess_app "
                                 "GRANT ALL ON TABLES TO PUBLIC"}[change]
    try:
        changed = True
        try:
            async with t.db.transaction(tenant=t.a) as uow:
                await uow.execute(sql)
        except PgAccessError:
            changed = False
        after = await owner(t.dsn, "SELECT (SELECT rolpassword FROM pg_authid WHERE rolname = 'pgaccess_app'), "
                                   "(SELECT count(*) FROM pg_default_acl d JOIN pg_roles r "
                                   "ON r.oid = d.defaclrole WHERE r.rolname = 'pgaccess_app')")
    finally:
        con = await asyncpg.connect(t.dsn)
        try:
            if saved is None:
                await con.execute("ALTER ROLE pgaccess_app PASSWORD NULL")
            else:
                await con.execute(f"ALTER ROLE pgaccess_app PASSWORD '{saved}'")
        finally:
            await con.close()
    report(f"persistent role change ({change}): accepted={changed}")
    assert not changed
    assert after[0][0] == saved and after[0][1] == 0


# -- 7. library-owned temporaries and caches --------------------------------------------


async def test_bulk_load_tables_and_column_types_cannot_be_planted(target: Target) -> None:
    t = target
    before = await ground_truth(t.dsn)
    await plant(t, [
        "CREATE TABLE pg_temp.pgaccess_load (tenant_id uuid, name text)",
        "CREATE TABLE pg_temp.projects (tenant_id uuid, id uuid, owner_id uuid, name varchar(3), "
        "status text, metadata jsonb, created_at timestamptz, updated_at timestamptz)",
        "CREATE TYPE pg_temp.project_status AS ENUM ('planted')",
    ], "execute")
    names = [f"{MARKER}bulk-{i:04d}-{'x' * 20}" for i in range(60)]

    async def load(uow: UnitOfWork) -> None:
        repo = uow.repo(ProjectRepository)
        await repo.insert_many([{"name": n} for n in names[:30]], method="copy")
        await repo.insert_many([{"name": n} for n in names[30:]], method="unnest")

    await on_every_backend(Target(t.db, t.dsn, 1, t.key, t.project, t.a, t.b), t.b, load)

    async def look(uow: UnitOfWork) -> int:
        rels = await uow.fetchval("SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema()")
        seen = await uow.fetchval("SELECT count(*) FROM projects WHERE name LIKE $1", f"{MARKER}bulk%")
        return int(rels) + int(seen)

    seen_by_a = sum(await on_every_backend(t, t.a, look))
    stored = await owner(t.dsn, "SELECT name FROM public.projects WHERE tenant_id = $1 AND name LIKE $2",
                         t.b, f"{MARKER}bulk%")
    report(f"library temporaries [{t.label}]: B bulk-loaded {len(names)} rows (COPY and unnest) "
           f"past A's planted load table, shadow and type; {len(stored)} stored intact in "
           f"public.projects; A saw {seen_by_a} rows or temporaries afterwards")
    assert sorted(r["name"] for r in stored) == names
    assert seen_by_a == 0
    await assert_ground_truth(t, before, b_markers=len(names))


# A driver statement whose text matches $1 (not the statement looking for it).
DRIVER_TEXT = "statement LIKE $1 AND statement NOT LIKE '%pg_prepared_statements%'"

COLUMN_TYPES_LOOKUP = (
    "SELECT a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod) AS type "
    "FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = a.attrelid "
    "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
    "WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped")


@pytest.mark.parametrize("payload", ["injection", "wrong type"])
@pytest.mark.parametrize("size", [1, 10])
async def test_column_type_cache_poisoned_through_statement_hijack_in_own_unit_of_work(
    db_dsn: str, pgaccess_project: Project, tenant: uuid.UUID, other_tenant: uuid.UUID, size: int,
    payload: str,
) -> None:
    """Inside A's own unit of work A replaces the driver's statement for the column-type
    lookup (DEALLOCATE + PREPARE under its name) before the application's insert_many misses
    the cache. Defences: a type string is only ever used if it is a type name (else a typed
    error), and the process-wide cache is filled only from a session on which no raw SQL ran
    since its opening - A's wrong-but-valid type reaches only A's own statement."""
    key = await enable_signing(db_dsn)
    db = open_db(db_dsn, pgaccess_project, size, key)
    t = Target(db, db_dsn, size, key, pgaccess_project, tenant, other_tenant)
    before = await ground_truth(db_dsn)
    text = (f"text[]) AS u(t, n) UNION ALL SELECT '{t.a}'::uuid, 'stolen: ' || p.name "
            f"FROM public.projects p WHERE p.tenant_id <> '{t.a}' --") if payload == "injection" \
        else "character varying(3)"
    b_failed = 0
    async with db:
        with contextlib.suppress(QueryError):
            async with db.transaction(tenant=t.a) as uow:
                await uow.fetch(COLUMN_TYPES_LOOKUP, "public", "users")  # the driver prepares it
                name = await uow.fetchval(f"SELECT name FROM pg_prepared_statements WHERE {DRIVER_TEXT}",
                                          "%format_type(a.atttypid%")
                await uow.execute(
                    f'DEALLOCATE "{name}"; PREPARE "{name}" (name, name) AS SELECT attname, '
                    f"CASE attname WHEN 'name' THEN $q${text}$q$ "
                    "ELSE pg_catalog.format_type(atttypid, atttypmod) END FROM pg_catalog.pg_attribute "
                    "WHERE attrelid = 'public.projects'::regclass AND attnum > 0 AND NOT attisdropped "
                    "AND $1 = $1 AND $2 = $2")
                # ... and the application's own code, later in the same request of A:
                await uow.repo(ProjectRepository).insert_many([{"name": "a-bulk"}])
                await uow.execute(f'DEALLOCATE "{name}"')  # nothing left for the guard to see
        try:
            async with db.transaction(tenant=t.b) as uow:
                await uow.repo(ProjectRepository).insert_many([{"name": f"{MARKER}bulk"}])
        except PgAccessError:
            b_failed = 1
        async with db.transaction(system=True, reason="nightly import") as uow:
            await uow.repo(ProjectRepository).insert_many([{"tenant_id": t.b, "name": f"{MARKER}import"}])
        async with db.transaction(tenant=t.a) as uow:
            stolen = await uow.fetchval("SELECT count(*) FROM projects WHERE name LIKE 'stolen: %'")
    stored = await owner(db_dsn, "SELECT name FROM public.projects WHERE tenant_id = $1 AND name LIKE $2",
                         t.b, f"{MARKER}%")
    others = sum(len(v) for k, v in before.projects.items() if k != t.a)
    report(f"column-type cache hijack [{payload}, pool={size}]: A read {stolen} of {others} other "
           f"tenants' project names after one system import; {b_failed} of 1 of B's insert_many "
           f"failed; B's names stored intact: {sorted(r['name'] for r in stored)}")
    await owner(db_dsn, "DELETE FROM public.projects WHERE name LIKE 'stolen: %' OR name LIKE 'a-b%'")
    assert stolen == 0 and b_failed == 0
    assert sorted(r["name"] for r in stored) == [f"{MARKER}bulk", f"{MARKER}import"]


async def test_driver_type_codec_poisoned_for_the_next_tenant(signed1: Target) -> None:
    t = signed1
    async with t.db.transaction(tenant=t.a) as uow:
        await uow.fetch("SELECT status FROM tenants LIMIT 1")  # the driver introspects an enum
        row = await uow.fetchrow(f"SELECT name, statement FROM pg_prepared_statements WHERE {DRIVER_TEXT}",
                                 "%typeinfo_tree%")
        assert row is not None
        name, text = row["name"], row["statement"]
        poison = "CASE WHEN name = 'project_status' THEN"
        await uow.execute(
            f'DEALLOCATE "{name}"; PREPARE "{name}" (oid[]) AS WITH orig AS ({text}) '
            f"SELECT oid, ns, name, {poison} 'd'::\"char\" ELSE kind END, "
            f"{poison} 'pg_catalog.bytea'::regtype::oid ELSE basetype END, elemtype, elemdelim, "
            "range_subtype, attrtypoids, attrnames, depth, "
            f"{poison} 'bytea' ELSE basetype_name END, elemtype_name, range_subtype_name FROM orig")
        await uow.fetch("SELECT status FROM projects LIMIT 1")
        await uow.execute(f'DEALLOCATE "{name}"')
    statuses: list[Any] = []
    failed = 0
    for _ in range(5):
        try:
            async with t.db.transaction(tenant=t.b) as uow:
                statuses += [p.status for p in (await uow.repo(ProjectRepository).find_page(limit=5)).rows]
                await uow.repo(ProjectRepository).list_by_status("active")
        except PgAccessError:
            failed += 1
    wrong = sum(1 for s in statuses if not isinstance(s, str))
    report(f"driver codec poisoning: {wrong} of {len(statuses)} statuses B read were not text; "
           f"{failed} of 5 of B's units of work failed")
    assert wrong == 0 and failed == 0


# -- 8. shared-role objects: large objects, signalling, locks ---------------------------


async def test_large_objects_and_backend_signals(target: Target) -> None:
    t = target
    oid = (await owner(t.dsn, "SELECT lo_from_bytea(0, 'B secret')"))[0][0]
    attempts = [
        "SELECT lo_from_bytea(0, 'x')", "SELECT lo_create(0)", f"SELECT lo_get({oid})",
        f"SELECT loread(lo_open({oid}, 262144), 100)", "SELECT data FROM pg_largeobject",
        f"SELECT lo_unlink({oid})", f"SELECT pg_catalog.\"lo_get\"({oid})",
    ]
    b_done = asyncio.Event()
    b_pids: list[int] = []

    async def b_long() -> None:
        async with t.db.transaction(tenant=t.b) as uow:
            b_pids.append(await uow.fetchval("SELECT pg_backend_pid()"))
            await uow.fetchval("SELECT pg_sleep(0.4)")
            assert await uow.repo(ProjectRepository).count() == len((await ground_truth(t.dsn)).of(t.b))
        b_done.set()

    refused = 0
    if t.size > 1:
        task = asyncio.create_task(b_long())
        await asyncio.sleep(0.1)
        pid = b_pids[0]
        attempts += [f"SELECT pg_terminate_backend({pid})", f"SELECT pg_cancel_backend({pid})",
                     f"SELECT pg_catalog.\"pg_terminate_backend\"({pid}, 0)",
                     f"DO $$ BEGIN PERFORM pg_cancel_backend({pid}); END $$"]
    for sql in attempts:
        try:
            async with t.db.transaction(tenant=t.a) as uow:
                await uow.execute(sql)
        except InsufficientPrivilege:
            refused += 1
    if t.size > 1:
        await task
        assert b_done.is_set()
    data = await owner(t.dsn, f"SELECT convert_from(lo_get({oid}), 'UTF8')")
    report(f"large objects and signals [{t.label}]: {refused} of {len(attempts)} attempts refused; "
           f"B's concurrent unit of work {'completed' if t.size > 1 else 'n/a (pool of 1)'}")
    assert refused == len(attempts)
    assert data[0][0] == "B secret"


@pytest.mark.xfail(strict=True, reason=(
    "BREAK (availability): UPDATE on a shared table lets the app role LOCK TABLE ... IN ACCESS "
    "EXCLUSIVE MODE; lock_timeout is pinned to 0, so every other tenant's reads of that table "
    "wait for A's transaction (up to statement_timeout + idle_in_transaction_session_timeout)"))
async def test_table_lock_stalls_other_tenants(db_dsn: str, pgaccess_project: Project,
                                               tenant: uuid.UUID, other_tenant: uuid.UUID) -> None:
    db = open_db(db_dsn, pgaccess_project, 2, None)
    async with db:
        locked = asyncio.Event()

        async def a_lock() -> None:
            async with db.transaction(tenant=tenant) as uow:
                await uow.execute("LOCK TABLE projects IN ACCESS EXCLUSIVE MODE")
                locked.set()
                await uow.execute("SELECT pg_sleep(1.0)")

        task = asyncio.create_task(a_lock())
        await locked.wait()
        start = time.monotonic()
        async with db.transaction(tenant=other_tenant) as uow:
            await uow.repo(ProjectRepository).count()
        waited = time.monotonic() - start
        await task
    report(f"table lock: B's one-row read waited {waited * 1000:.0f} ms for A's lock")
    assert waited < 0.5


# -- new breaks in session state and the raw path --------------------------------------


@pytest.mark.parametrize("size", [1, 10])
async def test_random_seed_survives_the_reset(db_dsn: str, pgaccess_project: Project,
                                              tenant: uuid.UUID, other_tenant: uuid.UUID,
                                              size: int) -> None:
    db = open_db(db_dsn, pgaccess_project, size, None)
    t = Target(db, db_dsn, size, None, pgaccess_project, tenant, other_tenant)
    predicted = (await owner(db_dsn, "SELECT setseed(0.25), random()"))[0][1]
    async with db:
        await plant(t, ["SELECT setseed(0.25)"], "execute")

        async def draw(uow: UnitOfWork) -> float:
            return float(await uow.fetchval("SELECT random()"))

        draws = await on_every_backend(t, t.b, draw)
    hits = sum(1 for d in draws if d == predicted)
    report(f"random seed [pool={size}]: A predicted B's random() on {hits} of {len(draws)} backends")
    assert hits == 0


@pytest.mark.parametrize("size", [1, 10])
async def test_idle_session_timeout_left_for_the_next_tenant(
    db_dsn: str, pgaccess_project: Project, tenant: uuid.UUID, other_tenant: uuid.UUID, size: int
) -> None:
    db = open_db(db_dsn, pgaccess_project, size, None)
    t = Target(db, db_dsn, size, None, pgaccess_project, tenant, other_tenant)
    failed = tried = 0
    async with db:
        for _ in range(10 if size == 1 else 3):
            await plant(t, ["SET idle_session_timeout = 1"], "execute")
            await asyncio.sleep(0.003)  # an ordinary pause before the next request comes in

            async def b_work(n: int) -> bool:
                try:
                    if n % 2:
                        await db.autocommit(tenant=t.b).repo(ProjectRepository).count()
                    else:
                        async with db.transaction(tenant=t.b) as uow:
                            await uow.repo(ProjectRepository).count()
                except PgAccessError:
                    return True
                return False

            results = await asyncio.gather(*(b_work(n) for n in range(size)))
            tried += len(results)
            failed += sum(results)
    report(f"idle_session_timeout [pool={size}]: {failed} of {tried} of B's units of work and "
           "autocommit statements failed on a backend A had left")
    assert failed == 0


async def test_health_ping_after_a_planted_prepared_statement(signed1: Target) -> None:
    t = signed1
    async with t.db.transaction(tenant=t.a) as uow:
        await uow.execute("PREPARE planted AS SELECT 1")
    health = await check(t.db, kind="live")
    report(f"raw checkout after PREPARE: health {health.status} {health.reasons}")
    assert health.status == "ok"


async def test_signing_off_is_not_a_defence_against_set_config(target: Target) -> None:
    """Documents the model: without a signing key, injected SQL switches tenants inside its
    own unit of work (what the signed context exists for); with it, that is refused."""
    t = target
    got: int | str
    try:
        async with t.db.transaction(tenant=t.a) as uow:
            await uow.fetchval("SELECT set_config('app.tenant_id', $1, true)", str(t.b))
            got = int(await uow.fetchval("SELECT count(*) FROM projects"))
    except InsufficientPrivilege:
        got = "refused"
    report(f"injected set_config [{t.label}]: {got}")
    assert got == ("refused" if t.key else len((await ground_truth(t.dsn)).of(t.b)))
