-- Signed tenant context (opt-in). With a key in app_private.tenant_signing_key, the tenant
-- setting must be '<uuid>.<hex HMAC-SHA256 of the uuid>'; the key lives where the app role
-- cannot read it, so SQL injected into the app cannot switch tenants with set_config().
-- With the table empty (the default), the setting is a plain uuid, as before.
CREATE EXTENSION IF NOT EXISTS pgcrypto;

CREATE SCHEMA app_private;
REVOKE ALL ON SCHEMA app_private FROM PUBLIC;

CREATE TABLE app_private.tenant_signing_key (
    only_one boolean PRIMARY KEY DEFAULT true CHECK (only_one),
    key      bytea NOT NULL CHECK (length(key) >= 16)
);

CREATE OR REPLACE FUNCTION app.current_tenant_id() RETURNS uuid
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
