"""Units, their placements, what machines report about them, per-machine revisions."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import Any

import msgspec
import sqlalchemy as sa
from sqlalchemy.engine import Connection, RowMapping

from coordinator.models import DEFAULT_TENANT, Unit, UnitHead, UnitState
from coordinator.store.sql import schema
from coordinator.store.sql.core import Prepared, SqlCore, bump, in_chunks, row_record
from proto.messages import UnitStatus
from proto.units import UnitOption

_options_decoder = msgspec.json.Decoder(list[UnitOption])

_u = schema.units
_p = schema.placements
_s = schema.unit_states
_m = schema.machines

IN_CHUNK = 500
"""Names per IN list: far below either engine's limit on parameters per statement."""

# The statements of the hot paths (every agent's desired state and reports), built
# once: building one, and its cache key, costs more than running it on SQLite.
_GET_UNIT = sa.select(_u).where(
    _u.c.tenant == sa.bindparam("tenant"), _u.c.name == sa.bindparam("name")
)
_PLACEMENTS_OF = (
    sa.select(_p.c.machine_id)
    .where(_p.c.tenant == sa.bindparam("tenant"), _p.c.unit == sa.bindparam("name"))
    .order_by(_p.c.machine_id)
)
_PLACEMENTS_OF_UNITS = sa.select(_p.c.unit, _p.c.machine_id).where(
    _p.c.tenant == sa.bindparam("tenant"), _p.c.unit.in_(sa.bindparam("names", expanding=True))
)
_UNIT_COLUMNS = (
    "tenant",
    "name",
    "options",
    "hash",
    "desired_state",
    "pinned",
    "created_at",
    "updated_at",
)
_machine_tenant = sa.select(_m.c.tenant).where(_m.c.id == sa.bindparam("mid")).scalar_subquery()
_UNITS_ON_MACHINE = (
    # the units by key from the machine's own placements (placements_by_machine):
    # never a scan of the tenant's units
    sa.select(_u)
    .where(
        _u.c.tenant == _machine_tenant,
        _u.c.name.in_(
            sa.select(_p.c.unit).where(
                _p.c.machine_id == sa.bindparam("mid"), _p.c.tenant == _machine_tenant
            )
        ),
    )
    .order_by(_u.c.name)
)
_mine, _others = _p.alias("mine"), _p.alias("others")
_PLACEMENTS_WITH_MACHINE = (
    # every placement of the units placed on one machine
    sa.select(_others.c.tenant, _others.c.unit, _others.c.machine_id)
    .select_from(
        _mine.join(
            _others, sa.and_(_others.c.tenant == _mine.c.tenant, _others.c.unit == _mine.c.unit)
        )
    )
    .where(_mine.c.machine_id == sa.bindparam("mid"))
    .order_by(_others.c.unit, _others.c.machine_id)
)
_DELETE_PLACEMENT = sa.delete(_p).where(
    _p.c.tenant == sa.bindparam("t"),
    _p.c.unit == sa.bindparam("u"),
    _p.c.machine_id == sa.bindparam("m"),
)
_DELETE_STATE = sa.delete(_s).where(
    _s.c.name == sa.bindparam("n"), _s.c.machine_id == sa.bindparam("mid")
)
_DELETE_STATES_OF = sa.delete(_s).where(_s.c.machine_id == sa.bindparam("mid"))
_INSERT_STATE = sa.insert(_s)
_SET_APPLIED = (
    sa.update(_m).where(_m.c.id == sa.bindparam("mid")).values(applied_revision=sa.bindparam("rev"))
)
_STATE_COLUMNS = (
    "name",
    "machine_id",
    "hash",
    "load_state",
    "active_state",
    "sub_state",
    "main_pid",
    "image_digest",
    "message",
    "target_state",
    "updated_at",
)


