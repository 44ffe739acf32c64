-- Tenant-owned tables: tenant_id on every row, keys and uniqueness scoped per tenant,
-- RLS enabled and forced, a restrictive guard so a later permissive policy cannot widen
-- access, and a role-scoped policy for the system (admin) context: all rows when no tenant
-- is set, that tenant's rows when one is (so seeding "as a tenant" is checked by RLS too).
CREATE TABLE users (
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    id          uuid NOT NULL DEFAULT gen_random_uuid(),
    email       text NOT NULL,
    name        text NOT NULL,
    role        text NOT NULL DEFAULT 'member',
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    CONSTRAINT users_tenant_email_key UNIQUE (tenant_id, email)
);

CREATE TYPE project_status AS ENUM ('active', 'paused', 'done');

CREATE TABLE projects (
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    id          uuid NOT NULL DEFAULT gen_random_uuid(),
    owner_id    uuid,
    name        text NOT NULL,
    status      project_status NOT NULL DEFAULT 'active',
    metadata    jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    CONSTRAINT projects_owner_fk FOREIGN KEY (tenant_id, owner_id) REFERENCES users (tenant_id, id)
);

CREATE INDEX projects_tenant_created_idx ON projects (tenant_id, created_at, id);
CREATE INDEX projects_tenant_status_idx ON projects (tenant_id, status);
CREATE INDEX projects_tenant_name_idx ON projects (tenant_id, name text_pattern_ops);

ALTER TABLE users ENABLE ROW LEVEL SECURITY;
ALTER TABLE users FORCE ROW LEVEL SECURITY;
ALTER TABLE projects ENABLE ROW LEVEL SECURITY;
ALTER TABLE projects FORCE ROW LEVEL SECURITY;

-- (SELECT ...) makes the tenant an initPlan: evaluated once per statement, index usable.
CREATE POLICY tenant_guard ON users AS RESTRICTIVE FOR ALL TO pgaccess_app
    USING (tenant_id = (SELECT app.current_tenant_id()))
    WITH CHECK (tenant_id = (SELECT app.current_tenant_id()));
CREATE POLICY tenant_access ON users FOR ALL TO pgaccess_app
    USING (tenant_id = (SELECT app.current_tenant_id()))
    WITH CHECK (tenant_id = (SELECT app.current_tenant_id()));
CREATE POLICY system_access ON users FOR ALL TO pgaccess_admin
    USING ((SELECT app.current_tenant_id()) IS NULL OR tenant_id = (SELECT app.current_tenant_id()))
    WITH CHECK ((SELECT app.current_tenant_id()) IS NULL OR tenant_id = (SELECT app.current_tenant_id()));

CREATE POLICY tenant_guard ON projects AS RESTRICTIVE FOR ALL TO pgaccess_app
    USING (tenant_id = (SELECT app.current_tenant_id()))
    WITH CHECK (tenant_id = (SELECT app.current_tenant_id()));
CREATE POLICY tenant_access ON projects FOR ALL TO pgaccess_app
    USING (tenant_id = (SELECT app.current_tenant_id()))
    WITH CHECK (tenant_id = (SELECT app.current_tenant_id()));
CREATE POLICY system_access ON projects FOR ALL TO pgaccess_admin
    USING ((SELECT app.current_tenant_id()) IS NULL OR tenant_id = (SELECT app.current_tenant_id()))
    WITH CHECK ((SELECT app.current_tenant_id()) IS NULL OR tenant_id = (SELECT app.current_tenant_id()));

GRANT SELECT, INSERT, UPDATE, DELETE ON users, projects TO pgaccess_app, pgaccess_admin;
