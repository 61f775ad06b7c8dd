"""Batch tasks: definitions, runs, their events and their logs (chunks keyed by run
and byte offset, append-only, each byte kept once)."""

from __future__ import annotations

from typing import Any

import msgspec
import sqlalchemy as sa
from sqlalchemy.engine import RowMapping

from coordinator.errors import Conflict
from coordinator.store.sql import schema
from coordinator.store.sql.core import SqlCore
from coordinator.tasks.logs import new_piece
from coordinator.tasks.records import EnvVar, RunEvent, RunQuery, TaskDefinition, TaskRun

_DEF_JSON = ("env", "tags")
_RUN_JSON = ("env", "run_tags")
_RUN_SORT = {
    "run_id": "run_id",
    "cluster_name": "cluster",
    "status": "status",
    "started_at": "started_at",
    "finished_at": "finished_at",
    "group_name": "group_name",
    "queued_at": "queued_at",
}
_ACTIVE = ("QUEUED", "PENDING", "RUNNING")


def _row(record: msgspec.Struct, json_fields: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in record.__struct_fields__:
        value = getattr(record, name)
        if name in json_fields:
            out[name] = msgspec.json.encode(value).decode()
        elif isinstance(value, bool):
            out[name] = int(value)
        else:
            out[name] = value
    return out


def _record(row: RowMapping, kind: type[Any], json_fields: tuple[str, ...]) -> Any:
    data = {str(k): v for k, v in row.items() if k in kind.__struct_fields__}
    for name in json_fields:
        data[name] = msgspec.json.decode(data[name])
    return msgspec.convert(data, kind, strict=False)


def _definition(row: RowMapping) -> TaskDefinition:
    return _record(row, TaskDefinition, _DEF_JSON)  # type: ignore[no-any-return]


def _run(row: RowMapping) -> TaskRun:
    return _record(row, TaskRun, _RUN_JSON)  # type: ignore[no-any-return]


def env_needle(name: str, value: str) -> str:
    """The text one `EnvVar` has inside a stored `env` column (compact msgspec JSON,
    fields in declaration order). JSON escapes every quote inside a string, so this
    text occurs in the column exactly when the list holds that very pair: a portable
    substring test instead of SQLite's json_each. Pure."""
    return msgspec.json.encode(EnvVar(name, value)).decode()


class TasksSql(SqlCore):
    # --- definitions ------------------------------------------------------------------

    def put_definition(self, definition: TaskDefinition) -> None:
        t = schema.task_definitions
        with self._tx() as db:
            other = db.execute(
                sa.select(t.c.definition_id).where(
                    t.c.tenant == definition.tenant,
                    t.c.alias == definition.alias,
                    t.c.deleted == 0,
                    t.c.definition_id != definition.definition_id,
                )
            ).first()
            if other is not None:
                raise Conflict(f"Definition with alias {definition.alias} already exists")
            values = _row(definition, _DEF_JSON)
            values["deleted"] = 0  # a replaced row is a live one (as INSERT OR REPLACE gave)
            stmt = self._insert(t).values(values)
            db.execute(
                stmt.on_conflict_do_update(
                    index_elements=[t.c.definition_id],
                    set_={c: stmt.excluded[c] for c in values if c != "definition_id"},
                )
            )

    def get_definition(self, tenant: str, definition_id: str) -> TaskDefinition | None:
        t = schema.task_definitions
        row = self._first(
            sa.select(t).where(
                t.c.tenant == tenant, t.c.definition_id == definition_id, t.c.deleted == 0
            )
        )
        return None if row is None else _definition(row)

    def definition_by_alias(self, tenant: str, alias: str) -> TaskDefinition | None:
        t = schema.task_definitions
        row = self._first(
            sa.select(t).where(t.c.tenant == tenant, t.c.alias == alias, t.c.deleted == 0)
        )
        return None if row is None else _definition(row)

    def list_definitions(self, tenant: str) -> list[TaskDefinition]:
        t = schema.task_definitions
        rows = self._maps(
            sa.select(t).where(t.c.tenant == tenant, t.c.deleted == 0).order_by(t.c.definition_id)
        )
        return [_definition(r) for r in rows]

    def delete_definition(self, tenant: str, definition_id: str, now: float) -> bool:
        """Deregister: the definition disappears, its runs stay readable."""
        t = schema.task_definitions
        with self._tx() as db:
            result = db.execute(
                sa.update(t)
                .where(t.c.tenant == tenant, t.c.definition_id == definition_id, t.c.deleted == 0)
                .values(deleted=1, updated_at=now)
            )
            return result.rowcount > 0

    # --- runs -------------------------------------------------------------------------

    def put_runs(self, runs: list[TaskRun], events: list[RunEvent]) -> None:
        """Insert or replace runs and append events, in one transaction."""
        t = schema.task_runs
        with self._tx() as db:
            rows = [_row(run, _RUN_JSON) for run in runs]
            for values in rows:
                values.pop("log_size")  # owned by append_log
            if rows:
                stmt = self._insert(t)
                db.execute(
                    stmt.on_conflict_do_update(
                        index_elements=[t.c.run_id],
                        set_={c: stmt.excluded[c] for c in rows[0] if c != "run_id"},
                    ),
                    rows,
                )
            if events:
                db.execute(
                    sa.insert(schema.task_run_events),
                    [
                        {
                            "run_id": e.run_id,
                            "at": e.at,
                            "reason": e.reason,
                            "message": e.message,
                            "source": e.source,
                        }
                        for e in events
                    ],
                )

    def get_run(self, run_id: str) -> TaskRun | None:
        t = schema.task_runs
        row = self._first(sa.select(t).where(t.c.run_id == run_id))
        return None if row is None else _run(row)

    def unfinished_runs(self) -> list[TaskRun]:
        """Runs the coordinator still acts on: active ones, and stopped ones whose
        whole log is not stored yet."""
        t = schema.task_runs
        rows = self._maps(
            sa.select(t)
            .where(
                sa.or_(
                    t.c.status.in_(_ACTIVE),
                    sa.and_(
                        t.c.status == "STOPPED",
                        t.c.machine_id != "",
                        sa.or_(t.c.log_total < 0, t.c.log_size < t.c.log_total),
                    ),
                )
            )
            .order_by(t.c.seq)
        )
        return [_run(r) for r in rows]

    def max_run_seq(self) -> int:
        t = schema.task_runs
        return int(self._scalar(sa.select(sa.func.coalesce(sa.func.max(t.c.seq), 0))) or 0)

    def list_runs(self, tenant: str, query: RunQuery) -> tuple[int, list[TaskRun]]:
        t = schema.task_runs
        where: list[sa.ColumnElement[bool]] = [t.c.tenant == tenant]
        for name, values in (
            ("definition_id", query.definition_id),
            ("status", query.status),
            ("cluster", query.cluster),
            ("run_id", query.run_id),
        ):
            if values:
                where.append(t.c[name].in_(values))
        for name, values in (
            ("alias", query.alias),
            ("group_name", query.group_name),
            ("image", query.image),
        ):
            if len(values) == 1:
                where.append(self._contains(t.c[name], values[0]))
            elif values:
                where.append(t.c[name].in_(values))
        for name, value in query.env:
            where.append(self._contains(t.c.env, env_needle(name, value)))
        total = int(self._scalar(sa.select(sa.func.count()).select_from(t).where(*where)) or 0)
        column = t.c[_RUN_SORT.get(query.sort_by, "started_at")]
        desc = query.order.lower() == "desc"
        rows = self._maps(
            sa.select(t)
            .where(*where)
            .order_by(
                column.is_(None),
                column.desc() if desc else column.asc(),
                t.c.seq.desc() if desc else t.c.seq.asc(),
            )
            .limit(query.limit)
            .offset(query.offset)
        )
        return total, [_run(r) for r in rows]

    def run_events(self, run_id: str) -> list[RunEvent]:
        e = schema.task_run_events
        rows = self._maps(sa.select(e).where(e.c.run_id == run_id).order_by(e.c.id))
        return [
            RunEvent(
                run_id=r["run_id"],
                at=r["at"],
                reason=r["reason"],
                message=r["message"],
                source=r["source"],
            )
            for r in rows
        ]

    # --- logs -------------------------------------------------------------------------

    def append_log(self, run_id: str, offset: int, data: bytes) -> int:
        """Keep the new bytes of a chunk (see `tasks.logs.new_piece`); the stored size
        after it (what the agent is acknowledged)."""
        t = schema.task_runs
        with self._tx() as db:
            size = db.execute(sa.select(t.c.log_size).where(t.c.run_id == run_id)).scalar()
            if size is None:
                return 0
            stored = int(size)
            piece = new_piece(stored, offset, data)
            if not piece:
                return stored
            db.execute(
                self._insert(schema.task_logs)
                .values(run_id=run_id, offset=stored, data=piece)
                .on_conflict_do_nothing()
            )
            db.execute(
                sa.update(t).where(t.c.run_id == run_id).values(log_size=stored + len(piece))
            )
            return stored + len(piece)

    def read_log(self, run_id: str, start: int, max_bytes: int) -> bytes:
        """Up to `max_bytes` of the stored log from byte `start` on."""
        logs = schema.task_logs
        at = logs.c["offset"]
        rows = self._maps(
            sa.select(at, logs.c.data)
            .where(
                logs.c.run_id == run_id,
                at + sa.func.length(logs.c.data) > start,
                at < start + max_bytes,
            )
            .order_by(at)
        )
        out = bytearray()
        for row in rows:
            chunk = bytes(row["data"])
            skip = max(0, start - int(row["offset"]))
            out += chunk[skip:]
        return bytes(out[:max_bytes])
