-- The global tenants table. The roles (pgaccess_app, pgaccess_admin) and the tenant
-- functions the policies call (app.current_tenant_id(), app.claimed_tenant_id()) come from
-- pgaccess's core schema, which `migrate up` applies before these files.
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
