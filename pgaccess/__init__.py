"""pgaccess: async raw-SQL data access for PostgreSQL.

Named SQL (aiosql) behind typed repositories, on a tuned asyncpg pool; tenancy enforced by
PostgreSQL row-level security; an explicit unit of work; plain SQL migrations; seeders;
health checks; pytest fixtures.
"""

from .config import Settings
from .database import Database, transactional
from .errors import (
    CheckViolation,
    ConfigError,
    ConnectError,
    ConnectionLost,
    DeadlockDetected,
    ForeignKeyViolation,
    InsufficientPrivilege,
    IntegrityError,
    MigrationError,
    NotNullViolation,
    ParameterError,
    PgAccessError,
    PoolClosed,
    PoolTimeout,
    QueryError,
    QueryLoadError,
    QueryTimeout,
    RowSecurityViolation,
    SeedError,
    SerializationFailure,
    TenantError,
    TenantRequired,
    TransactionError,
    TransientError,
    UniqueViolation,
)
from .pool import Pool, PoolStats
from .queries import QuerySet, load_queries
from .repository import BaseRepository, Page, TenantAwareRepository
from .tenancy import TenantContext, parse_tenant_id, tenant_scope
from .uow import UnitOfWork

__all__ = [
    "BaseRepository",
    "CheckViolation",
    "ConfigError",
    "ConnectError",
    "ConnectionLost",
    "Database",
    "DeadlockDetected",
    "ForeignKeyViolation",
    "InsufficientPrivilege",
    "IntegrityError",
    "MigrationError",
    "NotNullViolation",
    "Page",
    "ParameterError",
    "PgAccessError",
    "Pool",
    "PoolClosed",
    "PoolStats",
    "PoolTimeout",
    "QueryError",
    "QueryLoadError",
    "QuerySet",
    "QueryTimeout",
    "RowSecurityViolation",
    "SeedError",
    "SerializationFailure",
    "Settings",
    "TenantAwareRepository",
    "TenantContext",
    "TenantError",
    "TenantRequired",
    "TransactionError",
    "TransientError",
    "UniqueViolation",
    "UnitOfWork",
    "load_queries",
    "parse_tenant_id",
    "tenant_scope",
    "transactional",
]
