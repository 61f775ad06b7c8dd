"""WebOps databases (#21): a PostgreSQL database and its owner role on the configured
server (`CoordinatorConfig.postgres`), driven with PostgreSQL's own client programs
(psql, pg_dump, pg_restore) as subprocesses, never blocking the event loop.

A database `<name>` of a tenant is the role and database `pg_name` (the tenant's hash
and the name, so tenants never collide), owned by that role, with a generated password.
Linking it to a deployment sets the deployment's `DATABASE_URL`. A backup is a
`pg_dump --format=custom` file under the coordinator's state directory (0600), listed
with its size and SHA-256; restoring one (checked against its checksum first) runs
`pg_restore --clean`. Delete drops database and role, refused (409) while a deployment
is linked unless forced (then the deployment's DATABASE_URL goes too).

The server is either at a configured address, run by whoever runs it, or a Moorage
unit of the fleet (`[postgres] unit`, Debian's `postgresql` as a unit pinned to one
machine): then it is found where that unit is reported active (`server_address`), and
an operation while it is not running is a 503 naming the unit and what its machines
report.

Passwords travel to the client programs in their environment (`PGPASSWORD`), never on
a command line (visible in `ps`) and never in a log.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import secrets
import time
import urllib.parse
from pathlib import Path

from coordinator.config import PostgresServer
from coordinator.errors import Conflict, Invalid, NotFound, Unavailable
from coordinator.fleet.machines import MachineService
from coordinator.fleet.units import UnitService
from coordinator.models import Machine, UnitState
from coordinator.store.ports import DatabaseStore
from coordinator.webops.records import Database, DatabaseBackup, WebDeployment
from coordinator.webops.service import WebOpsService

log = logging.getLogger(__name__)

NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
TIMEOUT_S = 600.0
MAX_DATABASES_PER_TENANT = 100


# --- pure ---------------------------------------------------------------------------------


def name_problem(name: str) -> str | None:
    if not NAME.match(name):
        return (
            f"database name {name!r} must start with a letter and have up to 40 lowercase"
            " letters, digits or '_'"
        )
    return None


def pg_name(tenant: str, name: str) -> str:
    """The role's and database's name on the server: safe as an identifier (checked
    name, hex) and distinct per tenant."""
    return f"mo_{hashlib.sha256(tenant.encode()).hexdigest()[:8]}_{name}"


def database_url(db: Database, host: str) -> str:
    auth = f"{db.pg_name}:{urllib.parse.quote(db.password, safe='')}"
    return f"postgresql://{auth}@{host}:{db.port}/{db.pg_name}"


def server_address(
    server: PostgresServer, states: list[UnitState], machines: dict[str, Machine | None]
) -> str:
    """The host the server is reached at: the configured one, or, when it runs as a
    Moorage unit, the address of the one machine reporting that unit active.

    Raises Unavailable saying why not (not submitted, not running and what each machine
    reports, running on more than one machine, a machine without an address)."""
    if not server.unit:
        return server.host
    active = [s for s in states if s.active_state == "active"]
    if not active:
        if not states:
            raise Unavailable(
                f"the PostgreSQL unit {server.unit} is not running on any machine"
                " (submit and start it, pinned with MachineID=: see docs/webops.md)"
            )
        seen = ", ".join(
            f"{s.machine_id} {s.active_state or 'unknown'}"
            for s in sorted(states, key=lambda s: s.machine_id)
        )
        raise Unavailable(f"the PostgreSQL unit {server.unit} is not running ({seen})")
    if len(active) > 1:
        where = ", ".join(sorted(s.machine_id for s in active))
        raise Unavailable(
            f"the PostgreSQL unit {server.unit} runs on {len(active)} machines ({where}):"
            " pin it to one with MachineID="
        )
    machine = machines.get(active[0].machine_id)
    if machine is None or not machine.primary_ip:
        raise Unavailable(
            f"machine {active[0].machine_id}, where the PostgreSQL unit {server.unit}"
            " runs, has reported no address"
        )
    return machine.primary_ip


def create_sql(name: str, password: str) -> list[str]:
    """`name` is a checked identifier and `password` url-safe base64 (no quotes)."""
    return [
        f"CREATE ROLE \"{name}\" LOGIN PASSWORD '{password}'",
        f'CREATE DATABASE "{name}" OWNER "{name}"',
        f'REVOKE ALL ON DATABASE "{name}" FROM PUBLIC',
    ]


def drop_sql(name: str) -> list[str]:
    return [
        f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'",
        f'DROP DATABASE IF EXISTS "{name}"',
        f'DROP ROLE IF EXISTS "{name}"',
    ]


# --- the service ----------------------------------------------------------------------------


class DatabaseService:
    def __init__(
        self,
        storage: DatabaseStore,
        webops: WebOpsService,
        server: PostgresServer | None,
        backup_dir: Path,
        units: UnitService,
        machines: MachineService,
    ) -> None:
        self.storage = storage
        self.webops = webops
        self.server = server
        self.backup_dir = backup_dir
        self.units = units
        self.machines = machines

    # --- queries ------------------------------------------------------------------------

    def all(self, tenant: str) -> list[Database]:
        return self.storage.databases(tenant)

    def get(self, tenant: str, name: str) -> Database:
        db = self.storage.database_get(tenant, name)
        if db is None:
            raise NotFound(f"database {name!r} does not exist")
        return db

    def get_id(self, tenant: str, db_id: int) -> Database:
        db = self.storage.database_get_id(db_id, tenant)
        if db is None:
            raise NotFound(f"database {db_id} does not exist")
        return db

    def url(self, db: Database) -> str:
        """Its DATABASE_URL: where the server is now (where it was made, while a server
        run as a unit cannot be located: reading a database's details never fails for it)."""
        if self.server is None:
            return database_url(db, db.host)
        if self.server.public_host:
            return database_url(db, self.server.public_host)
        try:
            return database_url(db, self._host())
        except Unavailable:
            return database_url(db, db.host)

    def backups(self, db: Database) -> list[DatabaseBackup]:
        return self.storage.backups(db.id)

    async def metrics(self, db: Database) -> dict[str, int]:
        """Size and connections, from PostgreSQL itself."""
        out = await self._admin_query(
            f"SELECT pg_database_size('{db.pg_name}'),"
            f" (SELECT count(*) FROM pg_stat_activity WHERE datname = '{db.pg_name}')"
        )
        size, conns = [*out.strip().split("|"), "0", "0"][:2]
        return {"size_bytes": int(size or 0), "connections": int(conns or 0)}

    # --- commands -----------------------------------------------------------------------

    async def create(self, tenant: str, name: str, *, actor: str = "") -> Database:
        problem = name_problem(name)
        if problem:
            raise Invalid(problem)
        server = self._server()
        if self.storage.database_get(tenant, name) is not None:
            raise Conflict(f"database {name!r} already exists")
        if len(self.storage.databases(tenant)) >= MAX_DATABASES_PER_TENANT:
            raise Invalid(f"at most {MAX_DATABASES_PER_TENANT} databases per tenant")
        db = Database(
            tenant=tenant,
            name=name,
            pg_name=pg_name(tenant, name),
            password=secrets.token_urlsafe(24),
            host=self._host(),
            port=server.port,
            created_by=actor,
            created_at=time.time(),
        )
        db = self.storage.database_create(db)  # first: a second create is a 409 here
        try:
            for sql in create_sql(db.pg_name, db.password):
                await self._admin(sql)
        except Exception:
            self.storage.database_delete(db.id)
            raise
        return db

    async def link(self, db: Database, deployment_id: int) -> Database:
        dep = self.webops.get_id(db.tenant, deployment_id)
        await self.webops.set_env(dep, {"DATABASE_URL": self.url(db)})
        db.deployment_id = dep.id
        self.storage.database_update(db)
        return db

    async def unlink(self, db: Database) -> Database:
        if db.deployment_id:
            dep = self.storage_dep(db)
            if dep is not None and "DATABASE_URL" in dep.env:
                await self.webops.set_env(dep, {}, unset=["DATABASE_URL"])
        db.deployment_id = 0
        self.storage.database_update(db)
        return db

    def storage_dep(self, db: Database) -> WebDeployment | None:
        try:
            return self.webops.get_id(db.tenant, db.deployment_id)
        except NotFound:
            return None

    async def delete(self, db: Database, *, force: bool = False) -> None:
        if db.deployment_id and self.storage_dep(db) is not None and not force:
            raise Conflict(
                f"database {db.name!r} is linked to deployment {db.deployment_id}:"
                " unlink it first or delete with force"
            )
        if db.deployment_id:
            await self.unlink(db)
        for sql in drop_sql(db.pg_name):
            await self._admin(sql)
        paths = [Path(b.path) for b in self.storage.backups(db.id)]
        await asyncio.to_thread(remove_files, paths)
        self.storage.database_delete(db.id)

    async def backup(self, db: Database) -> DatabaseBackup:
        server = self._server()
        folder = self.backup_dir / str(db.id)
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = folder / f"{int(time.time() * 1000)}-{secrets.token_hex(4)}.dump"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        try:
            await self._run(
                self._bin("pg_dump"),
                "--format=custom",
                "--no-owner",
                "-h",
                self._host(),
                "-p",
                str(server.port),
                "-U",
                db.pg_name,
                "-f",
                str(path),
                db.pg_name,
                password=db.password,
            )
        except Exception:
            path.unlink(missing_ok=True)
            raise
        size, digest = await asyncio.to_thread(file_digest, path)
        return self.storage.backup_add(
            DatabaseBackup(
                database_id=db.id,
                path=str(path),
                size=size,
                sha256=digest,
                created_at=time.time(),
            )
        )

    async def restore(self, db: Database, backup_id: int) -> DatabaseBackup:
        server = self._server()
        found = [b for b in self.storage.backups(db.id) if b.id == backup_id]
        if not found:
            raise NotFound(f"backup {backup_id} of database {db.name!r} does not exist")
        b = found[0]
        try:
            _, digest = await asyncio.to_thread(file_digest, Path(b.path))
        except OSError:
            raise Conflict(f"backup {backup_id}'s file is gone") from None
        if digest != b.sha256:
            raise Conflict(f"backup {backup_id} does not match its checksum: not restored")
        await self._run(
            self._bin("pg_restore"),
            "--clean",
            "--if-exists",
            "--no-owner",
            "--single-transaction",
            "-h",
            self._host(),
            "-p",
            str(server.port),
            "-U",
            db.pg_name,
            "-d",
            db.pg_name,
            b.path,
            password=db.password,
        )
        return b

    # --- plumbing -----------------------------------------------------------------------

    def _server(self) -> PostgresServer:
        if self.server is None:
            raise Unavailable("no PostgreSQL server is configured for databases")
        return self.server

    def _host(self) -> str:
        server = self._server()
        if not server.unit:
            return server.host
        states = self.units.states(name=server.unit)
        machines = {s.machine_id: self.machines.find(s.machine_id) for s in states}
        return server_address(server, states, machines)

    def _bin(self, name: str) -> str:
        server = self._server()
        return str(Path(server.bin_dir) / name) if server.bin_dir else name

    def _admin_password(self) -> str:
        server = self._server()
        if not server.admin_password_file:
            return ""
        return Path(server.admin_password_file).read_text(encoding="utf-8").strip()

    async def _admin(self, sql: str) -> str:
        server = self._server()
        return await self._run(
            self._bin("psql"),
            "-X",
            "-q",
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            self._host(),
            "-p",
            str(server.port),
            "-U",
            server.admin_user,
            "-d",
            "postgres",
            "-c",
            sql,
            password=self._admin_password(),
        )

    async def _admin_query(self, sql: str) -> str:
        return await self._admin(sql)

    async def _run(self, *argv: str, password: str) -> str:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        if password:
            env["PGPASSWORD"] = password
        env["PGCONNECT_TIMEOUT"] = "10"
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
            )
        except OSError as exc:
            raise Unavailable(f"cannot run {Path(argv[0]).name}: {exc}") from None
        try:
            async with asyncio.timeout(TIMEOUT_S):
                out, err = await proc.communicate()
        except TimeoutError:
            proc.kill()
            await proc.wait()
            late = Unavailable(f"{Path(argv[0]).name} timed out")
            late.timed_out = True
            raise late from None
        if proc.returncode != 0:
            lines = err.decode(errors="replace").strip().splitlines()
            detail = lines[-1] if lines else f"exit status {proc.returncode}"
            raise Unavailable(f"PostgreSQL: {Path(argv[0]).name} failed: {detail}")
        return out.decode(errors="replace")


def file_digest(path: Path) -> tuple[int, str]:
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


def remove_files(paths: list[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)
