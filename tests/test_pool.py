"""The pool against a real server: settings, codecs, bounded waits, retries, stats, close."""

from __future__ import annotations

import asyncio
import threading
import time

import asyncpg
import pytest
from structlog.testing import capture_logs

from pgaccess import ConnectError, Database, PoolClosed, PoolTimeout, Settings
from pgaccess.cluster import LocalCluster
from pgaccess.config import with_database, with_user
from pgaccess.pool import Pool


def settings(**kw: object) -> Settings:
    base = dict(min_size=1, max_size=2, acquire_timeout=2.0, connect_retry_budget=2.0)
    base.update(kw)
    return Settings(**base)  # type: ignore[arg-type]


async def test_connection_settings_are_applied(pg_dsn: str) -> None:
    s = settings(statement_timeout=12.5, idle_in_transaction_session_timeout=7,
                 application_name="pgaccess-test")
    async with Pool(s, pg_dsn) as pool, pool.connection() as con:
        assert await con.fetchval("SHOW application_name") == "pgaccess-test"
        assert await con.fetchval("SHOW statement_timeout") == "12500ms"
        assert await con.fetchval("SHOW idle_in_transaction_session_timeout") == "7s"
        assert await con.fetchval("SHOW TimeZone") == "UTC"


async def test_settings_survive_the_full_reset(pg_dsn: str) -> None:
    async with Pool(settings(max_size=1, statement_timeout=3), pg_dsn) as pool:
        async with pool.connection() as con:
            await con.execute("SET statement_timeout = 1")
        async with pool.connection() as con:  # the same connection, reset
            assert await con.fetchval("SHOW statement_timeout") == "3s"


async def test_jsonb_round_trip(pg_dsn: str) -> None:
    doc = {"a": [1, 2, {"b": None}], "ü": "ß", "n": 1.5}
    async with Pool(settings(), pg_dsn) as pool, pool.connection() as con:
        assert await con.fetchval("SELECT $1::jsonb", doc) == doc
        assert await con.fetchval("SELECT $1::json", doc) == doc
        assert await con.fetchval("SELECT '{\"x\": 1}'::jsonb") == {"x": 1}


async def test_acquire_timeout_raises_pool_timeout_with_stats(pg_dsn: str) -> None:
    async with Pool(settings(max_size=1, acquire_timeout=0.2), pg_dsn) as pool:
        held = await pool.acquire()
        try:
            start = time.monotonic()
            with pytest.raises(PoolTimeout) as info:
                await pool.acquire()
            assert time.monotonic() - start < 1.5
            assert "in_use=1" in str(info.value) and "max=1" in str(info.value)
            assert info.value.stats["in_use"] == 1
            assert pool.stats().timeouts == 1
        finally:
            await pool.release(held)
        assert pool.stats().in_use == 0


async def test_connect_retries_until_the_server_comes_up(own_cluster: LocalCluster) -> None:
    own_cluster.stop()
    timer = threading.Timer(0.8, own_cluster.start)
    timer.start()
    try:
        start = time.monotonic()
        with capture_logs() as logs:
            pool = await Pool(settings(connect_retry_budget=15), own_cluster.dsn()).open()
        try:
            assert time.monotonic() - start >= 0.5
            async with pool.connection() as con:
                assert await con.fetchval("SELECT 1") == 1
            assert any(e["event"] == "connect_retry" for e in logs)
            assert pool.stats().connections_failed >= 1
        finally:
            await pool.close()
    finally:
        timer.join()


async def test_connect_gives_up_after_its_budget(own_cluster: LocalCluster) -> None:
    own_cluster.stop()
    start = time.monotonic()
    with pytest.raises(ConnectError) as info:
        await Pool(settings(connect_retry_budget=0.5), own_cluster.dsn()).open()
    assert time.monotonic() - start < 5
    assert "gave up after" in str(info.value) and "is the server up" in str(info.value)


async def test_auth_failure_fails_fast_without_retry(pg_dsn: str) -> None:
    start = time.monotonic()
    with pytest.raises(ConnectError) as info:
        await Pool(settings(connect_retry_budget=10), with_user(pg_dsn, "nobody_here")).open()
    assert time.monotonic() - start < 1.0
    assert "nobody_here" in str(info.value)


