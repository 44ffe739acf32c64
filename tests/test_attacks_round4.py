"""Fourth attack review: the utility-statement opening, the raw-SQL flag, the fast release.

What changed and is attacked here: the opening is utility statements only (the tenant as
``SET``), the advisory-lock release, the re-seed of ``random()`` and the prepared-statement
guard run only after SQL built at run time (``Connection._pga_raw_sql``), vetted autocommit
statements may open with the tenant alone, and a clean connection is released in the
caller's task (``driver.release_in_task``).

The attacker runs arbitrary SQL as the app role inside tenant A's unit of work or autocommit
statement, and - where a test says so - uses the asyncpg connection ``uow.connection`` hands
out. Real PostgreSQL, pools of one (B surely gets A's backend), no mocks. The review broke
five things, all fixed since and now plain tests: the seed was a literal in the opening's
text (readable in pg_stat_activity; now drawn by the server), and four ways of leaving
driver-level state on ``uow.connection`` (a protocol-level prepared statement under a
driver statement's name, a type codec, a query logger, a termination listener; a connection
handed out raw is now closed at release).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from test_attacks import capture_sql, owner
from test_attacks_round3 import enable_signing

from pgaccess import Database, PgAccessError, Settings, TransactionError
from pgaccess.config import with_user
from pgaccess.queries import load_queries_from_str
from pgaccess.reference import ProjectRepository

QUERIES = """
-- name: draw()$
SELECT random();
-- name: tenant_setting()$
SELECT current_setting('app.tenant_id', true);
-- name: visible()$
SELECT count(*) FROM projects;
-- name: advisory()$
SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid();
-- name: pid()$
SELECT pg_backend_pid();
"""

# Kept alive for the whole session: asyncpg closes a named statement whose object is
# collected, which is not what the attacker wants.
_KEEP: list[Any] = []


def app_db(db_dsn: str, key: str | None = None, *, size: int = 1, **settings: Any) -> Database:
    base: dict[str, Any] = {"min_size": size, "max_size": size, "tenant_signing_key": key}
    base.update(settings)
    return Database(Settings(**base), dsn=with_user(db_dsn, "pgaccess_app"),
                    queries=load_queries_from_str(QUERIES))


@pytest.fixture
async def db1(db_dsn: str) -> AsyncIterator[Database]:
    async with app_db(db_dsn) as database:
        yield database


@pytest.fixture
async def signed1(db_dsn: str) -> AsyncIterator[Database]:
    async with app_db(db_dsn, await enable_signing(db_dsn)) as database:
        yield database


async def names_of(db_dsn: str, tenant: uuid.UUID) -> dict[uuid.UUID, str]:
    rows = await owner(db_dsn, "SELECT id, name FROM public.projects WHERE tenant_id = $1", tenant)
    return {r["id"]: r["name"] for r in rows}


async def predicted_draws(db_dsn: str, seeds: list[str], n: int = 3) -> set[float]:
    """The first ``n`` values of random() after each seed (as the owner, same server)."""
    out: set[float] = set()
    con = await asyncpg.connect(db_dsn)
    try:
        for seed in seeds:
            await con.execute(f"SET seed = {float(seed)!r}")
            for _ in range(n):
                out.add(float(await con.fetchval("SELECT random()")))
    finally:
        await con.close()
    return out


async def backend_advisory_locks(db_dsn: str, pid: int) -> int:
    rows = await owner(db_dsn, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                               "AND pid = $1", pid)
    return int(rows[0][0])


# -- 1. the random seed ------------------------------------------------------------------

SEED_CAPTURE = capture_sql("seeds", "%SET%seed = 0.%", r"seed = (0\.[0-9]+)")


async def test_opening_seed_read_from_pg_stat_activity(
    db_dsn: str, tenant: uuid.UUID, other_tenant: uuid.UUID
) -> None:
    """A, on a second app instance, reads B's openings out of pg_stat_activity while B draws
    random() as the first statement of its units of work and of raw autocommit statements;
    A computes the draws that follow each captured seed."""
    victim, spy = app_db(db_dsn), app_db(db_dsn)
    draws: list[float] = []
    async with victim, spy:
        stop = time.monotonic() + 0.5

        async def b_loop() -> None:
            n = 0
            while time.monotonic() < stop:
                n += 1
                if n % 2:
                    async with victim.transaction(tenant=other_tenant) as uow:
                        draws.append(float(await uow.q.draw()))
                else:
                    draws.append(float(await victim.autocommit(tenant=other_tenant)
                                       .fetchval("SELECT random()")))

        async def capture() -> list[str]:
            async with spy.transaction(tenant=tenant) as uow:
                await uow.execute(SEED_CAPTURE)
                return [r[0] for r in await uow.fetch("SELECT DISTINCT s FROM pg_temp.seeds(400) s")]

        _, seeds = await asyncio.gather(b_loop(), capture())
    predicted = await predicted_draws(db_dsn, [s for s in seeds if s], n=1)
    hits = sum(1 for d in draws if d in predicted)
    print(f"ATTACK seed capture: {len(seeds)} of B's seeds read from pg_stat_activity; "
          f"{hits} of B's {len(draws)} first draws predicted")
    assert hits == 0


async def test_seed_left_by_set_and_reset_all_is_not_reused(
    db1: Database, db_dsn: str, tenant: uuid.UUID, other_tenant: uuid.UUID
) -> None:
    """A leaves the seed at session level in several ways (SET seed, setseed(), SET seed after
    its own COMMIT with a SET LOCAL seed rolled back in a savepoint, the seed set inside a
    transaction left open); RESET ALL re-arms no seed, so the next opening must be the last
    seed before B's first draw: B's draws through a unit of work, a vetted autocommit
    statement and a raw one follow neither A's seeds nor RESET ALL's default (0) - holds."""
    plants = [
        ("autocommit", "SET seed = 0.25"),
        ("autocommit", "SELECT setseed(0.25)"),
        ("uow", "COMMIT; SET seed = 0.25; BEGIN; SAVEPOINT s; SET LOCAL seed = 0.5; "
                "ROLLBACK TO SAVEPOINT s"),
        ("uow", "COMMIT; BEGIN; SET seed = 0.25"),
    ]
    predicted = await predicted_draws(db_dsn, ["0.25", "0.5", "0"], n=4)
    seen: list[float] = []
    for where, sql in plants:
        if where == "autocommit":
            await db1.autocommit(tenant=tenant).execute(sql)
        else:
            with contextlib.suppress(TransactionError):
                async with db1.transaction(tenant=tenant) as uow:
                    await uow.execute(sql)
        async with db1.transaction(tenant=other_tenant) as uow:
            seen += [float(await uow.q.draw()) for _ in range(2)]
        seen.append(float(await db1.autocommit(tenant=other_tenant).q.draw()))
        seen.append(float(await db1.autocommit(tenant=other_tenant).fetchval("SELECT random()")))
        # a vetted statement straight after A's raw SQL (the flag forces the full opening)
        await db1.autocommit(tenant=tenant).execute(sql.replace("COMMIT; ", "").replace(
            "BEGIN; ", "").replace("SAVEPOINT s; ", "").replace("; ROLLBACK TO SAVEPOINT s", "")
            .replace("SET LOCAL", "SET"))
        seen.append(float(await db1.autocommit(tenant=other_tenant).q.draw()))
    assert not set(seen) & predicted, sorted(set(seen) & predicted)


# -- 2. the prepared-statement guard -------------------------------------------------------

FIND_BY_ID = '%FROM "public"."projects" WHERE "id" = $1'


async def test_named_protocol_prepare_replaces_a_driver_statement(
    signed1: Database, db_dsn: str, tenant: uuid.UUID, other_tenant: uuid.UUID
) -> None:
    before = await names_of(db_dsn, other_tenant)
    victim_id = next(iter(before))
    async with signed1.transaction(tenant=other_tenant) as uow:
        await uow.repo(ProjectRepository).find_by_id(victim_id)  # B's statement is cached
    async with signed1.transaction(tenant=tenant) as uow:
        row = await uow.fetchrow("SELECT name, statement FROM pg_prepared_statements WHERE "
                                 "statement LIKE $1 AND statement NOT LIKE '%pg_prepared%'",
                                 FIND_BY_ID)
        assert row is not None
        await uow.execute(f'DEALLOCATE "{row["name"]}"')
        _KEEP.append(await uow.connection.prepare(
            "WITH pwn AS (UPDATE public.projects SET name = 'pwned-' || name WHERE id <> $1 "
            f"RETURNING 1) {row['statement']}", name=row["name"]))
    discarded = signed1.pool.stats().connections_discarded
    async with signed1.transaction(tenant=other_tenant) as uow:
        found = await uow.repo(ProjectRepository).find_by_id(victim_id)
    after = await names_of(db_dsn, other_tenant)
    pwned = sum(1 for n in after.values() if n.startswith("pwned-"))
    print(f"ATTACK named protocol prepare: guard terminated "
          f"{signed1.pool.stats().connections_discarded - discarded} sessions; {pwned} of B's "
          f"{len(after)} projects renamed by B's own find_by_id")
    await owner(db_dsn, "UPDATE public.projects SET name = substr(name, 7) WHERE name LIKE 'pwned-%'")
    assert found is not None and found.name == before[victim_id]
    assert pwned == 0


# -- 3. what asyncpg keeps on the connection object -----------------------------------------


async def _b_works(db: Database, b: uuid.UUID, secret: str) -> None:
    """B's vetted reads (uuids decoded) and lookups (a uuid and a secret bound)."""
    async with db.transaction(tenant=b) as uow:
        page = await uow.repo(ProjectRepository).find_page(limit=5)
        await uow.repo(ProjectRepository).find_by_id(page.rows[0].id)
        await uow.repo(ProjectRepository).find_where(name=secret)
    await db.autocommit(tenant=b).repo(ProjectRepository).find_where(name=secret)


