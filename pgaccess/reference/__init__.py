"""The reference schema: a small multi-tenant SaaS (tenants, users, projects).

It is the example to copy and what pgaccess's own tests run against. Its migrations are in
``migrations/``, its named queries in ``sql/``, its seeders in ``seeders/``. The seeded
tenants have fixed ids and domains: Acme ``...0001`` (acme.localhost), Globex ``...0002``
(globex.localhost) and Initech ``...0003`` (initech.localhost, suspended).
"""

from uuid import UUID

from .repositories import ProjectRepository, TenantRepository, UserRepository
from .rows import Project, ProjectCount, Tenant, User

ACME_ID = UUID("00000000-0000-4000-8000-000000000001")
GLOBEX_ID = UUID("00000000-0000-4000-8000-000000000002")
INITECH_ID = UUID("00000000-0000-4000-8000-000000000003")

SEEDED_TENANTS = {
    ACME_ID: ("Acme", "acme.localhost"),
    GLOBEX_ID: ("Globex", "globex.localhost"),
    INITECH_ID: ("Initech", "initech.localhost"),
}

__all__ = [
    "ACME_ID",
    "GLOBEX_ID",
    "INITECH_ID",
    "SEEDED_TENANTS",
    "Project",
    "ProjectCount",
    "ProjectRepository",
    "Tenant",
    "TenantRepository",
    "User",
    "UserRepository",
]
