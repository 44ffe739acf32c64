-- name: tenant_by_domain(domain)^
-- The tenant serving a host name.
-- row: Tenant
SELECT id, name, domain, status, plan, features, configuration, created_at, updated_at
FROM tenants
WHERE domain = lower(:domain);

-- name: set_tenant_status(id, status)
-- Change a tenant's status (system context only: the app role cannot write tenants).
-- row: Tenant
-- context: system
UPDATE tenants SET status = :status::tenant_status, updated_at = now()
WHERE id = :id
RETURNING id, name, domain, status, plan, features, configuration, created_at, updated_at;