class UnitsSql(SqlCore):
    """Units are keyed by (tenant, name): two tenants may each have `web.service`."""

    @cached_property
    def _upsert_units(self) -> Prepared:
        """Create a unit or replace all but its creation time (compiled once per store:
        SQLAlchemy would compile an ON CONFLICT statement on every execution)."""
        stmt = self._insert(_u)
        upsert = stmt.on_conflict_do_update(
            index_elements=[_u.c.tenant, _u.c.name],
            set_={
                "options": stmt.excluded.options,
                "hash": stmt.excluded.hash,
                "pinned": stmt.excluded.pinned,
                "desired_state": stmt.excluded.desired_state,
                "updated_at": stmt.excluded.updated_at,
            },
        )
        return self._prepare(upsert, _UNIT_COLUMNS)

    @cached_property
    def _add_placements(self) -> Prepared:
        return self._prepare(
            self._insert(_p).on_conflict_do_nothing(), ("tenant", "unit", "machine_id")
        )

    @cached_property
    def _upsert_states(self) -> Prepared:
        """What a machine reported about a unit, over what it reported before."""
        stmt = self._insert(_s)
        upsert = stmt.on_conflict_do_update(
            index_elements=[_s.c.name, _s.c.machine_id],
            set_={c: stmt.excluded[c] for c in _STATE_COLUMNS if c not in ("name", "machine_id")},
        )
        return self._prepare(upsert, _STATE_COLUMNS)

    def get_unit(self, name: str, *, tenant: str = DEFAULT_TENANT) -> Unit | None:
        row = self._first(_GET_UNIT, {"tenant": tenant, "name": name})
        return None if row is None else _unit(row, self._placements_of(tenant, name))

    def list_units(self, *, machine_id: str | None = None, tenant: str | None = None) -> list[Unit]:
        """Units ordered by name (fleet's order): one tenant's (None: every tenant's),
        optionally only those placed on a machine (a machine holds only its tenant's)."""
        if machine_id is None:
            placements = self._all_placements(tenant)
            if tenant is None:
                everything = self._maps(sa.select(_u).order_by(_u.c.name, _u.c.tenant))
            else:
                everything = self._maps(
                    sa.select(_u).where(_u.c.tenant == tenant).order_by(_u.c.name)
                )
            return [_unit(r, placements.get((r["tenant"], r["name"]), [])) for r in everything]
        rows = self._maps(_UNITS_ON_MACHINE, {"mid": machine_id})
        placed: dict[tuple[str, str], list[str]] = {}
        for t, unit, machine in self._rows(_PLACEMENTS_WITH_MACHINE, {"mid": machine_id}):
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
        stmt = sa.select(_u.c.tenant, _u.c.name, _u.c.hash, _u.c.desired_state, _u.c.pinned)
        if tenant is not None:
            stmt = stmt.where(_u.c.tenant == tenant)
        return [
            UnitHead(
                name=r["name"],
                hash=r["hash"],
                desired_state=r["desired_state"],
                pinned=bool(r["pinned"]),
                machines=placements.get((r["tenant"], r["name"]), []),
                tenant=r["tenant"],
            )
            for r in self._maps(stmt.order_by(_u.c.tenant, _u.c.name))
        ]

    def unit_options(
        self, names: Sequence[str], *, tenant: str = DEFAULT_TENANT
    ) -> dict[str, list[UnitOption]]:
        out: dict[str, list[UnitOption]] = {}
        for chunk in in_chunks(names, IN_CHUNK):
            for name, options in self._rows(
                sa.select(_u.c.name, _u.c.options).where(
                    _u.c.tenant == tenant, _u.c.name.in_(chunk)
                )
            ):
                out[name] = _options_decoder.decode(options)
        return out

    def unit_page(
        self, offset: int, limit: int, *, tenant: str = DEFAULT_TENANT
    ) -> tuple[list[Unit], int]:
        # The page and the count in one statement: one snapshot on either engine.
        count = (
            sa.select(sa.func.count())
            .select_from(_u)
            .where(_u.c.tenant == tenant)
            .correlate(None)  # the tenant's units, not the outer row
        )
        rows = self._maps(
            sa.select(_u, count.scalar_subquery().label("total"))
            .where(_u.c.tenant == tenant)
            .order_by(_u.c.name)
            .limit(limit)
            .offset(offset)
        )
        if not rows:
            return [], int(self._scalar(count))
        placed: dict[str, list[str]] = {}
        for unit, machine in self._rows(
            sa.select(_p.c.unit, _p.c.machine_id)
            .where(
                _p.c.tenant == tenant,
                # not BETWEEN: PostgreSQL refuses the bound names' COLLATE "C" in it
                _p.c.unit >= rows[0]["name"],
                _p.c.unit <= rows[-1]["name"],
            )
            .order_by(_p.c.unit, _p.c.machine_id)
        ):
            placed.setdefault(unit, []).append(machine)
        return [_unit(r, placed.get(r["name"], [])) for r in rows], int(rows[0]["total"])

    def _all_placements(self, tenant: str | None) -> dict[tuple[str, str], list[str]]:
        placements: dict[tuple[str, str], list[str]] = {}
        stmt = sa.select(_p.c.tenant, _p.c.unit, _p.c.machine_id)
        if tenant is None:
            stmt = stmt.order_by(_p.c.tenant, _p.c.unit, _p.c.machine_id)
        else:
            stmt = stmt.where(_p.c.tenant == tenant).order_by(_p.c.unit, _p.c.machine_id)
        for t, unit, machine in self._rows(stmt):
            placements.setdefault((t, unit), []).append(machine)
        return placements

    def _placements_of(self, tenant: str, name: str) -> list[str]:
        return [r[0] for r in self._rows(_PLACEMENTS_OF, {"tenant": tenant, "name": name})]

    def _replace_placements(
        self, db: Connection, tenant: str, wanted: Mapping[str, set[str]]
    ) -> dict[str, set[str]]:
        """Make each named unit's placements exactly `wanted[name]`, in a few batched
        statements; returns what they were before (a name without any: empty)."""
        names = sorted(wanted)
        old: dict[str, set[str]] = {name: set() for name in names}
        for chunk in in_chunks(names, IN_CHUNK):
            for unit, machine in db.execute(
                _PLACEMENTS_OF_UNITS, {"tenant": tenant, "names": chunk}
            ):
                old[unit].add(machine)
        gone = [
            {"t": tenant, "u": name, "m": m}
            for name in names
            for m in sorted(old[name] - wanted[name])
        ]
        added = [
            {"tenant": tenant, "unit": name, "machine_id": m}
            for name in names
            for m in sorted(wanted[name] - old[name])
        ]
        if gone:
            db.execute(_DELETE_PLACEMENT, gone)
        if added:
            self._add_placements.run(db, added)
        return old

    def put_units(self, units: list[Unit], now: float, *, tenant: str = DEFAULT_TENANT) -> set[str]:
        """Many units in one transaction (one fsync) and a few batched statements;
        returns the affected machines: every machine any of them was or is placed on."""
        if not units:
            return set()
        last = {u.name: u for u in units}  # a name given twice: the later one wins
        with self._tx() as db:
            self._upsert_units.run(
                db,
                [
                    {
                        "tenant": tenant,
                        "name": u.name,
                        "options": msgspec.json.encode(u.options).decode(),
                        "hash": u.hash,
                        "desired_state": u.desired_state,
                        "pinned": int(u.pinned),
                        "created_at": now,
                        "updated_at": now,
                    }
                    for u in last.values()
                ],
            )
            old = self._replace_placements(
                db, tenant, {name: set(u.machines) for name, u in last.items()}
            )
            affected = {m for u in units for m in u.machines}
            for machines in old.values():
                affected |= machines
            bump(db, affected)
            return affected

    def put_unit(self, unit: Unit, now: float, *, tenant: str = DEFAULT_TENANT) -> set[str]:
        """Create or replace a unit with its placements; returns the machines whose
        desired state changed (their revisions are bumped in the same transaction).

        What machines reported stays when a unit moves or goes: a copy runs until its
        machine says it stopped (a partitioned machine cannot), so its row goes only
        when that machine reports the unit gone (`record_unit_states`)."""
        return self.put_units([unit], now, tenant=tenant)

    def set_placements(
        self, changes: dict[str, list[str]], *, tenant: str = DEFAULT_TENANT
    ) -> set[str]:
        """Store many units' new placements in one transaction (the scheduler's output);
        returns every machine whose desired state changed, revisions bumped."""
        affected: set[str] = set()
        with self._tx() as db:
            wanted = {name: set(machines) for name, machines in changes.items()}
            old = self._replace_placements(db, tenant, wanted)
            for name, machines in wanted.items():
                affected |= old[name] ^ machines
            bump(db, affected)
        return affected

    def delete_unit(self, name: str, *, tenant: str = DEFAULT_TENANT) -> set[str] | None:
        """Remove a unit; None if it did not exist, else the machines it was placed on."""
        with self._tx() as db:
            placed = set(
                db.execute(
                    sa.select(_p.c.machine_id).where(_p.c.tenant == tenant, _p.c.unit == name)
                ).scalars()
            )
            deleted = db.execute(sa.delete(_u).where(_u.c.tenant == tenant, _u.c.name == name))
            if deleted.rowcount != 1:
                return None
            bump(db, placed)
            return placed

    def set_applied_revision(self, machine_id: str, revision: int) -> None:
        with self._tx() as db:
            db.execute(_SET_APPLIED, {"mid": machine_id, "rev": revision})

    def record_unit_states(
        self,
        machine_id: str,
        changes: list[UnitStatus],
        removed: list[str],
        now: float,
        *,
        replace_all: bool = False,
    ) -> None:
        """Store what a machine reported; `replace_all` for a Hello's full snapshot.

        The snapshot (every agent's, when a fleet reconnects) lands with a plain
        INSERT after the DELETE: no row of the machine is left to conflict with."""
        rows = {c.name: _state_row(c, machine_id, now) for c in changes}  # the later wins
        with self._tx() as db:
            if replace_all:
                db.execute(_DELETE_STATES_OF, {"mid": machine_id})
            if removed:
                db.execute(_DELETE_STATE, [{"n": name, "mid": machine_id} for name in removed])
            if rows:
                if replace_all:
                    db.execute(_INSERT_STATE, list(rows.values()))
                else:
                    self._upsert_states.run(db, list(rows.values()))

    def unit_states(
        self,
        *,
        machine_id: str | None = None,
        name: str | None = None,
        tenant: str | None = None,
    ) -> list[UnitState]:
        """Reported states ordered by (name, machine) - fleet's order for /state; with
        `tenant`, only what that tenant's machines reported."""
        stmt = _states_query(tenant is not None, machine_id is not None, name is not None)
        rows = self._maps(stmt, {"tenant": tenant, "mid": machine_id, "name": name})
        return [row_record(r, UnitState) for r in rows]


