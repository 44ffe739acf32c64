"""The current tenant, carried on ``contextvars``.

Concurrent asyncio tasks each see their own tenant (a task copies the context it was
created in). ``tenant_scope`` sets it for a block; units of work read it when no tenant is
passed explicitly. Tenant ids are UUIDs and are validated here, before they reach SQL.
"""

from __future__ import annotations

import uuid
from contextvars import ContextVar
from typing import Any

from .errors import TenantError, TenantRequired

TenantId = uuid.UUID

_current: ContextVar[uuid.UUID | None] = ContextVar("pgaccess_tenant", default=None)


def parse_tenant_id(value: Any) -> uuid.UUID:
    """Return ``value`` as a UUID or raise :class:`TenantError` saying what was wrong."""
    if isinstance(value, uuid.UUID):
        return value
    if isinstance(value, str):
        if 0 < len(value) <= 64 and "\x00" not in value:
            try:
                return uuid.UUID(value)
            except ValueError:
                pass
        shown = value if len(value) <= 40 else value[:37] + "..."
        raise TenantError(
            f"invalid tenant id {shown!r}: a tenant id is a UUID such as "
            "'6f1c2a3e-0000-4000-8000-000000000001'"
        )
    raise TenantError(
        f"invalid tenant id of type {type(value).__name__}: pass a uuid.UUID or its string form"
    )


class TenantContext:
    """Read the current tenant: ``TenantContext.current()`` or ``TenantContext.require()``."""

    @staticmethod
    def current() -> uuid.UUID | None:
        return _current.get()

    @staticmethod
    def require() -> uuid.UUID:
        tenant = _current.get()
        if tenant is None:
            raise TenantRequired(
                "no tenant is set: wrap the call in `with tenant_scope(tenant_id):`, pass "
                "tenant= to db.transaction(), or use db.transaction(system=True) for admin work"
            )
        return tenant

    @staticmethod
    def set(tenant: Any) -> Any:
        """Set the tenant; returns a token for :meth:`reset`. Prefer ``tenant_scope``."""
        return _current.set(None if tenant is None else parse_tenant_id(tenant))

    @staticmethod
    def reset(token: Any) -> None:
        _current.reset(token)


class tenant_scope:
    """Set the current tenant for a ``with`` or ``async with`` block."""

    def __init__(self, tenant: Any) -> None:
        self.tenant = parse_tenant_id(tenant)
        self._token: Any = None

    def __enter__(self) -> uuid.UUID:
        self._token = _current.set(self.tenant)
        return self.tenant

    def __exit__(self, *exc: object) -> None:
        _current.reset(self._token)

    async def __aenter__(self) -> uuid.UUID:
        return self.__enter__()

    async def __aexit__(self, *exc: object) -> None:
        self.__exit__()
