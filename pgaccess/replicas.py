"""Read replicas: route read-only units of work to a healthy, caught-up replica.

``Database(settings, replica_dsns=[...], max_replica_lag=5.0)`` opens one pool per replica.
A background task measures each replica's replay lag every few seconds; a replica that is
unreachable, not in recovery, or further behind than ``max_replica_lag`` is skipped. With
none healthy, reads fall back to the primary (counted in ``fallbacks``, shown by health and
metrics). ``db.transaction(readonly=True)`` goes to a replica unless ``primary=True`` or the
task wrote within ``read_your_writes`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from contextvars import ContextVar
from dataclasses import dataclass

from .config import Settings, redact
from .log import get_logger
from .pool import Pool

log = get_logger("replicas")

LAG_SQL = """
SELECT pg_is_in_recovery() AS in_recovery,
       CASE WHEN NOT pg_is_in_recovery() THEN NULL
            WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0
            ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp())
       END::float8 AS lag_s
"""

# When this task last committed a write (monotonic seconds), for read-your-writes.
last_write_at: ContextVar[float] = ContextVar("pgaccess_last_write_at", default=-1e18)


@dataclass
class ReplicaState:
    name: str
    dsn: str
    healthy: bool = False
    lag_s: float | None = None
    error: str | None = None
    checked_at: float = 0.0


class ReplicaSet:
    def __init__(self, settings: Settings, dsns: list[str], *, max_lag: float = 5.0,
                 check_interval: float = 2.0) -> None:
        self.max_lag = max_lag
        self.check_interval = check_interval
        self.pools = [Pool(settings.replace(min_size=0), dsn, name=f"replica{i}")
                      for i, dsn in enumerate(dsns)]
        self.states = [ReplicaState(p.name, redact(p.dsn)) for p in self.pools]
        self.fallbacks = 0
        self._next = itertools.count()
        self._task: asyncio.Task[None] | None = None

    async def open(self) -> None:
        for pool in self.pools:
            await pool.open()
        await self.check()
        self._task = asyncio.get_running_loop().create_task(self._watch())

    async def close(self, timeout: float = 10.0) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for pool in self.pools:
            await pool.close(timeout)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.check_interval)
            await self.check()

    async def check(self) -> None:
        """Measure every replica now (also run in the background)."""
        await asyncio.gather(*(self._check_one(p, s) for p, s in zip(self.pools, self.states, strict=True)))

    async def _check_one(self, pool: Pool, state: ReplicaState) -> None:
        state.checked_at = time.monotonic()
        try:
            async with asyncio.timeout(max(1.0, self.check_interval)):
                async with pool.vetted_connection() as con:
                    row = await con.fetchrow(LAG_SQL)
        except Exception as exc:  # unreachable or failing: skip it until it recovers
            was = state.healthy
            state.healthy, state.lag_s, state.error = False, None, f"{type(exc).__name__}: {exc}"
            if was:
                log.warning("replica_unhealthy", replica=state.name, error=state.error)
            return
        assert row is not None
        if not row["in_recovery"]:
            state.healthy, state.lag_s, state.error = False, None, "not a replica (not in recovery)"
            return
        state.lag_s = row["lag_s"]
        if state.lag_s is None:  # behind, and nothing replayed yet to date the gap by
            state.healthy, state.error = False, "behind the primary, lag unknown"
            return
        state.healthy = state.lag_s <= self.max_lag
        state.error = None if state.healthy else f"lag {state.lag_s:.1f}s over {self.max_lag:g}s"

    def pick(self) -> Pool | None:
        """A healthy replica's pool (round robin), or None: then the caller uses the primary."""
        healthy = [p for p, s in zip(self.pools, self.states, strict=True) if s.healthy]
        if not healthy:
            self.fallbacks += 1
            return None
        return healthy[next(self._next) % len(healthy)]
