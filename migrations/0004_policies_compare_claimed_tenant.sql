-- The permissive tenant policies compare rows with the *claimed* tenant (the uuid part of the
-- setting, a plain inlinable SQL function); the restrictive guards keep comparing with the
-- *verified* one (app.current_tenant_id()). A row passes only when both match, so with signing
-- on a forged or missing signature still raises in the guard for any row it would reveal or
-- write - but the verifier runs once per statement instead of twice (each (SELECT ...) in a
-- policy is its own InitPlan). With signing off both functions return the same uuid.
ALTER POLICY tenant_access ON users
    USING (tenant_id = (SELECT app.claimed_tenant_id()))
    WITH CHECK (tenant_id = (SELECT app.claimed_tenant_id()));
ALTER POLICY tenant_access ON projects
    USING (tenant_id = (SELECT app.claimed_tenant_id()))
    WITH CHECK (tenant_id = (SELECT app.claimed_tenant_id()));
