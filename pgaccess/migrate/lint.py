"""RLS lint: catalogue checks that tenant data is really isolated.

Each finding names the object and the fix. Run after ``up`` or alone with
``python -m pgaccess.migrate lint``.
"""

from __future__ import annotations

import asyncpg

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


async def rls_lint(con: asyncpg.Connection) -> list[str]:
    findings: list[str] = []
    tables = await con.fetch(_TENANT_TABLES)
    oids = [t["oid"] for t in tables]
    for t in tables:
        if not t["relrowsecurity"]:
            findings.append(f"{t['name']}: has tenant_id but RLS is off; "
                            f"ALTER TABLE {t['name']} ENABLE ROW LEVEL SECURITY")
        if not t["relforcerowsecurity"]:
            findings.append(f"{t['name']}: RLS is not forced (the owner bypasses it); "
                            f"ALTER TABLE {t['name']} FORCE ROW LEVEL SECURITY")
    guarded = {
        r["polrelid"]
        for r in await con.fetch(
            "SELECT polrelid FROM pg_policy WHERE NOT polpermissive AND polrelid = ANY($1::oid[])",
            oids,
        )
    }
    for t in tables:
        if t["oid"] not in guarded:
            findings.append(
                f"{t['name']}: no RESTRICTIVE guard policy; CREATE POLICY tenant_guard ON "
                f"{t['name']} AS RESTRICTIVE ... USING (tenant_id = (SELECT app.current_tenant_id()))"
            )
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
        findings.append(
            f"{r['name']}: unique index {r['index']} does not include tenant_id (uniqueness "
            "checks bypass RLS and leak existence across tenants); make it UNIQUE (tenant_id, ...)"
        )
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
        findings.append(
            f"{r['name']}: foreign key {r['conname']} does not include tenant_id (it can point "
            "at another tenant's row and probe its existence); use (tenant_id, ...) REFERENCES "
            "parent (tenant_id, ...)"
        )
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
    for r in rows:
        findings.append(
            f"{r['view']}: view over tenant data without security_invoker (it runs with the "
            f"owner's rights and skips RLS); ALTER VIEW {r['view']} SET (security_invoker = true)"
        )
    rows = await con.fetch(
        f"""
        SELECT format('%I.%I(%s)', n.nspname, p.proname, pg_get_function_identity_arguments(p.oid)) AS fn
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE p.prosecdef AND {_USER_SCHEMAS}
          AND NOT coalesce(EXISTS (SELECT 1 FROM unnest(p.proconfig) AS c
                                   WHERE c LIKE 'search_path=%'), false)
        """
    )
    for r in rows:
        findings.append(
            f"{r['fn']}: SECURITY DEFINER function without a pinned search_path (callers can "
            f"hijack it); ALTER FUNCTION {r['fn']} SET search_path = pg_catalog, public"
        )
    return findings
