"""A private PostgreSQL cluster started from the binaries on this machine.

Used by the test fixtures (a throwaway cluster in a temporary directory) and by the
command line's embedded default (a development cluster kept under ``.pgaccess/``). The
cluster listens on a unix socket inside its own directory only, so it never clashes with a
server on port 5432. When run as root, the server runs as the ``postgres`` system user,
because PostgreSQL refuses to run as root.

We wrote this instead of using pytest-postgresql's executor: that one needs a free TCP
port, offers no reuse of a persistent cluster for the command line, and does not handle
running as root; what is needed is ~150 lines around initdb/pg_ctl.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from .errors import ConfigError

INSTALL_HINT = (
    "no PostgreSQL server binaries found (initdb, pg_ctl). Install them, for example "
    "`apt-get install postgresql` on Debian/Ubuntu, or set PGACCESS_TEST_DSN / DATABASE_URL "
    "to a running server."
)


def find_bindir() -> Path:
    """Locate initdb/pg_ctl: ``PGACCESS_PG_BINDIR``, ``pg_config --bindir``, PATH, Debian paths."""
    candidates: list[str] = []
    if env := os.environ.get("PGACCESS_PG_BINDIR"):
        candidates.append(env)
    if shutil.which("pg_config"):
        try:
            out = subprocess.run(
                ["pg_config", "--bindir"], capture_output=True, text=True, check=True, timeout=10
            )
            candidates.append(out.stdout.strip())
        except (subprocess.SubprocessError, OSError):
            pass
    if initdb := shutil.which("initdb"):
        candidates.append(str(Path(initdb).parent))
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for c in candidates:
        if (Path(c) / "initdb").exists() and (Path(c) / "pg_ctl").exists():
            return Path(c)
    raise ConfigError(INSTALL_HINT)


@dataclass
class LocalCluster:
    """A cluster in ``directory`` (data in ``data/``, socket in ``socket/``)."""

    directory: Path
    port: int = 5432
    user: str = "postgres"
    # Lines appended to postgresql.conf at init (after pgaccess's own, so they win).
    extra_conf: tuple[str, ...] = ()

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    @property
    def socket_dir(self) -> Path:
        return self.directory / "socket"

    @property
    def log_file(self) -> Path:
        return self.directory / "server.log"

    def dsn(self, database: str = "postgres", user: str | None = None) -> str:
        return (
            f"postgresql://{user or self.user}@/{database}"
            f"?host={quote(str(self.socket_dir), safe='')}&port={self.port}"
        )

    # -- lifecycle ---------------------------------------------------------------------

    def is_initialised(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def is_running(self) -> bool:
        if not self.is_initialised():
            return False
        result = self._run(["pg_ctl", "status", "-D", str(self.data_dir)], check=False)
        return result.returncode == 0

    def init(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        self._chown(self.directory)
        self._chown(self.socket_dir)
        self._run(
            [
                "initdb", "-D", str(self.data_dir), "-U", self.user, "-A", "trust",
                "-E", "UTF8", "--locale=C", "--no-sync",
            ]
        )
        conf = self.data_dir / "postgresql.conf"
        with conf.open("a") as fh:
            fh.write(
                "\n# pgaccess private cluster\n"
                "listen_addresses = ''\n"
                f"unix_socket_directories = '{self.socket_dir}'\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                "max_connections = 200\nshared_buffers = 128MB\n"
                "max_prepared_transactions = 10\nlog_min_messages = warning\n"
                "wal_level = replica\nmax_wal_senders = 4\n"
            )
            fh.writelines(f"{line}\n" for line in self.extra_conf)

    def start(self, timeout: int = 30) -> None:
        if not self.is_initialised():
            self.init()
        if self.is_running():
            return
        self._run(
            [
                "pg_ctl", "start", "-w", "-t", str(timeout), "-D", str(self.data_dir),
                "-l", str(self.log_file), "-o", f"-p {self.port}",
            ]
        )

    def stop(self, mode: str = "fast") -> None:
        if self.is_running():
            self._run(["pg_ctl", "stop", "-w", "-m", mode, "-D", str(self.data_dir)], check=False)

    def restart(self, mode: str = "fast") -> None:
        self._run(
            [
                "pg_ctl", "restart", "-w", "-m", mode, "-D", str(self.data_dir),
                "-l", str(self.log_file), "-o", f"-p {self.port}",
            ]
        )

    def reload(self) -> None:
        """Re-read postgresql.conf (for settings that do not need a restart)."""
        self._run(["pg_ctl", "reload", "-D", str(self.data_dir)])

    def destroy(self) -> None:
        self.stop(mode="immediate")
        shutil.rmtree(self.directory, ignore_errors=True)

    # -- helpers -----------------------------------------------------------------------

    def _run(self, argv: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        bindir = find_bindir()
        argv = [str(bindir / argv[0]), *argv[1:]]
        kwargs: dict[str, object] = {}
        if os.geteuid() == 0:
            pw = _server_user()
            kwargs = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
        result = subprocess.run(  # type: ignore[call-overload]
            argv, capture_output=True, text=True, check=False, timeout=120, **kwargs
        )
        if check and result.returncode != 0:
            log = self.log_file.read_text()[-2000:] if self.log_file.exists() else ""
            raise ConfigError(
                f"{' '.join(argv)} failed (exit {result.returncode}): "
                f"{result.stderr.strip() or result.stdout.strip()}\n{log}"
            )
        return result  # type: ignore[no-any-return]

    def _chown(self, path: Path) -> None:
        if os.geteuid() == 0:
            pw = _server_user()
            os.chown(path, pw.pw_uid, pw.pw_gid)


def _server_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        raise ConfigError(
            "running as root, and PostgreSQL refuses to run as root; create a 'postgres' "
            "system user (the postgresql package does) or run as a normal user"
        ) from None


def scratch_dir(min_free: int = 2 << 30) -> str | None:
    """Where throwaway clusters go: ``PGACCESS_TEST_TMPDIR``, else ``/dev/shm`` when it is
    a memory file system with ``min_free`` bytes free, else the system default.

    Cloning a test database opens ~1,400 files; on a virtual disk each create can take
    ~0.2 ms (a 250 ms clone), in memory it is ~30 ms. A throwaway cluster's data need not
    survive a reboot, so memory is the right place for it.
    """
    chosen = os.environ.get("PGACCESS_TEST_TMPDIR")
    if chosen:
        return chosen
    shm = Path("/dev/shm")
    try:
        if shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free >= min_free:
            return str(shm)
    except OSError:
        pass
    return None


def temporary_cluster(
    prefix: str = "pgaccess-", *, port: int = 5432, extra_conf: tuple[str, ...] = ()
) -> LocalCluster:
    """Create and start a throwaway cluster in a new temporary directory (see scratch_dir)."""
    directory = Path(tempfile.mkdtemp(prefix=prefix, dir=scratch_dir()))
    if os.geteuid() == 0:
        os.chmod(directory, 0o755)
    cluster = LocalCluster(directory, port=port, extra_conf=extra_conf)
    cluster.start()
    return cluster
