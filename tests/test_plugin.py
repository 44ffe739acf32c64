"""The pytest plugin as another project sees it: plain `pytest`, strict and auto modes, the
fixtures the README names, and no throwaway server left behind by a killed run."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pgaccess.project import OPTION_NAMES

ROOT = Path(__file__).resolve().parent.parent


def project(tmp_path: Path, ini: str, test: str) -> Path:
    """A project whose [tool.pgaccess] is the reference schema; ``ini`` adds pytest options."""
    (tmp_path / "pyproject.toml").write_text(textwrap.dedent(f"""
        [tool.pgaccess]
        migrations = "{ROOT / 'migrations'}"
        seeders = "{ROOT / 'seeders'}"
        sql = "{ROOT / 'sql'}"

        [tool.pytest.ini_options]
    """) + ini)
    (tmp_path / "test_it.py").write_text(textwrap.dedent(test))
    return tmp_path


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PGACCESS_TEST_DSN", "PGACCESS_TEST_SERVER", "PYTEST_ADDOPTS")}
    return {**env, "PYTHONPATH": str(ROOT), **extra}


def run_pytest(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
                          cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


ISOLATION_TEST = """
    import pytest
    from pgaccess.reference import ProjectRepository

    @pytest.mark.asyncio
    async def test_projects_are_per_tenant(db, tenant, other_tenant, as_tenant):
        with as_tenant(tenant):
            async with db.transaction() as uow:
                await uow.repo(ProjectRepository).insert(name="mine")
        async with db.transaction(tenant=other_tenant) as uow:
            assert not await uow.repo(ProjectRepository).find_where(name="mine")
        async with db.transaction(tenant=tenant) as uow:
            assert len(await uow.repo(ProjectRepository).find_where(name="mine")) == 1
"""


@pytest.mark.parametrize("mode", ["", "strict", "auto"])
def test_plain_pytest_in_each_asyncio_mode_without_warnings(tmp_path: Path, pg_dsn: str, mode: str) -> None:
    # No asyncio option but the mode (none at all for ""): the plugin needs nothing more.
    ini = f'asyncio_mode = "{mode}"\n' if mode else ""
    r = run_pytest(project(tmp_path, ini, ISOLATION_TEST), environment(PGACCESS_TEST_DSN=pg_dsn),
                   "-W", "error", "-rw")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "1 passed" in out and "warning" not in out.lower(), out


def test_every_fixture_the_readme_names_exists(tmp_path: Path) -> None:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Testing your own project"):]
    paragraph = section[section.index("Fixtures:"):].split("\n\n")[0]
    # The paragraph may also name [tool.pgaccess] keys (test_tenants...): those are not fixtures.
    named = set(re.findall(r"`([a-z_]+)`", paragraph)) - set(OPTION_NAMES)
    assert {"db", "tenant", "other_tenant", "as_tenant"} <= named, paragraph
    r = run_pytest(project(tmp_path, "", "def test_nothing(): pass\n"), environment(), "--fixtures")
    assert r.returncode == 0, r.stdout + r.stderr
    listed = set(re.findall(r"^([a-z_]+)(?: \[[a-z]+ scope\])? -- ", r.stdout, re.MULTILINE))
    assert named <= listed, f"README names fixtures the plugin lacks: {sorted(named - listed)}"


WAITING_TEST = """
    import os, pathlib, time

    def test_wait(pg_server):
        where = pg_server.cluster.directory if pg_server.cluster else pg_server.container.id
        pathlib.Path(os.environ["READY_FILE"]).write_text(str(where))
        time.sleep(300)
"""


def start_and_kill(tmp_path: Path, sig: signal.Signals, **env: str) -> str:
    """Run a session that starts a throwaway server, kill it with ``sig`` once the server is
    up; return the server's directory (or container id)."""
    ready = tmp_path / "ready"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-s"],
        cwd=project(tmp_path, "", WAITING_TEST), env=environment(READY_FILE=str(ready), **env),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not ready.exists() or not ready.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the session never started its server:\n{proc.communicate()[0]}")
            time.sleep(0.1)
        proc.send_signal(sig)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
    return ready.read_text()


def processes_mentioning(text: str) -> list[str]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{pid}: {cmdline}")
    return found


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_killed_run_leaves_no_throwaway_cluster(tmp_path: Path, sig: signal.Signals) -> None:
    directory = start_and_kill(tmp_path, sig, PGACCESS_TEST_SERVER="local")
    deadline = time.monotonic() + 30
    while Path(directory).exists() or processes_mentioning(directory):
        assert time.monotonic() < deadline, (
            f"{directory} still there {time.monotonic() - deadline + 30:.0f} s after {sig.name}: "
            f"{processes_mentioning(directory)}")
        time.sleep(0.2)
