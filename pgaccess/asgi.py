"""ASGI pieces for services: health endpoints and the tenant middleware.

Plain ASGI, so they work with Starlette, FastAPI or anything else; ``health_router`` is the
FastAPI flavour (needs the ``asgi`` extra)::

    app = FastAPI()
    app.include_router(health_router(db))
    app.add_middleware(TenantMiddleware, db=db)

``TenantMiddleware`` resolves the request's tenant from ``X-Tenant-ID`` or, failing that,
from the host name through a resolver (default :class:`TenantTable`: ``public.tenants``;
cached for a short TTL), answers
400 for a malformed id, 404 for an unknown tenant and 403 for a suspended or archived one,
and otherwise sets ``TenantContext`` for the request, so every unit of work inside runs as
that tenant.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol
from uuid import UUID

from .errors import ConfigError, TenantError
from .health import HealthReport, check
from .tenancy import TenantContext, parse_tenant_id

if TYPE_CHECKING:
    from .database import Database

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

HEALTH_PATHS = {"/health": "full", "/health/live": "live", "/health/ready": "ready"}


async def _send_json(send: Send, status: int, body: Any) -> None:
    payload = json.dumps(body, default=str).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})


def health_status_code(report: HealthReport, kind: str) -> int:
    """200 when usable: ok, or degraded for the full report; 503 otherwise."""
    if report.status == "ok":
        return 200
    if report.status == "degraded" and kind == "full":
        return 200
    return 503


class HealthApp:
    """A plain ASGI app serving ``/health``, ``/health/live`` and ``/health/ready``."""

    def __init__(self, db: Database, *, migrations_dir: str | Path | None = "migrations",
                 max_latency_ms: float = 250.0, timeout: float = 2.0) -> None:
        self.db = db
        self.options = {"migrations_dir": migrations_dir, "max_latency_ms": max_latency_ms,
                        "timeout": timeout}

    async def report(self, kind: str) -> tuple[int, dict[str, Any]]:
        report = await check(self.db, kind=kind, **self.options)  # type: ignore[arg-type]
        return health_status_code(report, kind), report.as_dict()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = HEALTH_PATHS.get(scope.get("path", "").rstrip("/") or "/")
        if scope["type"] != "http" or kind is None:
            await _send_json(send, 404, {"detail": "not found"})
            return
        status, body = await self.report(kind)
        await _send_json(send, status, body)


def health_router(db: Database, **options: Any) -> Any:
    """A FastAPI ``APIRouter`` with the three health endpoints (needs ``fastapi``)."""
    from fastapi import APIRouter
    from fastapi.responses import JSONResponse

    app = HealthApp(db, **options)
    router = APIRouter()

    def endpoint(kind: str) -> Callable[[], Awaitable[JSONResponse]]:
        async def handler() -> JSONResponse:
            status, body = await app.report(kind)
            return JSONResponse(json.loads(json.dumps(body, default=str)), status_code=status)
        return handler

    for path, kind in HEALTH_PATHS.items():
        router.add_api_route(path, endpoint(kind), methods=["GET"], tags=["health"])
    return router


class TenantInfo(NamedTuple):
    """What a resolver says about a tenant: its id and status ("active" serves requests)."""

    id: UUID
    status: str


class TenantResolver(Protocol):
    """Finds the tenant of a request by id (``X-Tenant-ID``) or by host name."""

    async def by_id(self, db: Database, tenant_id: UUID) -> TenantInfo | None: ...

    async def by_host(self, db: Database, host: str) -> TenantInfo | None: ...


class TenantTable:
    """The default resolver: a table of tenants with ``id``, ``domain`` and ``status``.

    The lookup is schema-qualified and runs as an autocommit statement, so it starts from a
    reset session like any other (nothing a request left on a pooled connection - a
    temporary table named like this one, say - can answer it).
    """

    def __init__(self, table: str = "public.tenants", *, id_column: str = "id",
                 domain_column: str = "domain", status_column: str = "status") -> None:
        from .repository import ident

        if "." not in table:
            raise ConfigError(f"tenant table {table!r}: name its schema, e.g. 'public.{table}'")
        select = f"SELECT {ident(id_column)}, {ident(status_column)}::text FROM {ident(table)}"
        self._by_id = f"{select} WHERE {ident(id_column)} = $1"
        self._by_host = f"{select} WHERE {ident(domain_column)} = $1"

    async def _one(self, db: Database, sql: str, key: Any) -> TenantInfo | None:
        row = await db.autocommit(readonly=True).run("fetchrow", sql, (key,),
                                                     "TenantTable.lookup", vetted=True)
        return None if row is None else TenantInfo(row[0], row[1])

    async def by_id(self, db: Database, tenant_id: UUID) -> TenantInfo | None:
        return await self._one(db, self._by_id, tenant_id)

    async def by_host(self, db: Database, host: str) -> TenantInfo | None:
        return await self._one(db, self._by_host, host)


class TenantMiddleware:
    """Resolve and enforce the tenant of each HTTP request (see the module docstring)."""

    def __init__(self, app: ASGIApp, db: Database, *, resolver: TenantResolver | None = None,
                 header: str = "x-tenant-id", cache_ttl: float = 30.0,
                 exempt_prefixes: tuple[str, ...] = ("/health", "/metrics")) -> None:
        self.app = app
        self.db = db
        self.resolver = resolver or TenantTable()
        self.header = header.lower().encode()
        self.cache_ttl = cache_ttl
        self.exempt = exempt_prefixes
        self._cache: dict[str, tuple[float, TenantInfo | None]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path", "").startswith(self.exempt):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        raw = headers.get(self.header)
        try:
            if raw is not None:
                tenant_id = parse_tenant_id(raw.decode("latin-1").strip())
                info = await self._cached(f"id:{tenant_id}", self.resolver.by_id, tenant_id)
            else:
                host = headers.get(b"host", b"").decode("latin-1").split(":", 1)[0].strip().lower()
                info = await self._cached(f"host:{host}", self.resolver.by_host, host) if host else None
        except TenantError as exc:
            await _send_json(send, 400, {"detail": str(exc)})
            return
        if info is None:
            await _send_json(send, 404, {"detail": "unknown tenant"})
            return
        if info.status != "active":
            await _send_json(send, 403, {"detail": f"tenant is {info.status}"})
            return
        token = TenantContext.set(info.id)
        try:
            await self.app(scope, receive, send)
        finally:
            TenantContext.reset(token)

    async def _cached(self, key: str, lookup: Callable[[Database, Any], Awaitable[TenantInfo | None]],
                      value: Any) -> TenantInfo | None:
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit and now - hit[0] < self.cache_ttl:
            return hit[1]
        info = await lookup(self.db, value)
        self._cache[key] = (now, info)
        return info


def metrics_app(db: Database) -> ASGIApp:
    """Prometheus text exposition of pool gauges, query histograms and health (``metrics``
    extra). Attach a :class:`pgaccess.metrics.Metrics` to the Database first."""
    from .metrics import render_latest

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        body, content_type = render_latest(db)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", content_type.encode())]})
        await send({"type": "http.response.body", "body": body})

    return app
