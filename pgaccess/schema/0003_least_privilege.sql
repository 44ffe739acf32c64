-- pgaccess core schema: least privilege for every role of the database. Large objects
-- (whose rows any session of the same role can read) and signalling other backends (which
-- any session of the same role may do) are revoked from PUBLIC. Needs a superuser;
-- otherwise a warning says what is left open, and `pgaccess health` reports it.
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
