"""SQLAlchemy 2 async ORM mapping of the reference ``projects`` table, for the benchmarks."""

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class ProjectModel(Base):
    __tablename__ = "projects"
    tenant_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    owner_id: Mapped[uuid.UUID | None]
    name: Mapped[str]
    status: Mapped[str]
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSONB)
    created_at: Mapped[dt.datetime]
    updated_at: Mapped[dt.datetime]


def make(url: str, pool_size: int) -> dict[str, Any]:
    engine = create_async_engine(url, pool_size=pool_size, max_overflow=0)
    sessions = async_sessionmaker(engine, expire_on_commit=False)

    async def get(t: uuid.UUID, p: uuid.UUID) -> Any:
        async with sessions() as s:
            stmt = select(ProjectModel).where(ProjectModel.tenant_id == t, ProjectModel.id == p)
            return (await s.execute(stmt)).scalar_one_or_none()

    async def page(t: uuid.UUID) -> Any:
        async with sessions() as s:
            stmt = (select(ProjectModel).where(ProjectModel.tenant_id == t)
                    .order_by(ProjectModel.created_at, ProjectModel.id).limit(50))
            return (await s.execute(stmt)).scalars().all()

    return {"get": get, "page": page, "close": engine.dispose}
