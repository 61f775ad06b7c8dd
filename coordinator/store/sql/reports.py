"""What machines report about deployments: stickers and drift."""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
import sqlalchemy as sa
from sqlalchemy.engine import RowMapping

from coordinator.models import MachineDrift, MachineSticker
from coordinator.store.sql import schema
from coordinator.store.sql.core import SqlCore
from proto.messages import DriftEntry, Sticker

_sticker_decoder = msgspec.json.Decoder(Sticker)
_drift_decoder = msgspec.json.Decoder(list[DriftEntry])


class ReportsSql(SqlCore):
    def _per_machine(
        self,
        table: sa.Table,
        machine_id: str | None,
        order: Sequence[str],
        tenant: str | None,
    ) -> Sequence[RowMapping]:
        """Every row of a per-machine report table, or one machine's; with `tenant`,
        only those of that tenant's machines."""
        stmt = sa.select(table)
        if tenant is not None:
            m = schema.machines
            stmt = stmt.select_from(m.join(table, table.c.machine_id == m.c.id)).where(
                m.c.tenant == tenant
            )
        if machine_id is not None:
            stmt = stmt.where(table.c.machine_id == machine_id)
        return self._maps(stmt.order_by(*(table.c[name] for name in order)))

    def put_stickers(self, machine_id: str, stickers: list[Sticker], now: float) -> None:
        """Replace every sticker of the machine with what its agent reported."""
        t = schema.machine_stickers
        with self._tx() as db:
            db.execute(sa.delete(t).where(t.c.machine_id == machine_id))
            if stickers:
                db.execute(
                    sa.insert(t),
                    [
                        {
                            "machine_id": machine_id,
                            "deployment": s.deployment,
                            "body": msgspec.json.encode(s).decode(),
                            "reported_at": now,
                        }
                        for s in stickers
                    ],
                )

    def stickers(
        self, machine_id: str | None = None, *, tenant: str | None = None
    ) -> list[MachineSticker]:
        rows = self._per_machine(
            schema.machine_stickers, machine_id, ("machine_id", "deployment"), tenant
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
        t = schema.machine_drift
        stmt = self._insert(t).values(
            machine_id=machine_id,
            entries=msgspec.json.encode(entries).decode(),
            checked_at=checked_at,
            reported_at=now,
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=[t.c.machine_id],
            set_={
                "entries": stmt.excluded.entries,
                "checked_at": stmt.excluded.checked_at,
                "reported_at": stmt.excluded.reported_at,
            },
        )
        with self._tx() as db:
            db.execute(stmt)

    def drift(
        self, machine_id: str | None = None, *, tenant: str | None = None
    ) -> list[MachineDrift]:
        rows = self._per_machine(schema.machine_drift, machine_id, ("machine_id",), tenant)
        return [
            MachineDrift(
                machine_id=r["machine_id"],
                entries=_drift_decoder.decode(r["entries"]),
                checked_at=r["checked_at"],
                reported_at=r["reported_at"],
            )
            for r in rows
        ]
