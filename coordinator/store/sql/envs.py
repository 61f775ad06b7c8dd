"""Environments, freeze windows, target groups, targets and promotions (#18): one row
per object, its record as JSON, the columns queries filter on beside it."""

from __future__ import annotations

import sqlite3
from typing import Any, TypeVar

import msgspec

from coordinator.envs.model import Environment, FreezeWindow, Promotion, Target, TargetGroup
from coordinator.errors import Conflict
from coordinator.store.sql.core import SqlCore

T = TypeVar("T")

_decoders: dict[type[Any], msgspec.json.Decoder[Any]] = {
    kind: msgspec.json.Decoder(kind)
    for kind in (Environment, FreezeWindow, Promotion, Target, TargetGroup)
}


def _body(value: msgspec.Struct) -> str:
    return msgspec.json.encode(value).decode()


def _decode(rows: list[sqlite3.Row], kind: type[T]) -> list[T]:
    decoder = _decoders[kind]
    return [decoder.decode(r["body"]) for r in rows]


class EnvsSql(SqlCore):
    # --- environments ---------------------------------------------------------------------

    def put_environment(self, env: Environment) -> None:
        with self._raw_tx() as db:
            other = db.execute(
                "SELECT id FROM environments WHERE tenant=? AND name=? AND id<>?",
                (env.tenant, env.name, env.id),
            ).fetchone()
            if other is not None:
                raise Conflict(f"an environment named {env.name!r} already exists (id {other[0]})")
            db.execute(
                "INSERT INTO environments (id, tenant, name, order_index, body)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET name=excluded.name,"
                " order_index=excluded.order_index, body=excluded.body",
                (env.id, env.tenant, env.name, env.order_index, _body(env)),
            )

    def get_environment(self, env_id: str, *, tenant: str) -> Environment | None:
        rows = self._raw_all(
            "SELECT body FROM environments WHERE id=? AND tenant=?", (env_id, tenant)
        )
        found = _decode(rows, Environment)
        return found[0] if found else None

    def list_environments(self, *, tenant: str) -> list[Environment]:
        rows = self._raw_all(
            "SELECT body FROM environments WHERE tenant=? ORDER BY order_index, name", (tenant,)
        )
        return _decode(rows, Environment)

    def delete_environment(self, env_id: str) -> bool:
        with self._raw_tx() as db:
            return db.execute("DELETE FROM environments WHERE id=?", (env_id,)).rowcount > 0

    # --- freeze windows -------------------------------------------------------------------

    def put_freeze_window(self, window: FreezeWindow) -> None:
        with self._raw_tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO freeze_windows"
                " (id, tenant, environment_id, start_at, end_at, body) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    window.id,
                    window.tenant,
                    window.environment_id,
                    window.start,
                    window.end,
                    _body(window),
                ),
            )

    def freeze_windows(
        self, *, tenant: str | None, environment_id: str | None = None
    ) -> list[FreezeWindow]:
        sql, args = "SELECT body FROM freeze_windows WHERE 1=1", list[object]()
        if tenant is not None:
            sql, args = sql + " AND tenant=?", [*args, tenant]
        if environment_id is not None:
            sql, args = sql + " AND environment_id=?", [*args, environment_id]
        return _decode(self._raw_all(sql + " ORDER BY start_at, id", args), FreezeWindow)

    def delete_freeze_window(self, window_id: str) -> bool:
        with self._raw_tx() as db:
            return db.execute("DELETE FROM freeze_windows WHERE id=?", (window_id,)).rowcount > 0

    # --- target groups --------------------------------------------------------------------

    def put_target_group(self, group: TargetGroup) -> None:
        with self._raw_tx() as db:
            other = db.execute(
                "SELECT id FROM target_groups WHERE environment_id=? AND name=? AND id<>?",
                (group.environment_id, group.name, group.id),
            ).fetchone()
            if other is not None:
                raise Conflict(
                    f"the environment already has a target group named {group.name!r}"
                    f" (id {other[0]})"
                )
            db.execute(
                "INSERT INTO target_groups (id, tenant, environment_id, name, body)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET name=excluded.name,"
                " body=excluded.body",
                (group.id, group.tenant, group.environment_id, group.name, _body(group)),
            )

    def get_target_group(self, group_id: str, *, tenant: str) -> TargetGroup | None:
        rows = self._raw_all(
            "SELECT body FROM target_groups WHERE id=? AND tenant=?", (group_id, tenant)
        )
        found = _decode(rows, TargetGroup)
        return found[0] if found else None

    def target_groups(self, environment_id: str) -> list[TargetGroup]:
        rows = self._raw_all(
            "SELECT body FROM target_groups WHERE environment_id=? ORDER BY name", (environment_id,)
        )
        return _decode(rows, TargetGroup)

    def delete_target_group(self, group_id: str) -> bool:
        with self._raw_tx() as db:
            return db.execute("DELETE FROM target_groups WHERE id=?", (group_id,)).rowcount > 0

    # --- targets --------------------------------------------------------------------------

    def put_target(self, target: Target) -> None:
        with self._raw_tx() as db:
            other = db.execute(
                "SELECT id FROM env_targets WHERE tenant=? AND name=? AND id<>?",
                (target.tenant, target.name, target.id),
            ).fetchone()
            if other is not None:
                raise Conflict(f"a target named {target.name!r} already exists (id {other[0]})")
            db.execute(
                "INSERT INTO env_targets (id, tenant, environment_id, name, machine_id, body)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET"
                " environment_id=excluded.environment_id, name=excluded.name,"
                " machine_id=excluded.machine_id, body=excluded.body",
                (
                    target.id,
                    target.tenant,
                    target.environment_id,
                    target.name,
                    target.machine_id,
                    _body(target),
                ),
            )

    def get_target(self, target_id: str, *, tenant: str) -> Target | None:
        rows = self._raw_all(
            "SELECT body FROM env_targets WHERE id=? AND tenant=?", (target_id, tenant)
        )
        found = _decode(rows, Target)
        return found[0] if found else None

    def targets_of(self, *, tenant: str | None, environment_id: str | None = None) -> list[Target]:
        sql, args = "SELECT body FROM env_targets WHERE 1=1", list[object]()
        if tenant is not None:
            sql, args = sql + " AND tenant=?", [*args, tenant]
        if environment_id is not None:
            sql, args = sql + " AND environment_id=?", [*args, environment_id]
        return _decode(self._raw_all(sql + " ORDER BY name", args), Target)

    def delete_target(self, target_id: str) -> bool:
        with self._raw_tx() as db:
            return db.execute("DELETE FROM env_targets WHERE id=?", (target_id,)).rowcount > 0

    # --- promotions -----------------------------------------------------------------------

    def put_promotion(self, promotion: Promotion) -> None:
        with self._raw_tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO promotions"
                " (id, tenant, environment_id, status, release_id, created_at, body)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    promotion.id,
                    promotion.tenant,
                    promotion.environment_id,
                    promotion.status,
                    promotion.release_id,
                    promotion.created_at,
                    _body(promotion),
                ),
            )

    def get_promotion(self, promotion_id: str, *, tenant: str | None) -> Promotion | None:
        sql, args = "SELECT body FROM promotions WHERE id=?", list[object]([promotion_id])
        if tenant is not None:
            sql, args = sql + " AND tenant=?", [*args, tenant]
        found = _decode(self._raw_all(sql, args), Promotion)
        return found[0] if found else None

    def promotions(
        self,
        *,
        tenant: str | None,
        environment_id: str | None = None,
        status: str | None = None,
        release_id: str | None = None,
    ) -> list[Promotion]:
        sql, args = "SELECT body FROM promotions WHERE 1=1", list[object]()
        for column, value in (
            ("tenant", tenant),
            ("environment_id", environment_id),
            ("status", status),
            ("release_id", release_id),
        ):
            if value is not None:
                sql, args = sql + f" AND {column}=?", [*args, value]
        return _decode(self._raw_all(sql + " ORDER BY created_at DESC, id", args), Promotion)
