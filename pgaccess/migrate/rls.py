"""Catalogue checks on a migrated database: is tenant data really isolated?

Each check returns :class:`Finding` objects naming the table, view or function. They run in
``migrate lint``, and inside each shared migration's transaction before it commits (the RLS
gate), so ``up`` never commits a migration that the lint then fails.
"""

from __future__ import annotations

import asyncpg

from .findings import Finding

_USER_SCHEMAS = (
    "n.nspname NOT IN ('pg_catalog', 'information_schema', 'pgaccess') "
    "AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%'"
)

_TENANT_TABLES = f"""
SELECT c.oid, format('%I.%I', n.nspname, c.relname) AS name, a.attnum,
       c.relrowsecurity, c.relforcerowsecurity
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped
WHERE c.relkind IN ('r', 'p') AND {_USER_SCHEMAS}
"""

_UNGRANTED = f"""
SELECT format('%I.%I', n.nspname, c.relname) AS name
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND c.relrowsecurity AND {_USER_SCHEMAS}
  AND NOT has_table_privilege($1, c.oid, 'SELECT, INSERT, UPDATE, DELETE')
"""


async def rls_findings(con: asyncpg.Connection, app_role: str | None = "pgaccess_app") -> list[Finding]:
    """Every catalogue finding in the database (unwaived; waivers are applied by the caller)."""
    findings: list[Finding] = []
    tables = await con.fetch(_TENANT_TABLES)
    oids = [t["oid"] for t in tables]
    for t in tables:
        if not t["relrowsecurity"]:
            findings.append(Finding("rls-disabled", t["name"]))
        if not t["relforcerowsecurity"]:
            findings.append(Finding("rls-not-forced", t["name"]))
    guarded = {
        r["polrelid"]
        for r in await con.fetch(
            "SELECT polrelid FROM pg_policy WHERE NOT polpermissive AND polrelid = ANY($1::oid[])",
            oids,
        )
    }
    for t in tables:
        if t["oid"] not in guarded:
            findings.append(Finding("rls-no-guard", t["name"]))
    rows = await con.fetch(
        """
        SELECT format('%s', i.indexrelid::regclass) AS index, t.name
        FROM unnest($1::oid[], $2::int2[], $3::text[]) AS t(oid, attnum, name)
        JOIN pg_index i ON i.indrelid = t.oid AND i.indisunique
        WHERE NOT (t.attnum = ANY(i.indkey::int2[]))
        """,
        oids, [t["attnum"] for t in tables], [t["name"] for t in tables],
    )
    for r in rows:
        findings.append(Finding("rls-unique-without-tenant", r["name"],
                                detail=f"unique index {r['index']} does not include tenant_id "
                                "(uniqueness checks bypass RLS and leak existence across tenants)"))
    rows = await con.fetch(
        """
        SELECT c.conname, t.name
        FROM unnest($1::oid[], $2::int2[], $3::text[]) AS t(oid, attnum, name)
        JOIN pg_constraint c ON c.conrelid = t.oid AND c.contype = 'f'
        WHERE NOT (t.attnum = ANY(c.conkey))
        """,
        oids, [t["attnum"] for t in tables], [t["name"] for t in tables],
    )
    for r in rows:
        findings.append(Finding("rls-fk-without-tenant", r["name"],
                                detail=f"foreign key {r['conname']} does not include tenant_id (it "
                                "can point at another tenant's row and probe its existence)"))
    rows = await con.fetch(
        f"""
        SELECT DISTINCT format('%I.%I', n.nspname, v.relname) AS view
        FROM pg_class v
        JOIN pg_namespace n ON n.oid = v.relnamespace
        JOIN pg_rewrite r ON r.ev_class = v.oid
        JOIN pg_depend d ON d.objid = r.oid AND d.classid = 'pg_rewrite'::regclass
        WHERE v.relkind IN ('v', 'm') AND d.refobjid = ANY($1::oid[]) AND {_USER_SCHEMAS}
          AND NOT coalesce(v.reloptions::text[] && ARRAY['security_invoker=true',
              'security_invoker=on', 'security_invoker=1'], false)
        """,
        oids,
    )
    findings += [Finding("rls-view-not-invoker", r["view"]) for r in rows]
    rows = await con.fetch(
        f"""
        SELECT format('%I.%I(%s)', n.nspname, p.proname, pg_get_function_identity_arguments(p.oid)) AS fn
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE p.prosecdef AND {_USER_SCHEMAS}
          AND NOT coalesce(EXISTS (SELECT 1 FROM unnest(p.proconfig) AS c
                                   WHERE c LIKE 'search_path=%'), false)
        """
    )
    findings += [Finding("security-definer-search-path", r["fn"]) for r in rows]
    if app_role and await con.fetchval("SELECT to_regrole($1) IS NOT NULL", app_role):
        findings += [Finding("rls-table-without-grants", r["name"],
                             detail=f"RLS-enabled (tenant) table the application role {app_role} "
                             "has no privilege on: every query from the service fails")
                     for r in await con.fetch(_UNGRANTED, app_role)]
    return findings
