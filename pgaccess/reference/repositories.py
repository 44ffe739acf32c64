"""Repositories of the reference schema."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from ..repository import BaseRepository, TenantAwareRepository
from .rows import Project, ProjectCount, Tenant, User


class TenantRepository(BaseRepository[Tenant]):
    """The global tenants table (no RLS): the app role reads, the system context writes."""

    table = "tenants"
    row = Tenant
    order_by = ("created_at", "id")

    async def find_by_domain(self, domain: str) -> Tenant | None:
        """Resolve a request's tenant by host name (unique index on domain)."""
        return await self.find_one_where(domain=domain.strip().lower())

    async def is_active(self, tenant_id: UUID) -> bool:
        tenant = await self.find_by_id(tenant_id)
        return tenant is not None and tenant.status == "active"

    async def create(self, name: str, domain: str, **values: Any) -> Tenant:
        return await self.insert(name=name, domain=domain.strip().lower(), **values)

    async def suspend(self, tenant_id: UUID) -> Tenant | None:
        return await self._set_status(tenant_id, "suspended")

    async def archive(self, tenant_id: UUID) -> Tenant | None:
        return await self._set_status(tenant_id, "archived")

    async def activate(self, tenant_id: UUID) -> Tenant | None:
        return await self._set_status(tenant_id, "active")

    async def _set_status(self, tenant_id: UUID, status: str) -> Tenant | None:
        rows = await self.query("set_tenant_status", id=tenant_id, status=status)
        return rows[0] if rows else None


class UserRepository(TenantAwareRepository[User]):
    table = "users"
    row = User
    order_by = ("created_at", "id")

    async def find_by_email(self, email: str) -> User | None:
        rows = await self.query("user_by_email", email=email)
        return rows[0] if rows else None

    async def list_by_role(self, role: str) -> list[User]:
        return await self.query("users_by_role", role=role)


class ProjectRepository(TenantAwareRepository[Project]):
    table = "projects"
    row = Project
    order_by = ("created_at", "id")

    async def list_by_status(self, status: str, limit: int = 100) -> list[Project]:
        return await self.query("projects_by_status", status=status, lim=limit)

    async def search_by_name(self, prefix: str, limit: int = 50) -> list[Project]:
        return await self.query("search_projects_by_name", prefix=prefix, lim=limit)

    async def counts_by_status(self) -> list[ProjectCount]:
        records = await self.executor.q.project_counts_by_status()
        return [ProjectCount(*r) for r in records]
