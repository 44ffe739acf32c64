"""Bookkeeping in ``pgaccess.schema_migrations`` and comparing it with the files on disk."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from .files import MigrationFile

SHARED_SCOPE = "shared"

BOOKKEEPING = """
CREATE SCHEMA IF NOT EXISTS pgaccess;
-- Other roles may call the narrow function below, never read the tables themselves.
GRANT USAGE ON SCHEMA pgaccess TO PUBLIC;
CREATE TABLE IF NOT EXISTS pgaccess.schema_migrations (
    scope       text NOT NULL,
    version     text NOT NULL,
    name        text NOT NULL,
    kind        text NOT NULL DEFAULT 'versioned',
    checksum    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    duration_ms integer NOT NULL DEFAULT 0,
    applied_by  text NOT NULL DEFAULT current_user,
    PRIMARY KEY (scope, version)
);
CREATE TABLE IF NOT EXISTS pgaccess.migration_progress (
    scope       text NOT NULL,
    version     text NOT NULL,
    checksum    text NOT NULL,
    statements_done integer NOT NULL,
    PRIMARY KEY (scope, version)
);
-- Versions and checksums only (no who/when), for health checks run as the app role.
CREATE OR REPLACE FUNCTION pgaccess.migration_versions()
    RETURNS TABLE (scope text, version text, kind text, checksum text)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog
    AS $fn$ SELECT scope, version, kind, checksum FROM pgaccess.schema_migrations $fn$;
"""

# Applied rows of every scope and, in the same round trip, the tenant schemas that exist.
_APPLIED_AND_SCHEMAS = """
SELECT m.scope, m.version, m.name, m.kind, m.checksum, m.applied_at, m.duration_ms,
       m.applied_by, NULL::text AS schema