@pytest.mark.parametrize("leftover", [
    "query_logger",
    "type_codec",
    "termination_listener",
    "listener",
    "log_listener",
    "transaction",
])
async def test_driver_state_left_on_uow_connection(
    signed1: Database, db_dsn: str, tenant: uuid.UUID, other_tenant: uuid.UUID, leftover: str
) -> None:
    """A's code leaves driver-level state on ``uow.connection`` (whose docstring promises
    that whatever it leaves, the next user resets); B then works on the same connection
    through vetted statements. Nothing B does may reach A's callbacks, and B's results must
    be right."""
    secret = f"b-secret-{uuid.uuid4().hex[:8]}"
    reached: list[Any] = []
    async with signed1.transaction(tenant=tenant) as uow:
        con = uow.connection
        if leftover == "query_logger":
            con.add_query_logger(lambda q: reached.append((q.query, q.args)))
        elif leftover == "type_codec":
            def decode(text: str) -> uuid.UUID:
                reached.append(text)
                return uuid.UUID(text)

            await con.set_type_codec("uuid", schema="pg_catalog", encoder=str, decoder=decode,
                                     format="text")
        elif leftover == "termination_listener":
            con.add_termination_listener(lambda c: reached.append(c))
        elif leftover == "listener":
            await con.add_listener("r4_chan", lambda *a: reached.append(a))
        elif leftover == "log_listener":
            con.add_log_listener(lambda c, m: reached.append(m))
        else:  # an asyncpg transaction object left started, outside pgaccess's transaction
            await uow.execute("COMMIT")
            await con.transaction().start()
            await con.execute("SET LOCAL work_mem = '13MB'")
    await asyncio.sleep(0.05)  # A's own callbacks (its COMMIT, its connection's close) first
    mark = len(reached)
    with warnings_ignored():
        await _b_works(signed1, other_tenant, secret)
        async with signed1.transaction(tenant=other_tenant) as uow:
            await uow.execute("NOTIFY r4_chan, 'b-payload'; DO $$ BEGIN RAISE NOTICE 'b-notice'; END $$")
            work_mem = await uow.fetchval("SELECT current_setting('work_mem')")
            count = await uow.q.visible()
        if leftover == "termination_listener":  # B's connection ends while B holds it
            with contextlib.suppress(PgAccessError):
                async with signed1.transaction(tenant=other_tenant) as uow:
                    await owner(db_dsn, "SELECT pg_terminate_backend($1)", await uow.q.pid())
                    await uow.q.pid()
        await asyncio.sleep(0.05)
    print(f"ATTACK driver state [{leftover}]: {len(reached) - mark} of B's events reached A's "
          f"callback: {reached[mark:][:2]}")
    assert work_mem == "4MB"
    assert count == len(await names_of(db_dsn, other_tenant))
    assert reached[mark:] == []


