"""Retrying migrations that lost a lock race (``lock_timeout``, SQLSTATE 55P03).

Squawk's and pgroll's advice for busy databases: keep ``lock_timeout`` short so a migration
never queues ahead of the application's queries for long, and retry with backoff instead of
failing the deploy. Only 55P03 is retried; any other error fails at once.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from ..errors import MigrationError
from ..log import get_logger

LOCK_NOT_AVAILABLE = "55P03"
log = get_logger("migrate")
T = TypeVar("T")


def with_sqlstate(exc: MigrationError, sqlstate: str | None) -> MigrationError:
    exc.sqlstate = sqlstate
    return exc


@dataclass(frozen=True)
class LockRetry:
    """Jittered exponential backoff within ``budget`` seconds of wall-clock time.

    Attempt n (from 1) waits a uniformly random time in [base * 2**(n-1) / 2, base * 2**(n-1)]
    capped at ``cap``; no retry starts once the budget would be exceeded. ``budget=0`` turns
    retries off.
    """

    budget: float = 60.0
    base: float = 0.5
    cap: float = 10.0

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        top = min(self.cap, self.base * 2 ** (attempt - 1))
        return (rng or random).uniform(top / 2, top)

    async def run(
        self, what: str, action: Callable[[], Awaitable[T]], echo: Callable[[str], None]
    ) -> T:
        """Run ``action``; on a lock timeout wait and run it again while the budget lasts."""
        start = time.monotonic()
        attempt = 1
        while True:
            try:
                return await action()
            except MigrationError as exc:
                if exc.sqlstate != LOCK_NOT_AVAILABLE:
                    raise
                elapsed = time.monotonic() - start
                wait = self.delay(attempt)
                if elapsed + wait > self.budget:
                    if attempt > 1 or self.budget > 0:
                        raise with_sqlstate(MigrationError(
                            f"{exc} Gave up after {attempt} attempt(s) in {elapsed:.1f}s (lock "
                            f"retry budget {self.budget:g}s; raise it with --lock-retry-budget)"
                        ), LOCK_NOT_AVAILABLE) from exc.__cause__
                    raise
                log.warning("migration_lock_timeout", migration=what, attempt=attempt,
                            retry_in_s=round(wait, 2), elapsed_s=round(elapsed, 2))
                echo(f"lock timeout on {what} (attempt {attempt}); retrying in {wait:.1f}s")
                await asyncio.sleep(wait)
                attempt += 1
