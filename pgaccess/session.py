"""What every use of a pooled connection starts from: a clean session and its own tenant.

A pooled PostgreSQL session passes from one unit of work to the next, and the SQL run in one
of them may be hostile (an injection bug). So pgaccess never trusts the state a connection
comes back with, and never tries to recognise which statements changed it: every unit of
work, every autocommit statement and every raw checkout begins with one simple query that

* resets the session: ``SET SESSION AUTHORIZATION DEFAULT; RESET ALL; CLOSE ALL;
  UNLISTEN *; DISCARD TEMP; DISCARD SEQUENCES`` - settings, roles, cursors, listeners,
  temporary relations, functions, types and sequences;
* after a checkout that ran SQL text from outside pgaccess (anything but the SQL pgaccess
  generates and the project's named-query files), or always with
  ``check_prepared_statements="always"``: releases session advisory locks, re-seeds
  ``random()`` from the server's strong random source, and fails if the
  session holds a prepared statement made with SQL ``PREPARE`` (the driver's own are
  protocol-level) - the way to hijack one of the driver's statement names. The connection
  is then terminated and the unit of work gets another. These are ``SELECT``s, which
  cost the server far more than the utility statements of the rest (the guard reads every
  prepared statement of the session);
* sets the tenant (``SET``, never a value taken from input: a validated UUID), or the
  empty tenant, which matches no row.

This is the unit of work's *first* round trip, together with its ``BEGIN`` - no extra round
trip. The reset runs in a transaction of its own, committed before the unit of work's
``BEGIN``: inside the unit of work's transaction a ``ROLLBACK`` (a raw one, or PostgreSQL's
answer to the ``COMMIT`` of a failed transaction) would undo it and bring back what the
previous user left. An autocommit statement whose SQL was not built at run time may open
with the tenant alone when nothing else ran since the last full reset
(:func:`tenant_only_opening_sql`).

Settings that a ``RESET ALL`` would restore to the *role's* defaults (which the app role can
change for itself with ``ALTER ROLE ... SET``) are pinned as connection startup parameters,
which take precedence over role and database defaults (see :func:`pinned_settings`). Behind
a transaction pooler, which refuses startup parameters, they travel with every ``BEGIN``.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Mapping
from uuid import UUID

import asyncpg

from .config import Settings
from .errors import TransactionError

RESET_SESSION = (
    "SET SESSION AUTHORIZATION DEFAULT; RESET ALL; CLOSE ALL; UNLISTEN *; "
    "DISCARD TEMP; DISCARD SEQUENCES"
)

# Raises 42704 (with this text in the message) when the session holds a prepared statement
# made with SQL PREPARE (the driver only makes protocol-level ones), or when the number of
# protocol-level ones is not the driver's (one of them was deallocated: its type information
# or result may have been replaced under it). No helper function is needed in the database,
# so this works before any pgaccess schema exists.
TAMPERED_MARKER = "pgaccess: the prepared statements of this session were tampered with"


def prepared_statement_guard(expected: int | None) -> str:
    """The guard for a session where the driver holds ``expected`` prepared statements
    (None: only look for statements made by SQL)."""
    count = "" if expected is None else f" OR s.by_driver <> {int(expected)}"
    return (
        f"SELECT pg_catalog.current_setting('{TAMPERED_MARKER}') FROM (SELECT "
        "count(*) FILTER (WHERE from_sql) AS by_sql, count(*) FILTER (WHERE NOT from_sql) AS "
        f"by_driver FROM pg_catalog.pg_prepared_statements) s WHERE s.by_sql > 0{count}"
    )


def is_tampered(exc: BaseException) -> bool:
    """The opening found the session's prepared statements tampered with."""
    return isinstance(exc, asyncpg.UndefinedObjectError) and TAMPERED_MARKER in str(exc)

ISOLATION_SQL = {
    "read_committed": "READ COMMITTED",
    "repeatable_read": "REPEATABLE READ",
    "serializable": "SERIALIZABLE",
}

# Settings the app role could otherwise change for every future session of its own
# (ALTER ROLE pgaccess_app SET ...), and that change what its statements see or do.
_PINNED_DEFAULTS = {
    "row_security": "on",
    "default_transaction_read_only": "off",
    "default_transaction_isolation": "read committed",
    "default_transaction_deferrable": "off",
    "lock_timeout": "0",
    "temp_tablespaces": "",
    "idle_session_timeout": "0",
    "transform_null_equals": "off",
    "check_function_bodies": "on",
}


