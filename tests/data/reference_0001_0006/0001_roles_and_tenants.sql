-- Roles, the tenancy helper and the global tenants table.
-- pgaccess_app: what services log in as. Subject to RLS, owns nothing.
-- pgaccess_admin: system context for cross-tenant jobs; access through role-scoped policies.
DO $roles$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'pgaccess_app') THEN
        CREATE ROLE pgaccess_app LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOINHERIT;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'pgaccess_admin') THEN
        CREATE ROLE pgaccess_admin LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOINHERIT;
    END IF;
END
$roles$;

CREATE SCHEMA app;
COMMENT ON SCHEMA app IS 'pgaccess tenancy helpers';

-- The tenant of the current transaction. Unset, or '' after RESET ALL, reads as NULL,
-- and tenant_id = NULL matches no row: no tenant means no rows, never all rows.
CREATE FUNCTION app.current_tenant_id() RETURNS uuid
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT nullif(current_setting('app.tenant_id', true), '')::uuid $$;

REVOKE ALL ON SCHEMA app FROM PUBLIC;
GRANT USAGE ON SCHEMA app TO pgaccess_app, pgaccess_admin;
GRANT USAGE ON SCHEMA public TO pgaccess_app, pgaccess_admin;

CREATE TYPE tenant_status AS ENUM ('active', 'suspended', 'archived');

CREATE TABLE tenants (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name          text NOT NULL,
    domain        text NOT NULL,
    status        tenant_status NOT NULL DEFAULT 'active',
    plan          text NOT NULL DEFAULT 'free',
    features      jsonb NOT NULL DEFAULT '{}'::jsonb,
    configuration jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT tenants_domain_key UNIQUE (domain),
    CONSTRAINT tenants_domain_lower CHECK (domain = lower(domain))
);

-- Services resolve tenants by domain (middleware) and read their settings; only the
-- system context creates, suspends or archives them.
GRANT SELECT ON tenants TO pgaccess_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON tenants TO pgaccess_admin;