@contextlib.contextmanager
def warnings_ignored() -> Any:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# -- 4. advisory locks: released only after raw SQL ------------------------------------------


async def test_session_advisory_locks_released_whichever_door_took_them(
    db1: Database, db_dsn: str, tenant: uuid.UUID, other_tenant: uuid.UUID
) -> None:
    """A takes session advisory locks through every door that runs its SQL (raw autocommit,
    a failed raw autocommit whose implicit transaction aborts - session locks survive the
    abort -, uow.execute after its own COMMIT, uow.connection, a raw pool connection, a
    savepoint rolled back). The next checkout is B's *vetted* autocommit statement (the one
    that may skip the reset): the lock must be gone - holds."""
    lock = "SELECT pg_advisory_lock(4242), pg_advisory_lock_shared(4243)"

    async def via_autocommit() -> None:
        await db1.autocommit(tenant=tenant).execute(lock)

    async def via_failed_autocommit() -> None:
        await db1.autocommit(tenant=tenant).execute(f"{lock}; SELECT 1/0")

    async def via_uow_after_commit() -> None:
        async with db1.transaction(tenant=tenant) as uow:
            await uow.execute(f"COMMIT; {lock}; BEGIN")

    async def via_connection() -> None:
        async with db1.transaction(tenant=tenant) as uow:
            await uow.connection.fetchval("SELECT pg_advisory_lock(4242)")

    async def via_pool() -> None:
        async with db1.pool.connection() as con:
            await con.execute(lock)

    async def via_savepoint() -> None:
        async with db1.transaction(tenant=tenant) as uow:
            with contextlib.suppress(PgAccessError):
                async with uow.savepoint():
                    await uow.fetchval("SELECT pg_advisory_lock(4242)")
                    await uow.execute("SELECT 1/0")

    held: dict[str, int] = {}
    for attack in (via_autocommit, via_failed_autocommit, via_uow_after_commit, via_connection,
                   via_pool, via_savepoint):
        with contextlib.suppress(PgAccessError):
            await attack()
        pid = await db1.autocommit(tenant=other_tenant).q.pid()  # B's vetted statement
        held[attack.__name__] = (await backend_advisory_locks(db_dsn, pid)
                                 + await db1.autocommit(tenant=other_tenant).q.advisory())
    assert held == dict.fromkeys(held, 0)


