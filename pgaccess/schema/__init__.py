"""pgaccess's core schema: the migration set pgaccess itself needs, shipped with the package.

``migrate up`` applies these files (scope ``pgaccess`` in ``pgaccess.schema_migrations``)
before the project's own: the app and admin roles, the ``app`` schema with the tenant
functions the tenant policies call, the signed tenant context and the least-privilege
revokes. A new pgaccess release may add files here; ``migrate up`` applies them like any
pending migration.

The files are templates: ``{{app_role}}`` and ``{{admin_role}}`` become the configured role
names. The checksum is taken over the template, so renaming roles is not drift.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

from ..errors import ConfigError, MigrationError
from ..migrate.files import MigrationFile, checksum, read_text
from ..migrate.split import SplitError, split_statements

CORE_SCOPE = "pgaccess"
_NAME = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+)\.sql$")
_ROLE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

# Checksums of files the reference schema (this repository's migrations/) used to carry
# before their content moved into the core schema. A database that applied one of them has
# the core objects already; its row is history, not drift, whatever the file says today.
SUPERSEDED: dict[str, str] = {
    "2342b2f2e04493a9f4caef5ff717c45bc841b7cbe3d408827282ff9070fa6ca3": "0001_roles_and_tenants",
    "a23bfbc1e0060d65d175747d042ac527f5d639e4010e1085f40bebcb77f0ff05": "0003_signed_tenant_context",
    "a68c66adcc574c989f14759d2b3219aed3263b5fba331ee4a91298a35f41ada4": "0003_signed_tenant_context",
    "b83428ee2f6e764ee70b1fb1477686310185d1a3979e35d40312816f5dbea662": "0003_signed_tenant_context",
    "805f2dcd86796181c9b3a93ea0b03c41b41f16f1e915fa924c32f78f8894992f":
        "0004_verify_tenant_once_per_statement",
    "dc43e05eff8ab5e182f7b14919110daaa07c5789e9b0bc8ce16bf6d5b820374a":
        "0005_session_bound_signatures_and_least_privilege",
}


def core_directory() -> Path:
    return Path(str(resources.files(__name__)))


def core_files(app_role: str = "pgaccess_app", admin_role: str = "pgaccess_admin") -> list[MigrationFile]:
    """The core migrations with the role names filled in, in version order."""
    for role in (app_role, admin_role):
        if not _ROLE.match(role):
            raise ConfigError(f"role name {role!r} must be a lower-case SQL identifier")
    out: list[MigrationFile] = []
    for path in sorted(core_directory().glob("*.sql")):
        m = _NAME.match(path.name)
        if m is None:
            raise MigrationError(f"{path}: not a core migration file name")
        template = read_text(path)
        sql = template.replace("{{app_role}}", app_role).replace("{{admin_role}}", admin_role)
        try:
            statements = tuple(split_statements(sql))
        except SplitError as exc:
            raise MigrationError(f"{path}: {exc}") from None
        out.append(MigrationFile(version=m["version"], name=m["name"], path=path, sql=sql,
                                 checksum=checksum(template), statements=statements))
    return out
