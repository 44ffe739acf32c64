"""The container path against a real Docker engine (scripts/ci-containers.sh runs these with
the whole session on a container). Without Docker these fail and say what to install."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from test_plugin import start_and_kill

from pgaccess import ConnectionLost, Database, Settings
from pgaccess.devdb.container import DATA_DIR, OWNER_LABEL, ContainerServer, start_container
from pgaccess.devdb.servers import ThrowawayServer, server_mode
from pgaccess.errors import ConfigError

pytestmark = pytest.mark.containers
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def own_container() -> Iterator[ContainerServer]:
    error = ""
    try:
        server = start_container()
    except ConfigError as exc:
        error = f"container path: {exc}"
    if error:
        pytest.fail(error, pytrace=False)
    try:
        yield server
    finally:
        server.stop()


async def system_identifier(dsn: str) -> tuple[str, int]:
    con = await asyncpg.connect(dsn)
    try:
        return (await con.fetchval("SHOW data_directory"),
                await con.fetchval("SELECT system_identifier FROM pg_control_system()"))
    finally:
        await con.close()


def assert_served_from_inside(server: ContainerServer, dsn: str) -> None:
    """The server behind ``dsn`` keeps its data in the container: same data directory, and
    the control file read inside the container carries the same system identifier."""
    data_dir, ident = asyncio.run(system_identifier(dsn))
    assert data_dir == DATA_DIR
    assert not Path(DATA_DIR).exists()  # not a host path
    code, out = server.exec("sh", "-c", f'"$(ls -d /usr/lib/postgresql/*/bin | tail -n 1)/pg_controldata" {DATA_DIR}')
    assert code == 0, out
    match = re.search(r"Database system identifier:\s+(\d+)", out)
    assert match and int(match.group(1)) == ident, out


def test_data_directory_is_inside_the_container(own_container: ContainerServer) -> None:
    assert own_container.dsn.startswith("postgresql://postgres@127.0.0.1:")
    assert_served_from_inside(own_container, own_container.dsn)
    ports = own_container.container.get_wrapped_container().attrs["HostConfig"]["PortBindings"]
    assert [b["HostIp"] for b in ports["5432/tcp"]] == ["127.0.0.1"]


def test_the_session_server_is_the_one_the_mode_asks_for(pg_server: ThrowawayServer) -> None:
    mode = server_mode()
    if mode == "auto":
        assert pg_server.kind in ("dsn", "local", "container")
    else:
        assert pg_server.kind == mode
    if pg_server.container is not None:
        assert pg_server.cluster is None
        assert_served_from_inside(pg_server.container, pg_server.dsn)


def test_bridge_is_let_in_and_only_the_bridge(own_container: ContainerServer) -> None:
    code, out = own_container.exec("sh", "-c", f"grep -v '^#' {DATA_DIR}/pg_hba.conf | grep host")
    assert code == 0, out
    assert "samenet" in out and "0.0.0.0/0" not in out and "all all all" not in out.replace("  ", " ")


async def test_killed_backends_in_the_container_are_typed_and_replaced(own_container: ContainerServer) -> None:
    killer = await asyncpg.connect(own_container.dsn)
    try:
        async with Database(Settings(min_size=1, max_size=1, acquire_timeout=5),
                            dsn=own_container.dsn) as db:
            async with db.transaction() as uow:
                pid = await uow.fetchval("SELECT pg_backend_pid()")
            await killer.execute("SELECT pg_terminate_backend($1)", pid)  # idle in the pool
            await asyncio.sleep(0.1)
            async with db.transaction() as uow:
                assert await uow.fetchval("SELECT pg_backend_pid()") != pid
            with pytest.raises(ConnectionLost):  # mid-transaction: typed
                async with db.transaction() as uow:
                    pid = await uow.fetchval("SELECT pg_backend_pid()")
                    await killer.execute("SELECT pg_terminate_backend($1)", pid)
                    await uow.fetchval("SELECT 1")
            async with db.transaction() as uow:  # healthy afterwards
                assert await uow.fetchval("SELECT 1") == 1
    finally:
        await killer.close()


def containers_labelled(value: str | None = None) -> list[str]:
    label = OWNER_LABEL if value is None else f"{OWNER_LABEL}={value}"
    out = subprocess.run(["docker", "ps", "-aq", "--filter", f"label={label}"],
                         capture_output=True, text=True, check=True).stdout
    return out.split()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_killed_run_leaves_no_container(tmp_path: Path, sig: signal.Signals) -> None:
    container_id = start_and_kill(tmp_path, sig, PGACCESS_TEST_SERVER="container")
    deadline = time.monotonic() + 30
    while any(c and container_id.startswith(c) for c in containers_labelled()):
        assert time.monotonic() < deadline, f"container {container_id[:12]} survived {sig.name}"
        time.sleep(0.2)


def test_image_script_reuses_a_built_image() -> None:
    script = ["bash", str(ROOT / "scripts/build-test-image.sh")]
    first = subprocess.run(script, capture_output=True, text=True, timeout=900)  # builds if missing
    assert first.returncode == 0, first.stdout + first.stderr
    start = time.monotonic()
    again = subprocess.run(script, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "already built" in again.stdout, again.stdout + again.stderr
    assert time.monotonic() - start < 10
