-- name: user_by_email(email)^
-- A user of the current tenant by e-mail (unique per tenant).
-- row: User
SELECT tenant_id, id, email, name, role, created_at
FROM users
WHERE email = lower(:email);

-- name: users_by_role(role)
-- row: User
SELECT tenant_id, id, email, name, role, created_at
FROM users
WHERE role = :role
ORDER BY created_at, id;

-- name: count_users()$
SELECT count(*) FROM users;
