"""A throwaway PgBouncer (transaction pooling) in front of a unix-socket server, for tests
and benchmarks of the pooler path."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from ..errors import ConfigError
from .clone import ADMIN_ROLE, APP_ROLE


class TemporaryPgBouncer:
    """``dsn(user, database)`` reaches the server at ``socket_dir``/``port`` through it.

    Runs as the ``postgres`` user when started by root (PgBouncer refuses root).
    """

    def __init__(self, socket_dir: Path, port: int = 5432, *, pool_size: int = 2,
                 users: tuple[str, ...] = (APP_ROLE, ADMIN_ROLE, "postgres")) -> None:
        binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
        if not Path(binary).exists():
            raise ConfigError("pgbouncer is not installed: `apt-get install pgbouncer`")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.directory = Path(tempfile.mkdtemp(prefix="pgaccess-pgbouncer-"))
        os.chmod(self.directory, 0o755)
        d = self.directory
        (d / "users.txt").write_text("".join(f'"{u}" ""\n' for u in users))
        (d / "pgbouncer.ini").write_text(
            f"[databases]\n* = host={socket_dir} port={port}\n[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {d}/users.txt\npool_mode = transaction\n"
            f"default_pool_size = {pool_size}\nmax_client_conn = 1000\nlogfile = {d}/pgbouncer.log\n"
        )
        kwargs: dict[str, object] = {}
        if os.geteuid() == 0:
            import pwd

            pw = pwd.getpwnam("postgres")
            for p in (d, *d.iterdir()):
                os.chown(p, pw.pw_uid, pw.pw_gid)
            kwargs = {"user": pw.pw_uid, "group": pw.pw_gid}
        self.process = subprocess.Popen(  # type: ignore[call-overload]
            [binary, str(d / "pgbouncer.ini")], stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, **kwargs,
        )
        deadline = time.monotonic() + 10
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    break
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = (d / "pgbouncer.log").read_text() if (d / "pgbouncer.log").exists() else ""
                self.stop()
                raise ConfigError(f"pgbouncer did not start:\n{log[-2000:]}")
            time.sleep(0.05)

    def dsn(self, user: str, database: str) -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        shutil.rmtree(self.directory, ignore_errors=True)
