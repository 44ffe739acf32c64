-- Citus: distribute the tenant-owned tables by tenant_id (co-located, so a tenant's users and
-- projects share a worker), tenants and the signing key as reference tables (a copy on every
-- node). Does nothing on plain PostgreSQL. Tested on Citus 13.2 by tests/test_citus.py.
--
-- Order matters to Citus:
--  * policies on distributed tables may not contain subqueries, so the (SELECT fn()) policies
--    are dropped first and recreated as plain calls (STABLE functions: once per index scan);
--    the system policy says "no tenant, or this tenant" with coalesce() because Citus 13.2
--    cannot propagate a policy containing IS NULL ("unrecognized node type: 117");
--  * create_reference_table('tenants') is refused while local tables with policies reference
--    tenants, and a distributed table may only reference a reference table or a co-located
--    distributed table, so the foreign keys are dropped, the tables distributed, the keys
--    recreated;
--  * the signed-context verifier runs inside shard queries on the workers and reads the key
--    from the reference table's local copy there, which Citus counts as nested distributed
--    execution and refuses unless the function allows it.
DO $citus$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_extension WHERE extname = 'citus') THEN
        RETURN;
    END IF;
    -- Keys to a reference table need one connection per node for the whole transaction.
    PERFORM set_config('citus.multi_shard_modify_mode', 'sequential', true);

    DROP POLICY tenant_guard ON users;
    DROP POLICY tenant_access ON users;
    DROP POLICY system_access ON users;
    DROP POLICY tenant_guard ON projects;
    DROP POLICY tenant_access ON projects;
    DROP POLICY system_access ON projects;
    ALTER TABLE projects DROP CONSTRAINT projects_owner_fk;
    ALTER TABLE projects DROP CONSTRAINT projects_tenant_id_fkey;
    ALTER TABLE users DROP CONSTRAINT users_tenant_id_fkey;

    PERFORM create_reference_table('tenants');
    PERFORM create_reference_table('app_private.tenant_signing_key');
    PERFORM create_distributed_table('users', 'tenant_id');
    PERFORM create_distributed_table('projects', 'tenant_id', colocate_with => 'users');
    ALTER FUNCTION app.verified_tenant_id() SET citus.allow_nested_distributed_execution = on;

    ALTER TABLE users ADD CONSTRAINT users_tenant_id_fkey
        FOREIGN KEY (tenant_id) REFERENCES tenants (id);
    ALTER TABLE projects ADD CONSTRAINT projects_tenant_id_fkey
        FOREIGN KEY (tenant_id) REFERENCES tenants (id);
    ALTER TABLE projects ADD CONSTRAINT projects_owner_fk
        FOREIGN KEY (tenant_id, owner_id) REFERENCES users (tenant_id, id);

    CREATE POLICY tenant_guard ON users AS RESTRICTIVE FOR ALL TO pgaccess_app
        USING (tenant_id = app.current_tenant_id())
        WITH CHECK (tenant_id = app.current_tenant_id());
    CREATE POLICY tenant_access ON users FOR ALL TO pgaccess_app
        USING (tenant_id = app.claimed_tenant_id())
        WITH CHECK (tenant_id = app.claimed_tenant_id());
    CREATE POLICY system_access ON users FOR ALL TO pgaccess_admin
        USING (coalesce(tenant_id = app.current_tenant_id(), true))
        WITH CHECK (coalesce(tenant_id = app.current_tenant_id(), true));
    CREATE POLICY tenant_guard ON projects AS RESTRICTIVE FOR ALL TO pgaccess_app
        USING (tenant_id = app.current_tenant_id())
        WITH CHECK (tenant_id = app.current_tenant_id());
    CREATE POLICY tenant_access ON projects FOR ALL TO pgaccess_app
        USING (tenant_id = app.claimed_tenant_id())
        WITH CHECK (tenant_id = app.claimed_tenant_id());
    CREATE POLICY system_access ON projects FOR ALL TO pgaccess_admin
        USING (coalesce(tenant_id = app.current_tenant_id(), true))
        WITH CHECK (coalesce(tenant_id = app.current_tenant_id(), true));
END
$citus$;
