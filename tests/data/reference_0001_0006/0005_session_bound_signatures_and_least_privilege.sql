-- Tenant isolation against SQL injected into one tenant's unit of work (docs/SECURITY.md).
--
-- 1. The signed tenant context is bound to the session and to the time it was issued:
--    '<uuid>.<backend pid>.<ms since epoch>.<hex HMAC-SHA256 of "<uuid>.<pid>.<ms>">'.
--    A value copied from pg_stat_activity (visible to other sessions of the same role) is
--    refused on any other backend, and on its own backend once a transaction starts more
--    than max_skew_ms after it was issued.
-- 2. Least privilege for every role of the database: large objects (whose rows any session
--    of the same role can read) and signalling other backends (which any session of the
--    same role may do) are revoked from PUBLIC. Needs a superuser; otherwise a warning says
--    what is left open.

-- pgaccess:nolint constraint-not-valid: a table of at most one row
ALTER TABLE app_private.tenant_signing_key
    ADD COLUMN max_skew_ms integer NOT NULL DEFAULT 1000 CHECK (max_skew_ms BETWEEN 1 AND 60000);

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
    IF parts[2]::integer <> pg_backend_pid() THEN
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

DO $revoke$
DECLARE
    fn regprocedure;
BEGIN
    FOR fn IN
        SELECT p.oid::regprocedure FROM pg_catalog.pg_proc p
        WHERE p.pronamespace = 'pg_catalog'::regnamespace
          AND (p.proname LIKE 'lo\_%' OR p.proname IN ('loread', 'lowrite',
               'pg_terminate_backend', 'pg_cancel_backend'))
    LOOP
        EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', fn);
    END LOOP;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE WARNING 'pgaccess: large-object and backend-signalling functions stay executable by every role'
        USING HINT = 'run as a superuser: REVOKE EXECUTE ON FUNCTION lo_create(oid), lo_open(oid, integer), '
                     'pg_terminate_backend(integer, bigint), pg_cancel_backend(integer) ... FROM PUBLIC (docs/SECURITY.md)';
END
$revoke$;