async def test_unknown_database_fails_fast_without_retry(pg_dsn: str) -> None:
    start = time.monotonic()
    with pytest.raises(ConnectError) as info:
        await Pool(settings(connect_retry_budget=10), with_database(pg_dsn, "no_such_db")).open()
    assert time.monotonic() - start < 1.0
    assert "no_such_db" in str(info.value) and "createdb" in str(info.value)


async def test_graceful_close_waits_for_in_flight_query(pg_dsn: str) -> None:
    pool = await Pool(settings(), pg_dsn).open()

    async def work() -> int:
        async with pool.connection() as con:
            return int(await con.fetchval("SELECT 7 FROM pg_sleep(0.3)"))

    task = asyncio.create_task(work())
    await asyncio.sleep(0.05)
    await pool.close(timeout=5)
    assert await task == 7
    with pytest.raises(PoolClosed):
        await pool.acquire()


async def test_close_past_deadline_terminates_and_names_the_holder(pg_dsn: str) -> None:
    pool = await Pool(settings(leak_threshold=30), pg_dsn).open()
    con = await pool.acquire()
    with capture_logs() as logs:
        start = time.monotonic()
        await pool.close(timeout=0.3)
    assert time.monotonic() - start < 2
    event = next(e for e in logs if e["event"] == "pool_close_timeout")
    assert "test_close_past_deadline" in "".join(event["held_by"])
    with pytest.raises(asyncpg.InterfaceError):  # terminated: the proxy no longer works
        await con.fetchval("SELECT 1")


async def test_stats_count_what_happened(pg_dsn: str) -> None:
    async with Pool(settings(max_size=3), pg_dsn) as pool:
        for _ in range(5):
            async with pool.connection() as con:
                await con.execute("SELECT 1")
        stats = pool.stats()
        assert stats.acquires == 5
        assert stats.connections_opened >= 1
        assert stats.in_use == 0 and stats.waiting == 0
        assert stats.as_dict()["max_size"] == 3


async def test_slow_query_warning_is_logged_without_values(pg_dsn: str) -> None:
    s = settings(slow_query_ms=50)
    db = Database(s, dsn=pg_dsn)
    async with db:
        with capture_logs() as logs:
            async with db.transaction() as uow:
                await uow.fetchval("SELECT pg_sleep(0.1), $1::text", "secret-value", name="sleepy")
                await uow.fetchval("SELECT 1", name="fast")
    slow = [e for e in logs if e["event"] == "slow_query" and e["query"] == "sleepy"]
    assert len(slow) == 1 and slow[0]["duration_ms"] >= 50 and slow[0]["threshold_ms"] == 50
    assert "secret-value" not in repr(logs)


async def test_connections_are_retired_after_max_lifetime(pg_dsn: str) -> None:
    # checkout(), the units of work's path: a connection from pool.connection() is closed at
    # release anyway (handed out raw).
    async with Pool(settings(max_size=1, max_lifetime=0.2), pg_dsn) as pool:
        con = await pool.checkout()
        first = await con.fetchval("SELECT pg_backend_pid()")
        await pool.release(con)
        await asyncio.sleep(0.3)
        await pool.release(await pool.checkout())  # released after its lifetime: retired
        con = await pool.checkout()
        second = await con.fetchval("SELECT pg_backend_pid()")
        await pool.release(con)
        assert first != second
        assert pool.stats().connections_retired >= 1
        assert pool.stats().connections_discarded == 0


async def test_a_connection_handed_out_raw_is_closed_at_release(pg_dsn: str) -> None:
    """Driver-level state (here a type codec) left on a raw connection never reaches the
    next user: the connection is closed, the next checkout gets a new session."""
    async with Pool(settings(max_size=1), pg_dsn) as pool:
        async with pool.connection() as con:
            first = await con.fetchval("SELECT pg_backend_pid()")
            await con.set_type_codec("int4", schema="pg_catalog", encoder=str,
                                     decoder=lambda text: f"seen:{text}", format="text")
            assert await con.fetchval("SELECT 7") == "seen:7"
        con = await pool.checkout()
        assert await con.fetchval("SELECT 7") == 7
        assert await con.fetchval("SELECT pg_backend_pid()") != first
        await pool.release(con)
        assert pool.stats().connections_discarded == 1