FROM pgaccess.schema_migrations m
WHERE $1::text IS NULL OR m.scope = $1
UNION ALL
SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, nspname
FROM pg_namespace WHERE $2::text IS NOT NULL AND starts_with(nspname, $2)
ORDER BY 9, 1, 4 DESC, 2
"""


@dataclass
class AppliedMigration:
    scope: str
    version: str
    name: str
    kind: str
    checksum: str
    applied_at: Any
    duration_ms: int
    applied_by: str


@dataclass
class Drift:
    version: str
    name: str
    reason: str


@dataclass
class Status:
    applied: list[AppliedMigration]
    pending: list[MigrationFile]
    drift: list[Drift]
    repeatable_pending: list[MigrationFile] = field(default_factory=list)
    tenants: dict[str, dict[str, Any]] = field(default_factory=dict)
    # pgaccess's own migration set (pgaccess.schema), applied before the project's files.
    core_applied: list[AppliedMigration] = field(default_factory=list)
    core_pending: list[MigrationFile] = field(default_factory=list)
    # Applied rows of files whose content moved into the core schema (not drift).
    superseded: list[AppliedMigration] = field(default_factory=list)

    @property
    def up_to_date(self) -> bool:
        return not self.pending and not self.repeatable_pending and not self.core_pending and all(
            not t["pending"] for t in self.tenants.values()
        )

    def exit_code(self) -> int:
        """0 up to date, 3 something pending, 4 drift (drift wins)."""
        if self.drift:
            return 4
        return 0 if self.up_to_date else 3

    def as_json(self) -> dict[str, Any]:
        return {
            "applied": [
                {
                    "version": a.version, "name": a.name, "checksum": a.checksum,
                    "applied_at": a.applied_at.isoformat() if a.applied_at else None,
                    "duration_ms": a.duration_ms, "applied_by": a.applied_by, "kind": a.kind,
                }
                for a in self.applied
            ],
            "pending": [{"version": p.version, "name": p.name} for p in self.pending]
            + [{"version": p.version, "name": p.name} for p in self.repeatable_pending],
            "drift": [{"version": d.version, "name": d.name, "reason": d.reason} for d in self.drift],
            "tenants": self.tenants,
            "core": {"applied": [a.version for a in self.core_applied],
                     "pending": [{"version": p.version, "name": p.name} for p in self.core_pending]},
            "superseded": [a.version for a in self.superseded],
        }


def compare(
    applied: list[AppliedMigration], files: list[MigrationFile], repeatables: list[MigrationFile],
    superseded: Collection[str] = (),
) -> Status:
    """What is pending and what drifted, from one scope's applied rows and its files.

    Rows whose checksum is in ``superseded`` (files whose content moved into pgaccess's core
    schema) are history: neither drift nor a reason to re-apply their version."""
    by_version = {f.version: f for f in files}
    by_int = {int(f.version): f for f in files}
    drift: list[Drift] = []
    versioned = [a for a in applied if a.kind != "repeatable"]
    replaced: list[AppliedMigration] = []
    for a in versioned:
        f = by_version.get(a.version) or by_int.get(int(a.version))
        if a.checksum in superseded and (f is None or f.checksum != a.checksum):
            replaced.append(a)
        elif f is None:
            drift.append(Drift(a.version, a.name, "file missing"))
        elif a.kind != "baseline" and f.checksum != a.checksum:
            drift.append(Drift(a.version, a.name, "checksum changed since it was applied"))
    done = {int(a.version) for a in versioned}
    pending = [f for f in files if int(f.version) not in done]
    rep_applied = {a.version: a.checksum for a in applied if a.kind == "repeatable"}
    rep_pending = [r for r in repeatables if rep_applied.get(r.version) != r.checksum]
    return Status(applied=sorted(versioned, key=lambda a: int(a.version))
                  + [a for a in applied if a.kind == "repeatable"],
                  pending=pending, drift=drift, repeatable_pending=rep_pending, superseded=replaced)


async def has_bookkeeping(con: asyncpg.Connection) -> bool:
    return bool(
        await con.fetchval("SELECT to_regprocedure('pgaccess.migration_versions()') IS NOT NULL")
    )


async def ensure_bookkeeping(con: asyncpg.Connection) -> None:
    if not await has_bookkeeping(con):
        await con.execute(BOOKKEEPING)


async def applied_and_schemas(
    con: asyncpg.Connection, *, scope: str | None = None, tenant_prefix: str | None = None
) -> tuple[list[AppliedMigration], list[str]]:
    """Applied rows (of ``scope``, or all) and the tenant schemas, in one query."""
    if not await has_bookkeeping(con):
        rows = await con.fetch(
            "SELECT nspname AS schema FROM pg_namespace WHERE $1::text IS NOT NULL "
            "AND starts_with(nspname, $1) ORDER BY 1", tenant_prefix)
        return [], [r["schema"] for r in rows]
    applied: list[AppliedMigration] = []
    schemas: list[str] = []
    for r in await con.fetch(_APPLIED_AND_SCHEMAS, scope, tenant_prefix):
        if r["schema"] is not None:
            schemas.append(r["schema"])
        else:
            applied.append(AppliedMigration(**{k: r[k] for k in _FIELDS}))
    return applied, schemas


_FIELDS = ("scope", "version", "name", "kind", "checksum", "applied_at", "duration_ms", "applied_by")


def tenant_status(
    applied: list[AppliedMigration], schemas: list[str], tenant_files: list[MigrationFile]
) -> tuple[dict[str, dict[str, Any]], list[Drift]]:
    """Per-schema summary (applied count, latest, pending, drift) from the one query's rows."""
    by_scope: dict[str, list[AppliedMigration]] = {}
    for a in applied:
        by_scope.setdefault(a.scope, []).append(a)
    out: dict[str, dict[str, Any]] = {}
    drift: list[Drift] = []
    for schema in schemas:
        sub = compare(by_scope.get(schema, []), tenant_files, [])
        out[schema] = {
            "applied": len(sub.applied),
            "latest": sub.applied[-1].version if sub.applied else None,
            "pending": [p.version for p in sub.pending],
            "drift": [d.__dict__ for d in sub.drift],
        }
        drift += [Drift(d.version, f"{schema}:{d.name}", d.reason) for d in sub.drift]
    return out, drift
