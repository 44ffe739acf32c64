-- pgaccess core schema: the signed tenant context (opt-in, off until the owner runs
--     SELECT app.enable_signed_tenant_context(decode('<hex key>', 'hex'));
-- ). The setting is then '<uuid>.<backend pid>.<ms since epoch>.<hex HMAC-SHA256 of
-- "<uuid>.<pid>.<ms>">': bound to the session and to the time it was issued, so a value
-- copied from pg_stat_activity is refused on any other backend, and on its own backend once
-- a transaction starts more than max_skew_ms after it was issued. The key lives where the
-- app role cannot read it, so SQL injected into the app cannot switch tenants.
CREATE EXTENSION IF NOT EXISTS pgcrypto;

CREATE SCHEMA IF NOT EXISTS app_private;
REVOKE ALL ON SCHEMA app_private FROM PUBLIC;

CREATE TABLE IF NOT EXISTS app_private.tenant_signing_key (
    only_one boolean PRIMARY KEY DEFAULT true CHECK (only_one),
    key      bytea NOT NULL CHECK (length(key) >= 16)
);

-- pgaccess:nolint constraint-not-valid: a table of at most one row
ALTER TABLE app_private.tenant_signing_key
    ADD COLUMN IF NOT EXISTS max_skew_ms integer NOT NULL DEFAULT 1000 CHECK (max_skew_ms BETWEEN 1 AND 60000);

-- The session a signed tenant context is bound to: the backend pid, or on Citus the global
-- pid, which the worker backends executing a coordinator backend's statements share with it.
CREATE OR REPLACE FUNCTION app.session_id() RETURNS bigint
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
    AS $fn$
BEGIN
    IF to_regproc('pg_catalog.citus_backend_gpid') IS NOT NULL THEN
        RETURN citus_backend_gpid();
    END IF;
    RETURN pg_backend_pid();
END
$fn$;

-- Replaced only when missing or older than the session-bound format, so settings given to
-- the function later (Citus: allow_nested_distributed_execution) survive upgrades.
DO $verified$
DECLARE
    current text := (SELECT pg_get_functiondef(oid) FROM pg_proc
                     WHERE oid = to_regprocedure('app.verified_tenant_id()'));
BEGIN
    IF current LIKE '%app.session_id()%' THEN
        RETURN;
    END IF;
    IF current LIKE '%parts[2]::integer <> pg_backend_pid()%' THEN
        -- The session-bound verifier bound to the plain pid: rebind it, keeping its settings.
        EXECUTE replace(current, 'parts[2]::integer <> pg_backend_pid()',
                        'parts[2]::bigint <> app.session_id()');
        RETURN;
    END IF;
    CREATE OR REPLACE FUNCTION app.verified_tenant_id() RETURNS uuid
        LANGUAGE plpgsql STABLE SECURITY DEFINER
        SET search_path = pg_catalog, pg_temp
        AS $fn$
    DECLARE
        raw text := nullif(current_setting('app.tenant_id', true), '');
        signing_key bytea;
        skew_ms integer;
        parts text[];
        issued_ms double precision;
    BEGIN
        IF raw IS NULL THEN
            RETURN NULL;
        END IF;
        SELECT key, max_skew_ms INTO signing_key, skew_ms FROM app_private.tenant_signing_key;
        IF signing_key IS NULL THEN
            RETURN raw::uuid;
        END IF;
        parts := string_to_array(raw, '.');
        IF cardinality(parts) <> 4 OR encode(public.hmac(
                convert_to(parts[1] || '.' || parts[2] || '.' || parts[3], 'UTF8'), signing_key, 'sha256'),
                'hex') IS DISTINCT FROM parts[4] THEN
            RAISE EXCEPTION 'tenant context signature is missing or invalid'
                USING ERRCODE = '42501',
                      HINT = 'set the tenant through pgaccess with PGACCESS_TENANT_SIGNING_KEY configured';
        END IF;
        IF parts[2]::bigint <> app.session_id() THEN
            RAISE EXCEPTION 'tenant context was signed for another session'
                USING ERRCODE = '42501', HINT = 'a signed tenant context is valid only on the connection it was issued for';
        END IF;
        issued_ms := parts[3]::double precision;
        IF issued_ms < extract(epoch FROM transaction_timestamp()) * 1000 - skew_ms
                OR issued_ms > extract(epoch FROM statement_timestamp()) * 1000 + skew_ms THEN
            RAISE EXCEPTION 'tenant context was not issued for this transaction'
                USING ERRCODE = '42501',
                      HINT = 'pgaccess issues a new one for every unit of work; if clocks differ, '
                             'raise app_private.tenant_signing_key.max_skew_ms';
        END IF;
        RETURN parts[1]::uuid;
    END
    $fn$;
END
$verified$;

-- Owner-only switches (they replace app.current_tenant_id, which only its owner may do).
CREATE OR REPLACE FUNCTION app.enable_signed_tenant_context(signing_key bytea) RETURNS void
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
    AS $fn$
BEGIN
    INSERT INTO app_private.tenant_signing_key (key) VALUES (signing_key)
        ON CONFLICT (only_one) DO UPDATE SET key = EXCLUDED.key;
    CREATE OR REPLACE FUNCTION app.current_tenant_id() RETURNS uuid
        LANGUAGE sql STABLE AS 'SELECT app.verified_tenant_id()';
END
$fn$;

CREATE OR REPLACE FUNCTION app.disable_signed_tenant_context() RETURNS void
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