async def test_leak_detection_logs_where_the_connection_was_taken(pg_dsn: str) -> None:
    async with Pool(settings(leak_threshold=0.1), pg_dsn) as pool:
        with capture_logs() as logs:
            con = await pool.acquire()
            await asyncio.sleep(0.25)
            await pool.release(con)
    leak = next(e for e in logs if e["event"] == "connection_leak_suspected")
    assert "test_leak_detection_logs" in leak["acquired_at"]


async def test_check_on_acquire_replaces_a_dead_connection(pg_dsn: str) -> None:
    async with Pool(settings(max_size=1, check_on_acquire=True), pg_dsn) as pool:
        async with pool.connection() as con:
            pid = await con.fetchval("SELECT pg_backend_pid()")
        async with Pool(settings(), pg_dsn) as other, other.connection() as killer:
            await killer.execute("SELECT pg_terminate_backend($1)", pid)
        await asyncio.sleep(0.1)
        async with pool.connection() as con:
            assert await con.fetchval("SELECT pg_backend_pid()") != pid


async def test_a_waiter_cancelled_after_being_handed_a_connection_passes_it_on(pg_dsn: str) -> None:
    # A release hands the connection to the longest waiter; if that waiter is cancelled
    # before it runs, the connection must go on to the next one, not be lost.
    async with Pool(settings(min_size=1, max_size=1, acquire_timeout=3), pg_dsn) as pool:
        held = await pool.acquire(reset=False)
        first = asyncio.create_task(pool.acquire(reset=False))
        second = asyncio.create_task(pool.acquire(reset=False))
        await asyncio.sleep(0.05)  # both wait, `first` longer
        assert pool.stats().waiting == 2
        await pool.release(held)  # handed to `first`, which has not run yet
        first.cancel()
        con = await asyncio.wait_for(second, 2)
        assert await con.fetchval("SELECT 1") == 1
        await pool.release(con)
        with pytest.raises(asyncio.CancelledError):
            await first
        assert pool.stats().in_use == 0 and pool.stats().waiting == 0
        async with pool.connection() as again:  # still one usable connection
            assert await again.fetchval("SELECT 2") == 2


async def test_a_waiter_that_timed_out_leaves_the_queue(pg_dsn: str) -> None:
    async with Pool(settings(min_size=1, max_size=1, acquire_timeout=0.1), pg_dsn) as pool:
        held = await pool.acquire(reset=False)
        with pytest.raises(PoolTimeout):
            await pool.acquire(reset=False)
        await pool.release(held)  # nobody waits now: back to the idle queue
        assert pool.has_idle()
        con = await pool.acquire(reset=False)
        await pool.release(con)
        assert pool.stats().timeouts == 1


async def test_each_waiter_times_out_at_its_own_deadline(pg_dsn: str) -> None:
    # One timer serves every wait of the queue: a short wait queued behind a long one must
    # still end at its own deadline, and the long one must still be served afterwards.
    async with Pool(settings(min_size=1, max_size=1, acquire_timeout=5), pg_dsn) as pool:
        held = await pool.acquire(reset=False)
        patient = asyncio.create_task(pool.acquire(reset=False))
        await asyncio.sleep(0.02)
        start = time.monotonic()
        with pytest.raises(PoolTimeout):
            await pool.acquire(0.2, reset=False)
        assert 0.15 < time.monotonic() - start < 1.0
        assert not patient.done()
        await pool.release(held)
        con = await asyncio.wait_for(patient, 2)
        await pool.release(con)
        assert pool.stats().timeouts == 1 and pool.stats().waiting == 0


async def test_saturated_pool_serves_waiters_fairly(pg_dsn: str) -> None:
    # Releases skip asyncpg's shielded release; a task that releases and at once
    # acquires again must not barge past the tasks already waiting (they would starve
    # into PoolTimeout). 12 workers share 2 connections; every one of them must progress.
    async with Pool(settings(min_size=2, max_size=2, acquire_timeout=3), pg_dsn) as pool:
        done = [0] * 12
        stop = time.monotonic() + 1.5

        async def worker(n: int) -> None:
            while time.monotonic() < stop:
                con = await pool.acquire(reset=False)
                try:
                    await con.execute("SELECT 1")
                finally:
                    await pool.release(con)
                done[n] += 1

        await asyncio.gather(*(worker(n) for n in range(12)))
        stats = pool.stats()
    assert min(done) > 0.25 * max(done), done  # nobody starved
    assert stats.timeouts == 0 and stats.fast_path
