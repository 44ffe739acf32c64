"""A small FastAPI service on pgaccess: list and create projects for the request's tenant.

Run it against the dev cluster (after `make demo`)::

    DATABASE_URL=... PGACCESS_ADMIN_URL=... uvicorn examples.service:app

The tenant comes from the ``X-Tenant-ID`` header or the host name (``acme.localhost``); the
middleware sets it, and every unit of work in the request runs under it (RLS).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

from pgaccess import Database, Settings, UniqueViolation
from pgaccess.asgi import TenantMiddleware, health_router, metrics_app
from pgaccess.metrics import Metrics
from pgaccess.reference import Project, ProjectRepository
from pgaccess.reference.rows import queries


class NewProject(BaseModel):
    name: str
    status: str = "active"


def project_json(p: Project) -> dict[str, Any]:
    return {"id": str(p.id), "tenant_id": str(p.tenant_id), "name": p.name, "status": p.status,
            "created_at": p.created_at.isoformat()}


def create_app(db: Database) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not db.pool.is_open:
            await db.open()
        yield
        await db.close()

    app = FastAPI(title="pgaccess example", lifespan=lifespan)
    app.include_router(health_router(db))
    app.add_middleware(TenantMiddleware, db=db)
    app.mount("/metrics", metrics_app(db))

    @app.get("/projects")
    async def list_projects(limit: int = 50) -> list[dict[str, Any]]:
        async with db.transaction(readonly=True) as uow:
            page = await uow.repo(ProjectRepository).find_page(limit=limit)
        return [project_json(p) for p in page.rows]

    @app.get("/projects/status/{status}")
    async def projects_with_status(status: str, limit: int = 50) -> list[dict[str, Any]]:
        # Typed named query: mypy knows the parameters and that rows are `Project`s.
        async with db.transaction(readonly=True) as uow:
            rows = await queries(uow).projects_by_status(status=status, lim=limit)
        return [project_json(p) for p in rows]

    @app.get("/users/count")
    async def count_users() -> dict[str, int]:
        async with db.transaction(readonly=True) as uow:
            return {"users": await queries(uow).count_users()}

    @app.post("/projects", status_code=201)
    async def create_project(body: NewProject) -> dict[str, Any]:
        try:
            async with db.transaction() as uow:
                project = await uow.repo(ProjectRepository).insert(name=body.name, status=body.status)
        except UniqueViolation as exc:
            raise HTTPException(409, "project exists") from exc
        return project_json(project)

    return app


# `uvicorn examples.service:app` with DATABASE_URL (app role) and PGACCESS_ADMIN_URL set.
app = (create_app(Database(Settings.from_env(), sql_dir="sql", metrics=Metrics()))
       if os.environ.get("DATABASE_URL") else None)
