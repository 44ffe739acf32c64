-- Signed tenant context (opt-in). Off by default: app.current_tenant_id() stays the plain,
-- inlinable SQL function of 0001. The owner turns it on with
--     SELECT app.enable_signed_tenant_context(decode('<hex key>', 'hex'));
-- after which the tenant setting must be '<uuid>.<hex HMAC-SHA256 of the uuid>'. The key
-- lives where the app role cannot read it, so SQL injected into the app cannot switch
-- tenants with set_config().
CREATE EXTENSION IF NOT EXISTS pgcrypto;

CREATE SCHEMA app_private;
REVOKE ALL ON SCHEMA app_private FROM PUBLIC;

CREATE TABLE app_private.tenant_signing_key (
    only_one boolean PRIMARY KEY DEFAULT true CHECK (only_one),
    key      bytea NOT NULL CHECK (length(key) >= 16)
);

-- The verifying version of the tenant function (used once signing is enabled).
CREATE FUNCTION app.verified_tenant_id() RETURNS uuid
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

-- Owner-only switches (they replace app.current_tenant_id, which only its owner may do).
CREATE FUNCTION app.enable_signed_tenant_context(signing_key bytea) RETURNS void
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
    AS $fn$
BEGIN
    INSERT INTO app_private.tenant_signing_key (key) VALUES (signing_key)
        ON CONFLICT (only_one) DO UPDATE SET key = EXCLUDED.key;
    CREATE OR REPLACE FUNCTION app.current_tenant_id() RETURNS uuid
        LANGUAGE sql STABLE AS 'SELECT app.verified_tenant_id()';
END
$fn$;

CREATE FUNCTION app.disable_signed_tenant_context() RETURNS void
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
    AS $fn$
BEGIN
    DELETE FROM app_private.tenant_signing_key;
    CREATE OR REPLACE FUNCTION app.current_tenant_id() RETURNS uuid
        LANGUAGE sql STABLE PARALLEL SAFE
        AS $$ SELECT nullif(current_setting('app.tenant_id', true), '')::uuid $$;
END
$fn$;

REVOKE ALL ON FUNCTION app.enable_signed_tenant_context(bytea) FROM PUBLIC;
REVOKE ALL ON FUNCTION app.disable_signed_tenant_context() FROM PUBLIC;
