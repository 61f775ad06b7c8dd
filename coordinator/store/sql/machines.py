"""Machines and their sessions: what agents publish, liveness, certificates, revocation."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import RowMapping

from coordinator.models import Machine, MachineState
from coordinator.store.sql import schema
from coordinator.store.sql.core import (
    REVOCATION_CACHE_MAX,
    REVOCATION_CACHE_S,
    SqlCore,
    in_chunks,
    record_issued,
)

_m = schema.machines
_revoked = schema.revoked_certs

# Built once: what every agent's connection and heartbeat runs (building a statement
# and its cache key costs more than running it on SQLite).
_GET_MACHINE = sa.select(_m).where(_m.c.id == sa.bindparam("mid"))
_IS_REVOKED = sa.select(_revoked.c.serial).where(_revoked.c.serial == sa.bindparam("serial"))
_SET_STATE = (
    sa.update(_m)
    .where(_m.c.id == sa.bindparam("mid"))
    .values(state=sa.bindparam("st"), state_since=sa.bindparam("now"))
)
_SET_STATE_SEEN = _SET_STATE.values(last_seen=sa.bindparam("seen"))
_HELLO = (
    sa.update(_m)
    .where(_m.c.id == sa.bindparam("mid"))
    .values(
        hostname=sa.bindparam("host"),
        primary_ip=sa.bindparam("ip"),
        metadata=sa.bindparam("meta"),
        capabilities=sa.bindparam("caps"),
        agent_version=sa.bindparam("version"),
        state="connected",
        state_since=sa.bindparam("now"),
        last_seen=sa.bindparam("now"),
    )
)
_HELLO_OWNED = _HELLO.values(session_owner=sa.bindparam("owner"))


class MachinesSql(SqlCore):
    def get_machine(self, machine_id: str) -> Machine | None:
        row = self._first(_GET_MACHINE, {"mid": machine_id})
        return _machine(row) if row else None

    def desired_revisions(self, machine_ids: Iterable[str]) -> dict[str, int]:
        """Revoked machines are left out, like machines that do not exist: their sessions
        must end."""
        out: dict[str, int] = {}
        for chunk in in_chunks(sorted(set(machine_ids))):
            rows = self._rows(
                sa.select(_m.c.id, _m.c.desired_revision).where(
                    _m.c.id.in_(chunk), _m.c.revoked == 0
                )
            )
            out.update({row.id: int(row.desired_revision) for row in rows})
        return out

    def list_machines(
        self, *, include_revoked: bool = False, tenant: str | None = None
    ) -> list[Machine]:
        """Machines by id: one tenant's (None: every tenant's)."""
        stmt = sa.select(_m)
        if tenant is not None:
            stmt = stmt.where(_m.c.tenant == tenant)
        if not include_revoked:
            stmt = stmt.where(_m.c.revoked == 0)
        return [_machine(r) for r in self._maps(stmt.order_by(_m.c.id))]

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
        session_owner: str = "",
    ) -> None:
        params = {
            "mid": machine_id,
            "host": hostname,
            "ip": primary_ip,
            "meta": json.dumps(metadata, sort_keys=True),
            "caps": json.dumps(list(capabilities)),
            "version": agent_version,
            "now": now,
        }
        with self._tx() as db:
            if session_owner:
                db.execute(_HELLO_OWNED, {**params, "owner": session_owner})
            else:
                db.execute(_HELLO, params)

    def patch_metadata(self, machine_id: str, patch: dict[str, str | None]) -> bool:
        """Operator overrides over what the agent publishes; None removes a key."""
        with self._tx() as db:
            current = db.execute(
                sa.select(_m.c.metadata_patch).where(_m.c.id == machine_id)
            ).scalar()
            if current is None:
                return False
            merged = {**json.loads(current), **patch}
            db.execute(
                sa.update(_m)
                .where(_m.c.id == machine_id)
                .values(metadata_patch=json.dumps(merged, sort_keys=True))
            )
            return True

    def set_capabilities(self, machine_id: str, capabilities: list[str]) -> None:
        with self._tx() as db:
            db.execute(
                sa.update(_m)
                .where(_m.c.id == machine_id)
                .values(capabilities=json.dumps(capabilities))
            )

    def set_machine_state(
        self, machine_id: str, state: MachineState, now: float, *, last_seen: float | None = None
    ) -> None:
        params = {"mid": machine_id, "st": state, "now": now}
        with self._tx() as db:
            if last_seen is None:  # the stored one stays
                db.execute(_SET_STATE, params)
            else:
                db.execute(_SET_STATE_SEEN, {**params, "seen": last_seen})

    def disconnect_all(self, now: float) -> int:
        """After a restart no session survives: every connected machine is disconnected now."""
        with self._tx() as db:
            result = db.execute(
                sa.update(_m)
                .where(_m.c.state == "connected")
                .values(state="disconnected", state_since=now)
            )
            return int(result.rowcount)

    def set_machine_cert(self, machine_id: str, serial: str, not_after: float, now: float) -> None:
        """Record a renewed certificate; earlier ones stay valid until expiry or revocation."""
        with self._tx() as db:
            db.execute(
                sa.update(_m)
                .where(_m.c.id == machine_id)
                .values(cert_serial=serial, cert_not_after=not_after)
            )
            record_issued(db, serial, machine_id, now, not_after)

    def revoke_machine(self, machine_id: str, now: float) -> bool:
        """Mark the machine revoked and refuse every certificate it was issued so far."""
        try:
            return self._revoke_machine(machine_id, now)
        finally:
            self._revocations.clear()  # after the commit: the next check reads it

    def _revoke_machine(self, machine_id: str, now: float) -> bool:
        issued = schema.issued_certs
        with self._tx() as db:
            found = db.execute(sa.select(_m.c.id).where(_m.c.id == machine_id)).first()
            if found is None:
                return False
            db.execute(
                sa.update(_m)
                .where(_m.c.id == machine_id)
                .values(revoked=1, state="disconnected", state_since=now)
            )
            db.execute(
                self._insert(_revoked)
                .from_select(
                    ["serial", "machine_id", "revoked_at"],
                    sa.select(
                        issued.c.serial,
                        issued.c.machine_id,
                        sa.literal(now, schema.Real),
                    ).where(issued.c.machine_id == machine_id),
                )
                .on_conflict_do_nothing()
            )
            return True

    def is_serial_revoked(self, serial: str) -> bool:
        """Asked on every API request and agent connection, so answers are kept for
        REVOCATION_CACHE_S; a revocation by this store clears them at once."""
        now = time.monotonic()
        seen = self._revocations.get(serial)
        if seen is not None and now - seen[1] < REVOCATION_CACHE_S:
            return seen[0]
        revoked = self._first(_IS_REVOKED, {"serial": serial}) is not None
        if len(self._revocations) >= REVOCATION_CACHE_MAX:
            self._revocations.clear()
        self._revocations[serial] = (revoked, now)
        return revoked


def _machine(row: RowMapping) -> Machine:
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
