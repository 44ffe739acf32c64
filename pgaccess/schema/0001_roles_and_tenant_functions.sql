-- pgaccess core schema: the roles and the tenant functions every tenant policy uses.
-- {{app_role}}: what services log in as. Subject to RLS, owns nothing.
-- {{admin_role}}: the system context for cross-tenant jobs; access through role-scoped policies.
-- Written to be a no-op on databases whose own migrations created these objects before the
-- core schema shipped with pgaccess (the reference schema's 0001-0005).
DO $roles$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{{app_role}}') THEN
        CREATE ROLE {{app_role}} LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOINHERIT;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{{admin_role}}') THEN
        CREATE ROLE {{admin_role}} LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOINHERIT;
    END IF;
END
$roles$;

CREATE SCHEMA IF NOT EXISTS app;
COMMENT ON SCHEMA app IS 'pgaccess tenancy helpers';

-- The tenant of the current transaction. Unset, or '' after RESET ALL, reads as NULL,
-- and tenant_id = NULL matches no row: no tenant means no rows, never all rows.
-- Created only when missing: with signing on, app.current_tenant_id() is the verifying
-- version (app.enable_signed_tenant_context) and must stay so.
DO $current$
BEGIN
    IF to_regprocedure('app.current_tenant_id()') IS NULL THEN
        CREATE FUNCTION app.current_tenant_id() RETURNS uuid
            LANGUAGE sql STABLE PARALLEL SAFE
            AS $$ SELECT nullif(current_setting('app.tenant_id', true), '')::uuid $$;
    END IF;
END
$current$;

-- The *claimed* tenant (the uuid part of a signed setting), for permissive policies; the
-- restrictive guards compare with the verified one (app.current_tenant_id()), so the
-- verifier runs once per statement instead of twice.
DO $claimed$
BEGIN
    IF to_regprocedure('app.claimed_tenant_id()') IS NULL THEN
        CREATE FUNCTION app.claimed_tenant_id() RETURNS uuid
            LANGUAGE sql STABLE PARALLEL SAFE
            AS $$ SELECT split_part(nullif(current_setting('app.tenant_id', true), ''), '.', 1)::uuid $$;
    END IF;
END
$claimed$;

REVOKE ALL ON SCHEMA app FROM PUBLIC;
GRANT USAGE ON SCHEMA app TO {{app_role}}, {{admin_role}};
GRANT USAGE ON SCHEMA public TO {{app_role}}, {{admin_role}};
