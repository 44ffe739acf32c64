"""``pgaccess init [DIRECTORY]``: scaffold a working pgaccess project (see pgaccess.scaffold).

Exit codes: 0 done (existing files are kept, never overwritten), 1 error, 2 usage.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from ..cli import EXIT_OK, parser, print_json, run, table
from . import scaffold


def main(argv: Sequence[str] | None = None) -> int:
    p = parser(
        "pgaccess init",
        "Create [tool.pgaccess] in pyproject.toml, a first migration, a named query, row "
        "classes and a repository, a seeder, a conftest and a passing tenant-isolation test - "
        "in an empty directory or next to an existing package. Never overwrites a file.",
        "mkdir invoicing && cd invoicing && pgaccess init && pip install 'pgaccess[test]' && pytest",
    )
    p.add_argument("directory", nargs="?", default=".", help="project directory (default: .)")
    p.add_argument("--package", help="the package to put rows.py and repositories.py in "
                                     "(default: the existing one, else named after the directory)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    args = p.parse_args(argv)

    def body() -> int:
        report = scaffold(Path(args.directory), args.package)
        if args.json:
            print_json(report.as_json())
            return EXIT_OK
        print(table(["file", "action"], report.rows()))
        print(f"\npackage: {report.package}. Next: pip install 'pgaccess[test]'; pytest; "
              "pgaccess migrate up; pgaccess seed; pgaccess health")
        return EXIT_OK

    return run(body)


if __name__ == "__main__":
    sys.exit(main())
