"""Plain SQL migrations: ordered, checksummed, locked, linted, multi-tenant.

``Migrator(dsn, "migrations").up()`` lints the pending files, then applies pending
``NNNN_name.sql`` files in version order, each in one transaction (or statement by statement
for files headed ``-- pgaccess: no-transaction``), then repeatable files whose checksum
changed, then rolls the ``tenant/`` set out to the tenant schemas. See docs/MIGRATIONS.md.

Modules: ``split`` (statements, on pglast's scanner), ``files`` (files, headers, ``new``),
``state`` (bookkeeping, status, compare), ``session`` (connections, the runners' lock),
``apply`` and ``retry`` (one file, lock-timeout retries), ``tenants`` (schemas, rollouts),
``rules``/``locks``/``rls``/``lint`` (the lint), ``plan`` (dry run), ``runner``
(``Migrator``), ``cli``.
"""

from __future__ import annotations

from .files import MigrationFile, checksum, load_directory, new_file
from .findings import RULES, Finding
from .lint import LintFailed, LintReport, lint_files
from .plan import Plan
from .retry import LockRetry
from .runner import Migrator, UpReport
from .session import LOCK_KEY
from .split import SplitError, Statement, split_statements
from .state import BOOKKEEPING, SHARED_SCOPE, AppliedMigration, Drift, Status, compare
from .tenants import (
    Rollout,
    RolloutFailed,
    RolloutReport,
    TenantResult,
    quote_ident,
    tenant_schema_name,
    validate_schema_name,
)

__all__ = [
    "BOOKKEEPING", "LOCK_KEY", "RULES", "SHARED_SCOPE", "AppliedMigration", "Drift", "Finding",
    "LintFailed", "LintReport", "LockRetry", "MigrationFile", "Migrator", "Plan", "Rollout",
    "RolloutFailed", "RolloutReport", "SplitError", "Statement", "Status", "TenantResult",
    "UpReport", "checksum", "compare", "lint_files", "load_directory", "new_file", "quote_ident",
    "split_statements", "tenant_schema_name", "validate_schema_name",
]
