DROP TABLE projects;
DROP TYPE project_status;
DROP TABLE users;
