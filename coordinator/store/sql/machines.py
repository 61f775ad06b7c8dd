"""Machines and their sessions: what agents publish, liveness, certificates, revocation."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence

from coordinator.models import Machine, MachineState
from coordinator.store.sql.core import (
    REVOCATION_CACHE_MAX,
    REVOCATION_CACHE_S,
    SqlCore,
    _record_issued,
)


class MachinesSql(SqlCore):
    def get_machine(self, machine_id: str) -> Machine | None:
        row = self._raw_one("SELECT * FROM machines WHERE id=?", (machine_id,))
        return _machine(row) if row else None

    def list_machines(
        self, *, include_revoked: bool = False, tenant: str | None = None
    ) -> list[Machine]:
        """Machines by id: one tenant's (None: every tenant's)."""
        sql = "SELECT * FROM machines WHERE 1=1"
        args: tuple[str, ...] = ()
        if tenant is not None:
            sql, args = sql + " AND tenant=?", (tenant,)
        if not include_revoked:
            sql += " AND revoked=0"
        return [_machine(r) for r in self._raw_all(sql + " ORDER BY id", args)]

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
        with self._raw_tx() as db:
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
        with self._raw_tx() as db:
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
        with self._raw_tx() as db:
            db.execute(
                "UPDATE machines SET capabilities=? WHERE id=?",
                (json.dumps(capabilities), machine_id),
            )

    def set_machine_state(
        self, machine_id: str, state: MachineState, now: float, *, last_seen: float | None = None
    ) -> None:
        with self._raw_tx() as db:
            db.execute(
                "UPDATE machines SET state=?, state_since=?, last_seen=COALESCE(?, last_seen)"
                " WHERE id=?",
                (state, now, last_seen, machine_id),
            )

    def disconnect_all(self, now: float) -> int:
        """After a restart no session survives: every connected machine is disconnected now."""
        with self._raw_tx() as db:
            cur = db.execute(
                "UPDATE machines SET state='disconnected', state_since=? WHERE state='connected'",
                (now,),
            )
            return cur.rowcount

    def set_machine_cert(self, machine_id: str, serial: str, not_after: float, now: float) -> None:
        """Record a renewed certificate; earlier ones stay valid until expiry or revocation."""
        with self._raw_tx() as db:
            db.execute(
                "UPDATE machines SET cert_serial=?, cert_not_after=? WHERE id=?",
                (serial, not_after, machine_id),
            )
            _record_issued(db, serial, machine_id, now, not_after)

    def revoke_machine(self, machine_id: str, now: float) -> bool:
        """Mark the machine revoked and refuse every certificate it was issued so far."""
        try:
            return self._revoke_machine(machine_id, now)
        finally:
            self._revocations.clear()  # after the commit: the next check reads it

    def _revoke_machine(self, machine_id: str, now: float) -> bool:
        with self._raw_tx() as db:
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
        """Asked on every API request and agent connection, so answers are kept for
        REVOCATION_CACHE_S; a revocation by this store clears them at once."""
        now = time.monotonic()
        seen = self._revocations.get(serial)
        if seen is not None and now - seen[1] < REVOCATION_CACHE_S:
            return seen[0]
        revoked = self._raw_one("SELECT 1 FROM revoked_certs WHERE serial=?", (serial,)) is not None
        if len(self._revocations) >= REVOCATION_CACHE_MAX:
            self._revocations.clear()
        self._revocations[serial] = (revoked, now)
        return revoked


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
        tenant=row["tenant"],
    )
