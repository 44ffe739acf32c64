"""Which PostgreSQL the tests (and ``queries check``) use, and starting it.

Three ways, tried in this order:

1. ``PGACCESS_TEST_DSN``: a running server (superuser or database owner DSN);
2. a throwaway cluster from this machine's PostgreSQL binaries (initdb into a temporary
   directory, unix socket only, ``fsync=off``);
3. a throwaway container through Docker (see :mod:`pgaccess.devdb.container`).

``PGACCESS_TEST_SERVER`` = ``dsn`` | ``local`` | ``container`` forces one of them (and fails
rather than falling back); ``auto`` (the default) takes the first that works. Throwaway
servers are removed by :meth:`ThrowawayServer.stop`, or by the janitor if the process dies.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..cluster import LocalCluster, find_bindir, scratch_dir
from ..errors import ConfigError
from . import janitor
from .container import ContainerServer, start_container

Kind = Literal["dsn", "local", "container"]
MODES = ("auto", "dsn", "local", "container")


@dataclass
class ThrowawayServer:
    """A server for tests: ``dsn`` logs in as a superuser to ``postgres``."""

    dsn: str
    kind: Kind
    cluster: LocalCluster | None = None
    container: ContainerServer | None = None
    clone_ms: list[float] = field(default_factory=list)

    @property
    def owned(self) -> bool:
        """Started by pgaccess (so cheap, unsafe-for-production settings are fine)."""
        return self.kind != "dsn"

    def stop(self) -> None:
        if self.cluster is not None:
            self.cluster.destroy()
            janitor.release("cluster", str(self.cluster.directory))
        if self.container is not None:
            self.container.stop()


def throwaway_cluster(prefix: str = "pgaccess-") -> LocalCluster:
    """Create and start a cluster in a new temporary directory (see ``scratch_dir``),
    announced to the janitor before initdb runs."""
    find_bindir()
    directory = Path(tempfile.mkdtemp(prefix=prefix, dir=scratch_dir()))
    janitor.watch("cluster", str(directory))
    if os.geteuid() == 0:
        os.chmod(directory, 0o755)
    cluster = LocalCluster(directory)
    try:
        cluster.start()
    except BaseException:
        cluster.destroy()
        janitor.release("cluster", str(directory))
        raise
    return cluster


def server_mode() -> str:
    mode = os.environ.get("PGACCESS_TEST_SERVER", "auto").strip().lower() or "auto"
    if mode not in MODES:
        raise ConfigError(f"PGACCESS_TEST_SERVER={mode!r}: use one of {', '.join(MODES)}")
    return mode


def start_test_server() -> ThrowawayServer:
    """The server the test suite would use (see the module docstring)."""
    mode = server_mode()
    dsn = os.environ.get("PGACCESS_TEST_DSN")
    if mode in ("auto", "dsn") and dsn:
        return ThrowawayServer(dsn=dsn, kind="dsn")
    if mode == "dsn":
        raise ConfigError("PGACCESS_TEST_SERVER=dsn but PGACCESS_TEST_DSN is not set")
    errors: list[str] = []
    if mode in ("auto", "local"):
        try:
            cluster = throwaway_cluster()
            return ThrowawayServer(dsn=cluster.dsn(), kind="local", cluster=cluster)
        except ConfigError as exc:
            if mode == "local":
                raise
            errors.append(f"local binaries: {exc}")
    try:
        container = start_container()
        return ThrowawayServer(dsn=container.dsn, kind="container", container=container)
    except ConfigError as exc:
        if mode == "container":
            raise
        errors.append(f"docker: {exc}")
    raise ConfigError(
        "cannot start PostgreSQL for the tests. Install the server (Debian/Ubuntu: "
        "`apt-get install postgresql`), or set PGACCESS_TEST_DSN to a running server, or "
        "make Docker available (see docs/TESTING.md).\n" + "\n".join(errors)
    )
