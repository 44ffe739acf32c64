"""A throwaway PostgreSQL in a Docker container, through testcontainers.

For machines with Docker but no PostgreSQL binaries. The image is ``PGACCESS_TEST_IMAGE``,
else the official ``postgres:<major>`` when it is present or can be pulled, else the image
``scripts/build-test-image.sh`` builds where no registry is reachable (``pgaccess/postgres:<major>``).

The container does not run the image's own entry point: a short script initialises a data
directory inside the container (on a tmpfs), lets the docker bridge in (``samenet`` in
``pg_hba.conf``; the published port listens on 127.0.0.1 only, so that is as open as the
throwaway cluster's unix socket) and runs the server as ``postgres``. It works with any
Debian-based image that has the server under ``/usr/lib/postgresql/<major>/bin`` - the
official image and the locally built one both do. Startup waits until a login through the
published port succeeds. The janitor removes the container if the starter dies.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import os
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING

import asyncpg

from ..errors import ConfigError
from . import janitor

if TYPE_CHECKING:
    from testcontainers.core.container import DockerContainer

PG_MAJOR = 15
LOCAL_IMAGE = f"pgaccess/postgres:{PG_MAJOR}"
OFFICIAL_IMAGE = f"postgres:{PG_MAJOR}"
DATA_DIR = "/var/lib/pgaccess/data"
OWNER_LABEL = "org.pgaccess.owner"

_START = f"""
set -eu
bindir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
data={DATA_DIR}
mkdir -p "$data" /var/run/postgresql
chown -R postgres:postgres "$(dirname "$data")" /var/run/postgresql
chmod 700 "$data"
as_postgres() {{ setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }}
as_postgres "$bindir/initdb" -D "$data" -U postgres -A trust -E UTF8 --locale=C --no-sync >/dev/null
echo "host all all samenet trust" >> "$data/pg_hba.conf"
exec setpriv --reuid=postgres --regid=postgres --init-groups "$bindir/postgres" -D "$data" \
  -c "listen_addresses=*" -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
  -c max_connections=200 -c max_prepared_transactions=10 -c wal_level=replica \
  -c max_wal_senders=4 -c log_min_messages=warning
"""


@dataclass
class ContainerServer:
    """A running container; ``dsn`` logs in as the ``postgres`` superuser."""

    container: DockerContainer
    image: str
    dsn: str

    @property
    def id(self) -> str:
        return self.container.get_container_id()

    def exec(self, *argv: str) -> tuple[int, str]:
        result = self.container.exec(list(argv))
        return result.exit_code or 0, result.output.decode(errors="replace")

    def stop(self) -> None:
        self.container.stop()


@functools.cache
def _owner(pid: int) -> str:
    return f"{pid}-{secrets.token_hex(4)}"


def owner_label() -> str:
    """This process's value of the ``org.pgaccess.owner`` label on its containers."""
    return _owner(os.getpid())


def start_container(image: str | None = None, timeout: float = 60.0) -> ContainerServer:
    """Start PostgreSQL in a new container and wait until it accepts logins."""
    try:
        from testcontainers.core.container import DockerContainer
        from testcontainers.core.docker_client import DockerClient
    except ImportError:
        raise ConfigError(
            "testcontainers is not installed: `pip install pgaccess[test]` (or "
            "`pip install testcontainers`)"
        ) from None
    try:
        client = DockerClient()
    except Exception as exc:
        raise ConfigError(
            f"Docker is not reachable ({type(exc).__name__}: {exc}); install it "
            "(`apt-get install docker.io`) and start the daemon (`dockerd &` or "
            "`systemctl start docker`)"
        ) from None
    image = image or choose_image(client)
    container = (
        DockerContainer(image)
        .with_kwargs(entrypoint=["sh", "-c", _START], labels={OWNER_LABEL: owner_label()})
        .with_tmpfs_mount(os.path.dirname(DATA_DIR), "size=1g")  # docker wants the option form
    )
    # Published on the loopback interface only: the server trusts the bridge network.
    container.ports["5432/tcp"] = ("127.0.0.1", None)  # type: ignore[assignment]
    janitor.watch("containers", owner_label())
    with _without_ryuk():
        try:
            container.start()
        except Exception as exc:
            _remove_failed(container)
            raise ConfigError(
                f"could not start a container from {image}: {type(exc).__name__}: {exc}") from None
    try:
        port = container.get_exposed_port(5432)
        server = ContainerServer(container, image, f"postgresql://postgres@127.0.0.1:{port}/postgres")
        _wait_ready(server, timeout)
    except BaseException:
        ContainerServer(container, image, "").stop()
        raise
    return server


def choose_image(client: object) -> str:
    """``PGACCESS_TEST_IMAGE``, else the official image if present or pullable, else the
    locally built one; a clear error when there is none."""
    import docker  # type: ignore[import-untyped]

    if chosen := os.environ.get("PGACCESS_TEST_IMAGE"):
        return chosen
    images = client.client.images  # type: ignore[attr-defined]
    for name in (OFFICIAL_IMAGE, LOCAL_IMAGE):
        try:
            images.get(name)
            return name
        except docker.errors.ImageNotFound:
            pass
    try:
        images.pull(OFFICIAL_IMAGE)
        return OFFICIAL_IMAGE
    except docker.errors.APIError as exc:
        raise ConfigError(
            f"no PostgreSQL image: {OFFICIAL_IMAGE} cannot be pulled ({exc.explanation or exc}) "
            f"and {LOCAL_IMAGE} is not built. Build it with `scripts/build-test-image.sh` "
            "(debootstrap from this machine's Debian mirror), or set PGACCESS_TEST_IMAGE to "
            "an image you have."
        ) from None


def _wait_ready(server: ContainerServer, timeout: float) -> None:
    """Poll a real login through the published port (not a fixed sleep); fail fast with
    the container's log if it exits."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            _run(_login(server.dsn))
            return
        except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
            last = exc
        server.container.get_wrapped_container().reload()
        if server.container.status not in ("created", "running"):
            raise ConfigError(f"PostgreSQL container exited during startup:\n{_logs(server)}")
        time.sleep(0.1)
    raise ConfigError(
        f"PostgreSQL in {server.image} did not accept a login on {server.dsn} within "
        f"{timeout:.0f} s ({type(last).__name__}: {last}):\n{_logs(server)}"
    )


async def _login(dsn: str) -> None:
    con = await asyncpg.connect(dsn, timeout=2)
    try:
        await con.fetchval("SELECT 1")
    finally:
        await con.close()


def _run(coro: object) -> None:
    """Run ``coro`` to completion, also when called from inside a running event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(coro)  # type: ignore[arg-type]
        return
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, coro).result()  # type: ignore[arg-type]


def _logs(server: ContainerServer) -> str:
    out, err = server.container.get_logs()
    return (out + err).decode(errors="replace")[-2000:]


def _remove_failed(container: DockerContainer) -> None:
    with suppress(Exception):
        container.stop()


@contextmanager
def _without_ryuk() -> Iterator[None]:
    """testcontainers' reaper container needs a registry to pull it; the janitor does its
    job here. Only this start is affected, not the process's other containers."""
    from testcontainers.core.config import testcontainers_config

    before = testcontainers_config.ryuk_disabled
    testcontainers_config.ryuk_disabled = True
    try:
        yield
    finally:
        testcontainers_config.ryuk_disabled = before