# -- 5. the tenant setting in other spellings, tenant-only openings after it -----------------


async def test_tenant_setting_in_case_and_scope_variants(
    db1: Database, db_dsn: str, tenant: uuid.UUID, other_tenant: uuid.UUID
) -> None:
    """Unsigned pool of one. A sets B's tenant at session level in spellings that differ
    from the opening's ``"app"."tenant_id"`` (case, quoting, set_config, a LOCAL value in a
    transaction left open, a SET inside a savepoint that is released). Then tenant-less
    work (a vetted autocommit statement - twice, so that the second one takes the
    tenant-only opening -, a raw one, a unit of work) sees no rows and an empty tenant, and
    A's vetted statement sees A only - holds."""
    b = str(other_tenant)
    spellings = [
        f'SET "App"."Tenant_Id" = \'{b}\'',
        f"SET APP.TENANT_ID TO '{b}'",
        f"SELECT set_config('APP.Tenant_ID', '{b}', false)",
        f'SET app."TENANT_ID" = \'{b}\'',
        f"BEGIN; SET LOCAL \"App\".tenant_id = '{b}'",
        f"BEGIN; SAVEPOINT s; SET \"app\".\"Tenant_Id\" = '{b}'; RELEASE SAVEPOINT s; COMMIT",
    ]
    a_rows = len(await names_of(db_dsn, tenant))
    wrong: dict[str, Any] = {}
    for sql in spellings:
        for where in ("autocommit", "uow"):
            if where == "autocommit":
                with contextlib.suppress(PgAccessError):
                    await db1.autocommit(tenant=tenant).execute(sql)
            else:
                with contextlib.suppress(TransactionError):
                    async with db1.transaction(tenant=tenant) as uow:
                        await uow.execute(f"COMMIT; {sql}")
            nobody = db1.autocommit()
            seen = [await nobody.q.visible(), await nobody.q.visible(),
                    await nobody.q.tenant_setting(),
                    await nobody.fetchval("SELECT count(*) FROM projects")]
            async with db1.transaction() as uow:
                seen.append(await uow.q.visible())
            seen.append(await db1.autocommit(tenant=tenant).q.visible())
            if seen != [0, 0, "", 0, 0, a_rows]:
                wrong[f"{where}: {sql}"] = seen
    assert wrong == {}


# -- 6. the fast release with a statement still running ----------------------------------------


async def test_release_while_a_raw_statement_is_still_running(
    db1: Database, db_dsn: str, tenant: uuid.UUID, other_tenant: uuid.UUID
) -> None:
    """A ends its transaction with raw SQL and leaves a statement running on uow.connection
    in a task of its own as the block ends: the connection is not in a transaction, so the
    fast path releases it mid-statement. The statement, if it finished, would set B's tenant
    and a pg_temp-first search path at session level. B's next work must start from a
    reset session with its own tenant, and A's statement must not complete on B's checkout
    - holds."""
    b = str(other_tenant)
    b_rows = len(await names_of(db_dsn, other_tenant))
    outcomes: list[str] = []
    for _ in range(3):
        background: asyncio.Task[Any] | None = None
        with contextlib.suppress(TransactionError):
            async with db1.transaction(tenant=tenant) as uow:
                await uow.execute("COMMIT")
                background = asyncio.ensure_future(uow.connection.fetchval(
                    "SELECT pg_sleep(0.2), set_config('search_path', 'pg_temp, public', false), "
                    f"set_config('app.tenant_id', '{b}', false)"))
                await asyncio.sleep(0.02)  # sent, not finished
        nobody = await db1.autocommit().q.visible()
        async with db1.transaction(tenant=other_tenant) as uow:
            mine = await uow.q.visible()
            path = await uow.fetchval("SELECT current_setting('search_path')")
        assert background is not None
        try:
            await background
            outcomes.append("completed")
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            outcomes.append(type(exc).__name__)
        assert (nobody, mine, path) == (0, b_rows, "public, pg_temp")
    print(f"ATTACK release mid-statement: A's background statements ended {outcomes}")
