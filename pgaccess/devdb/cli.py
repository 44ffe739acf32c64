"""``pgaccess devdb status|start|stop|destroy`` - manage the embedded dev cluster.

The cluster lives in ``.pgaccess/`` next to the project's ``pyproject.toml`` (the working
directory when there is none). Exit codes: 0 ok (status: running), 1 stopped or failed.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence

from ..cli import EXIT_FAIL, EXIT_OK, load_project, parser, print_json
from ..errors import ConfigError
from . import dev_cluster, dev_dsn


def main(argv: Sequence[str] | None = None) -> int:
    p = parser(
        "pgaccess devdb",
        "Manage the development cluster kept in .pgaccess/ of the project (used when "
        "DATABASE_URL is unset). `start` prints its DSN.",
        "export DATABASE_URL=$(pgaccess devdb start | head -1) && pgaccess migrate up",
    )
    p.add_argument("action", choices=["status", "start", "stop", "destroy"])
    p.add_argument("--json", action="store_true", help="machine-readable output")
    args = p.parse_args(argv)
    try:
        root = load_project().root
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAIL
    cluster = dev_cluster(root)
    if args.action == "start":
        try:
            print(asyncio.run(dev_dsn(root)))
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_FAIL
    elif args.action == "stop":
        cluster.stop()
    elif args.action == "destroy":
        cluster.destroy()
    running = cluster.is_running()
    info = {"directory": str(cluster.directory), "running": running,
            "dsn": cluster.dsn() if running else None}
    if args.json:
        print_json(info)
    elif args.action == "status":
        print(f"{info['directory']}: {'running' if running else 'stopped'}"
              + (f" ({info['dsn']})" if running else ""))
    return EXIT_OK if running or args.action in ("stop", "destroy") else EXIT_FAIL


if __name__ == "__main__":
    sys.exit(main())
