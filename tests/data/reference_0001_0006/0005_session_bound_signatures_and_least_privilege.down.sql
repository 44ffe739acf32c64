-- Back to 0003/0004's verifier (signature over the uuid only) and PUBLIC's default grants.
CREATE OR REPLACE FUNCTION app.verified_tenant_id() RETURNS uuid
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $fn$
DECLARE
    raw text := nullif(current_setting('app.tenant_id', true), '');
    signing_key bytea;
    tenant text;
BEGIN
    IF raw IS NULL THEN
        RETURN NULL;
    END IF;
    SELECT key INTO signing_key FROM app_private.tenant_signing_key;
    IF signing_key IS NULL THEN
        RETURN raw::uuid;
    END IF;
    tenant := split_part(raw, '.', 1);
    IF encode(public.hmac(convert_to(tenant, 'UTF8'), signing_key, 'sha256'), 'hex')
            IS DISTINCT FROM split_part(raw, '.', 2) THEN
        RAISE EXCEPTION 'tenant context signature is missing or invalid'
            USING ERRCODE = '42501',
                  HINT = 'set the tenant through pgaccess with PGACCESS_TENANT_SIGNING_KEY configured';
    END IF;
    RETURN tenant::uuid;
END
$fn$;

ALTER TABLE app_private.tenant_signing_key DROP COLUMN max_skew_ms;

DO $grant$
DECLARE
    fn regprocedure;
BEGIN
    FOR fn IN
        SELECT p.oid::regprocedure FROM pg_catalog.pg_proc p
        WHERE p.pronamespace = 'pg_catalog'::regnamespace
          AND (p.proname LIKE 'lo\_%' OR p.proname IN ('loread', 'lowrite',
               'pg_terminate_backend', 'pg_cancel_backend'))
    LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO PUBLIC', fn);
    END LOOP;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE WARNING 'pgaccess: could not restore PUBLIC execute on large-object functions (needs a superuser)';
END
$grant$;
