"""The coordinator's only door to its database: SQLite in WAL mode, versioned schema.

Every method that changes state runs in one transaction and returns only after
COMMIT with `synchronous=FULL`: what a caller acknowledges is on disk, so `kill -9`
(or a power cut) loses nothing acknowledged. Schema changes are numbered migrations
applied in order under `PRAGMA user_version`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TypeVar

import msgspec

from coordinator.models import (
    ApiToken,
    JoinToken,
    Machine,
    MachineState,
    Unit,
    UnitHead,
    UnitState,
)
from proto.messages import UnitStatus
from proto.tokens import enrolment_refusal
from proto.units import UnitOption

log = logging.getLogger(__name__)

MIGRATIONS: tuple[str, ...] = (
    # 1: machines, enrolment and API tokens, certificate revocation.
    """
    CREATE TABLE machines (
        id TEXT PRIMARY KEY,
        hostname TEXT NOT NULL DEFAULT '',
        primary_ip TEXT NOT NULL DEFAULT '',
        metadata TEXT NOT NULL DEFAULT '{}',
        capabilities TEXT NOT NULL DEFAULT '[]',
        state TEXT NOT NULL DEFAULT 'disconnected',
        state_since REAL NOT NULL DEFAULT 0,
        last_seen REAL NOT NULL DEFAULT 0,
        enrolled_at REAL NOT NULL,
        cert_serial TEXT NOT NULL DEFAULT '',
        cert_not_after REAL NOT NULL DEFAULT 0,
        revoked INTEGER NOT NULL DEFAULT 0,
        agent_version TEXT NOT NULL DEFAULT ''
    );
    CREATE TABLE join_tokens (
        id TEXT PRIMARY KEY,
        secret_hash TEXT NOT NULL,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        used_at REAL,
        used_by TEXT NOT NULL DEFAULT '',
        description TEXT NOT NULL DEFAULT ''
    );
    CREATE TABLE api_tokens (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        role TEXT NOT NULL,
        secret_hash TEXT NOT NULL,
        created_at REAL NOT NULL,
        expires_at REAL,
        revoked INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE issued_certs (
        serial TEXT PRIMARY KEY,
        machine_id TEXT NOT NULL,
        issued_at REAL NOT NULL,
        not_after REAL NOT NULL
    );
    CREATE TABLE revoked_certs (
        serial TEXT PRIMARY KEY,
        machine_id TEXT NOT NULL,
        revoked_at REAL NOT NULL
    );
    """,
    # 2: units, where they are placed, what machines report, per-machine revisions.
    """
    CREATE TABLE units (
        name TEXT PRIMARY KEY,
        options TEXT NOT NULL,
        hash TEXT NOT NULL,
        desired_state TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE placements (
        unit TEXT NOT NULL REFERENCES units(name) ON DELETE CASCADE,
        machine_id TEXT NOT NULL,
        PRIMARY KEY (unit, machine_id)
    );
    CREATE INDEX placements_by_machine ON placements(machine_id);
    CREATE TABLE unit_states (
        name TEXT NOT NULL,
        machine_id TEXT NOT NULL,
        hash TEXT NOT NULL DEFAULT '',
        load_state TEXT NOT NULL DEFAULT '',
        active_state TEXT NOT NULL DEFAULT '',
        sub_state TEXT NOT NULL DEFAULT '',
        main_pid INTEGER NOT NULL DEFAULT 0,
        image_digest TEXT NOT NULL DEFAULT '',
        message TEXT NOT NULL DEFAULT '',
        updated_at REAL NOT NULL,
        PRIMARY KEY (name, machine_id)
    );
    ALTER TABLE machines ADD COLUMN desired_revision INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE machines ADD COLUMN applied_revision INTEGER NOT NULL DEFAULT 0
    """,
    # 3: fleet's currentState needs what the agent did; PATCHed metadata; pinned units.
    """
    ALTER TABLE unit_states ADD COLUMN target_state TEXT NOT NULL DEFAULT '';
    ALTER TABLE machines ADD COLUMN metadata_patch TEXT NOT NULL DEFAULT '{}';
    ALTER TABLE units ADD COLUMN pinned INTEGER NOT NULL DEFAULT 0
    """,
    # 4: machine groups, applications and their versions, deployments, releases with
    # their per-machine jobs, which release each machine runs, stickers, drift.
    """
    CREATE TABLE machine_groups (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        description TEXT NOT NULL DEFAULT '',
        selector TEXT NOT NULL DEFAULT '{}',
        machines TEXT NOT NULL DEFAULT '[]',
        builtin INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    INSERT INTO machine_groups (id, name, description, builtin, created_at, updated_at)
        VALUES ('c9a3f5e2-5d0b-5c1e-9a57-0f2f3c1d0e01', 'default', 'Every machine of the fleet',
                1, CAST(strftime('%s','now') AS REAL), CAST(strftime('%s','now') AS REAL));
    CREATE TABLE applications (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        description TEXT NOT NULL DEFAULT '',
        source_type TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE application_versions (
        application_id TEXT NOT NULL REFERENCES applications(id) ON DELETE CASCADE,
        number INTEGER NOT NULL,
        label TEXT NOT NULL,
        source_config TEXT NOT NULL,
        digest TEXT NOT NULL,
        created_at REAL NOT NULL,
        PRIMARY KEY (application_id, number),
        UNIQUE (application_id, label)
    );
    CREATE TABLE deployments (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        application_id TEXT NOT NULL REFERENCES applications(id),
        group_id TEXT NOT NULL REFERENCES machine_groups(id),
        application_version TEXT NOT NULL DEFAULT '',
        status TEXT NOT NULL DEFAULT 'Created',
        current_release TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE releases (
        id TEXT PRIMARY KEY,
        deployment_id TEXT NOT NULL REFERENCES deployments(id) ON DELETE CASCADE,
        seq INTEGER NOT NULL,
        body TEXT NOT NULL,
        status TEXT NOT NULL,
        batch INTEGER NOT NULL DEFAULT 0,
        message TEXT NOT NULL DEFAULT '',
        rolled_back INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        finished_at REAL NOT NULL DEFAULT 0,
        UNIQUE (deployment_id, seq)
    );
    CREATE TABLE release_jobs (
        id TEXT PRIMARY KEY,
        release_id TEXT NOT NULL REFERENCES releases(id) ON DELETE CASCADE,
        machine_id TEXT NOT NULL,
        batch INTEGER NOT NULL,
        status TEXT NOT NULL DEFAULT 'Created',
        message TEXT NOT NULL DEFAULT '',
        started_at REAL NOT NULL DEFAULT 0,
        healthy_since REAL NOT NULL DEFAULT 0,
        finished_at REAL NOT NULL DEFAULT 0,
        UNIQUE (release_id, machine_id)
    );
    CREATE TABLE deployment_targets (
        deployment_id TEXT NOT NULL REFERENCES deployments(id) ON DELETE CASCADE,
        machine_id TEXT NOT NULL,
        release_id TEXT NOT NULL,
        PRIMARY KEY (deployment_id, machine_id)
    );
    CREATE INDEX deployment_targets_by_machine ON deployment_targets(machine_id);
    CREATE TABLE machine_stickers (
        machine_id TEXT NOT NULL,
        deployment TEXT NOT NULL,
        body TEXT NOT NULL,
        reported_at REAL NOT NULL,
        PRIMARY KEY (machine_id, deployment)
    );
    CREATE TABLE machine_drift (
        machine_id TEXT PRIMARY KEY,
        entries TEXT NOT NULL,
        checked_at REAL NOT NULL,
        reported_at REAL NOT NULL
    )
    """,
    # 5: a join token may be bound to one machine id (re-enrolment of that machine).
    """
    ALTER TABLE join_tokens ADD COLUMN machine_id TEXT NOT NULL DEFAULT ''
    """,
)


class StorageError(Exception):
    pass


class EnrollRefused(StorageError):
    """The join token cannot be used; the message says why (shown to the agent)."""

    status = 403


class EnrollConflict(EnrollRefused):
    """The machine id is enrolled already and the token may not take it over."""

    status = 409


SQLITE_IOERR = 10
SQLITE_FULL = 13
FAULT_MESSAGES = {"full": "coordinator storage is full", "io": "coordinator storage is failing"}


def storage_fault(exc: BaseException) -> str | None:
    """Which fault: "full" (no space left), "io" (the disk fails) or None (any other error): the two
    faults that are the machine's, not the request's, and pass once an operator acts."""
    if isinstance(exc, sqlite3.Error):
        code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
        text = str(exc)
        if code == SQLITE_FULL or "database or disk is full" in text:
            return "full"
        if code == SQLITE_IOERR or "disk I/O error" in text:
            return "io"
        return None
    if isinstance(exc, OSError):
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return "full"
        if exc.errno == errno.EIO:
            return "io"
    return None


class StorageUnavailable(StorageError):
    """A write failed because the storage is full or failing (`kind` "full" or "io");
    answered 507/503 naming storage, and retried by what writes behind."""

    def __init__(self, kind: str, detail: str) -> None:
        self.kind = kind
        self.detail = detail
        super().__init__(f"{FAULT_MESSAGES.get(kind, 'coordinator storage failed')} ({detail})")


class StorageHealth:
    """Whether the last write got through. A fault is logged when it starts and when
    it ends, not per write; a disk that flaps (a small write fits where a big one did
    not) logs each of the two lines at most once per `QUIET_S`."""

    QUIET_S = 60.0

    def __init__(self) -> None:
        self.fault = ""
        self.detail = ""
        self.since = 0.0
        self.failures = 0
        self._fault_logged = -self.QUIET_S
        self._ok_logged = -self.QUIET_S

    @property
    def message(self) -> str:
        if not self.fault:
            return ""
        return f"{FAULT_MESSAGES.get(self.fault, 'coordinator storage failed')} ({self.detail})"

    def failed(self, kind: str, detail: str) -> None:
        self.failures += 1
        if self.fault == kind:
            return
        now = time.monotonic()
        self.fault, self.detail, self.since = kind, detail, time.time()
        if now - self._fault_logged >= self.QUIET_S:
            self._fault_logged = now
            log.error("%s; writes are refused or retried until it is fixed", self.message)

    def ok(self) -> None:
        if not self.fault:
            return
        now = time.monotonic()
        if now - self._ok_logged >= self.QUIET_S:
            self._ok_logged = now
            log.warning(
                "coordinator storage is writable again (after %.0f s)", time.time() - self.since
            )
        self.fault, self.detail = "", ""


class Storage:
    """One SQLite connection, used from the event loop thread only."""

    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        self.health = StorageHealth()
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._migrate()

    def close(self) -> None:
        self._db.close()

    @property
    def schema_version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self) -> None:
        current = self.schema_version
        if current > len(MIGRATIONS):
            raise StorageError(
                f"database schema version {current} is newer than this coordinator "
                f"understands ({len(MIGRATIONS)}); upgrade the coordinator"
            )
        for version in range(current + 1, len(MIGRATIONS) + 1):
            with self._tx() as db:
                for statement in MIGRATIONS[version - 1].split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version={version}")

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One transaction; nested uses join the outer one (see `batch`).

        A failed COMMIT is rolled back too (else every later write would join a
        transaction that never ends); a full or failing disk raises StorageUnavailable.
        """
        if self._db.in_transaction:
            yield self._db
            return
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # SQLite may have rolled back already
                    with contextlib.suppress(sqlite3.Error):
                        self._db.execute("ROLLBACK")
                raise
        except (sqlite3.Error, OSError) as exc:
            kind = storage_fault(exc)
            if kind is None:
                raise
            self.health.failed(kind, str(exc))
            raise StorageUnavailable(kind, str(exc)) from exc
        self.health.ok()

    def probe(self) -> bool:
        """Try a one-page write (the header's user_version, unchanged): whether the
        storage takes writes again when nothing else is waiting to be written."""
        try:
            with self._tx() as db:
                db.execute(f"PRAGMA user_version={int(self.schema_version)}")
        except StorageUnavailable:
            return False
        return True

    def batch(self) -> AbstractContextManager[sqlite3.Connection]:
        """Group many writes into one transaction (one fsync)."""
        return self._tx()

    @property
    def db(self) -> sqlite3.Connection:
        """For the other stores over the same database (`coordinator.deploystore`)."""
        return self._db

    def bump(self, db: sqlite3.Connection, machine_ids: set[str]) -> None:
        """Bump the desired revision of these machines inside the caller's transaction."""
        _bump(db, machine_ids)

    # --- machines -----------------------------------------------------------------

    def get_machine(self, machine_id: str) -> Machine | None:
        row = self._db.execute("SELECT * FROM machines WHERE id=?", (machine_id,)).fetchone()
        return _machine(row) if row else None

    def list_machines(self, *, include_revoked: bool = False) -> list[Machine]:
        sql = "SELECT * FROM machines"
        if not include_revoked:
            sql += " WHERE revoked=0"
        return [_machine(r) for r in self._db.execute(sql + " ORDER BY id")]

    def record_hello(
        self,
        machine_id: str,
        *,
        hostname: str,
        primary_ip: str,
        metadata: dict[str, str],
        capabilities: Sequence[str],
        agent_version: str,
        now: float,
    ) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE machines SET hostname=?, primary_ip=?, metadata=?, capabilities=?,"
                " agent_version=?, state='connected', state_since=?, last_seen=? WHERE id=?",
                (
                    hostname,
                    primary_ip,
                    json.dumps(metadata, sort_keys=True),
                    json.dumps(list(capabilities)),
                    agent_version,
                    now,
                    now,
                    machine_id,
                ),
            )

    def patch_metadata(self, machine_id: str, patch: dict[str, str | None]) -> bool:
        """Operator overrides over what the agent publishes; None removes a key."""
        with self._tx() as db:
            row = db.execute(
                "SELECT metadata_patch FROM machines WHERE id=?", (machine_id,)
            ).fetchone()
            if row is None:
                return False
            merged = {**json.loads(row["metadata_patch"]), **patch}
            db.execute(
                "UPDATE machines SET metadata_patch=? WHERE id=?",
                (json.dumps(merged, sort_keys=True), machine_id),
            )
            return True

    def set_capabilities(self, machine_id: str, capabilities: list[str]) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE machines SET capabilities=? WHERE id=?",
                (json.dumps(capabilities), machine_id),
            )

    def set_machine_state(
        self, machine_id: str, state: MachineState, now: float, *, last_seen: float | None = None
    ) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE machines SET state=?, state_since=?, last_seen=COALESCE(?, last_seen)"
                " WHERE id=?",
                (state, now, last_seen, machine_id),
            )

    def disconnect_all(self, now: float) -> int:
        """After a restart no session survives: every connected machine is disconnected now."""
        with self._tx() as db:
            cur = db.execute(
                "UPDATE machines SET state='disconnected', state_since=? WHERE state='connected'",
                (now,),
            )
            return cur.rowcount

    def set_machine_cert(self, machine_id: str, serial: str, not_after: float, now: float) -> None:
        """Record a renewed certificate; earlier ones stay valid until expiry or revocation."""
        with self._tx() as db:
            db.execute(
                "UPDATE machines SET cert_serial=?, cert_not_after=? WHERE id=?",
                (serial, not_after, machine_id),
            )
            _record_issued(db, serial, machine_id, now, not_after)

    def revoke_machine(self, machine_id: str, now: float) -> bool:
        """Mark the machine revoked and refuse every certificate it was issued so far."""
        with self._tx() as db:
            row = db.execute(
                "SELECT cert_serial FROM machines WHERE id=?", (machine_id,)
            ).fetchone()
            if row is None:
                return False
            db.execute(
                "UPDATE machines SET revoked=1, state='disconnected', state_since=? WHERE id=?",
                (now, machine_id),
            )
            db.execute(
                "INSERT OR IGNORE INTO revoked_certs (serial, machine_id, revoked_at)"
                " SELECT serial, machine_id, ? FROM issued_certs WHERE machine_id=?",
                (now, machine_id),
            )
            return True

    def is_serial_revoked(self, serial: str) -> bool:
        row = self._db.execute("SELECT 1 FROM revoked_certs WHERE serial=?", (serial,)).fetchone()
        return row is not None

    # --- units ---------------------------------------------------------------------

    def get_unit(self, name: str) -> Unit | None:
        row = self._db.execute("SELECT * FROM units WHERE name=?", (name,)).fetchone()
        return None if row is None else _unit(row, self._placements_of(name))

    def list_units(self, *, machine_id: str | None = None) -> list[Unit]:
        """Units ordered by name (fleet's order), optionally only those placed on a machine."""
        if machine_id is None:
            placements = self._all_placements()
            everything = self._db.execute("SELECT * FROM units ORDER BY name")
            return [_unit(r, placements.get(r["name"], [])) for r in everything]
        rows = list(
            self._db.execute(
                "SELECT u.* FROM units u JOIN placements p ON p.unit=u.name"
                " WHERE p.machine_id=? ORDER BY u.name",
                (machine_id,),
            )
        )
        placed: dict[str, list[str]] = {}
        for unit, machine in self._db.execute(
            "SELECT p2.unit, p2.machine_id FROM placements p1"
            " JOIN placements p2 ON p2.unit=p1.unit WHERE p1.machine_id=?"
            " ORDER BY p2.unit, p2.machine_id",
            (machine_id,),
        ):
            placed.setdefault(unit, []).append(machine)
        return [_unit(r, placed.get(r["name"], [])) for r in rows]

    def unit_heads(self) -> list[UnitHead]:
        """Every unit with its placements but without decoding its options (a scheduling
        pass over 100,000 units needs the options only of units it has not seen)."""
        placements = self._all_placements()
        return [
            UnitHead(
                name=r["name"],
                hash=r["hash"],
                desired_state=r["desired_state"],
                pinned=bool(r["pinned"]),
                machines=placements.get(r["name"], []),
            )
            for r in self._db.execute(
                "SELECT name, hash, desired_state, pinned FROM units ORDER BY name"
            )
        ]

    def unit_options(self, names: Sequence[str]) -> dict[str, list[UnitOption]]:
        out: dict[str, list[UnitOption]] = {}
        for i in range(0, len(names), 500):
            chunk = names[i : i + 500]
            marks = ",".join("?" * len(chunk))
            for r in self._db.execute(
                f"SELECT name, options FROM units WHERE name IN ({marks})", chunk
            ):
                out[r["name"]] = _options_decoder.decode(r["options"])
        return out

    def _all_placements(self) -> dict[str, list[str]]:
        placements: dict[str, list[str]] = {}
        for unit, machine in self._db.execute(
            "SELECT unit, machine_id FROM placements ORDER BY unit, machine_id"
        ):
            placements.setdefault(unit, []).append(machine)
        return placements

    def _placements_of(self, name: str) -> list[str]:
        return [
            r[0]
            for r in self._db.execute(
                "SELECT machine_id FROM placements WHERE unit=? ORDER BY machine_id", (name,)
            )
        ]

    def put_units(self, units: list[Unit], now: float) -> set[str]:
        """Many units in one transaction (one fsync); returns the affected machines."""
        affected: set[str] = set()
        with self._tx():
            for unit in units:
                affected |= self.put_unit(unit, now)
        return affected

    def put_unit(self, unit: Unit, now: float) -> set[str]:
        """Create or replace a unit with its placements; returns the machines whose
        desired state changed (their revisions are bumped in the same transaction).

        What machines reported stays when a unit moves or goes: a copy runs until its
        machine says it stopped (a partitioned machine cannot), so its row goes only
        when that machine reports the unit gone (`record_unit_states`)."""
        with self._tx() as db:
            old = {
                r[0]
                for r in db.execute("SELECT machine_id FROM placements WHERE unit=?", (unit.name,))
            }
            db.execute(
                "INSERT INTO units (name, options, hash, desired_state, pinned, created_at,"
                " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET"
                " options=excluded.options, hash=excluded.hash, pinned=excluded.pinned,"
                " desired_state=excluded.desired_state, updated_at=excluded.updated_at",
                (
                    unit.name,
                    msgspec.json.encode(unit.options).decode(),
                    unit.hash,
                    unit.desired_state,
                    int(unit.pinned),
                    now,
                    now,
                ),
            )
            new = set(unit.machines)
            db.executemany(
                "DELETE FROM placements WHERE unit=? AND machine_id=?",
                [(unit.name, m) for m in old - new],
            )
            db.executemany(
                "INSERT OR IGNORE INTO placements (unit, machine_id) VALUES (?, ?)",
                [(unit.name, m) for m in new - old],
            )
            affected = old | new
            _bump(db, affected)
            return affected

    def set_placements(self, changes: dict[str, list[str]]) -> set[str]:
        """Store many units' new placements in one transaction (the scheduler's output);
        returns every machine whose desired state changed, revisions bumped."""
        affected: set[str] = set()
        with self._tx() as db:
            for name, machines in sorted(changes.items()):
                old = {
                    r[0]
                    for r in db.execute("SELECT machine_id FROM placements WHERE unit=?", (name,))
                }
                new = set(machines)
                db.executemany(
                    "DELETE FROM placements WHERE unit=? AND machine_id=?",
                    [(name, m) for m in old - new],
                )
                db.executemany(
                    "INSERT INTO placements (unit, machine_id) VALUES (?, ?)",
                    [(name, m) for m in new - old],
                )
                affected |= old ^ new
            _bump(db, affected)
        return affected

    def delete_unit(self, name: str) -> set[str] | None:
        """Remove a unit; None if it did not exist, else the machines it was placed on."""
        with self._tx() as db:
            placed = {
                r[0] for r in db.execute("SELECT machine_id FROM placements WHERE unit=?", (name,))
            }
            if db.execute("DELETE FROM units WHERE name=?", (name,)).rowcount != 1:
                return None
            _bump(db, placed)
            return placed

    def set_applied_revision(self, machine_id: str, revision: int) -> None:
        with self._tx() as db:
            db.execute("UPDATE machines SET applied_revision=? WHERE id=?", (revision, machine_id))

    def record_unit_states(
        self,
        machine_id: str,
        changes: list[UnitStatus],
        removed: list[str],
        now: float,
        *,
        replace_all: bool = False,
    ) -> None:
        """Store what a machine reported; `replace_all` for a Hello's full snapshot."""
        with self._tx() as db:
            if replace_all:
                db.execute("DELETE FROM unit_states WHERE machine_id=?", (machine_id,))
            db.executemany(
                "DELETE FROM unit_states WHERE name=? AND machine_id=?",
                [(name, machine_id) for name in removed],
            )
            db.executemany(
                "INSERT INTO unit_states (name, machine_id, hash, load_state, active_state,"
                " sub_state, main_pid, image_digest, message, target_state, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT(name, machine_id) DO UPDATE SET hash=excluded.hash,"
                " load_state=excluded.load_state, active_state=excluded.active_state,"
                " sub_state=excluded.sub_state, main_pid=excluded.main_pid,"
                " image_digest=excluded.image_digest, message=excluded.message,"
                " target_state=excluded.target_state, updated_at=excluded.updated_at",
                [
                    (
                        c.name,
                        machine_id,
                        c.hash,
                        c.load_state,
                        c.active_state,
                        c.sub_state,
                        c.main_pid,
                        c.image_digest,
                        c.message,
                        c.target_state,
                        now,
                    )
                    for c in changes
                ],
            )

    def unit_states(
        self, *, machine_id: str | None = None, name: str | None = None
    ) -> list[UnitState]:
        """Reported states ordered by (name, machine) - fleet's order for /state."""
        sql = "SELECT * FROM unit_states WHERE 1=1"
        args: list[str] = []
        if machine_id is not None:
            sql, args = sql + " AND machine_id=?", [*args, machine_id]
        if name is not None:
            sql, args = sql + " AND name=?", [*args, name]
        rows = self._db.execute(sql + " ORDER BY name, machine_id", args)
        return [row_record(r, UnitState) for r in rows]

    # --- join tokens ----------------------------------------------------------------

    def create_join_token(
        self,
        token_id: str,
        secret_hash: str,
        *,
        now: float,
        ttl_s: float,
        description: str = "",
        machine_id: str = "",
    ) -> JoinToken:
        self.create_join_tokens(
            [(token_id, secret_hash)],
            now=now,
            ttl_s=ttl_s,
            description=description,
            machine_id=machine_id,
        )
        return JoinToken(
            id=token_id,
            created_at=now,
            expires_at=now + ttl_s,
            description=description,
            machine_id=machine_id,
        )

    def create_join_tokens(
        self,
        tokens: list[tuple[str, str]],
        *,
        now: float,
        ttl_s: float,
        description: str = "",
        machine_id: str = "",
    ) -> None:
        """(id, secret hash) pairs, all in one transaction; `machine_id` binds them."""
        with self._tx() as db:
            db.executemany(
                "INSERT INTO join_tokens (id, secret_hash, created_at, expires_at, description,"
                " machine_id) VALUES (?, ?, ?, ?, ?, ?)",
                [(tid, h, now, now + ttl_s, description, machine_id) for tid, h in tokens],
            )

    def join_token_hash(self, token_id: str, now: float) -> str:
        """The stored hash of a usable token, or EnrollRefused saying why it is unusable."""
        row = self._db.execute("SELECT * FROM join_tokens WHERE id=?", (token_id,)).fetchone()
        if row is None:
            raise EnrollRefused("unknown join token")
        if row["used_at"] is not None:
            raise EnrollRefused("join token was already used")
        if row["expires_at"] <= now:
            raise EnrollRefused("join token has expired")
        return str(row["secret_hash"])

    def enroll(
        self, token_id: str, machine_id: str, *, serial: str, not_after: float, now: float
    ) -> bool:
        """Consume the token and record the machine in one transaction: a token enrols
        once, and never takes over an enrolled machine it is not bound to
        (`tokens.enrolment_refusal`). True when an enrolled machine was re-enrolled:
        its earlier certificates are revoked in the same transaction."""
        with self._tx() as db:
            token = db.execute(
                "SELECT machine_id FROM join_tokens WHERE id=?", (token_id,)
            ).fetchone()
            machine = db.execute(
                "SELECT revoked FROM machines WHERE id=?", (machine_id,)
            ).fetchone()
            refusal = enrolment_refusal(
                machine_id,
                str(token["machine_id"]) if token is not None else "",
                enrolled=machine is not None,
                revoked=bool(machine["revoked"]) if machine is not None else False,
            )
            if refusal is not None:
                status, reason = refusal
                raise EnrollConflict(reason) if status == 409 else EnrollRefused(reason)
            cur = db.execute(
                "UPDATE join_tokens SET used_at=?, used_by=?"
                " WHERE id=? AND used_at IS NULL AND expires_at>?",
                (now, machine_id, token_id, now),
            )
            if cur.rowcount != 1:
                raise EnrollRefused("join token was already used or has expired")
            replaced = machine is not None and not machine["revoked"]
            if replaced:
                db.execute(
                    "INSERT OR IGNORE INTO revoked_certs (serial, machine_id, revoked_at)"
                    " SELECT serial, machine_id, ? FROM issued_certs WHERE machine_id=?",
                    (now, machine_id),
                )
            db.execute(
                "INSERT INTO machines (id, enrolled_at, cert_serial, cert_not_after, state,"
                " state_since) VALUES (?, ?, ?, ?, 'disconnected', ?)"
                " ON CONFLICT(id) DO UPDATE SET cert_serial=excluded.cert_serial,"
                " cert_not_after=excluded.cert_not_after, revoked=0,"
                " enrolled_at=excluded.enrolled_at",
                (machine_id, now, serial, not_after, now),
            )
            _record_issued(db, serial, machine_id, now, not_after)
            return replaced

    def join_token_binding(self, token_id: str) -> str:
        """The machine id a join token is bound to ("" for an ordinary token)."""
        row = self._db.execute(
            "SELECT machine_id FROM join_tokens WHERE id=?", (token_id,)
        ).fetchone()
        return str(row["machine_id"]) if row is not None else ""

    def list_join_tokens(self) -> list[JoinToken]:
        rows = self._db.execute("SELECT * FROM join_tokens ORDER BY created_at")
        return [row_record(r, JoinToken) for r in rows]

    # --- API tokens -------------------------------------------------------------------

    def create_api_token(
        self,
        token_id: str,
        secret_hash: str,
        *,
        name: str,
        role: str,
        now: float,
        ttl_s: float | None,
    ) -> ApiToken:
        expires = now + ttl_s if ttl_s else None
        with self._tx() as db:
            db.execute(
                "INSERT INTO api_tokens (id, name, role, secret_hash, created_at, expires_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (token_id, name, role, secret_hash, now, expires),
            )
        return ApiToken(id=token_id, name=name, role=role, created_at=now, expires_at=expires)

    def api_token(self, token_id: str) -> tuple[ApiToken, str] | None:
        row = self._db.execute("SELECT * FROM api_tokens WHERE id=?", (token_id,)).fetchone()
        if row is None:
            return None
        return _api_token(row), str(row["secret_hash"])

    def list_api_tokens(self) -> list[ApiToken]:
        return [_api_token(r) for r in self._db.execute("SELECT * FROM api_tokens ORDER BY id")]

    def revoke_api_token(self, token_id: str) -> bool:
        with self._tx() as db:
            return (
                db.execute("UPDATE api_tokens SET revoked=1 WHERE id=?", (token_id,)).rowcount == 1
            )


_options_decoder = msgspec.json.Decoder(list[UnitOption])
R = TypeVar("R")


def _unit(row: sqlite3.Row, machines: list[str]) -> Unit:
    return Unit(
        name=row["name"],
        options=_options_decoder.decode(row["options"]),
        hash=row["hash"],
        desired_state=row["desired_state"],
        pinned=bool(row["pinned"]),
        machines=machines,
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _bump(db: sqlite3.Connection, machine_ids: set[str]) -> None:
    db.executemany(
        "UPDATE machines SET desired_revision=desired_revision+1 WHERE id=?",
        [(m,) for m in sorted(machine_ids)],
    )


def _record_issued(
    db: sqlite3.Connection, serial: str, machine_id: str, now: float, not_after: float
) -> None:
    db.execute(
        "INSERT INTO issued_certs (serial, machine_id, issued_at, not_after) VALUES (?, ?, ?, ?)",
        (serial, machine_id, now, not_after),
    )


def _machine(row: sqlite3.Row) -> Machine:
    metadata: dict[str, str] = json.loads(row["metadata"])
    for key, value in json.loads(row["metadata_patch"]).items():
        if value is None:
            metadata.pop(key, None)
        else:
            metadata[key] = value
    return Machine(
        id=row["id"],
        hostname=row["hostname"],
        primary_ip=row["primary_ip"],
        metadata=metadata,
        capabilities=json.loads(row["capabilities"]),
        state=row["state"],
        state_since=row["state_since"],
        last_seen=row["last_seen"],
        enrolled_at=row["enrolled_at"],
        cert_serial=row["cert_serial"],
        cert_not_after=row["cert_not_after"],
        revoked=bool(row["revoked"]),
        agent_version=row["agent_version"],
        desired_revision=row["desired_revision"],
        applied_revision=row["applied_revision"],
    )


def _api_token(row: sqlite3.Row) -> ApiToken:
    return row_record(row, ApiToken)


def row_record(row: sqlite3.Row, kind: type[R]) -> R:
    """A row whose columns are named like the Struct's fields (extra columns ignored,
    SQLite's 0/1 read as booleans)."""
    return msgspec.convert(dict(zip(row.keys(), row, strict=True)), kind, strict=False)