@functools.cache
def _states_query(by_tenant: bool, by_machine: bool, by_name: bool) -> sa.Select[Any]:
    """`unit_states`' query for one combination of filters, built once (a fleet
    `GET /units/x` asks for one unit's states: building the statement cost more than
    running it)."""
    stmt = sa.select(_s)
    if by_tenant:
        m = schema.machines
        stmt = stmt.select_from(m.join(_s, _s.c.machine_id == m.c.id)).where(
            m.c.tenant == sa.bindparam("tenant")
        )
    if by_machine:
        stmt = stmt.where(_s.c.machine_id == sa.bindparam("mid"))
    if by_name:
        stmt = stmt.where(_s.c.name == sa.bindparam("name"))
    return stmt.order_by(_s.c.name, _s.c.machine_id)


def _state_row(c: UnitStatus, machine_id: str, now: float) -> dict[str, Any]:
    return {
        "name": c.name,
        "machine_id": machine_id,
        "hash": c.hash,
        "load_state": c.load_state,
        "active_state": c.active_state,
        "sub_state": c.sub_state,
        "main_pid": c.main_pid,
        "image_digest": c.image_digest,
        "message": c.message,
        "target_state": c.target_state,
        "updated_at": now,
    }


def _unit(row: RowMapping, machines: list[str]) -> Unit:
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
