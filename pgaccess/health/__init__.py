"""Health checks: is the database reachable, healthy and migrated?

``await db.health()`` (or :func:`check`) returns a :class:`HealthReport` whose ``status`` is
``ok``, ``degraded`` or ``down``. Every check has its own timeout; a check that fails or
times out marks only its part, and the report always comes back - a health check never hangs
and never raises. Expensive statistics are cached for a few seconds per Database so a busy
probe does not load the server.

Liveness (``kind="live"``) asks only whether the pool can reach the server; readiness
(``kind="ready"``) adds migration state and a latency threshold; ``full`` (the default) adds
server and database statistics and the app role's hygiene (``roles``).

Migration state compares the database with pgaccess's core schema (shipped in the package,
so always available) and, when the project's migration files are present, with them. A
service image without migration files is not degraded: the check says the files are "not
available here" and reports what the database has applied.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..log import get_logger

if TYPE_CHECKING:
    from ..database import Database

log = get_logger("health")

Status = Literal["ok", "degraded", "down"]
_RANK = {"ok": 0, "degraded": 1, "down": 2}


@dataclass
class CheckResult:
    status: Status
    duration_ms: float
    data: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


@dataclass
class HealthReport:
    status: Status
    checked_at: str
    checks: dict[str, CheckResult]
    reasons: list[str]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def exit_code(self) -> int:
        """0 ok, 1 degraded, 2 down (the CLI's exit code)."""
        return _RANK[self.status]


_SERVER_SQL = """
SELECT version() AS version,
       current_setting('server_version') AS server_version,
       pg_is_in_recovery() AS in_recovery,
       current_setting('max_connections')::int AS max_connections,
       (SELECT count(*) FROM pg_stat_activity)::int AS connections_used
"""

_DATABASE_SQL = """
SELECT d.datname AS database, d.numbackends AS backends, d.xact_commit AS commits,
       d.xact_rollback AS rollbacks,
       CASE WHEN d.blks_hit + d.blks_read = 0 THEN NULL
            ELSE round(d.blks_hit::numeric / (d.blks_hit + d.blks_read), 4)::float8 END
           AS cache_hit_ratio,
       d.deadlocks, d.temp_bytes, d.conflicts,
       pg_database_size(d.datname) AS size_bytes,
       (SELECT coalesce(max(extract(epoch FROM now() - xact_start)), 0)::float8
          FROM pg_stat_activity WHERE xact_start IS NOT NULL AND pid <> pg_backend_pid()
            AND datname = current_database()) AS longest_transaction_s,
       (SELECT count(*) FROM pg_stat_activity
          WHERE state LIKE 'idle in transaction%' AND datname = current_database())::int
           AS idle_in_transaction,
       current_setting('max_prepared_transactions')::int AS max_prepared_transactions,
       (SELECT count(*) FROM pg_prepared_xacts WHERE database = current_database())::int
           AS prepared_transactions,
       (SELECT coalesce(max(extract(epoch FROM now() - prepared)), 0)::float8
          FROM pg_prepared_xacts WHERE database = current_database())
           AS oldest_prepared_transaction_s
FROM pg_stat_database d WHERE d.datname = current_database()
"""


async def _timed(name: str, timeout: float, fn: Callable[[], Awaitable[CheckResult]]) -> CheckResult:
    start = time.perf_counter()
    try:
        result = await asyncio.wait_for(fn(), timeout)
    except TimeoutError:
        return CheckResult("down" if name == "ping" else "degraded",
                           _ms(start), error=f"timed out after {timeout:g}s")
    except Exception as exc:  # a health check reports, it never raises
        return CheckResult("down" if name == "ping" else "degraded", _ms(start),
                           error=f"{type(exc).__name__}: {exc}")
    result.duration_ms = _ms(start)
    return result


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 3)


# Recent results of the expensive checks, per database.
_recent: weakref.WeakKeyDictionary[Database, dict[str, tuple[float, Any]]] = weakref.WeakKeyDictionary()


