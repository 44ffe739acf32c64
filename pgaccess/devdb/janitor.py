"""Remove throwaway servers when the process that started them dies, however it dies.

PostgreSQL started by ``pg_ctl`` and containers started through Docker outlive a test run
that is killed (SIGTERM from a CI timeout, SIGKILL from the OOM killer): no ``finally`` runs.
So the first throwaway server of a process starts a small watcher process in its own
session, holding the read end of a pipe. Each server is announced on the pipe before it is
created (a cluster by its directory, withdrawn after a normal stop; containers by the owner
label they carry); when the pipe closes - the starter has exited, normally or not - the
watcher removes whatever is still there. This is testcontainers' Ryuk idea without an image
to pull.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Literal

Kind = Literal["cluster", "containers"]

_lock = threading.Lock()
_watcher: subprocess.Popen[str] | None = None


def _pipe() -> IO[str]:
    global _watcher
    if _watcher is None or _watcher.poll() is not None:
        package_root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ,
               "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
        _watcher = subprocess.Popen(
            [sys.executable, "-m", "pgaccess.devdb.janitor"], stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL, text=True, start_new_session=True, env=env,
        )
    assert _watcher.stdin is not None
    return _watcher.stdin


def watch(kind: Kind, ref: str) -> None:
    """Announce servers: ``cluster`` with its directory, ``containers`` with the value of
    the owner label its containers carry (announced before they are created)."""
    with _lock:
        pipe = _pipe()
        pipe.write(f"+{kind} {ref}\n")
        pipe.flush()


def release(kind: Kind, ref: str) -> None:
    """Withdraw a server that was stopped normally."""
    with _lock:
        if _watcher is None or _watcher.poll() is not None or _watcher.stdin is None:
            return
        try:
            _watcher.stdin.write(f"-{kind} {ref}\n")
            _watcher.stdin.flush()
        except (BrokenPipeError, ValueError):
            pass


def _remove(kind: str, ref: str) -> None:
    if kind == "cluster":
        from ..cluster import LocalCluster

        LocalCluster(Path(ref)).destroy()
    else:
        import docker  # type: ignore[import-untyped]

        from .container import OWNER_LABEL

        client = docker.from_env()
        for container in client.containers.list(all=True, filters={"label": f"{OWNER_LABEL}={ref}"}):
            container.remove(force=True, v=True)


def main() -> int:
    announced: dict[tuple[str, str], None] = {}
    for line in sys.stdin:
        sign, rest = line[:1], line[1:].rstrip("\n")
        kind, _, ref = rest.partition(" ")
        if sign == "+":
            announced[(kind, ref)] = None
        elif sign == "-":
            announced.pop((kind, ref), None)
    failed = 0
    for kind, ref in announced:
        try:
            _remove(kind, ref)
        except Exception as exc:
            failed += 1
            print(f"pgaccess janitor: could not remove {kind} {ref}: {exc}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
