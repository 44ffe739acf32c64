"""The ``pgaccess`` console script and the helpers every subcommand shares.

``pgaccess migrate ...`` is the same as ``python -m pgaccess.migrate ...``; likewise
``seed``, ``queries``, ``health`` and ``devdb``. Without ``--dsn`` and ``DATABASE_URL`` the
commands use the embedded development cluster under ``.pgaccess/`` (started on first use).
Every command reads the project's layout and role names from ``[tool.pgaccess]`` in the
nearest ``pyproject.toml`` (:mod:`pgaccess.project`; ``pgaccess config`` shows them);
``pgaccess init`` scaffolds a project.

Exit codes shared by all subcommands: 0 success, 1 failure (or ``degraded`` for health),
2 usage error or ``down``; ``migrate status`` adds 3 (pending) and 4 (drift).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, PgAccessError

if TYPE_CHECKING:
    from .project import ProjectConfig

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2

SUBCOMMANDS = {
    "migrate": "pgaccess.migrate.cli",
    "seed": "pgaccess.seed.cli",
    "queries": "pgaccess.queries.cli",
    "health": "pgaccess.health.cli",
    "devdb": "pgaccess.devdb.cli",
    "demo": "pgaccess.demo",
    "config": "pgaccess.project_cli",
    "init": "pgaccess.scaffold.cli",
}


def parser(prog: str, description: str, example: str) -> argparse.ArgumentParser:
    """An argparse parser whose --help ends with an example."""
    return argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def add_dsn(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dsn",
        help="database URL (default: $DATABASE_URL, else the embedded dev cluster in .pgaccess/)",
    )


async def resolve_dsn(dsn: str | None, *, check: bool = True) -> str:
    """--dsn, then DATABASE_URL, then the embedded development cluster in the project's root.

    A DSN naming the socket directory of a stopped cluster raises ConfigError that says how
    to start it (``check=False`` for health, where a stopped server is a result: down)."""
    from .devdb import check_socket, dev_dsn

    given = dsn or os.environ.get("DATABASE_URL")
    if given:
        return check_socket(given) if check else given
    return await dev_dsn(load_project().root)


def role_dsns(owner: str, roles: tuple[str, str] | None = None) -> tuple[str, str]:
    """(app, admin) DSNs: PGACCESS_APP_URL / PGACCESS_ADMIN_URL, else the owner DSN logged
    in as the project's app / admin roles (the dev cluster and tests trust local logins)."""
    from .config import with_user

    app_role, admin_role = roles or load_project().roles
    return (os.environ.get("PGACCESS_APP_URL") or with_user(owner, app_role),
            os.environ.get("PGACCESS_ADMIN_URL") or with_user(owner, admin_role))


def load_project(**flags: Any) -> ProjectConfig:
    """The project's configuration with this command's flags on top (None: not given)."""
    from .project import load_project as load

    return load(flags)


def configure_logging() -> None:
    """Command-line logging: pgaccess's events to stderr at PGACCESS_LOG_LEVEL (warning).

    Only the ``pgaccess`` logger is touched, and only when the process has not configured it
    (an application that calls ``pgaccess.cli.main`` keeps its own handlers)."""
    import logging

    raw = os.environ.get("PGACCESS_LOG_LEVEL", "WARNING").upper()
    level = logging.getLevelName(raw)
    if not isinstance(level, int):
        raise ConfigError(f"PGACCESS_LOG_LEVEL={raw!r}: use DEBUG, INFO, WARNING or ERROR")
    root = logging.getLogger("pgaccess")
    if any(not isinstance(h, logging.NullHandler) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)


def run(main: Callable[[], Any]) -> int:
    """Run an async command body; typed errors become a one-line message and exit 1."""
    try:
        configure_logging()
        result = asyncio.run(main()) if asyncio.iscoroutinefunction(main) else main()
        return int(result or 0)
    except PgAccessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        return 130


class Progress:
    """A one-line progress bar on stderr, only when stderr is a terminal."""

    def __init__(self, label: str, stream: Any = None) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.enabled = bool(getattr(self.stream, "isatty", lambda: False)())

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled or total <= 0:
            return
        width = 30
        filled = int(width * done / total)
        self.stream.write(f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
        if done >= total:
            self.stream.write("\n")
        self.stream.flush()


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain text table for people."""
    cells = [[str(h) for h in headers]] + [["" if v is None else str(v) for v in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str, sort_keys=False))


def main(argv: Sequence[str] | None = None) -> int:
    import importlib

    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help") or args[0] not in SUBCOMMANDS:
        print(
            "usage: pgaccess {" + ",".join(SUBCOMMANDS) + "} ...\n\n"
            "Async raw-SQL data access for PostgreSQL. Each subcommand has --help.\n"
            "The project's layout comes from [tool.pgaccess] in pyproject.toml "
            "(`pgaccess config`).\n\n"
            "example:\n  pgaccess init && pgaccess migrate up && pytest\n  pgaccess demo",
            file=sys.stderr if args and args[0] not in ("-h", "--help") else sys.stdout,
        )
        return EXIT_OK if args and args[0] in ("-h", "--help") else EXIT_USAGE
    module = importlib.import_module(SUBCOMMANDS[args[0]])
    return int(module.main(args[1:]))


if __name__ == "__main__":
    sys.exit(main())
