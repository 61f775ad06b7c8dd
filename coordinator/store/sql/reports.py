"""What machines report about deployments: stickers and drift."""

from __future__ import annotations

import sqlite3

import msgspec

from coordinator.models import MachineDrift, MachineSticker
from coordinator.store.sql.core import SqlCore
from proto.messages import DriftEntry, Sticker

_sticker_decoder = msgspec.json.Decoder(Sticker)
_drift_decoder = msgspec.json.Decoder(list[DriftEntry])


class ReportsSql(SqlCore):
    def _per_machine(
        self, table: str, machine_id: str | None, order: str, tenant: str | None
    ) -> list[sqlite3.Row]:
        """Every row of a per-machine report table, or one machine's; with `tenant`,
        only those of that tenant's machines."""
        sql = f"SELECT r.* FROM {table} r WHERE 1=1"
        args: list[str] = []
        if tenant is not None:
            sql = f"SELECT r.* FROM machines m JOIN {table} r ON r.machine_id=m.id WHERE m.tenant=?"
            args.append(tenant)
        if machine_id is not None:
            sql += " AND r.machine_id=?"
            args.append(machine_id)
        return self._raw_all(sql + f" ORDER BY {order}", args)

    def put_stickers(self, machine_id: str, stickers: list[Sticker], now: float) -> None:
        """Replace every sticker of the machine with what its agent reported."""
        with self._raw_tx() as db:
            db.execute("DELETE FROM machine_stickers WHERE machine_id=?", (machine_id,))
            db.executemany(
                "INSERT INTO machine_stickers (machine_id, deployment, body, reported_at)"
                " VALUES (?, ?, ?, ?)",
                [
                    (machine_id, s.deployment, msgspec.json.encode(s).decode(), now)
                    for s in stickers
                ],
            )

    def stickers(
        self, machine_id: str | None = None, *, tenant: str | None = None
    ) -> list[MachineSticker]:
        rows = self._per_machine(
            "machine_stickers", machine_id, "r.machine_id, r.deployment", tenant
        )
        return [
            MachineSticker(
                machine_id=r["machine_id"],
                sticker=_sticker_decoder.decode(r["body"]),
                reported_at=r["reported_at"],
            )
            for r in rows
        ]

    def put_drift(
        self, machine_id: str, entries: list[DriftEntry], checked_at: float, now: float
    ) -> None:
        with self._raw_tx() as db:
            db.execute(
                "INSERT INTO machine_drift (machine_id, entries, checked_at, reported_at)"
                " VALUES (?, ?, ?, ?) ON CONFLICT(machine_id) DO UPDATE SET"
                " entries=excluded.entries, checked_at=excluded.checked_at,"
                " reported_at=excluded.reported_at",
                (machine_id, msgspec.json.encode(entries).decode(), checked_at, now),
            )

    def drift(
        self, machine_id: str | None = None, *, tenant: str | None = None
    ) -> list[MachineDrift]:
        rows = self._per_machine("machine_drift", machine_id, "r.machine_id", tenant)
        return [
            MachineDrift(
                machine_id=r["machine_id"],
                entries=_drift_decoder.decode(r["entries"]),
                checked_at=r["checked_at"],
                reported_at=r["reported_at"],
            )
            for r in rows
        ]
