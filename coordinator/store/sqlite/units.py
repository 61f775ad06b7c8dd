"""Units, their placements, what machines report about them, per-machine revisions."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

import msgspec

from coordinator.models import Unit, UnitHead, UnitState
from coordinator.store.sqlite.core import SqliteCore, _bump, row_record
from proto.messages import UnitStatus
from proto.units import UnitOption

_options_decoder = msgspec.json.Decoder(list[UnitOption])


class UnitsSql(SqliteCore):
    def get_unit(self, name: str) -> Unit | None:
        row = self._one("SELECT * FROM units WHERE name=?", (name,))
        return None if row is None else _unit(row, self._placements_of(name))

    def list_units(self, *, machine_id: str | None = None) -> list[Unit]:
        """Units ordered by name (fleet's order), optionally only those placed on a machine."""
        if machine_id is None:
            placements = self._all_placements()
            everything = self._all("SELECT * FROM units ORDER BY name")
            return [_unit(r, placements.get(r["name"], [])) for r in everything]
        rows = list(
            self._all(
                "SELECT u.* FROM units u JOIN placements p ON p.unit=u.name"
                " WHERE p.machine_id=? ORDER BY u.name",
                (machine_id,),
            )
        )
        placed: dict[str, list[str]] = {}
        for unit, machine in self._all(
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
            for r in self._all("SELECT name, hash, desired_state, pinned FROM units ORDER BY name")
        ]

    def unit_options(self, names: Sequence[str]) -> dict[str, list[UnitOption]]:
        out: dict[str, list[UnitOption]] = {}
        for i in range(0, len(names), 500):
            chunk = names[i : i + 500]
            marks = ",".join("?" * len(chunk))
            for r in self._all(f"SELECT name, options FROM units WHERE name IN ({marks})", chunk):
                out[r["name"]] = _options_decoder.decode(r["options"])
        return out

    def unit_page(self, offset: int, limit: int) -> tuple[list[Unit], int]:
        with self._read() as db:  # one snapshot for the page and the count
            rows = db.execute(
                "SELECT * FROM units ORDER BY name LIMIT ? OFFSET ?", (limit, offset)
            ).fetchall()
            total = int(db.execute("SELECT COUNT(*) FROM units").fetchone()[0])
            placed: dict[str, list[str]] = {}
            if rows:
                first, last = rows[0]["name"], rows[-1]["name"]
                for unit, machine in db.execute(
                    "SELECT unit, machine_id FROM placements WHERE unit BETWEEN ? AND ?"
                    " ORDER BY unit, machine_id",
                    (first, last),
                ):
                    placed.setdefault(unit, []).append(machine)
        return [_unit(r, placed.get(r["name"], [])) for r in rows], total

    def _all_placements(self) -> dict[str, list[str]]:
        placements: dict[str, list[str]] = {}
        for unit, machine in self._all(
            "SELECT unit, machine_id FROM placements ORDER BY unit, machine_id"
        ):
            placements.setdefault(unit, []).append(machine)
        return placements

    def _placements_of(self, name: str) -> list[str]:
        return [
            r[0]
            for r in self._all(
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
        rows = self._all(sql + " ORDER BY name, machine_id", args)
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
