"""A private PostgreSQL cluster for tests (#21): `initdb` in a temporary directory, the
server (`pg_ctl start`) on a free loopback TCP port with its socket in that directory,
an admin role with a password (scram-sha-256, never trust). Stopped (`pg_ctl stop -m
immediate`, then its postmaster pid if that fails) and removed by `stop()`.

PostgreSQL refuses to run as root: as root the cluster belongs to the `postgres` user
(Debian's package creates it) and its programs run through `runuser`."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

ADMIN = "moorage_admin"


def bin_dir() -> str | None:
    """The newest installed server's programs (initdb, pg_ctl, psql, pg_dump...)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version)
    if found:
        return str(Path(found[-1]).parent)
    initdb = shutil.which("initdb")
    return str(Path(initdb).resolve().parent) if initdb else None


def _version(path: str) -> float:
    try:
        return float(Path(path).parent.parent.name)
    except ValueError:
        return 0.0


def postgres_available() -> str | None:
    folder = bin_dir()
    if folder is None:
        return "PostgreSQL server programs not installed (apt-get install postgresql)"
    for name in ("pg_ctl", "psql", "pg_dump", "pg_restore"):
        if not Path(folder, name).exists():
            return f"{name} missing from {folder}"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root without a postgres user"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgCluster:
    def __init__(self) -> None:
        folder = bin_dir()
        assert folder is not None
        self.bin_dir = folder
        self.host = "127.0.0.1"
        self.port = 0
        self.admin = ADMIN
        self.root = Path(tempfile.mkdtemp(prefix="moorage-pg-"))
        self.data = self.root / "data"
        self.password_file = self.root / "admin.pw"
        self.password = os.urandom(12).hex()
        self._as: list[str] = []
        if os.geteuid() == 0:
            self._as = ["runuser", "-u", "postgres", "--"]
        self.started = False
        self._app_role = False
        self._app_password = ""

    def _run(self, *argv: str, timeout: float = 120) -> None:
        subprocess.run(
            [*self._as, *argv], check=True, capture_output=True, timeout=timeout, cwd=self.root
        )

    def init(self) -> None:
        """`initdb` (the admin role, its password file) and a free port; not started."""
        self.root.chmod(0o755)
        pw = self.root / "initdb.pw"
        pw.write_text(self.password + "\n")
        self.password_file.write_text(self.password + "\n")
        self.password_file.chmod(0o600)
        if self._as:
            pg = pwd.getpwnam("postgres")
            os.chown(self.root, pg.pw_uid, pg.pw_gid)
            os.chown(pw, pg.pw_uid, pg.pw_gid)
        self._run(
            f"{self.bin_dir}/initdb",
            "-D",
            str(self.data),
            "-U",
            self.admin,
            "-A",
            "scram-sha-256",
            f"--pwfile={pw}",
            "--no-sync",
        )
        pw.unlink()
        self.port = _free_port()

    def server_options(self) -> list[str]:
        return [
            *("-h", self.host, "-p", str(self.port), "-k", str(self.root)),
            *("-c", "fsync=off", "-c", "max_connections=400"),
        ]

    def start(self) -> None:
        """Initialised and started by `pg_ctl` (the test's own process)."""
        self.init()
        self._run(
            f"{self.bin_dir}/pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.root / "server.log"),
            "-o",
            " ".join(self.server_options()),
            "-w",
            "-t",
            "120",
            "start",
        )
        self.started = True

    def unit_text(self, machine_id: str) -> str:
        """A systemd service running this (initialised) cluster's server in the
        foreground, as an operator runs Debian's PostgreSQL as a Moorage unit: pinned to
        its machine (the data directory is there). A user manager cannot switch users
        (`User=`), so as root the server drops to `postgres` through setpriv. The
        caller stops it; `stop()` still tries its postmaster pid."""
        drop = []
        if self._as:
            drop = ["/usr/bin/setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups"]
        argv = [*drop, f"{self.bin_dir}/postgres", "-D", str(self.data), *self.server_options()]
        self.started = True  # stop() cleans up whoever started it
        return (
            "[Unit]\nDescription=PostgreSQL for WebOps databases (test cluster)\n\n"
            f"[Service]\nExecStart={' '.join(argv)}\n"
            "KillMode=mixed\nKillSignal=SIGINT\nTimeoutStopSec=30\n\n"
            f"[X-Fleet]\nMachineID={machine_id}\n"
        )

    def psql(self, sql: str, *, url: str | None = None) -> str:
        """Run SQL as the admin (or through a connection URL) and answer its output."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        argv = [f"{self.bin_dir}/psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1"]
        if url is None:
            env["PGPASSWORD"] = self.password
            argv += ["-h", self.host, "-p", str(self.port), "-U", self.admin, "-d", "postgres"]
        else:
            argv += ["-d", url]
        done = subprocess.run(
            [*argv, "-c", sql], env=env, capture_output=True, text=True, timeout=60, check=True
        )
        return done.stdout.strip()

    def url(self, database: str = "postgres") -> str:
        """A SQLAlchemy URL for one of the cluster's databases, as the admin."""
        return (
            f"postgresql+psycopg://{self.admin}:{self.password}@{self.host}:{self.port}/{database}"
        )

    APP_ROLE = "moorage_app"

    def create_database(self, name: str) -> str:
        """A new empty database (its name: lowercase letters, digits, underscores) owned
        by an ordinary role, as a coordinator's is: a superuser would bypass row-level
        security. Its URL, as that role."""
        assert name.replace("_", "").isalnum() and name.islower(), name
        if not self._app_role:
            self._app_password = os.urandom(12).hex()
            self.psql(
                f"CREATE ROLE {self.APP_ROLE} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE"
                f" PASSWORD '{self._app_password}'"
            )
            self._app_role = True
        self.psql(f"CREATE DATABASE {name} OWNER {self.APP_ROLE}")
        return (
            f"postgresql+psycopg://{self.APP_ROLE}:{self._app_password}"
            f"@{self.host}:{self.port}/{name}"
        )

    def stop(self) -> None:
        try:
            if self.started:
                try:
                    self._run(
                        f"{self.bin_dir}/pg_ctl", "-D", str(self.data), "-m", "immediate", "stop"
                    )
                except (subprocess.SubprocessError, OSError):
                    pid = self.data / "postmaster.pid"
                    with contextlib.suppress(OSError, ValueError):
                        os.kill(int(pid.read_text().split()[0]), signal.SIGKILL)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
