"""Migration files on disk: names, headers, checksums, statements; ``new`` scaffolding.

A file is ``NNNN_description.sql`` (a number or a UTC timestamp), optionally with
``NNNN_description.down.sql``. Header lines at the top, ``-- pgaccess: key=value, ...``, set
``no-transaction``, ``lock_timeout`` and ``statement_timeout`` for that file. Nothing here
touches a database.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import MigrationError
from .split import SplitError, Statement, split_statements

_NAME = re.compile(r"^(?P<version>\d+)_(?P<name>[A-Za-z0-9][A-Za-z0-9_\-]*)(?P<down>\.down)?\.sql$")
_HEADER = re.compile(r"^--\s*pgaccess:\s*(?P<body>.*)$")
_DURATION = re.compile(r"\d+(ms|s|min)?")
DEFAULT_LOCK_TIMEOUT = "5s"


def checksum(text: str) -> str:
    """SHA-256 of the normalised text: BOM stripped, CRLF/CR to LF."""
    normalised = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    return hashlib.sha256(normalised.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class MigrationFile:
    version: str
    name: str
    path: Path
    sql: str
    checksum: str
    transactional: bool = True
    lock_timeout: str = DEFAULT_LOCK_TIMEOUT
    statement_timeout: str | None = None  # None: the server's setting
    down_path: Path | None = None
    repeatable: bool = False
    statements: tuple[Statement, ...] = field(default=(), repr=False, compare=False)

    @property
    def sort_key(self) -> tuple[int, str]:
        return (int(self.version), self.version) if not self.repeatable else (0, self.version)

    @property
    def label(self) -> str:
        return f"{self.version} {self.name}" if not self.repeatable else f"repeatable {self.name}"


def read_text(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MigrationError(
            f"{path}: not valid UTF-8 (byte {exc.start}); save the file as UTF-8"
        ) from None


def headers(sql: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in sql.lstrip("\ufeff").splitlines():
        m = _HEADER.match(line.strip())
        if not m:
            break
        for item in m.group("body").split(","):
            key, _, value = item.strip().partition("=")
            out[key.strip()] = value.strip() or "true"
    return out


def load_directory(directory: Path, *, repeatable: bool = False) -> list[MigrationFile]:
    """Parse the migration files of one directory (not recursive)."""
    if not directory.is_dir():
        return []
    files: dict[str, MigrationFile] = {}
    downs: dict[str, Path] = {}
    for path in sorted(directory.iterdir()):
        if not path.is_file() or path.suffix != ".sql":
            continue
        if repeatable:
            files[path.stem] = load_file(path, path.stem, path.stem, repeatable=True)
            continue
        m = _NAME.match(path.name)
        if not m:
            raise MigrationError(
                f"{path}: bad migration file name; use NNNN_description.sql (a number or a "
                "UTC timestamp YYYYMMDDHHMMSS, then _ and letters, digits, _ or -)"
            )
        version = m.group("version")
        if m.group("down"):
            downs[version] = path
            continue
        same = next((f for v, f in files.items() if int(v) == int(version)), None)
        if same is not None:
            raise MigrationError(
                f"duplicate migration version {version}: {same.path.name} and {path.name}"
            )
        files[version] = load_file(path, version, m.group("name"))
    for version, down in downs.items():
        if version not in files:
            raise MigrationError(f"{down}: down file without its up file")
        files[version] = _with_down(files[version], down)
    return sorted(files.values(), key=lambda f: f.sort_key)


def load_file(path: Path, version: str, name: str, *, repeatable: bool = False) -> MigrationFile:
    sql = read_text(path)
    head = headers(sql)
    try:
        statements = tuple(split_statements(sql))
    except SplitError as exc:
        raise MigrationError(f"{path}: {exc}") from None
    statement_timeout = head.get("statement_timeout")
    return MigrationFile(
        version=version, name=name, path=path, sql=sql, checksum=checksum(sql),
        transactional="no-transaction" not in head,
        lock_timeout=_duration(path, "lock_timeout", head.get("lock_timeout", DEFAULT_LOCK_TIMEOUT)),
        statement_timeout=None if statement_timeout is None
        else _duration(path, "statement_timeout", statement_timeout),
        repeatable=repeatable, statements=statements,
    )


def down_file(f: MigrationFile) -> MigrationFile:
    """The down file of ``f`` as a migration of its own (same version and name)."""
    if f.down_path is None:
        raise MigrationError(f"{f.path.name} has no down file; write {f.version}_{f.name}.down.sql")
    return load_file(f.down_path, f.version, f.name)


def _with_down(f: MigrationFile, down: Path) -> MigrationFile:
    return replace(f, down_path=down, statements=f.statements)


def _duration(path: Path, key: str, value: str) -> str:
    if not _DURATION.fullmatch(value):
        raise MigrationError(f"{path}: bad {key} header value {value!r}; use e.g. 500ms, 5s, 1min")
    return value


def new_file(directory: Path, description: str) -> Path:
    """Create the next numbered, empty migration file; no database involved."""
    slug = re.sub(r"[^A-Za-z0-9]+", "_", description.strip()).strip("_").lower()
    if not slug:
        raise MigrationError("give the migration a description, e.g. `new add_invoices`")
    directory.mkdir(parents=True, exist_ok=True)
    existing = load_directory(directory)
    width = max((len(f.version) for f in existing), default=4)
    number = max((int(f.version) for f in existing), default=0) + 1
    path = directory / f"{number:0{width}d}_{slug}.sql"
    path.write_text(f"-- {description.strip()}\n")
    return path
