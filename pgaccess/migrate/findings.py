"""What the lint reports, and the rules it knows (the table in docs/MIGRATIONS.md)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Rule:
    id: str
    lock: str  # the lock it takes, "{table}" filled in per finding
    why: str
    fix: str
    static: bool = True  # False: a catalogue check on a migrated database


RULES: dict[str, Rule] = {r.id: r for r in (
    Rule("index-not-concurrent", "SHARE on {table} for the whole index build",
         "blocks INSERT/UPDATE/DELETE on the table until the index is built",
         "CREATE INDEX CONCURRENTLY in a `-- pgaccess: no-transaction` file"),
    Rule("concurrently-in-transaction", "none (PostgreSQL refuses it)",
         "CONCURRENTLY cannot run inside a transaction block, and every file without the "
         "header runs in one", "put `-- pgaccess: no-transaction` at the top of the file"),
    Rule("alter-column-type", "ACCESS EXCLUSIVE on {table}, usually with a table rewrite",
         "blocks reads and writes while every row is rewritten and indexes are rebuilt "
         "(binary-coercible changes such as varchar(n) -> text skip the rewrite)",
         "add a new column, backfill it in batches, switch the application, drop the old one; "
         "or waive with a reason when the change is binary-coercible"),
    Rule("add-column-rewrite", "ACCESS EXCLUSIVE on {table} with a table rewrite",
         "a volatile default (random(), gen_random_uuid(), clock_timestamp(), nextval/serial), "
         "an identity or a stored generated column makes PostgreSQL rewrite every row",
         "add the column without a default (or with a constant one), backfill in batches, then "
         "SET DEFAULT; add NOT NULL via a NOT VALID check (see set-not-null)"),
    Rule("set-not-null", "ACCESS EXCLUSIVE on {table} while the whole table is scanned",
         "blocks reads and writes for a full scan",
         "ADD CONSTRAINT c CHECK (col IS NOT NULL) NOT VALID; then, in a later file, VALIDATE "
         "CONSTRAINT c; SET NOT NULL (PostgreSQL 12+ skips the scan); DROP CONSTRAINT c"),
    Rule("constraint-not-valid",
         "foreign key: SHARE ROW EXCLUSIVE on {table} and the referenced table; check: ACCESS "
         "EXCLUSIVE on {table}; held while the whole table is scanned",
         "blocks writes (foreign key) or reads and writes (check) for a full validation scan",
         "ADD CONSTRAINT ... NOT VALID, then VALIDATE CONSTRAINT in a later file (it takes only "
         "SHARE UPDATE EXCLUSIVE)"),
    Rule("validate-in-same-transaction", "the ADD CONSTRAINT lock on {table}, held through the scan",
         "VALIDATE CONSTRAINT in the same transaction as its NOT VALID add keeps the add's "
         "strong lock during the validation scan, which undoes the point of NOT VALID",
         "move VALIDATE CONSTRAINT to a later file (or a `-- pgaccess: no-transaction` file)"),
    Rule("unique-without-index", "ACCESS EXCLUSIVE on {table} for the whole index build",
         "ADD UNIQUE / PRIMARY KEY builds its index while blocking reads and writes",
         "CREATE UNIQUE INDEX CONCURRENTLY i ... in a `-- pgaccess: no-transaction` file, then "
         "ALTER TABLE ... ADD CONSTRAINT c UNIQUE USING INDEX i (or PRIMARY KEY USING INDEX i)"),
    Rule("drop-column", "ACCESS EXCLUSIVE on {table} (brief)",
         "application code still selecting or inserting the column breaks the moment it goes",
         "deploy code that no longer uses the column first, then drop it in a later release; "
         "waive with the release that stopped using it as the reason"),
    Rule("rename", "ACCESS EXCLUSIVE on {table} (brief)",
         "application code using the old name breaks the moment it changes",
         "add the new column (or a view with the new name), write both, switch reads, then "
         "drop the old one in a later release"),
    Rule("vacuum-full", "ACCESS EXCLUSIVE on {table} while the table is rewritten",
         "blocks reads and writes for the whole rewrite",
         "plain VACUUM (no lock against reads or writes), or pg_repack / pg_squeeze online"),
    Rule("cluster", "ACCESS EXCLUSIVE on {table} while the table is rewritten",
         "blocks reads and writes for the whole rewrite",
         "pg_repack --order-by online, or leave physical order alone"),
    Rule("unparsable", "unknown", "the statement does not parse with PostgreSQL 17's grammar, so "
         "no lint rule could check it", "fix the syntax (or waive, if the target server "
         "accepts syntax PostgreSQL 17 does not)"),
    Rule("nolint-needs-reason", "n/a", "a waiver must say why the statement is safe",
         "write `-- pgaccess:nolint RULE: why it is safe here`"),
    Rule("nolint-unknown-rule", "n/a", "the waiver names no known rule",
         "use a rule id from docs/MIGRATIONS.md"),
    Rule("rls-disabled", "n/a", "a table with tenant_id has row-level security off",
         "ALTER TABLE {table} ENABLE ROW LEVEL SECURITY", static=False),
    Rule("rls-not-forced", "n/a", "RLS is not forced, so the table owner bypasses it",
         "ALTER TABLE {table} FORCE ROW LEVEL SECURITY", static=False),
    Rule("rls-no-guard", "n/a", "no RESTRICTIVE guard policy: a later permissive policy widens access",
         "CREATE POLICY tenant_guard ON {table} AS RESTRICTIVE ... USING (tenant_id = "
         "(SELECT app.current_tenant_id()))", static=False),
    Rule("rls-unique-without-tenant", "n/a",
         "a unique index without tenant_id: uniqueness checks bypass RLS and leak existence "
         "across tenants", "make it UNIQUE (tenant_id, ...)", static=False),
    Rule("rls-fk-without-tenant", "n/a",
         "a foreign key without tenant_id can point at another tenant's row and probe its "
         "existence", "use (tenant_id, ...) REFERENCES parent (tenant_id, ...)", static=False),
    Rule("rls-view-not-invoker", "n/a",
         "a view over tenant data without security_invoker runs with the owner's rights and "
         "skips RLS", "ALTER VIEW {table} SET (security_invoker = true)", static=False),
    Rule("security-definer-search-path", "n/a",
         "a SECURITY DEFINER function without a pinned search_path can be hijacked by callers",
         "ALTER FUNCTION {table} SET search_path = pg_catalog, public", static=False),
    Rule("rls-table-without-grants", "n/a",
         "an RLS-enabled (tenant) table the application role has no privilege on: every "
         "query from the service fails", "GRANT SELECT, INSERT, UPDATE, DELETE ON {table} TO "
         "<app role>", static=False),
)}


@dataclass(frozen=True)
class Finding:
    rule: str
    object: str  # the table (or view, function) it concerns
    file: str | None = None  # None for catalogue findings
    line: int | None = None
    statement: str | None = None
    detail: str | None = None  # overrides the rule's generic "why" where more is known
    waived: str | None = None  # the waiver's reason

    @property
    def lock(self) -> str:
        return RULES[self.rule].lock.format(table=self.object)

    @property
    def why(self) -> str:
        return self.detail or RULES[self.rule].why

    @property
    def fix(self) -> str:
        return RULES[self.rule].fix.format(table=self.object)

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}: " if self.file else f"{self.object}: "
        lock = f" Lock: {self.lock}." if RULES[self.rule].static and self.lock != "n/a" else ""
        waived = f" (waived: {self.waived})" if self.waived else ""
        return f"{where}[{self.rule}] {self.why}.{lock} Fix: {self.fix}{waived}"

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "lock": self.lock, "why": self.why, "fix": self.fix}


def one_line(sql: str, limit: int = 160) -> str:
    text = " ".join(sql.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."
