"""A throwaway Citus cluster: a coordinator and workers, each a private PostgreSQL.

Every node is a :func:`~pgaccess.cluster.temporary_cluster` with Citus preloaded, listening on
its own unix socket directory and port only. Citus metadata lives per database, so
:meth:`TemporaryCitusCluster.create_database` creates the database on every node, creates
the extension there and registers the workers on the coordinator; :meth:`add_worker` starts
one more node and registers it in every database made so far (for rebalancing tests).

Citus has no Debian package here: ``bash ../shared/citus/build.sh`` (as root) builds and
installs it into the local PostgreSQL in about a minute. Without it, :meth:`start` raises
:class:`~pgaccess.errors.ConfigError` saying so.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg

from ..citus import TENANT_PROPAGATION
from ..cluster import LocalCluster, find_bindir, temporary_cluster
from ..config import Settings, with_database, with_user
from ..errors import ConfigError

if TYPE_CHECKING:
    from ..database import Database

BUILD_HINT = (
    "Citus is not installed in the local PostgreSQL ({libdir} has no citus.so). Build and "
    "install it with `bash ../shared/citus/build.sh` (as root, about a minute; it does "
    "nothing when Citus is already there), then run the citus tests again."
)

# wal_level = logical: shard moves need it (Citus refuses them otherwise). Workers run the
# rebalancer's background tasks and one maintenance daemon per database.
NODE_CONF = (
    "shared_preload_libraries = 'citus'",
    "wal_level = logical",
    "max_replication_slots = 16",
    "max_wal_senders = 16",
    "max_worker_processes = 32",
    "max_prepared_transactions = 100",
    "shared_buffers = 32MB",
    "citus.node_conninfo = 'sslmode=disable'",
)


def citus_libdir() -> Path:
    """The directory PostgreSQL loads extensions from (``pg_config --pkglibdir``)."""
    pg_config = find_bindir() / "pg_config"
    if pg_config.exists():
        out = subprocess.run([str(pg_config), "--pkglibdir"], capture_output=True, text=True,
                             check=False, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            return Path(out.stdout.strip())
    return find_bindir().parent / "lib"


def require_citus() -> None:
    """Raise ConfigError with the build instructions when Citus is not installed."""
    libdir = citus_libdir()
    if not (libdir / "citus.so").exists():
        raise ConfigError(BUILD_HINT.format(libdir=libdir))


class TemporaryCitusCluster:
    """A coordinator and ``workers`` worker nodes on private sockets; ``destroy()`` removes all.

    ``shard_count`` is the coordinator's ``citus.shard_count`` (shards per distributed
    table).
    """

    def __init__(self, workers: int = 2, *, shard_count: int = 8, base_port: int = 55432) -> None:
        self.worker_count = workers
        self.shard_count = shard_count
        self.base_port = base_port
        self.coordinator: LocalCluster | None = None
        self.workers: list[LocalCluster] = []
        self.databases: list[str] = []

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> TemporaryCitusCluster:
        require_citus()
        try:
            self.coordinator = temporary_cluster(
                "pgaccess-citus-coord-", port=self.base_port,
                extra_conf=(*NODE_CONF, f"citus.shard_count = {self.shard_count}"),
            )
            _name_itself(self.coordinator)
            for _ in range(self.worker_count):
                self._start_worker()
        except BaseException:
            self.destroy()
            raise
        return self

    def _start_worker(self) -> LocalCluster:
        port = self.base_port + 1 + len(self.workers)
        worker = temporary_cluster("pgaccess-citus-worker-", port=port, extra_conf=NODE_CONF)
        self.workers.append(worker)
        _name_itself(worker)
        return worker

    def destroy(self) -> None:
        for node in [*self.workers, *([self.coordinator] if self.coordinator else [])]:
            node.destroy()
        self.workers = []
        self.coordinator = None

    def __enter__(self) -> TemporaryCitusCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    # -- addresses -----------------------------------------------------------------------

    @property
    def nodes(self) -> list[LocalCluster]:
        if self.coordinator is None:
            raise ConfigError("the Citus cluster is not started; call start() first")
        return [self.coordinator, *self.workers]

    def dsn(self, database: str = "postgres", user: str | None = None) -> str:
        """A superuser (or ``user``) DSN on the coordinator."""
        return self.nodes[0].dsn(database, user)

    @staticmethod
    def node_address(node: LocalCluster) -> tuple[str, int]:
        """How Citus names a node: its socket directory (libpq treats a path as a socket)."""
        return str(node.socket_dir), node.port

    # -- databases and nodes -------------------------------------------------------------

    async def create_database(self, name: str) -> str:
        """Create ``name`` on every node with Citus, register the workers; return its DSN."""
        for node in self.nodes:
            await _exec(node.dsn(), f'CREATE DATABASE "{name}"')
            await _exec(with_database(node.dsn(), name), "CREATE EXTENSION citus")
        coordinator = with_database(self.dsn(), name)
        host, port = self.node_address(self.nodes[0])
        await _exec(coordinator, f"SELECT citus_set_coordinator_host('{host}', {port})")
        for worker in self.workers:
            await self._add_node(coordinator, worker)
        self.databases.append(name)
        return coordinator

    async def drop_database(self, name: str) -> None:
        for node in self.nodes:
            await _exec(node.dsn(), f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if name in self.databases:
            self.databases.remove(name)

    async def add_worker(self) -> LocalCluster:
        """Start one more worker and add it to every database created so far.

        Existing shards stay where they are until a rebalance moves some onto it.
        """
        worker = self._start_worker()
        for name in self.databases:
            await _exec(worker.dsn(), f'CREATE DATABASE "{name}"')
            await _exec(with_database(worker.dsn(), name), "CREATE EXTENSION citus")
            await self._add_node(with_database(self.dsn(), name), worker)
        return worker

    async def _add_node(self, coordinator_dsn: str, worker: LocalCluster) -> None:
        host, port = self.node_address(worker)
        await _exec(coordinator_dsn, f"SELECT citus_add_node('{host}', {port})")


def citus_database(owner_dsn: str, sql_dir: Path | None = None, **settings: object) -> Database:
    """A Database on a coordinator (or plain server) as the app/admin roles, sending the
    tenant with SET LOCAL and citus.propagate_set_commands = 'local' so it reaches the workers.
    """
    from ..database import Database

    base = Settings(min_size=0, max_size=10, acquire_timeout=10.0,
                    server_settings=dict([TENANT_PROPAGATION]))
    return Database(
        base.replace(**settings), dsn=with_user(owner_dsn, "pgaccess_app"),
        admin_dsn=with_user(owner_dsn, "pgaccess_admin"), sql_dir=sql_dir, tenant_set_local=True,
    )


async def migrate_and_seed(owner_dsn: str, project: Path, env: str = "test") -> None:
    """Apply ``project``/migrations through ``owner_dsn`` and run ``project``/seeders."""
    from ..migrate import Migrator
    from ..seed import SeedRunner, discover_seeders

    await Migrator(owner_dsn, project / "migrations", echo=lambda _: None).up()
    async with citus_database(owner_dsn, project / "sql") as db:
        await SeedRunner(db, discover_seeders(project / "seeders"), env=env).run()


def _name_itself(node: LocalCluster) -> None:
    """Background jobs (the rebalancer) connect to their own node by citus.local_hostname,
    'localhost' over TCP by default; these nodes only listen on their socket."""
    with (node.data_dir / "postgresql.conf").open("a") as fh:
        fh.write(f"citus.local_hostname = '{node.socket_dir}'\n")
    node.reload()


async def _exec(dsn: str, sql: str) -> None:
    con = await asyncpg.connect(dsn)
    try:
        await con.execute(sql)
    finally:
        await con.close()
