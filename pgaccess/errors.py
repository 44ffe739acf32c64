"""The pgaccess error hierarchy.

Every error pgaccess raises derives from :class:`PgAccessError`. Errors that come from
PostgreSQL keep the asyncpg exception as ``__cause__`` and expose its SQLSTATE, so callers
can branch on a type (``except UniqueViolation``) instead of parsing messages.
"""

from __future__ import annotations

from typing import Any

import asyncpg


class PgAccessError(Exception):
    """Root of every error raised by pgaccess."""

    sqlstate: str | None = None


class ConfigError(PgAccessError, ValueError):
    """A setting is missing or out of range; the message names the variable and the range."""


class ConnectError(PgAccessError):
    """The server could not be reached or refused us (auth, unknown database)."""


class PoolTimeout(PgAccessError, TimeoutError):
    """No connection became free within the acquire timeout; the message carries pool stats."""

    def __init__(self, message: str, stats: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.stats = stats or {}


class PoolClosed(PgAccessError):
    """The pool was closed (or never opened) when a connection was asked for."""


class TenantError(PgAccessError, ValueError):
    """A tenant id is not valid (it must be a UUID)."""


class TenantRequired(PgAccessError):
    """Tenant-owned data was touched without a tenant (and outside the system context)."""


class TransactionError(PgAccessError):
    """A unit of work was used wrongly (after exit, from another task, ...)."""


class QueryError(PgAccessError):
    """PostgreSQL rejected a statement. ``sqlstate``, ``constraint``, ``table`` say where."""

    def __init__(
        self,
        message: str,
        *,
        sqlstate: str | None = None,
        constraint: str | None = None,
        table: str | None = None,
        query: str | None = None,
    ) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.constraint = constraint
        self.table = table
        self.query = query


class IntegrityError(QueryError):
    """A constraint refused the change (class 23)."""


class UniqueViolation(IntegrityError):
    pass


class ForeignKeyViolation(IntegrityError):
    pass


class CheckViolation(IntegrityError):
    pass


class NotNullViolation(IntegrityError):
    pass


class RowSecurityViolation(QueryError):
    """A row-level security policy refused a write (42501 on an RLS check)."""


class InsufficientPrivilege(QueryError):
    pass


class TransientError(QueryError):
    """A failure that re-running the whole transaction may cure."""


class SerializationFailure(TransientError):
    pass


class DeadlockDetected(TransientError):
    pass


class QueryTimeout(QueryError, TimeoutError):
    """statement_timeout, lock_timeout or idle_in_transaction_session_timeout fired."""


class ConnectionLost(QueryError):
    """The connection broke mid-statement; whether a commit happened is unknown."""


class QueryLoadError(PgAccessError):
    """A named-SQL file is malformed; the message names the file and line."""


class ParameterError(PgAccessError, TypeError):
    """A named query was called with missing, unknown or ill-typed parameters."""


class MigrationError(PgAccessError):
    """A migration failed or the migration set is inconsistent."""


class SeedError(PgAccessError):
    """A seeder failed, is unknown, or seeding was refused for this environment."""


_BY_SQLSTATE: dict[str, type[QueryError]] = {
    "23505": UniqueViolation,
    "23503": ForeignKeyViolation,
    "23514": CheckViolation,
    "23502": NotNullViolation,
    "40001": SerializationFailure,
    "40P01": DeadlockDetected,
    "57014": QueryTimeout,  # query_canceled (statement_timeout)
    "55P03": QueryTimeout,  # lock_not_available (lock_timeout)
    "25P03": QueryTimeout,  # idle_in_transaction_session_timeout
    "42501": InsufficientPrivilege,
}

_HINTS: dict[type[QueryError], str] = {
    UniqueViolation: "a row with the same key exists; look it up or change the key",
    ForeignKeyViolation: "the referenced row does not exist (or belongs to another tenant)",
    SerializationFailure: "re-run the whole transaction (db.run_in_transaction retries it)",
    DeadlockDetected: "re-run the whole transaction; take locks in a consistent order",
    QueryTimeout: "the statement hit a timeout; make it cheaper or raise the timeout",
    RowSecurityViolation: "the row does not belong to the current tenant",
}


def from_asyncpg(exc: BaseException, query: str | None = None) -> PgAccessError:
    """Translate an asyncpg/OS exception into the pgaccess type; the caller raises it ``from``."""
    if isinstance(exc, PgAccessError):
        return exc
    if (isinstance(exc, asyncpg.InterfaceError) and isinstance(exc, ValueError)) or (
        type(exc) is asyncpg.DataError and str(exc).startswith("invalid input for query argument")
    ):
        # asyncpg could not encode a parameter: nothing reached the server
        return ParameterError(f"a parameter has the wrong type or value for {query or 'the query'}: {exc}")
    if isinstance(exc, asyncpg.PostgresError):
        sqlstate: str | None = getattr(exc, "sqlstate", None)
        message = str(exc)
        cls: type[QueryError]
        if sqlstate == "42501" and "row-level security" in message:
            cls = RowSecurityViolation
        elif sqlstate is not None and sqlstate.startswith("23"):
            cls = _BY_SQLSTATE.get(sqlstate, IntegrityError)
        elif sqlstate is not None and sqlstate.startswith(("08", "57P")):
            cls = ConnectionLost
        else:
            cls = _BY_SQLSTATE.get(sqlstate or "", QueryError)
        hint = _HINTS.get(cls)
        text = f"{message} (SQLSTATE {sqlstate})" + (f": {hint}" if hint else "")
        return cls(
            text,
            sqlstate=sqlstate,
            constraint=getattr(exc, "constraint_name", None),
            table=getattr(exc, "table_name", None),
            query=query,
        )
    if isinstance(exc, (asyncpg.InterfaceError, asyncpg.InternalClientError, ConnectionError, OSError)):
        return ConnectionLost(
            f"connection lost: {exc}; whether the last statement committed is unknown",
            query=query,
        )
    return QueryError(f"{type(exc).__name__}: {exc}", query=query)