def pinned_settings(settings: Settings) -> dict[str, str]:
    """Startup parameters of every connection: they outrank ``ALTER ROLE ... SET`` and are
    what ``RESET ALL`` returns to. ``pg_temp`` is searched last, so a temporary relation can
    never shadow a table of the search path."""
    pinned = {
        **_PINNED_DEFAULTS,
        "search_path": f"{settings.search_path}, pg_temp",
        settings.tenant_setting: "",
        "application_name": settings.application_name,
        "statement_timeout": str(int(settings.statement_timeout * 1000)),
        "idle_in_transaction_session_timeout": str(
            int(settings.idle_in_transaction_session_timeout * 1000)
        ),
        "TimeZone": "UTC",
    }
    pinned.update(settings.server_settings)
    return pinned


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def set_local_all(values: Mapping[str, str]) -> str:
    """Transaction-local values for each setting: pinning where startup parameters are
    refused (one statement; ``set_config`` parses list values such as search_path)."""
    calls = ", ".join(
        f"pg_catalog.set_config({_literal(name)}, {_literal(value)}, true)"
        for name, value in values.items()
    )
    return f"SELECT {calls}"


@functools.lru_cache(maxsize=16)
def begin_sql(isolation: str, readonly: bool, deferrable: bool) -> str:
    """A fully explicit BEGIN: no session default decides isolation or read-only mode."""
    try:
        level = ISOLATION_SQL[isolation]
    except KeyError:
        raise TransactionError(
            f"unknown isolation {isolation!r}; use one of {sorted(ISOLATION_SQL)}"
        ) from None
    # DEFERRABLE only when asked: NOT DEFERRABLE is what the pinned default gives, and Citus
    # forwards an explicit one to its workers after its own first query, which they refuse.
    mode = "READ ONLY DEFERRABLE" if readonly and deferrable else "READ ONLY" if readonly else "READ WRITE"
    return f"BEGIN ISOLATION LEVEL {level} {mode}"


def tenant_value(settings: Settings, tenant: UUID | None, session_id: int) -> str:
    """What goes into the tenant setting: '' (no tenant), the UUID, or - with a signing key -
    ``<uuid>.<session id>.<ms since epoch>.<HMAC-SHA256>`` (the session id is what
    ``app.session_id()`` returns: the backend pid, or Citus's global pid), valid only on that
    backend and
    only in a transaction that starts within the database's allowed skew of that time
    (migration 0005), so a value read from ``pg_stat_activity`` cannot be replayed from
    another session or later on the same one."""
    if tenant is None:
        return ""
    text = str(tenant)
    if settings.tenant_signing_key is None:
        return text
    import hashlib
    import hmac

    payload = f"{text}.{session_id}.{int(time.time() * 1000)}"
    key = bytes.fromhex(settings.tenant_signing_key)
    return f"{payload}.{hmac.new(key, payload.encode(), hashlib.sha256).hexdigest()}"


_TENANT_VALUE = re.compile(r"[0-9a-f.-]*").fullmatch


def _set_tenant(tenant_setting: str, tenant: str, scope: str) -> str:
    """``SET [LOCAL] "prefix"."name" = '<tenant>'``: a utility statement, which the server
    runs without the parse analysis, plan and result rows of ``SELECT set_config(...)``
    (measured: ~20 us less server time per unit of work). ``tenant`` as for
    :func:`opening_sql`, checked here because it is inlined."""
    if _TENANT_VALUE(tenant) is None:  # never reached with pgaccess's own values
        raise ValueError(f"tenant value {tenant!r} is not pre-validated; it would be inlined")
    return f"{_set_prefix(tenant_setting, scope)}{tenant}'"


@functools.lru_cache(maxsize=16)
def _set_prefix(tenant_setting: str, scope: str) -> str:
    name = ".".join(f'"{part}"' for part in tenant_setting.split("."))
    return f"SET {scope}{name} = '"


def local_tenant_sql(tenant_setting: str, tenant: str, *, set_local: bool) -> str:
    """Set the tenant for the rest of the transaction; on Citus (``set_local``) with
    ``citus.propagate_set_commands = 'local'``, the only form its workers receive."""
    local = _set_tenant(tenant_setting, tenant, "LOCAL ")
    return f"SET LOCAL citus.propagate_set_commands = 'local'; {local}" if set_local else local