async def check(
    db: Database,
    *,
    kind: Literal["live", "ready", "full"] = "full",
    migrations_dir: str | Path | None = "migrations",
    app_role: str = "pgaccess_app",
    core: bool = True,
    timeout: float = 2.0,
    max_latency_ms: float = 250.0,
    cache_seconds: float = 5.0,
    max_prepared_age_s: float = 60.0,
) -> HealthReport:
    """Run the checks for ``kind`` concurrently and combine them into one report.

    ``max_prepared_age_s``: a prepared (two-phase) transaction older than this degrades the
    ``database`` check - its locks belong to no session, so nothing times it out."""
    cache = _recent.setdefault(db, {})

    async def ping() -> CheckResult:
        start = time.perf_counter()
        async with db.pool.vetted_connection(timeout) as con:
            await con.fetchval("SELECT 1")
        latency = _ms(start)
        slow = latency > max_latency_ms
        return CheckResult("degraded" if slow and kind != "live" else "ok", 0,
                           {"latency_ms": latency, "threshold_ms": max_latency_ms},
                           f"latency {latency} ms over {max_latency_ms} ms" if slow else None)

    async def query(sql: str) -> dict[str, Any]:
        async with db.pool.vetted_connection(timeout) as con:
            row = await con.fetchrow(sql)
        return dict(row) if row else {}

    async def server() -> CheckResult:
        data = await query(_SERVER_SQL)
        data["role"] = "replica" if data.pop("in_recovery") else "primary"
        used, limit = data["connections_used"], data["max_connections"]
        busy = used >= 0.9 * limit
        return CheckResult("degraded" if busy else "ok", 0, data,
                           f"{used} of {limit} connections in use" if busy else None)

    async def database() -> CheckResult:
        # A prepared (two-phase) transaction keeps its locks with no session behind it:
        # past the connection, the pool and a restart, until someone finishes it.
        data = await query(_DATABASE_SQL)
        stale = data["oldest_prepared_transaction_s"] > max_prepared_age_s
        return CheckResult("degraded" if stale else "ok", 0, data, (
            f"{data['prepared_transactions']} prepared transaction(s), the oldest "
            f"{data['oldest_prepared_transaction_s']:.0f} s old, hold their locks with no "
            "session: finish them (COMMIT/ROLLBACK PREPARED, gid in pg_prepared_xacts), and "
            "set max_prepared_transactions = 0 unless two-phase commit is needed"
        ) if stale else None)

    async def migrations() -> CheckResult:
        return await _migration_check(db, Path(migrations_dir or "migrations"), timeout, app_role, core)

    async def roles() -> CheckResult:
        async with db.pool.vetted_connection(timeout) as con:
            return await role_check(con, app_role)

    async def citus() -> CheckResult:
        from ..citus import node_status
        from ..pool import raw_connection

        async with db.pool.vetted_connection(timeout) as con:
            nodes = await node_status(raw_connection(con))  # the connection behind the proxy
        down = [f"{n.name}:{n.port}" for n in nodes if not n.healthy]
        return CheckResult("degraded" if down else "ok", 0,
                           {"nodes": len(nodes), "workers": sum(n.group_id != 0 for n in nodes),
                            "shard_placements": sum(n.shards for n in nodes)},
                           f"nodes not reachable or inactive: {', '.join(down)}" if down else None)

    def cached(name: str, fn: Callable[[], Awaitable[CheckResult]]) -> Callable[[], Awaitable[CheckResult]]:
        async def run() -> CheckResult:
            hit = cache.get(name)
            if hit and time.monotonic() - hit[0] < cache_seconds:
                cached_result: CheckResult = hit[1]
                return cached_result
            result = await fn()
            cache[name] = (time.monotonic(), result)
            return result
        return run

    checks: dict[str, Callable[[], Awaitable[CheckResult]]] = {"ping": ping}
    if kind in ("ready", "full") and migrations_dir is not None:
        checks["migrations"] = cached("migrations", migrations)
    if kind == "full":
        checks["server"] = cached("server", server)
        checks["database"] = cached("database", database)
        checks["roles"] = cached("roles", roles)
        if db.pool.distributed:  # a Citus coordinator (known after the first connection)
            checks["citus"] = cached("citus", citus)
    names = list(checks)
    results = await asyncio.gather(*(_timed(n, timeout, checks[n]) for n in names))
    by_name = dict(zip(names, results, strict=True))
    pool = db.pool.stats().as_dict() if db.pool.is_open else {}
    by_name["pool"] = CheckResult("ok" if db.pool.is_open else "down", 0, pool,
                                  None if db.pool.is_open else "pool is closed")
    if db.replicas is not None:
        for state in db.replicas.states:
            by_name[f"replica:{state.name}"] = CheckResult(
                "ok" if state.healthy else "degraded", 0,
                {"dsn": state.dsn, "lag_s": state.lag_s, "max_lag_s": db.replicas.max_lag,
                 "reads_fell_back_to_primary": db.replicas.fallbacks},
                state.error,
            )
    status: Status = "ok"
    reasons: list[str] = []
    for name, r in by_name.items():
        if _RANK[r.status] > _RANK[status]:
            status = r.status
        if r.status != "ok":
            reasons.append(f"{name}: {r.error or r.status}")
    if by_name["ping"].status == "down":
        status = "down"
    report = HealthReport(status, datetime.now(UTC).isoformat(), by_name, reasons)
    if db.metrics is not None:
        db.metrics.observe_health(report)
    return report


