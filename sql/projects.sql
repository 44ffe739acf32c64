-- name: projects_by_status(status, lim)
-- Projects of the current tenant with a status, newest first.
-- row: Project
SELECT tenant_id, id, owner_id, name, status, metadata, created_at, updated_at
FROM projects
WHERE status = :status::project_status
ORDER BY created_at DESC, id DESC
LIMIT :lim;

-- name: search_projects_by_name(prefix, lim)
-- Projects whose name starts with a prefix (no LIKE wildcards to escape).
-- row: Project
SELECT tenant_id, id, owner_id, name, status, metadata, created_at, updated_at
FROM projects
WHERE starts_with(name, :prefix)
ORDER BY name, id
LIMIT :lim;

-- name: project_counts_by_status()
-- How many projects of the current tenant have each status.
-- row: ProjectCount
-- not-null: status
SELECT status::text AS status, count(*) AS n
FROM projects
GROUP BY status
ORDER BY status;

-- name: touch_project(id)!
UPDATE projects SET updated_at = now() WHERE id = :id;
