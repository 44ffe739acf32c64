-- Re-applied whenever this file changes. security_invoker keeps RLS of the caller.
CREATE OR REPLACE VIEW project_counts WITH (security_invoker = true) AS
    SELECT tenant_id, status, count(*) AS n FROM projects GROUP BY tenant_id, status;
GRANT SELECT ON project_counts TO pgaccess_app, pgaccess_admin;