async def _migration_check(db: Database, directory: Path, timeout: float, app_role: str,
                           core: bool) -> CheckResult:
    from ..migrate import AppliedMigration, compare, load_directory
    from ..schema import CORE_SCOPE, SUPERSEDED, core_files

    available = directory.is_dir()
    files = load_directory(directory) if available else []
    repeatables = load_directory(directory / "repeatable", repeatable=True) if available else []
    async with db.pool.vetted_connection(timeout) as con:
        present = await con.fetchval("SELECT to_regprocedure('pgaccess.migration_versions()') IS NOT NULL")
        rows = await con.fetch(
            "SELECT scope, version, kind, checksum FROM pgaccess.migration_versions() "
            "WHERE scope IN ('shared', $1)", CORE_SCOPE) if present else []
    applied = [AppliedMigration(r["scope"], r["version"], "", r["kind"], r["checksum"], None, 0, "")
               for r in rows if r["scope"] == "shared"]
    versioned = sorted((a.version for a in applied if a.kind != "repeatable"), key=int)
    data: dict[str, Any] = {
        "files": "available" if available else "not available here",
        "latest_applied": versioned[-1] if versioned else None,
        "latest_on_disk": files[-1].version if files else None,
    }
    problems = []
    if core:
        core_applied = [AppliedMigration(CORE_SCOPE, r["version"], "", r["kind"], r["checksum"], None,
                                         0, "") for r in rows if r["scope"] == CORE_SCOPE]
        core_status = compare(core_applied, core_files(app_role), [])
        data["core_pending"] = [f.version for f in core_status.pending]
        if core_status.pending:
            problems.append("pgaccess core schema not up to date (pending "
                            + ", ".join(data["core_pending"]) + "): run `pgaccess migrate up`")
        if core_status.drift:
            problems.append("pgaccess core schema differs from this pgaccess version: "
                            + "; ".join(f"{d.version}: {d.reason}" for d in core_status.drift))
    if not available:
        # Nothing to compare with: report what is applied, and no verdict about the files.
        return CheckResult("degraded" if problems else "ok", 0, data, "; ".join(problems) or None)
    status = compare(applied, files, repeatables, SUPERSEDED if core else ())
    pending = [f.version for f in status.pending + status.repeatable_pending]
    drift = [f"{d.version}: {d.reason}" for d in status.drift]
    data.update({"pending": len(pending), "pending_versions": pending, "drift": drift})
    if pending:
        problems.append(f"{len(pending)} migration(s) pending ({', '.join(pending)})")
    if drift:
        problems.append("checksum drift: " + "; ".join(drift))
    return CheckResult("degraded" if problems else "ok", 0, data, "; ".join(problems) or None)


_ROLE_SETTINGS_SQL = """
SELECT coalesce(d.datname, '(all databases)') AS scope, unnest(s.setconfig) AS setting
FROM pg_db_role_setting s
JOIN pg_roles r ON r.oid = s.setrole
LEFT JOIN pg_database d ON d.oid = s.setdatabase
WHERE r.rolname = $1 AND (s.setdatabase = 0 OR d.datname = current_database())
UNION ALL
SELECT '(database default)', unnest(s.setconfig)
FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase
WHERE s.setrole = 0 AND d.datname = current_database()
ORDER BY 1, 2
"""

_DANGEROUS_FUNCTIONS_SQL = """
SELECT p.oid::regprocedure::text AS fn
FROM pg_proc p
WHERE p.pronamespace = 'pg_catalog'::regnamespace
  AND (p.proname LIKE 'lo\\_%' OR p.proname IN ('loread', 'lowrite', 'pg_terminate_backend'))
  AND has_function_privilege($1, p.oid, 'EXECUTE')
ORDER BY 1
"""


async def role_check(con: Any, app_role: str) -> CheckResult:
    """The app role's hygiene: settings pinned on the role or database (an operator should
    see them, though pgaccess pins the ones that matter at connect time), and large-object or
    backend-terminating functions it can still execute (core migration 0003 revokes them when
    run by a superuser)."""
    if not await con.fetchval("SELECT EXISTS (SELECT FROM pg_roles WHERE rolname = $1)", app_role):
        return CheckResult("degraded", 0, {"app_role": app_role},
                           f"app role {app_role!r} does not exist: run `pgaccess migrate up`")
    settings = [f"{r['setting']} ({r['scope']})" for r in await con.fetch(_ROLE_SETTINGS_SQL, app_role)]
    functions = [r["fn"] for r in await con.fetch(_DANGEROUS_FUNCTIONS_SQL, app_role)]
    data: dict[str, Any] = {"app_role": app_role, "role_settings": settings,
                            "executable_functions": functions}
    problems = []
    if settings:
        problems.append(f"{app_role} has role/database defaults: {', '.join(settings)} "
                        f"(ALTER ROLE {app_role} RESET ALL, or ALTER DATABASE ... RESET, if not wanted)")
    if functions:
        shown = ", ".join(functions[:4]) + (f" and {len(functions) - 4} more" if len(functions) > 4 else "")
        problems.append(f"{app_role} can execute {shown}: run `pgaccess migrate up` as a superuser "
                        "(core migration 0003 revokes them from PUBLIC)")
    return CheckResult("degraded" if problems else "ok", 0, data, "; ".join(problems) or None)


__all__ = ["CheckResult", "HealthReport", "check", "role_check"]
