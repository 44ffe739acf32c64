"""[tool.pgaccess]: resolution and precedence, `pgaccess config`, `pgaccess init`, library
logging, and the command line's messages for a stopped cluster and a missing reference schema."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from pgaccess.errors import ConfigError
from pgaccess.project import load_project
from pgaccess.scaffold import scaffold


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    base = {k: v for k, v in os.environ.items() if not k.startswith("PGACCESS_") and k != "DATABASE_URL"}
    return subprocess.run([sys.executable, "-m", "pgaccess", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=60, env={**base, **(env or {})})


def test_precedence_flags_env_pyproject_defaults(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[tool.pgaccess]\nmigrations = "db/migrations"\nsql = "db/queries"\napp_role = "inv_app"\n'
        'test_tenants = ["slug=acme", "slug=globex"]\n')
    sub = tmp_path / "pkg"
    sub.mkdir()
    p = load_project({"sql": "other"}, start=sub, env={"PGACCESS_MIGRATIONS": "env_mig"})
    assert p.pyproject == tmp_path / "pyproject.toml" and p.root == tmp_path
    assert p.sql == sub.resolve() / "other" and p.sources["sql"] == "flag"
    assert p.migrations == sub.resolve() / "env_mig" and p.sources["migrations"] == "env PGACCESS_MIGRATIONS"
    assert p.app_role == "inv_app" and p.sources["app_role"] == "pyproject [tool.pgaccess]"
    assert p.seeders == tmp_path / "seeders" and p.sources["seeders"] == "default"
    assert p.test_tenants == ("slug=acme", "slug=globex")
    assert p.roles == ("inv_app", "pgaccess_admin")


@pytest.mark.parametrize(("table", "message"), [
    ('migratons = "x"', "unknown key(s) in [tool.pgaccess]: migratons"),
    ('app_role = "App-Role"', "app_role (from pyproject [tool.pgaccess]) must be a lower-case SQL identifier"),
    ('core_schema = "maybe"', "core_schema (from pyproject [tool.pgaccess]) must be true or false"),
    ('app_role = "x"\nadmin_role = "x"', "must be different roles"),
    ("migrations = 3", "must be a directory path"),
])
def test_bad_configuration_is_a_config_error(tmp_path: Path, table: str, message: str) -> None:
    (tmp_path / "pyproject.toml").write_text(f"[tool.pgaccess]\n{table}\n")
    with pytest.raises(ConfigError) as exc:
        load_project(start=tmp_path, env={})
    assert message in str(exc.value)


def test_signing_key_comes_from_the_configured_variable(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[tool.pgaccess]\nsigning_key_variable = "INVOICING_KEY"\n')
    p = load_project(start=tmp_path, env={})
    assert p.settings({"INVOICING_KEY": "ab" * 32}).tenant_signing_key == "ab" * 32
    assert p.settings({}).tenant_signing_key is None


def test_config_command_table_and_json(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[tool.pgaccess]\nsql = "db/queries"\n')
    out = cli("config", cwd=tmp_path, env={"PGACCESS_TENANT_TABLE": "organisations"})
    assert out.returncode == 0, out.stderr
    assert f"sql                   {tmp_path / 'db/queries'}" in out.stdout
    assert "organisations" in out.stdout and "env PGACCESS_TENANT_TABLE" in out.stdout
    data = json.loads(cli("config", "--json", cwd=tmp_path).stdout)
    assert data["values"]["sql"] == {"value": str(tmp_path / "db/queries"), "source": "pyproject [tool.pgaccess]"}
    assert data["values"]["app_role"] == {"value": "pgaccess_app", "source": "default"}
    bad = cli("config", cwd=tmp_path, env={"PGACCESS_CORE_SCHEMA": "perhaps"})
    assert bad.returncode == 1 and "PGACCESS_CORE_SCHEMA" in bad.stderr


def test_init_in_an_empty_directory_and_again(tmp_path: Path) -> None:
    root = tmp_path / "billing"
    report = scaffold(root)
    assert report.package == "billing"
    names = sorted(str(p.relative_to(root)) for p in report.created)
    assert names == ["billing/__init__.py", "billing/repositories.py", "billing/rows.py",
                     "migrations/0001_tenants_and_notes.sql", "pyproject.toml", "seeders/notes.py",
                     "sql/notes.sql", "tests/conftest.py", "tests/test_tenant_isolation.py"]
    assert "from billing.repositories import NoteRepository" in (root / "tests/test_tenant_isolation.py").read_text()
    project = load_project(start=root, env={})
    assert project.rows == "billing.rows" and project.sources["migrations"] == "pyproject [tool.pgaccess]"
    (root / "sql" / "notes.sql").write_text("-- mine\n")
    again = scaffold(root)
    assert again.created == [] and (root / "sql" / "notes.sql").read_text() == "-- mine\n"


def test_init_next_to_an_existing_package(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "shop"\n')
    (tmp_path / "src" / "shop").mkdir(parents=True)
    (tmp_path / "src" / "shop" / "__init__.py").write_text("VERSION = 1\n")
    (tmp_path / "src" / "shop" / "rows.py").write_text("# the shop's own\n")
    out = cli("init", "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    files = {f["path"]: f["action"] for f in json.loads(out.stdout)["files"]}
    assert files["pyproject.toml"] == "updated" and files["src/shop/rows.py"] == "kept (exists)"
    assert files["src/shop/repositories.py"] == "created"
    text = (tmp_path / "pyproject.toml").read_text()
    assert text.startswith('[project]\nname = "shop"\n') and 'rows = "shop.rows"' in text
    (tmp_path / "src" / "other").mkdir()
    (tmp_path / "src" / "other" / "__init__.py").write_text("")
    out = cli("init", cwd=tmp_path)
    assert out.returncode == 1 and "--package" in out.stderr


def test_library_logging_is_silent_and_never_on_stdout(tmp_path: Path) -> None:
    script = (
        "from pgaccess.log import get_logger\n"
        "get_logger('pool').warning('pool_opened', dsn='x')\n"
        "import logging, io\n"
        "stream = io.StringIO()\n"
        "logging.basicConfig(stream=stream, level=logging.INFO, format='%(name)s %(message)s')\n"
        "get_logger('pool').info('pool_opened', size=2)\n"
        "print(repr(stream.getvalue()))\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert out.stderr == ""
    assert out.stdout.strip() == repr("pgaccess.pool pool_opened size=2\n")


def test_library_logging_goes_through_structlog_when_the_app_configured_it() -> None:
    script = (
        "import structlog\n"
        "structlog.configure(processors=[structlog.processors.KeyValueRenderer(key_order=['event'])],"
        " logger_factory=structlog.PrintLoggerFactory())\n"
        "from pgaccess.log import get_logger\n"
        "get_logger('pool').warning('pool_opened', size=2)\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == "event='pool_opened' size=2", out


def test_stdlib_records_carry_the_fields(caplog: pytest.LogCaptureFixture) -> None:
    from pgaccess.log import get_logger

    with caplog.at_level(logging.DEBUG, logger="pgaccess"):
        get_logger("migrate").info("migrate", message="applied 0001")
    record = caplog.records[-1]
    assert record.name == "pgaccess.migrate" and record.getMessage() == "migrate message=applied 0001"
    assert record.pgaccess == {"message": "applied 0001"}  # type: ignore[attr-defined]


def test_cli_log_level_and_stderr(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    out = cli("migrate", "--dir", "m", "lint", "--files-only", cwd=tmp_path, env={"PGACCESS_LOG_LEVEL": "loud"})
    assert out.returncode == 1 and "PGACCESS_LOG_LEVEL='LOUD'" in out.stderr


def test_stopped_dev_cluster_says_to_start_it(tmp_path: Path) -> None:
    socket_dir = tmp_path / ".pgaccess" / "socket"
    socket_dir.mkdir(parents=True)
    dsn = f"postgresql://postgres@/pgaccess_dev?host={socket_dir}&port=5432"
    out = cli("migrate", "status", cwd=tmp_path, env={"DATABASE_URL": dsn})
    assert out.returncode == 1
    assert "run `pgaccess devdb start`" in out.stderr and "FileNotFoundError" not in out.stderr


def test_demo_outside_a_checkout_says_what_it_needs_before_starting(tmp_path: Path) -> None:
    out = cli("demo", cwd=tmp_path)
    assert out.returncode == 1 and "nothing was started" in out.stderr and "pgaccess init" in out.stderr
    assert not (tmp_path / ".pgaccess").exists()


def test_database_seeder_is_the_seed_runner() -> None:
    from pgaccess.seed import DatabaseSeeder, SeedRunner

    assert DatabaseSeeder is SeedRunner


@pytest.mark.parametrize("command", ["migrate", "seed", "queries", "health", "devdb", "demo", "config", "init"])
def test_every_help_ends_with_an_example(command: str, tmp_path: Path) -> None:
    out = cli(command, "--help", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "example:" in out.stdout.strip().splitlines()[-2:][0] or "example:" in out.stdout.rsplit("\n\n", 1)[-1]
