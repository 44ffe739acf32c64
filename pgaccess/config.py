"""Typed, frozen settings read from the environment and overridable in code.

``Settings.from_env()`` reads ``DATABASE_URL`` and the ``PGACCESS_*`` variables;
``settings.replace(max_size=20)`` returns a changed copy. Every value is validated on
construction and a bad one raises :class:`~pgaccess.errors.ConfigError` naming the variable
and the accepted range.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .errors import ConfigError

_SCHEMA = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

_ENV: dict[str, str] = {
    "dsn": "DATABASE_URL",
    "admin_dsn": "PGACCESS_ADMIN_URL",
    "min_size": "PGACCESS_POOL_MIN_SIZE",
    "max_size": "PGACCESS_POOL_MAX_SIZE",
    "acquire_timeout": "PGACCESS_ACQUIRE_TIMEOUT",
    "statement_timeout": "PGACCESS_STATEMENT_TIMEOUT",
    "idle_in_transaction_session_timeout": "PGACCESS_IDLE_IN_TRANSACTION_TIMEOUT",
    "application_name": "PGACCESS_APPLICATION_NAME",
    "connect_timeout": "PGACCESS_CONNECT_TIMEOUT",
    "connect_retry_budget": "PGACCESS_CONNECT_RETRY_BUDGET",
    "max_lifetime": "PGACCESS_MAX_LIFETIME",
    "check_on_acquire": "PGACCESS_CHECK_ON_ACQUIRE",
    "leak_threshold": "PGACCESS_LEAK_THRESHOLD",
    "slow_query_ms": "PGACCESS_SLOW_QUERY_MS",
    "statement_cache_size": "PGACCESS_STATEMENT_CACHE_SIZE",
    "tenant_setting": "PGACCESS_TENANT_SETTING",
    "tenant_signing_key": "PGACCESS_TENANT_SIGNING_KEY",
    "search_path": "PGACCESS_SEARCH_PATH",
}


@dataclass(frozen=True, slots=True)
class Settings:
    """Connection and pool settings. Times are in seconds unless the name says ms."""

    dsn: str | None = None
    admin_dsn: str | None = None
    min_size: int = 1
    max_size: int = 10
    acquire_timeout: float = 5.0
    statement_timeout: float = 30.0
    idle_in_transaction_session_timeout: float = 60.0
    application_name: str = "pgaccess"
    connect_timeout: float = 5.0
    connect_retry_budget: float = 10.0
    max_lifetime: float = 1800.0
    check_on_acquire: bool = False
    leak_threshold: float = 0.0
    slow_query_ms: float = 200.0
    statement_cache_size: int = 100
    tenant_setting: str = "app.tenant_id"
    # Hex key for the signed tenant context (migration 0003); None: plain tenant ids.
    tenant_signing_key: str | None = field(default=None, repr=False)
    # Schemas of the application's tables, pinned for every connection (pg_temp is
    # always appended last: see pgaccess.session).
    search_path: str = "public"
    server_settings: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("dsn", "admin_dsn"):
            value = getattr(self, name)
            if value is not None:
                validate_dsn(value, _ENV[name])
        _check_range("min_size", self.min_size, 0, 10_000)
        _check_range("max_size", self.max_size, 1, 10_000)
        if self.min_size > self.max_size:
            raise ConfigError(
                f"{_ENV['min_size']}={self.min_size} is greater than "
                f"{_ENV['max_size']}={self.max_size}; min_size must be <= max_size"
            )
        for name in (
            "acquire_timeout",
            "connect_timeout",
        ):
            _check_range(name, getattr(self, name), 0.001, 3600)
        for name in (
            "statement_timeout",
            "idle_in_transaction_session_timeout",
            "connect_retry_budget",
            "max_lifetime",
            "leak_threshold",
            "slow_query_ms",
        ):
            _check_range(name, getattr(self, name), 0, 10**9)
        _check_range("statement_cache_size", self.statement_cache_size, 0, 100_000)
        if not self.application_name or len(self.application_name) > 63:
            raise ConfigError(
                f"{_ENV['application_name']} must be 1..63 characters, "
                f"got {self.application_name!r}"
            )
        if self.tenant_signing_key is not None:
            try:
                if len(bytes.fromhex(self.tenant_signing_key)) < 16:
                    raise ValueError
            except ValueError:
                raise ConfigError(
                    f"{_ENV['tenant_signing_key']} must be at least 16 bytes as hex "
                    "(e.g. `python -c 'import secrets; print(secrets.token_hex(32))'`)"
                ) from None
        if self.tenant_setting.count(".") != 1 or not all(
            part.isidentifier() for part in self.tenant_setting.split(".")
        ):
            raise ConfigError(
                f"{_ENV['tenant_setting']} must look like 'prefix.name' "
                f"(a custom PostgreSQL setting), got {self.tenant_setting!r}"
            )
        schemas = [part.strip() for part in self.search_path.split(",")]
        if not all(_SCHEMA.match(part) for part in schemas) or "pg_temp" in schemas:
            raise ConfigError(
                f"{_ENV['search_path']} must be a comma-separated list of lower-case schema "
                f"names without pg_temp (it is always searched last), got {self.search_path!r}"
            )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read settings from ``env`` (default ``os.environ``); keyword overrides win."""
        source = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            var = _ENV.get(f.name)
            if var is None or var not in source or source[var] == "":
                continue
            values[f.name] = _parse(f.name, var, source[var], f.default)
        values.update(overrides)
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def _parse(name: str, var: str, raw: str, default: Any) -> Any:
    try:
        if isinstance(default, bool):
            lowered = raw.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
    except ValueError:
        kind = "true/false" if isinstance(default, bool) else type(default).__name__
        raise ConfigError(f"{var}={raw!r} is not a valid {kind} (setting {name})") from None
    return raw


def _check_range(name: str, value: Any, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{_ENV[name]} must be a number in [{low}, {high}], got {value!r}")
    if not low <= value <= high:
        raise ConfigError(f"{_ENV[name]}={value} is out of range; accepted: {low} .. {high}")


def validate_dsn(dsn: str, var: str = "DATABASE_URL") -> str:
    """Check that ``dsn`` is a postgresql:// URL; return it unchanged."""
    try:
        parts = urlsplit(dsn)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise ConfigError(f"{var} is not a valid URL ({exc}): {redact(dsn)}") from None
    if parts.scheme not in ("postgresql", "postgres"):
        raise ConfigError(
            f"{var} must start with postgresql:// (got scheme {parts.scheme!r}); "
            "example: postgresql://user:password@host:5432/dbname"
        )
    if not parts.netloc and "host=" not in parts.query:
        raise ConfigError(f"{var} names no host: {redact(dsn)}")
    return dsn


def redact(dsn: str) -> str:
    """The DSN with its password replaced by ``***``, for messages and logs."""
    try:
        parts = urlsplit(dsn)
    except ValueError:
        return "<unparsable DSN>"
    if parts.password is None:
        return dsn
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def with_user(dsn: str, user: str, password: str | None = None) -> str:
    """The same DSN logged in as another role (used to derive app/admin DSNs in dev and tests)."""
    parts = urlsplit(dsn)
    host = parts.netloc.rsplit("@", 1)[-1]
    cred = user if password is None else f"{user}:{password}"
    return urlunsplit(parts._replace(netloc=f"{cred}@{host}"))


def with_database(dsn: str, database: str) -> str:
    """The same DSN pointed at another database."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + database))
