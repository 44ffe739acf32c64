DROP TABLE tenants;
DROP TYPE tenant_status;
DROP SCHEMA app CASCADE;
