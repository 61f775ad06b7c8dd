"""Units, their placements, what machines report about them, per-machine revisions."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

import msgspec

from coordinator.models import DEFAULT_TENANT, Unit, UnitHead, UnitState
from coordinator.store.sql.core import SqlCore, _bump, row_record
from proto.messages import UnitStatus
from proto.units import UnitOption

_options_decoder = msgspec.json.Decoder(list[UnitOption])


class UnitsSql(SqlCore):
    """Units are keyed by (tenant, name): two tenants may each have `web.service`."""

    def get_unit(self, name: str, *, tenant: str = DEFAULT_TENANT) -> Unit | None:
        row = self._raw_one("SELECT * FROM units WHERE tenant=? AND name=?", (tenant, name))
        return None if row is None else _unit(row, self._placements_of(tenant, name))

    def list_units(self, *, machine_id: str | None = None, tenant: str | None = None) -> list[Unit]:
        """Units ordered by name (fleet's order): one tenant's (None: every tenant's),
        optionally only those placed on a machine (a machine holds only its tenant's)."""
        if machine_id is None:
            placements = self._all_placements(tenant)
            if tenant is None:
                everything = self._raw_all("SELECT * FROM units ORDER BY name, tenant")
            else:
                everything = self._raw_all(
                    "SELECT * FROM units WHERE tenant=? ORDER BY name", (tenant,)
                )
            return [_unit(r, placements.get((r["tenant"], r["name"]), [])) for r in everything]
        rows = list(
            self._raw_all(
                # CROSS JOIN keeps SQLite's join order: from the machine's placements
                # (placements_by_machine), never a scan of the tenant's units.
                "SELECT u.* FROM placements p CROSS JOIN units u"
                " ON u.tenant=p.tenant AND u.name=p.unit WHERE p.machine_id=?"
                " AND p.tenant=(SELECT tenant FROM machines WHERE id=?) ORDER BY u.name",
                (machine_id, machine_id),
            )
        )
        placed: dict[tuple[str, str], list[str]] = {}
        for t, unit, machine in self._raw_all(
            "SELECT p2.tenant, p2.unit, p2.machine_id FROM placements p1"
            " CROSS JOIN placements p2 ON p2.tenant=p1.tenant AND p2.unit=p1.unit"
            " WHERE p1.machine_id=? ORDER BY p2.unit, p2.machine_id",
            (machine_id,),
        ):
            placed.setdefault((t, unit), []).append(machine)
        return [
            _unit(r, placed.get((r["tenant"], r["name"]), []))
            for r in rows
            if tenant is None or r["tenant"] == tenant
        ]

    def unit_heads(self, *, tenant: str | None = None) -> list[UnitHead]:
        """Every unit (of one tenant, or of all) with its placements but without decoding
        its options (a scheduling pass over 100,000 units needs the options only of
        units it has not seen)."""
        placements = self._all_placements(tenant)
        sql = "SELECT tenant, name, hash, desired_state, pinned FROM units"
        args: tuple[str, ...] = ()
        if tenant is not None:
            sql, args = sql + " WHERE tenant=?", (tenant,)
        return [
            UnitHead(
                name=r["name"],
                hash=r["hash"],
                desired_state=r["desired_state"],
                pinned=bool(r["pinned"]),
                machines=placements.get((r["tenant"], r["name"]), []),
                tenant=r["tenant"],
            )
            for r in self._raw_all(sql + " ORDER BY tenant, name", args)
        ]

    def unit_options(
        self, names: Sequence[str], *, tenant: str = DEFAULT_TENANT
    ) -> dict[str, list[UnitOption]]:
        out: dict[str, list[UnitOption]] = {}
        for i in range(0, len(names), 500):
            chunk = names[i : i + 500]
            marks = ",".join("?" * len(chunk))
            for r in self._raw_all(
                f"SELECT name, options FROM units WHERE tenant=? AND name IN ({marks})",
                [tenant, *chunk],
            ):
                out[r["name"]] = _options_decoder.decode(r["options"])
        return out

    def unit_page(
        self, offset: int, limit: int, *, tenant: str = DEFAULT_TENANT
    ) -> tuple[list[Unit], int]:
        with self._raw_read() as db:  # one snapshot for the page and the count
            rows = db.execute(
                "SELECT * FROM units WHERE tenant=? ORDER BY name LIMIT ? OFFSET ?",
                (tenant, limit, offset),
            ).fetchall()
            total = int(
                db.execute("SELECT COUNT(*) FROM units WHERE tenant=?", (tenant,)).fetchone()[0]
            )
            placed: dict[str, list[str]] = {}
            if rows:
                first, last = rows[0]["name"], rows[-1]["name"]
                for unit, machine in db.execute(
                    "SELECT unit, machine_id FROM placements"
                    " WHERE tenant=? AND unit BETWEEN ? AND ? ORDER BY unit, machine_id",
                    (tenant, first, last),
                ):
                    placed.setdefault(unit, []).append(machine)
        return [_unit(r, placed.get(r["name"], [])) for r in rows], total

    def _all_placements(self, tenant: str | None) -> dict[tuple[str, str], list[str]]:
        placements: dict[tuple[str, str], list[str]] = {}
        if tenant is None:
            rows = self._raw_all(
                "SELECT tenant, unit, machine_id FROM placements ORDER BY tenant, unit, machine_id"
            )
        else:
            rows = self._raw_all(
                "SELECT tenant, unit, machine_id FROM placements WHERE tenant=?"
                " ORDER BY unit, machine_id",
                (tenant,),
            )
        for t, unit, machine in rows:
            placements.setdefault((t, unit), []).append(machine)
        return placements

    def _placements_of(self, tenant: str, name: str) -> list[str]:
        return [
            r[0]
            for r in self._raw_all(
                "SELECT machine_id FROM placements WHERE tenant=? AND unit=? ORDER BY machine_id",
                (tenant, name),
            )
        ]

    def put_units(self, units: list[Unit], now: float, *, tenant: str = DEFAULT_TENANT) -> set[str]:
        """Many units in one transaction (one fsync); returns the affected machines."""
        affected: set[str] = set()
        with self._raw_tx():
            for unit in units:
                affected |= self.put_unit(unit, now, tenant=tenant)
        return affected

    def put_unit(self, unit: Unit, now: float, *, tenant: str = DEFAULT_TENANT) -> set[str]:
        """Create or replace a unit with its placements; returns the machines whose
        desired state changed (their revisions are bumped in the same transaction).

        What machines reported stays when a unit moves or goes: a copy runs until its
        machine says it stopped (a partitioned machine cannot), so its row goes only
        when that machine reports the unit gone (`record_unit_states`)."""
        with self._raw_tx() as db:
            old = {
                r[0]
                for r in db.execute(
                    "SELECT machine_id FROM placements WHERE tenant=? AND unit=?",
                    (tenant, unit.name),
                )
            }
            db.execute(
                "INSERT INTO units (tenant, name, options, hash, desired_state, pinned,"
                " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT(tenant, name) DO UPDATE SET"
                " options=excluded.options, hash=excluded.hash, pinned=excluded.pinned,"
                " desired_state=excluded.desired_state, updated_at=excluded.updated_at",
                (
                    tenant,
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
                "DELETE FROM placements WHERE tenant=? AND unit=? AND machine_id=?",
                [(tenant, unit.name, m) for m in old - new],
            )
            db.executemany(
                "INSERT OR IGNORE INTO placements (tenant, unit, machine_id) VALUES (?, ?, ?)",
                [(tenant, unit.name, m) for m in new - old],
            )
            affected = old | new
            _bump(db, affected)
            return affected

    def set_placements(
        self, changes: dict[str, list[str]], *, tenant: str = DEFAULT_TENANT
    ) -> set[str]:
        """Store many units' new placements in one transaction (the scheduler's output);
        returns every machine whose desired state changed, revisions bumped."""
        affected: set[str] = set()
        with self._raw_tx() as db:
            for name, machines in sorted(changes.items()):
                old = {
                    r[0]
                    for r in db.execute(
                        "SELECT machine_id FROM placements WHERE tenant=? AND unit=?",
                        (tenant, name),
                    )
                }
                new = set(machines)
                db.executemany(
                    "DELETE FROM placements WHERE tenant=? AND unit=? AND machine_id=?",
                    [(tenant, name, m) for m in old - new],
                )
                db.executemany(
                    "INSERT INTO placements (tenant, unit, machine_id) VALUES (?, ?, ?)",
                    [(tenant, name, m) for m in new - old],
                )
                affected |= old ^ new
            _bump(db, affected)
        return affected

    def delete_unit(self, name: str, *, tenant: str = DEFAULT_TENANT) -> set[str] | None:
        """Remove a unit; None if it did not exist, else the machines it was placed on."""
        with self._raw_tx() as db:
            placed = {
                r[0]
                for r in db.execute(
                    "SELECT machine_id FROM placements WHERE tenant=? AND unit=?", (tenant, name)
                )
            }
            if (
                db.execute("DELETE FROM units WHERE tenant=? AND name=?", (tenant, name)).rowcount
                != 1
            ):
                return None
            _bump(db, placed)
            return placed

    def set_applied_revision(self, machine_id: str, revision: int) -> None:
        with self._raw_tx() as db:
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
        with self._raw_tx() as db:
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
        self,
        *,
        machine_id: str | None = None,
        name: str | None = None,
        tenant: str | None = None,
    ) -> list[UnitState]:
        """Reported states ordered by (name, machine) - fleet's order for /state; with
        `tenant`, only what that tenant's machines reported."""
        sql = "SELECT s.* FROM unit_states s WHERE 1=1"
        args: list[str] = []
        if tenant is not None:
            sql = (
                "SELECT s.* FROM machines m JOIN unit_states s ON s.machine_id=m.id"
                " WHERE m.tenant=?"
            )
            args = [tenant]
        if machine_id is not None:
            sql, args = sql + " AND s.machine_id=?", [*args, machine_id]
        if name is not None:
            sql, args = sql + " AND s.name=?", [*args, name]
        rows = self._raw_all(sql + " ORDER BY s.name, s.machine_id", args)
        return [row_record(r, UnitState) for r in rows]


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
