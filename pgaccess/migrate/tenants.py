"""Schema-per-tenant: schema names and staged rollouts of the ``tenant/`` set.

A rollout applies each schema's pending files, first to ``canary`` schemas (any failure stops
everything), then to the rest with ``concurrency`` workers, each on its own connection. A
failure stops new schemas from starting unless ``continue_on_error``; either way the report
says, per schema, what was applied, what failed and what was skipped.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from ..errors import MigrationError
from .files import MigrationFile

_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def tenant_schema_name(tenant_id: Any, prefix: str = "tenant_") -> str:
    """``tenant_<32 hex digits>`` for a UUID tenant id; validated, safe to quote."""
    from ..tenancy import parse_tenant_id

    return validate_schema_name(prefix + parse_tenant_id(tenant_id).hex)


def validate_schema_name(name: str) -> str:
    if not _SCHEMA_NAME.match(name) or name.startswith("pg_"):
        raise MigrationError(
            f"invalid schema name {name!r}: use lower-case letters, digits and _ (max 63), "
            "not starting with a digit or pg_"
        )
    return name


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True)
class Rollout:
    """How ``up`` fans the ``tenant/`` set out over tenant schemas."""

    canary: int = 0
    concurrency: int = 1
    continue_on_error: bool = False

    def __post_init__(self) -> None:
        if self.canary < 0 or self.concurrency < 1:
            raise MigrationError("rollout needs canary >= 0 and concurrency >= 1")


@dataclass
class TenantResult:
    schema: str
    status: str  # applied | up_to_date | failed | skipped
    phase: str  # canary | rollout
    pending: list[str]
    applied: list[str] = field(default_factory=list)
    error: str | None = None
    duration_ms: int = 0


@dataclass
class RolloutReport:
    results: list[TenantResult] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(1 for r in self.results if r.status == status)

    @property
    def failed(self) -> list[TenantResult]:
        return [r for r in self.results if r.status == "failed"]

    def as_json(self) -> dict[str, Any]:
        return {
            "schemas": len(self.results),
            **{s: self.count(s) for s in ("applied", "up_to_date", "failed", "skipped")},
            "results": [r.__dict__ for r in self.results],
        }


class RolloutFailed(MigrationError):
    """Tenant schema migrations failed in some schemas; ``report`` has every schema's outcome."""

    def __init__(self, message: str, report: RolloutReport) -> None:
        super().__init__(message)
        self.report = report


ApplyOne = Callable[[asyncpg.Connection, MigrationFile, str], Awaitable[None]]


async def roll_out(
    plan: dict[str, list[MigrationFile]],
    options: Rollout,
    *,
    first: asyncpg.Connection,
    connect: Callable[[], Awaitable[asyncpg.Connection]],
    apply: ApplyOne,
    progress: Callable[[int, int], None],
) -> RolloutReport:
    """Apply ``plan`` (schema -> its pending files, in order); raise RolloutFailed on failure."""
    results = {s: TenantResult(s, "up_to_date" if not fs else "skipped", "rollout",
                               [f.version for f in fs]) for s, fs in plan.items()}
    todo = [s for s, fs in plan.items() if fs]
    canaries, rest = todo[:options.canary], todo[options.canary:]
    for s in canaries:
        results[s].phase = "canary"
    extra: list[asyncpg.Connection] = []
    done = 0

    async def worker(con: asyncpg.Connection, queue: list[str], stop: asyncio.Event,
                     keep_going: bool) -> None:
        nonlocal done
        while queue and not stop.is_set():
            schema = queue.pop(0)
            result = results[schema]
            start = time.perf_counter()
            try:
                for f in plan[schema]:
                    await apply(con, f, schema)
                    result.applied.append(f.version)
                result.status = "applied"
            except (MigrationError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
                result.status, result.error = "failed", str(exc)
                if not keep_going:
                    stop.set()
            finally:
                result.duration_ms = int((time.perf_counter() - start) * 1000)
                done += 1
                progress(done, len(todo))

    async def phase(queue: list[str], keep_going: bool) -> bool:
        stop = asyncio.Event()
        width = min(options.concurrency, len(queue))
        while len(extra) < width - 1:
            extra.append(await connect())
        await asyncio.gather(*(worker(con, queue, stop, keep_going)
                               for con in [first, *extra][:width]))
        return not stop.is_set()

    try:
        if await phase(list(canaries), keep_going=False):
            await phase(list(rest), keep_going=options.continue_on_error)
    finally:
        for con in extra:
            await con.close()
    report = RolloutReport([results[s] for s in plan])
    if report.failed:
        where = "canary " if any(r.phase == "canary" for r in report.failed) else ""
        raise RolloutFailed(
            f"tenant schema migrations failed in {len(report.failed)} {where}schema(s); "
            f"{report.count('applied')} applied, {report.count('skipped')} skipped:\n"
            + "\n".join(f"  {r.schema}: {r.error}" for r in report.failed),
            report,
        )
    return report
