"""The project's pgaccess configuration: ``[tool.pgaccess]`` in its ``pyproject.toml``.

Every command, the pytest plugin and :func:`open_database` read the same values. Each value
comes from, in order of precedence: a command-line flag (or keyword override), an
environment variable, the ``[tool.pgaccess]`` table, the default. ``pgaccess config`` prints
the resolved values and where each one came from.

The project is the nearest ``pyproject.toml`` at or above the working directory (or the
file or directory ``PGACCESS_PROJECT`` names). Relative paths in the table are relative to
that file's directory; relative paths given as flags or environment variables are relative
to the working directory.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError

if TYPE_CHECKING:
    from .config import Settings
    from .database import Database

_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_TABLE = re.compile(r"^([a-z_][a-z0-9_]{0,62}\.)?[a-z_][a-z0-9_]{0,62}$")
_VARIABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class Option:
    name: str
    env: str
    default: Any
    kind: str  # path, text, ident, table, variable, bool, list, module
    help: str


OPTIONS: tuple[Option, ...] = (
    Option("migrations", "PGACCESS_MIGRATIONS", "migrations", "path",
           "the project's migrations directory (applied after pgaccess's core schema)"),
    Option("sql", "PGACCESS_SQL", "sql", "path", "named SQL directory"),
    Option("seeders", "PGACCESS_SEEDERS", "seeders", "path", "seeders directory"),
    Option("rows", "PGACCESS_ROWS", None, "module",
           "module whose dataclasses are the row classes (-- row: Name)"),
    Option("app_role", "PGACCESS_APP_ROLE", "pgaccess_app", "ident",
           "the role services log in as (RLS applies)"),
    Option("admin_role", "PGACCESS_ADMIN_ROLE", "pgaccess_admin", "ident",
           "the role of the system context (cross-tenant jobs, seeders)"),
    Option("tenant_table", "PGACCESS_TENANT_TABLE", "tenants", "table",
           "the project's tenant table (test fixtures create tenants in it)"),
    Option("tenant_schema_prefix", "PGACCESS_TENANT_SCHEMA_PREFIX", "tenant_", "ident",
           "prefix of per-tenant schemas (migrations/tenant/)"),
    Option("signing_key_variable", "PGACCESS_SIGNING_KEY_VARIABLE", "PGACCESS_TENANT_SIGNING_KEY",
           "variable", "environment variable holding the signed tenant context's key"),
    Option("seed_env", "PGACCESS_ENV", "development", "text", "environment given to seeders"),
    Option("test_tenants", "PGACCESS_TEST_TENANTS", (), "list",
           "existing tenants for the tenant/other_tenant fixtures (column=value or key); "
           "empty: two new tenants are created"),
    Option("core_schema", "PGACCESS_CORE_SCHEMA", True, "bool",
           "apply pgaccess's own migration set (roles, tenant functions) before the project's"),
)
OPTION_NAMES = tuple(o.name for o in OPTIONS)


@dataclass(frozen=True)
class ProjectConfig:
    """Resolved values; ``sources[name]`` says where each came from."""

    root: Path
    pyproject: Path | None
    migrations: Path
    sql: Path
    seeders: Path
    rows: str | None
    app_role: str
    admin_role: str
    tenant_table: str
    tenant_schema_prefix: str
    signing_key_variable: str
    seed_env: str
    test_tenants: tuple[str, ...]
    core_schema: bool
    sources: Mapping[str, str] = field(default_factory=dict)

    @property
    def roles(self) -> tuple[str, str]:
        return self.app_role, self.admin_role

    def existing(self, name: str) -> Path | None:
        """The path option ``name`` if that directory exists."""
        path: Path = getattr(self, name)
        return path if path.is_dir() else None

    def signing_key(self, env: Mapping[str, str] | None = None) -> str | None:
        return (os.environ if env is None else env).get(self.signing_key_variable) or None

    def settings(self, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """``Settings.from_env`` with the signing key read from the configured variable."""
        from .config import Settings

        if "tenant_signing_key" not in overrides and (key := self.signing_key(env)):
            overrides["tenant_signing_key"] = key
        return Settings.from_env(env, **overrides)

    def as_rows(self) -> list[tuple[str, str, str]]:
        return [(name, _show(getattr(self, name)), self.sources.get(name, "default"))
                for name in OPTION_NAMES]

    def as_json(self) -> dict[str, Any]:
        return {
            "project": str(self.pyproject) if self.pyproject else None,
            "root": str(self.root),
            "values": {name: {"value": _plain(getattr(self, name)),
                              "source": self.sources.get(name, "default")}
                       for name in OPTION_NAMES},
        }


def find_pyproject(start: Path | None = None, env: Mapping[str, str] | None = None) -> Path | None:
    """``PGACCESS_PROJECT`` (a file or directory), else the nearest ``pyproject.toml`` upward."""
    source = os.environ if env is None else env
    if named := source.get("PGACCESS_PROJECT"):
        path = Path(named)
        path = path / "pyproject.toml" if path.is_dir() else path
        if not path.is_file():
            raise ConfigError(f"PGACCESS_PROJECT={named!r}: no such pyproject.toml")
        return path.resolve()
    here = (start or Path.cwd()).resolve()
    for directory in (here, *here.parents):
        candidate = directory / "pyproject.toml"
        if candidate.is_file():
            return candidate
    return None


def read_table(pyproject: Path) -> dict[str, Any]:
    """The ``[tool.pgaccess]`` table ({} when absent); unknown keys are an error."""
    try:
        data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{pyproject}: cannot read it ({exc})") from None
    table = data.get("tool", {}).get("pgaccess", {})
    if not isinstance(table, dict):
        raise ConfigError(f"{pyproject}: [tool.pgaccess] must be a table")
    unknown = sorted(set(table) - set(OPTION_NAMES))
    if unknown:
        raise ConfigError(
            f"{pyproject}: unknown key(s) in [tool.pgaccess]: {', '.join(unknown)}; "
            f"known: {', '.join(OPTION_NAMES)} (`pgaccess config` lists them)")
    return table


def load_project(
    flags: Mapping[str, Any] | None = None,
    *,
    start: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> ProjectConfig:
    """Resolve every option: ``flags`` (None values ignored) > environment > pyproject > default."""
    source = os.environ if env is None else env
    pyproject = find_pyproject(start, source)
    table = read_table(pyproject) if pyproject else {}
    root = pyproject.parent if pyproject else (start or Path.cwd()).resolve()
    cwd = (start or Path.cwd()).resolve()
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    given = {k: v for k, v in (flags or {}).items() if v is not None}
    unknown = sorted(set(given) - set(OPTION_NAMES))
    if unknown:
        raise ConfigError(f"unknown project option(s): {', '.join(unknown)}")
    for option in OPTIONS:
        if option.name in given:
            raw, origin, base = given[option.name], "flag", cwd
        elif source.get(option.env, "") != "":
            raw, origin, base = source[option.env], f"env {option.env}", cwd
        elif option.name in table:
            raw, origin, base = table[option.name], "pyproject [tool.pgaccess]", root
        else:
            raw, origin, base = option.default, "default", root
        values[option.name] = _convert(option, raw, origin, base)
        sources[option.name] = origin
    if values["app_role"] == values["admin_role"]:
        raise ConfigError("app_role and admin_role must be different roles "
                          f"(both are {values['app_role']!r})")
    return ProjectConfig(root=root, pyproject=pyproject, sources=sources, **values)


def _convert(option: Option, raw: Any, origin: str, base: Path) -> Any:
    where = f"{option.name} (from {origin})"
    if option.default is None and raw is None:
        return None
    if option.kind == "path":
        if not isinstance(raw, (str, os.PathLike)) or not str(raw):
            raise ConfigError(f"{where} must be a directory path, got {raw!r}")
        path = Path(raw).expanduser()
        return path if path.is_absolute() else base / path
    if option.kind == "bool":
        if isinstance(raw, bool):
            return raw
        lowered = str(raw).strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{where} must be true or false, got {raw!r}")
    if option.kind == "list":
        if isinstance(raw, str):
            return tuple(part.strip() for part in raw.split(",") if part.strip())
        if isinstance(raw, (list, tuple)) and all(isinstance(x, (str, int)) for x in raw):
            return tuple(str(x) for x in raw)
        raise ConfigError(f"{where} must be a list of strings, got {raw!r}")
    if not isinstance(raw, str) or not raw:
        raise ConfigError(f"{where} must be a non-empty string, got {raw!r}")
    pattern = {"ident": _IDENT, "table": _TABLE, "variable": _VARIABLE}.get(option.kind)
    if option.kind == "module" and not all(part.isidentifier() for part in raw.split(".")):
        raise ConfigError(f"{where} must be a dotted module name like 'myapp.rows', got {raw!r}")
    if pattern is not None and not pattern.match(raw):
        hint = {"ident": "a lower-case SQL identifier", "table": "a table name, optionally "
                "schema-qualified, in lower case", "variable": "an environment variable name"}
        raise ConfigError(f"{where} must be {hint[option.kind]}, got {raw!r}")
    return raw


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return ", ".join(value) or "(none)"
    if value is None:
        return "(none)"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    return value


def open_database(project: ProjectConfig | None = None, *, dsn: str | None = None,
                  admin_dsn: str | None = None, **settings: Any) -> Database:
    """A :class:`~pgaccess.Database` for the configured project: settings from the
    environment (signing key from ``signing_key_variable``), named SQL from ``sql``."""
    from .database import Database

    project = project or load_project()
    return Database(project.settings(**settings), dsn=dsn, admin_dsn=admin_dsn,
                    sql_dir=project.existing("sql"))

