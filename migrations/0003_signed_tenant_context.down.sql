CREATE OR REPLACE FUNCTION app.current_tenant_id() RETURNS uuid
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT nullif(current_setting('app.tenant_id', true), '')::uuid $$;
ALTER FUNCTION app.current_tenant_id() SECURITY INVOKER;
ALTER FUNCTION app.current_tenant_id() RESET search_path;
DROP SCHEMA app_private CASCADE;
