"""Environments, freeze windows, target groups, targets and promotions (#18): one row
per object, its record as JSON, the columns queries filter on beside it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

import msgspec
import sqlalchemy as sa
from sqlalchemy.engine import RowMapping

from coordinator.envs.model import Environment, FreezeWindow, Promotion, Target, TargetGroup
from coordinator.errors import Conflict
from coordinator.store.sql import schema
from coordinator.store.sql.core import SqlCore, unique_name

T = TypeVar("T")

_decoders: dict[type[Any], msgspec.json.Decoder[Any]] = {
    kind: msgspec.json.Decoder(kind)
    for kind in (Environment, FreezeWindow, Promotion, Target, TargetGroup)
}


def _body(value: msgspec.Struct) -> str:
    return msgspec.json.encode(value).decode()


def _decode(rows: Sequence[RowMapping], kind: type[T]) -> list[T]:
    decoder = _decoders[kind]
    return [decoder.decode(r["body"]) for r in rows]


def _same_name_taken(kind: str, name: str, other: Any) -> Conflict:
    return Conflict(f"{kind} named {name!r} already exists (id {other})")


class EnvsSql(SqlCore):
    def _upsert(self, table: sa.Table, values: dict[str, Any], update: Sequence[str]) -> Any:
        """Insert a row, or update `update` of the row with its id."""
        stmt = self._insert(table).values(values)
        return stmt.on_conflict_do_update(
            index_elements=[table.c.id], set_={c: stmt.excluded[c] for c in update}
        )

    def _bodies(self, table: sa.Table, kind: type[T], *where: Any, order: Any = ()) -> list[T]:
        stmt = sa.select(table.c.body).where(*where).order_by(*order)
        return _decode(self._maps(stmt), kind)

    def _delete(self, table: sa.Table, row_id: str) -> bool:
        with self._tx() as db:
            return db.execute(sa.delete(table).where(table.c.id == row_id)).rowcount > 0

    # --- environments ---------------------------------------------------------------------

    def put_environment(self, env: Environment) -> None:
        t = schema.environments
        with unique_name(f"an environment named {env.name!r} already exists"), self._tx() as db:
            other = db.execute(
                sa.select(t.c.id).where(
                    t.c.tenant == env.tenant, t.c.name == env.name, t.c.id != env.id
                )
            ).scalar()
            if other is not None:
                raise _same_name_taken("an environment", env.name, other)
            values = {
                "id": env.id,
                "tenant": env.tenant,
                "name": env.name,
                "order_index": env.order_index,
                "body": _body(env),
            }
            db.execute(self._upsert(t, values, ("name", "order_index", "body")))

    def get_environment(self, env_id: str, *, tenant: str) -> Environment | None:
        t = schema.environments
        found = self._bodies(t, Environment, t.c.id == env_id, t.c.tenant == tenant)
        return found[0] if found else None

    def list_environments(self, *, tenant: str) -> list[Environment]:
        t = schema.environments
        return self._bodies(t, Environment, t.c.tenant == tenant, order=(t.c.order_index, t.c.name))

    def delete_environment(self, env_id: str) -> bool:
        return self._delete(schema.environments, env_id)

    # --- freeze windows -------------------------------------------------------------------

    def put_freeze_window(self, window: FreezeWindow) -> None:
        values = {
            "id": window.id,
            "tenant": window.tenant,
            "environment_id": window.environment_id,
            "start_at": window.start,
            "end_at": window.end,
            "body": _body(window),
        }
        with self._tx() as db:
            db.execute(self._upsert(schema.freeze_windows, values, tuple(values)[1:]))

    def freeze_windows(
        self, *, tenant: str | None, environment_id: str | None = None
    ) -> list[FreezeWindow]:
        t = schema.freeze_windows
        where = _equal(t, tenant=tenant, environment_id=environment_id)
        return self._bodies(t, FreezeWindow, *where, order=(t.c.start_at, t.c.id))

    def delete_freeze_window(self, window_id: str) -> bool:
        return self._delete(schema.freeze_windows, window_id)

    # --- target groups --------------------------------------------------------------------

    def put_target_group(self, group: TargetGroup) -> None:
        t = schema.target_groups
        message = f"the environment already has a target group named {group.name!r}"
        with unique_name(message), self._tx() as db:
            other = db.execute(
                sa.select(t.c.id).where(
                    t.c.environment_id == group.environment_id,
                    t.c.name == group.name,
                    t.c.id != group.id,
                )
            ).scalar()
            if other is not None:
                raise Conflict(f"{message} (id {other})")
            values = {
                "id": group.id,
                "tenant": group.tenant,
                "environment_id": group.environment_id,
                "name": group.name,
                "body": _body(group),
            }
            db.execute(self._upsert(t, values, ("name", "body")))

    def get_target_group(self, group_id: str, *, tenant: str) -> TargetGroup | None:
        t = schema.target_groups
        found = self._bodies(t, TargetGroup, t.c.id == group_id, t.c.tenant == tenant)
        return found[0] if found else None

    def target_groups(self, environment_id: str) -> list[TargetGroup]:
        t = schema.target_groups
        return self._bodies(t, TargetGroup, t.c.environment_id == environment_id, order=(t.c.name,))

    def delete_target_group(self, group_id: str) -> bool:
        return self._delete(schema.target_groups, group_id)

    # --- targets --------------------------------------------------------------------------

    def put_target(self, target: Target) -> None:
        t = schema.env_targets
        with unique_name(f"a target named {target.name!r} already exists"), self._tx() as db:
            other = db.execute(
                sa.select(t.c.id).where(
                    t.c.tenant == target.tenant, t.c.name == target.name, t.c.id != target.id
                )
            ).scalar()
            if other is not None:
                raise _same_name_taken("a target", target.name, other)
            values = {
                "id": target.id,
                "tenant": target.tenant,
                "environment_id": target.environment_id,
                "name": target.name,
                "machine_id": target.machine_id,
                "body": _body(target),
            }
            db.execute(self._upsert(t, values, ("environment_id", "name", "machine_id", "body")))

    def get_target(self, target_id: str, *, tenant: str) -> Target | None:
        t = schema.env_targets
        found = self._bodies(t, Target, t.c.id == target_id, t.c.tenant == tenant)
        return found[0] if found else None

    def targets_of(self, *, tenant: str | None, environment_id: str | None = None) -> list[Target]:
        t = schema.env_targets
        where = _equal(t, tenant=tenant, environment_id=environment_id)
        return self._bodies(t, Target, *where, order=(t.c.name,))

    def delete_target(self, target_id: str) -> bool:
        return self._delete(schema.env_targets, target_id)

    # --- promotions -----------------------------------------------------------------------

    def put_promotion(self, promotion: Promotion) -> None:
        values = {
            "id": promotion.id,
            "tenant": promotion.tenant,
            "environment_id": promotion.environment_id,
            "status": promotion.status,
            "release_id": promotion.release_id,
            "created_at": promotion.created_at,
            "body": _body(promotion),
        }
        with self._tx() as db:
            db.execute(self._upsert(schema.promotions, values, tuple(values)[1:]))

    def get_promotion(self, promotion_id: str, *, tenant: str | None) -> Promotion | None:
        t = schema.promotions
        where = [t.c.id == promotion_id, *_equal(t, tenant=tenant)]
        found = self._bodies(t, Promotion, *where)
        return found[0] if found else None

    def promotions(
        self,
        *,
        tenant: str | None,
        environment_id: str | None = None,
        status: str | None = None,
        release_id: str | None = None,
    ) -> list[Promotion]:
        t = schema.promotions
        where = _equal(
            t, tenant=tenant, environment_id=environment_id, status=status, release_id=release_id
        )
        return self._bodies(t, Promotion, *where, order=(t.c.created_at.desc(), t.c.id))


def _equal(table: sa.Table, **wanted: str | None) -> list[sa.ColumnElement[bool]]:
    """`column = value` for each filter given (None: no filter)."""
    return [table.c[name] == value for name, value in wanted.items() if value is not None]
