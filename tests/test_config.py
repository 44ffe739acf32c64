import pytest

from pgaccess import ConfigError, Settings
from pgaccess.config import redact, with_user


def test_defaults_are_valid() -> None:
    s = Settings()
    assert s.min_size <= s.max_size
    from pgaccess.session import pinned_settings

    pinned = pinned_settings(s)
    assert pinned["TimeZone"] == "UTC" and pinned["search_path"] == "public, pg_temp"
    assert pinned["app.tenant_id"] == "" and pinned["row_security"] == "on"
    with pytest.raises(ConfigError, match="pg_temp"):
        Settings(search_path="public, pg_temp")


def test_from_env_reads_and_overrides() -> None:
    env = {
        "DATABASE_URL": "postgresql://u:p@db:5432/app",
        "PGACCESS_POOL_MAX_SIZE": "20",
        "PGACCESS_ACQUIRE_TIMEOUT": "1.5",
        "PGACCESS_CHECK_ON_ACQUIRE": "yes",
        "PGACCESS_STATEMENT_CACHE_SIZE": "0",
    }
    s = Settings.from_env(env, min_size=2)
    assert (s.max_size, s.acquire_timeout, s.check_on_acquire, s.min_size) == (20, 1.5, True, 2)
    assert s.statement_cache_size == 0
    with pytest.raises(AttributeError):
        s.max_size = 3  # type: ignore[misc]  # frozen


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"DATABASE_URL": "mysql://x@y/z"}, "DATABASE_URL must start with postgresql://"),
        ({"DATABASE_URL": "postgresql://h:notaport/db"}, "DATABASE_URL is not a valid URL"),
        ({"DATABASE_URL": "postgresql:///db"}, "names no host"),
        ({"PGACCESS_POOL_MIN_SIZE": "5", "PGACCESS_POOL_MAX_SIZE": "2"}, "min_size must be <= max_size"),
        ({"PGACCESS_POOL_MAX_SIZE": "0"}, "PGACCESS_POOL_MAX_SIZE=0 is out of range"),
        ({"PGACCESS_ACQUIRE_TIMEOUT": "-1"}, "PGACCESS_ACQUIRE_TIMEOUT=-1.0 is out of range"),
        ({"PGACCESS_STATEMENT_TIMEOUT": "-5"}, "PGACCESS_STATEMENT_TIMEOUT"),
        ({"PGACCESS_IDLE_IN_TRANSACTION_TIMEOUT": "-1"}, "PGACCESS_IDLE_IN_TRANSACTION_TIMEOUT"),
        ({"PGACCESS_CONNECT_RETRY_BUDGET": "-1"}, "PGACCESS_CONNECT_RETRY_BUDGET"),
        ({"PGACCESS_SLOW_QUERY_MS": "abc"}, "not a valid float"),
        ({"PGACCESS_CHECK_ON_ACQUIRE": "maybe"}, "not a valid true/false"),
        ({"PGACCESS_STATEMENT_CACHE_SIZE": "-1"}, "PGACCESS_STATEMENT_CACHE_SIZE"),
        ({"PGACCESS_APPLICATION_NAME": "x" * 64}, "1..63 characters"),
        ({"PGACCESS_TENANT_SETTING": "tenant"}, "prefix.name"),
    ],
)
def test_bad_settings_raise_config_error_naming_the_variable(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    assert needle in str(info.value)


def test_redact_hides_password() -> None:
    assert redact("postgresql://u:secret@h/db") == "postgresql://u:***@h/db"
    assert "secret" not in redact("postgresql://u:secret@h/db")
    assert with_user("postgresql://u:p@h:5/db?x=1", "app") == "postgresql://app@h:5/db?x=1"
