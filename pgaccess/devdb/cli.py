"""``python -m pgaccess devdb status|start|stop|destroy`` - manage the embedded dev cluster."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence

from ..cli import EXIT_FAIL, EXIT_OK, parser, print_json
from . import dev_cluster, dev_dsn


def main(argv: Sequence[str] | None = None) -> int:
    p = parser(
        "pgaccess devdb",
        "Manage the development cluster kept in .pgaccess/ (used when DATABASE_URL is unset).",
        "python -m pgaccess devdb status --json",
    )
    p.add_argument("action", choices=["status", "start", "stop", "destroy"])
    p.add_argument("--json", action="store_true", help="machine-readable output")
    args = p.parse_args(argv)
    cluster = dev_cluster()
    if args.action == "start":
        print(asyncio.run(dev_dsn()))
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
