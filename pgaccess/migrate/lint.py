"""The lint: static lock rules on files, catalogue RLS rules on a database, and waivers.

A waiver is a comment naming the rule and the reason::

    -- pgaccess:nolint index-not-concurrent: the table has 40 rows and no writers yet
    CREATE INDEX ...

Before a statement it waives that statement's findings of the named rule(s) (comma-separated).
Anywhere in a file, ``-- pgaccess:nolint RULE OBJECT: reason`` waives a catalogue finding
on OBJECT (e.g. ``public.legacy``). A waiver without a reason, or naming no known rule, is
itself a finding that cannot be waived.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import asyncpg
from pglast.parser import scan

from ..errors import MigrationError
from .files import MigrationFile
from .findings import RULES, Finding, one_line
from .rls import rls_findings
from .rules import check_sequence
from .split import Statement

_WAIVER = re.compile(
    r"pgaccess:nolint\s+(?P<rules>[\w-]+(?:\s*,\s*[\w-]+)*)(?:\s+(?P<object>[^\s:]+))?"
    r"\s*(?::\s*(?P<reason>.*?))?\s*(?:\*/)?\s*$",
    re.DOTALL,
)
_UNWAIVABLE = frozenset({"nolint-needs-reason", "nolint-unknown-rule"})


class LintFailed(MigrationError):
    """Unwaived lint findings; ``findings`` lists them. The command line exits 5."""

    def __init__(self, message: str, findings: list[Finding]) -> None:
        super().__init__(message)
        self.findings = findings


@dataclass(frozen=True)
class Waiver:
    rules: tuple[str, ...]
    object: str | None
    reason: str


@dataclass
class LintReport:
    findings: list[Finding] = field(default_factory=list)

    @property
    def blocking(self) -> list[Finding]:
        return [f for f in self.findings if not f.waived]

    @property
    def waived(self) -> list[Finding]:
        return [f for f in self.findings if f.waived]

    def as_json(self) -> dict[str, Any]:
        return {"findings": [f.as_json() for f in self.blocking],
                "waived": [f.as_json() for f in self.waived]}


def _parse_waiver(comment: str) -> Waiver | None:
    m = _WAIVER.search(comment)
    if not m:
        return None
    rules = tuple(r.strip() for r in m.group("rules").split(","))
    return Waiver(rules, m.group("object"), (m.group("reason") or "").strip())


def _waiver_problems(f: MigrationFile, st: Statement, w: Waiver) -> list[Finding]:
    out: list[Finding] = []
    for rule in w.rules:
        if rule not in RULES or rule in _UNWAIVABLE:
            out.append(Finding("nolint-unknown-rule", rule, str(f.path), st.line, one_line(st.code),
                               detail=f"the waiver names {rule!r}, which is not a rule"))
    if not w.reason:
        out.append(Finding("nolint-needs-reason", ",".join(w.rules), str(f.path), st.line,
                           one_line(st.code)))
    return out


def lint_files(files: Sequence[MigrationFile], *, report_on: Sequence[MigrationFile] | None = None
               ) -> LintReport:
    """Static rules over ``files`` read as one ordered sequence; findings of ``report_on``
    (default: all of them), with statement waivers applied."""
    raw = check_sequence(files)
    wanted = {str(f.path) for f in (files if report_on is None else report_on)}
    report = LintReport()
    for f in files:
        if str(f.path) not in wanted:
            continue
        by_line: dict[int, list[Waiver]] = {}
        for st in f.statements:
            for comment in st.comments:
                w = _parse_waiver(comment)
                if w is not None:
                    by_line.setdefault(st.line, []).append(w)
                    report.findings += _waiver_problems(f, st, w)
        for finding in raw[str(f.path)]:
            reason = next((w.reason for w in by_line.get(finding.line or 0, [])
                           if finding.rule in w.rules and w.reason), None)
            report.findings.append(replace(finding, waived=reason) if reason else finding)
    return report


def catalogue_waivers(files: Sequence[MigrationFile]) -> list[Waiver]:
    """``-- pgaccess:nolint RULE OBJECT: reason`` comments anywhere in the files."""
    out: list[Waiver] = []
    for f in files:
        for tok in scan(f.sql):
            if tok.name in ("SQL_COMMENT", "C_COMMENT"):
                w = _parse_waiver(f.sql[tok.start:tok.end + 1])
                if w is not None and w.object and w.reason:
                    out.append(w)
    return out


def apply_catalogue_waivers(findings: list[Finding], waivers: Sequence[Waiver]) -> list[Finding]:
    out = []
    for finding in findings:
        reason = next((w.reason for w in waivers
                       if finding.rule in w.rules and w.object == finding.object), None)
        out.append(replace(finding, waived=reason) if reason else finding)
    return out


async def lint_database(con: asyncpg.Connection, waivers: Sequence[Waiver],
                        app_role: str | None) -> LintReport:
    return LintReport(apply_catalogue_waivers(await rls_findings(con, app_role), waivers))


@dataclass
class RlsGate:
    """Refuses to commit a migration that adds unwaived catalogue findings.

    ``before`` notes the findings present when the file starts (inside its transaction);
    ``check`` runs after its statements, before the bookkeeping insert and the commit.
    """

    waivers: Sequence[Waiver]
    app_role: str | None

    async def before(self, con: asyncpg.Connection) -> object:
        return {(f.rule, f.object, f.detail) for f in await rls_findings(con, self.app_role)}

    async def check(self, con: asyncpg.Connection, f: MigrationFile, baseline: object) -> None:
        assert isinstance(baseline, set)
        now = apply_catalogue_waivers(await rls_findings(con, self.app_role), self.waivers)
        new = [x for x in now if not x.waived and (x.rule, x.object, x.detail) not in baseline]
        if new:
            raise LintFailed(
                f"{f.path}: refusing to commit {f.label}: it adds RLS lint finding(s); nothing "
                "of it was committed" + ("" if f.transactional else " past its statements") + ":\n"
                + "\n".join(f"  {x}" for x in new), new)
