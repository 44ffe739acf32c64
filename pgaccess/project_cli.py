"""``pgaccess config``: the project's resolved configuration and where each value came from.

Exit codes: 0 ok, 1 the configuration is invalid (the message names the key and the fix).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from .cli import EXIT_OK, parser, print_json, run, table
from .project import OPTIONS, load_project


def main(argv: Sequence[str] | None = None) -> int:
    p = parser(
        "pgaccess config",
        "Print the project's configuration: [tool.pgaccess] in the nearest pyproject.toml, "
        "overridden by PGACCESS_* environment variables. Precedence: command-line flags > "
        "environment > pyproject > defaults. Keys: "
        + ", ".join(f"{o.name} ({o.env})" for o in OPTIONS) + ".",
        "PGACCESS_SQL=db/queries pgaccess config --json",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    args = p.parse_args(argv)

    def body() -> int:
        project = load_project()
        if args.json:
            print_json(project.as_json())
            return EXIT_OK
        print(f"project: {project.pyproject or '(no pyproject.toml found; defaults relative to '}"
              + ("" if project.pyproject else f"{project.root})"))
        print(table(["key", "value", "source"], project.as_rows()))
        return EXIT_OK

    return run(body)


if __name__ == "__main__":
    sys.exit(main())
