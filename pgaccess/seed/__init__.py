"""Seeders: deterministic, idempotent data for development and tests.

A :class:`Seeder` has ``async seed(uow)`` and ``async truncate(uow)`` and declares the
seeders it ``depends_on``; :class:`DatabaseSeeder` (also importable as ``SeedRunner``, its
first name) orders them (a cycle is an error naming it) and runs them all in *one* system transaction, so a
failing seeder leaves the database as it was. Tenant-owned rows are written inside
``uow.scoped_tenant(t)``, where RLS checks every row against that tenant.

Seeders are discovered from a directory of Python files (``seeders/``) or listed explicitly.
"""

from __future__ import annotations

import importlib.util
import inspect
import random
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from ..errors import SeedError
from ..log import get_logger

if TYPE_CHECKING:
    from ..database import Database
    from ..uow import UnitOfWork

log = get_logger("seed")

ENVIRONMENTS = ("development", "test", "staging", "production")
GUARDED_ENVIRONMENTS = ("staging", "production")


@dataclass
class SeedContext:
    """What every seeder of one run shares."""

    env: str = "development"
    seed: int = 0
    scale: int = 0
    progress: Callable[[str, int, int], None] | None = None
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def random_for(self, *key: object) -> random.Random:
        """A generator seeded by the run's seed and ``key``: stable whatever runs before."""
        return random.Random(f"{self.seed}:{':'.join(map(str, key))}")


class Seeder:
    """Base class. Override ``seed``; list prerequisites in ``depends_on`` (classes or names)."""

    depends_on: ClassVar[tuple[type[Seeder] | str, ...]] = ()
    environments: ClassVar[tuple[str, ...]] = ENVIRONMENTS
    tables: ClassVar[tuple[str, ...]] = ()  # emptied by the default truncate, in this order

    def __init__(self, ctx: SeedContext) -> None:
        self.ctx = ctx

    @classmethod
    def seeder_name(cls) -> str:
        return cls.__name__

    async def seed(self, uow: UnitOfWork) -> None:
        raise NotImplementedError(f"{type(self).__name__}.seed")

    async def truncate(self, uow: UnitOfWork) -> None:
        from ..repository import ident

        for table in self.tables:
            await uow.execute(f"DELETE FROM {ident(table)}")


class TenantSeeder(Seeder):
    """Base class for seeders that create tenants; their dependents add tenant data."""


def order_seeders(seeders: Iterable[type[Seeder]]) -> list[type[Seeder]]:
    """Dependency order (prerequisites first, otherwise as given). A cycle is a SeedError."""
    given = list(seeders)
    by_name = {s.seeder_name(): s for s in given}

    def resolve(dep: type[Seeder] | str, owner: type[Seeder]) -> type[Seeder]:
        if isinstance(dep, str):
            if dep not in by_name:
                raise SeedError(
                    f"{owner.seeder_name()} depends on unknown seeder {dep!r}; known: "
                    f"{', '.join(sorted(by_name))}"
                )
            return by_name[dep]
        return dep

    ordered: list[type[Seeder]] = []
    state: dict[type[Seeder], str] = {}

    def visit(s: type[Seeder], path: list[str]) -> None:
        if state.get(s) == "done":
            return
        if state.get(s) == "visiting":
            cycle = [*path[path.index(s.seeder_name()):], s.seeder_name()]
            raise SeedError(f"seeder dependency cycle: {' -> '.join(cycle)}")
        state[s] = "visiting"
        for dep in s.depends_on:
            visit(resolve(dep, s), [*path, s.seeder_name()])
        state[s] = "done"
        ordered.append(s)

    for s in given:
        visit(s, [])
    return ordered


def discover_seeders(directory: str | Path) -> list[type[Seeder]]:
    """Import every ``*.py`` in ``directory`` and return the Seeder classes defined there."""
    found: list[type[Seeder]] = []
    root = Path(directory)
    if not root.is_dir():
        raise SeedError(f"seeders directory {root} does not exist")
    for path in sorted(root.glob("*.py")):
        if path.name.startswith("_"):
            continue
        module_name = f"pgaccess_seeders_{abs(hash(str(path.resolve())))}_{path.stem}"
        module = sys.modules.get(module_name)
        if module is None:
            spec = importlib.util.spec_from_file_location(module_name, path)
            if spec is None or spec.loader is None:
                raise SeedError(f"cannot import seeder file {path}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            try:
                spec.loader.exec_module(module)
            except Exception as exc:
                del sys.modules[module_name]
                raise SeedError(f"{path}: import failed: {type(exc).__name__}: {exc}") from exc
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if (issubclass(obj, Seeder) and obj.__module__ == module_name
                    and "seed" in obj.__dict__):
                found.append(obj)
    return found


class DatabaseSeeder:
    """Runs seeders in dependency order, in one system transaction.

    ``DatabaseSeeder(db, discover_seeders("seeders")).run()``; the same class is exported
    as ``SeedRunner`` (its name before 0.2)."""

    def __init__(
        self,
        db: Database,
        seeders: Sequence[type[Seeder]],
        *,
        env: str = "development",
        seed: int = 0,
        scale: int = 0,
        fresh: bool = False,
        only: Sequence[str] | None = None,
        allow_production: bool = False,
        progress: Callable[[str, int, int], None] | None = None,
    ) -> None:
        if env not in ENVIRONMENTS:
            raise SeedError(f"unknown environment {env!r}; use one of {', '.join(ENVIRONMENTS)}")
        if env in GUARDED_ENVIRONMENTS and not allow_production:
            raise SeedError(
                f"refusing to seed {env}: seeders write and (with --fresh) delete data, and "
                f"{env} holds real data. If you really mean it, pass --allow-production"
            )
        self.db = db
        self.ctx = SeedContext(env=env, seed=seed, scale=scale, progress=progress)
        self.fresh = fresh
        ordered = order_seeders(seeders)
        if only:
            known = {s.seeder_name() for s in ordered}
            unknown = [n for n in only if n not in known]
            if unknown:
                raise SeedError(f"unknown seeder(s) {unknown}; known: {', '.join(sorted(known))}")
            ordered = [s for s in ordered if s.seeder_name() in only]
        self.seeders = [s for s in ordered if env in s.environments]

    async def run(self) -> dict[str, float]:
        """Seed; return each seeder's duration in seconds."""
        timings: dict[str, float] = {}
        instances = [s(self.ctx) for s in self.seeders]
        # Large seeds run longer than a request should: no statement timeout here (0).
        async with self.db.transaction(system=True, reason=f"seed ({self.ctx.env})",
                                       timeout=0) as uow:
            if self.fresh:
                for seeder in reversed(instances):
                    await seeder.truncate(uow)
            for number, seeder in enumerate(instances, start=1):
                if self.ctx.progress is not None:
                    self.ctx.progress(seeder.seeder_name(), number, len(instances))
                start = time.perf_counter()
                try:
                    await seeder.seed(uow)
                except SeedError:
                    raise
                except Exception as exc:
                    raise SeedError(
                        f"seeder {seeder.seeder_name()} failed: {type(exc).__name__}: {exc}; "
                        "nothing was written (the whole run rolled back)"
                    ) from exc
                timings[seeder.seeder_name()] = time.perf_counter() - start
                log.info("seeded", seeder=seeder.seeder_name(),
                         seconds=round(timings[seeder.seeder_name()], 3))
        return timings


SeedRunner = DatabaseSeeder

__all__ = [
    "ENVIRONMENTS",
    "DatabaseSeeder",
    "SeedContext",
    "SeedRunner",
    "Seeder",
    "TenantSeeder",
    "discover_seeders",
    "order_seeders",
]
