"""``pgaccess init``: scaffold a working project, never overwriting a file.

Writes the ``[tool.pgaccess]`` table (a new ``pyproject.toml``, or appended to an existing one
that has no such table), a first migration (a tenant table and a tenant-owned table under
RLS), a named query, row classes and repositories in the project's package (an existing one
is used when there is exactly one), a seeder, a conftest and a passing tenant-isolation
test. Files that exist are kept and reported as such.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from ..errors import ConfigError

_PACKAGE = re.compile(r"^[a-z_][a-z0-9_]*$")
_NOT_PACKAGES = {"tests", "test", "migrations", "sql", "seeders", "docs", "build", "dist"}


@dataclass
class InitReport:
    root: Path
    package: str
    created: list[Path] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)
    updated: list[Path] = field(default_factory=list)

    def rows(self) -> list[tuple[str, str]]:
        out = [(str(p.relative_to(self.root)), "created") for p in self.created]
        out += [(str(p.relative_to(self.root)), "updated") for p in self.updated]
        out += [(str(p.relative_to(self.root)), "kept (exists)") for p in self.kept]
        return out

    def as_json(self) -> dict[str, object]:
        return {"root": str(self.root), "package": self.package,
                "files": [{"path": p, "action": a} for p, a in self.rows()]}


def find_package(root: Path, name: str | None) -> tuple[str, Path]:
    """(package name, its directory): ``name``, else the one package next to pyproject.toml
    (or under src/), else a new package named after the directory."""
    if name is not None:
        if not _PACKAGE.match(name):
            raise ConfigError(f"--package {name!r} must be a lower-case Python identifier")
        for base in (root, root / "src"):
            if (base / name / "__init__.py").is_file():
                return name, base / name
        return name, root / name
    found = [d for base in (root, root / "src") if base.is_dir() for d in sorted(base.iterdir())
             if (d / "__init__.py").is_file() and d.name not in _NOT_PACKAGES
             and _PACKAGE.match(d.name)]
    if len(found) > 1:
        raise ConfigError("several packages here (" + ", ".join(d.name for d in found)
                          + "): name the one to use with --package")
    if found:
        return found[0].name, found[0]
    derived = re.sub(r"[^a-z0-9_]+", "_", root.resolve().name.lower()).strip("_") or "app"
    if derived[0].isdigit():
        derived = f"app_{derived}"
    return derived, root / derived


def _template(name: str) -> str:
    return (resources.files(__name__) / "templates" / f"{name}.tmpl").read_text(encoding="utf-8")


def _pgaccess_table(package: str) -> str:
    return (
        "[tool.pgaccess]\n"
        "# Read by every `pgaccess` command, the pytest plugin and pgaccess.project;\n"
        "# PGACCESS_* environment variables and command-line flags override it (`pgaccess config`).\n"
        'migrations = "migrations"\n'
        'sql = "sql"\n'
        'seeders = "seeders"\n'
        f'rows = "{package}.rows"\n'
        'app_role = "pgaccess_app"\n'
        'admin_role = "pgaccess_admin"\n'
        'tenant_table = "tenants"\n'
        'signing_key_variable = "PGACCESS_TENANT_SIGNING_KEY"\n'
    )


def _pyproject(root: Path, package: str) -> str:
    dist = root.resolve().name.lower().replace("_", "-") or package
    return (
        "[build-system]\n"
        'requires = ["setuptools>=68"]\n'
        'build-backend = "setuptools.build_meta"\n\n'
        "[project]\n"
        f'name = "{dist}"\n'
        'version = "0.1.0"\n'
        'requires-python = ">=3.11"\n'
        'dependencies = ["pgaccess"]\n\n'
        "[project.optional-dependencies]\n"
        'test = ["pgaccess[test]"]\n\n'
        "[tool.setuptools]\n"
        f'packages = ["{package}"]\n\n'
        "[tool.pytest.ini_options]\n"
        'testpaths = ["tests"]\n'
        'pythonpath = ["."]\n'
        'asyncio_mode = "auto"\n'
        'asyncio_default_fixture_loop_scope = "function"\n\n'
        + _pgaccess_table(package)
    )


def scaffold(root: Path, package: str | None = None) -> InitReport:
    """Write the project's files under ``root``; existing files are kept."""
    root = root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    name, package_dir = find_package(root, package)
    report = InitReport(root, name)
    pyproject = root / "pyproject.toml"
    if not pyproject.exists():
        pyproject.write_text(_pyproject(root, name), encoding="utf-8")
        report.created.append(pyproject)
    else:
        try:
            data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{pyproject}: not valid TOML ({exc}); fix it and run init again") from None
        if "pgaccess" in data.get("tool", {}):
            report.kept.append(pyproject)
        else:
            with pyproject.open("a", encoding="utf-8") as fh:
                fh.write("\n" + _pgaccess_table(name))
            report.updated.append(pyproject)

    def write(path: Path, text: str) -> None:
        if path.exists():
            report.kept.append(path)
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        report.created.append(path)

    def fill(text: str) -> str:
        return (text.replace("{package}", name).replace("{app_role}", "pgaccess_app")
                .replace("{admin_role}", "pgaccess_admin"))

    migrations = root / "migrations"
    if migrations.is_dir() and any(migrations.glob("*.sql")):
        report.kept.append(migrations)
    else:
        write(migrations / "0001_tenants_and_notes.sql", fill(_template("0001_tenants_and_notes.sql")))
    write(root / "sql" / "notes.sql", _template("notes.sql"))
    write(root / "seeders" / "notes.py", _template("seeder.py"))
    write(package_dir / "__init__.py", "")
    write(package_dir / "rows.py", _template("rows.py"))
    write(package_dir / "repositories.py", _template("repositories.py"))
    write(root / "tests" / "conftest.py", _template("conftest.py"))
    write(root / "tests" / "test_tenant_isolation.py", fill(_template("test_tenant_isolation.py")))
    return report
