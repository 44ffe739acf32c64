DROP TABLE tenants;
DROP TYPE tenant_status;