def tenant_only_opening_sql(tenant_setting: str, tenant: str) -> str:
    """The opening of an autocommit statement whose SQL was not built at run time, on a
    session where no such SQL ran since its last full reset (:func:`opening_sql`): the
    tenant only.

    Why the reset may be skipped there: every checkout that can run SQL built at run time
    (a unit of work, a raw statement, a raw pool connection) starts with the reset, and the
    checkout after one that did starts with the full reset (``Connection._pga_raw_sql``).
    What a session can carry here was left by pgaccess's generated statements and the
    project's named queries alone, with values bound: the session tenant (set again here),
    sequence values they drew (``lastval()``) and any session state a named query sets on
    purpose. None of it is readable by another statement of fixed text, and the reset
    removes it before anything else runs (tests/test_session.py). Not used with
    ``check_prepared_statements="always"``, the mode for stored code that builds SQL.
    """
    return _set_tenant(tenant_setting, tenant, "")


def opening_sql(
    *,
    begin: str | None,
    tenant_setting: str,
    tenant: str,
    local_settings: str = "",
    guard: int | None = None,
) -> str:
    """The first round trip: the reset, then ``begin`` (None: autocommit),
    ``local_settings`` and the tenant.

    ``guard`` (the number of statements the driver holds) is given after SQL built at run
    time ran on the session since its last opening (or always, with
    ``check_prepared_statements="always"``): the opening then also releases session
    advisory locks, re-seeds ``random()`` and runs the prepared-statement guard. Those are
    ``SELECT``s, the costly part of a reset (~17 us of server time for the first); the rest
    are utility statements. Only SQL built at run time can hijack a prepared statement or
    set the seed, and advisory locks are visible to every session in ``pg_locks`` anyway:
    what the lighter reset leaves (a session lock or a seed a named query set on purpose)
    is never another tenant's data.

    With ``begin`` the reset runs in a transaction of its own, committed before the unit of
    work's ``BEGIN`` (``BEGIN; <reset>; COMMIT; BEGIN ...``): inside the unit of work's
    transaction a ``ROLLBACK`` - an aborted ``COMMIT``, or one sent as raw SQL - would undo
    the reset and bring back what the previous user of the session left.

    ``tenant`` is '' or built by :func:`tenant_value` from a validated UUID: hex digits,
    dashes and dots only, checked here because it is inlined.
    """
    return (_opening_head(begin, guard, local_settings)
            + _set_tenant(tenant_setting, tenant, "LOCAL " if begin else ""))


# After SQL built at run time: release session advisory locks and re-seed random() from the
# server's strong random source (gen_random_uuid), never from a value in the query text,
# which every session of the role can read in pg_stat_activity.
_AFTER_RAW_SQL = (
    "SELECT pg_catalog.pg_advisory_unlock_all(), pg_catalog.setseed(("
    "pg_catalog.hashtextextended(pg_catalog.gen_random_uuid()::text, 0) % 281474976710656)"
    " / 281474976710656.0)"
)


@functools.lru_cache(maxsize=256)
def _opening_head(begin: str | None, guard: int | None, local_settings: str) -> str:
    """The opening's text up to the tenant value (per shape, built once)."""
    reset = RESET_SESSION
    if guard is not None:
        reset = f"{reset}; {_AFTER_RAW_SQL}; {prepared_statement_guard(guard)}"
    local = f"; {local_settings}" if local_settings else ""
    if not begin:  # the implicit transaction of the simple query commits the reset
        return f"{reset}{local}; "
    return f"BEGIN; {reset}; COMMIT; {begin}{local}; "


def citus_opening_sql(*, begin: str, tenant_setting: str, tenant: str,
                      local_settings: str = "", guard: int | None = None) -> tuple[str, str]:
    """A unit of work's opening on Citus, in two round trips: the reset (committed, with the
    empty tenant), then ``begin`` and the tenant as ``SET LOCAL`` with
    ``citus.propagate_set_commands = 'local'``, the only form Citus passes on to its
    workers. Two, because Citus replays the whole text of a query that ran ``SET LOCAL`` on
    each worker it then connects to: the reset's ``COMMIT`` must not travel with it."""
    reset = opening_sql(begin=None, tenant_setting=tenant_setting, tenant="", guard=guard)
    local = f"; {local_settings}" if local_settings else ""
    return reset, f"{begin}{local}; {local_tenant_sql(tenant_setting, tenant, set_local=True)}"


__all__ = [
    "ISOLATION_SQL",
    "RESET_SESSION",
    "TAMPERED_MARKER",
    "begin_sql",
    "citus_opening_sql",
    "is_tampered",
    "opening_sql",
    "pinned_settings",
    "prepared_statement_guard",
    "set_local_all",
    "tenant_only_opening_sql",
    "tenant_value",
]
