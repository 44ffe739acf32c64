-- Nothing to undo on plain PostgreSQL. On Citus, turning distributed tables back into local
-- ones (undistribute_table, which copies every row to the coordinator) is an operation to
-- plan, not a rollback step: refuse with the way to do it.
DO $citus$
BEGIN
    IF EXISTS (SELECT FROM pg_extension WHERE extname = 'citus') THEN
        RAISE EXCEPTION 'refusing to undo 0006 on Citus: the tables are distributed'
            USING HINT = 'copy the data out, or run undistribute_table() on users, projects, '
                         'tenants and app_private.tenant_signing_key by hand (after dropping '
                         'their policies and foreign keys), then delete version 0006 from '
                         'pgaccess.schema_migrations';
    END IF;
END
$citus$;
