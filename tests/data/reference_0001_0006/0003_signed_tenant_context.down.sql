SELECT app.disable_signed_tenant_context();
DROP FUNCTION app.enable_signed_tenant_context(bytea);
DROP FUNCTION app.disable_signed_tenant_context();
DROP FUNCTION app.verified_tenant_id();
DROP SCHEMA app_private CASCADE;
