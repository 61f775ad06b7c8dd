"""Batch tasks: definitions, runs, their events and their logs (chunks keyed by run
and byte offset, append-only, each byte kept once)."""

from __future__ import annotations

import sqlite3
from typing import Any

import msgspec

from coordinator.errors import Conflict
from coordinator.store.sql.core import SqlCore
from coordinator.tasks.logs import new_piece
from coordinator.tasks.records import RunEvent, RunQuery, TaskDefinition, TaskRun

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


def _record(row: sqlite3.Row, kind: type[Any], json_fields: tuple[str, ...]) -> Any:
    data = {k: row[k] for k in row.keys() if k in kind.__struct_fields__}  # noqa: SIM118
    for name in json_fields:
        data[name] = msgspec.json.decode(data[name])
    return msgspec.convert(data, kind, strict=False)


def _definition(row: sqlite3.Row) -> TaskDefinition:
    return _record(row, TaskDefinition, _DEF_JSON)  # type: ignore[no-any-return]


def _run(row: sqlite3.Row) -> TaskRun:
    return _record(row, TaskRun, _RUN_JSON)  # type: ignore[no-any-return]


def _insert(db: Any, table: str, values: dict[str, Any], *, replace: bool) -> None:
    cols = ", ".join(values)
    marks = ", ".join("?" for _ in values)
    verb = "INSERT OR REPLACE" if replace else "INSERT"
    db.execute(f"{verb} INTO {table} ({cols}) VALUES ({marks})", tuple(values.values()))


class TasksSql(SqlCore):
    # --- definitions ------------------------------------------------------------------

    def put_definition(self, definition: TaskDefinition) -> None:
        with self._raw_tx() as db:
            other = db.execute(
                "SELECT definition_id FROM task_definitions"
                " WHERE tenant=? AND alias=? AND deleted=0 AND definition_id<>?",
                (definition.tenant, definition.alias, definition.definition_id),
            ).fetchone()
            if other is not None:
                raise Conflict(f"Definition with alias {definition.alias} already exists")
            _insert(db, "task_definitions", _row(definition, _DEF_JSON), replace=True)

    def get_definition(self, tenant: str, definition_id: str) -> TaskDefinition | None:
        row = self._raw_one(
            "SELECT * FROM task_definitions WHERE tenant=? AND definition_id=? AND deleted=0",
            (tenant, definition_id),
        )
        return None if row is None else _definition(row)

    def definition_by_alias(self, tenant: str, alias: str) -> TaskDefinition | None:
        row = self._raw_one(
            "SELECT * FROM task_definitions WHERE tenant=? AND alias=? AND deleted=0",
            (tenant, alias),
        )
        return None if row is None else _definition(row)

    def list_definitions(self, tenant: str) -> list[TaskDefinition]:
        rows = self._raw_all(
            "SELECT * FROM task_definitions WHERE tenant=? AND deleted=0 ORDER BY definition_id",
            (tenant,),
        )
        return [_definition(r) for r in rows]

    def delete_definition(self, tenant: str, definition_id: str, now: float) -> bool:
        """Deregister: the definition disappears, its runs stay readable."""
        with self._raw_tx() as db:
            cur = db.execute(
                "UPDATE task_definitions SET deleted=1, updated_at=?"
                " WHERE tenant=? AND definition_id=? AND deleted=0",
                (now, tenant, definition_id),
            )
            return cur.rowcount > 0

    # --- runs -------------------------------------------------------------------------

    def put_runs(self, runs: list[TaskRun], events: list[RunEvent]) -> None:
        """Insert or replace runs and append events, in one transaction."""
        with self._raw_tx() as db:
            for run in runs:
                values = _row(run, _RUN_JSON)
                values.pop("log_size")  # owned by append_log
                cols = ", ".join(values)
                marks = ", ".join("?" for _ in values)
                updates = ", ".join(f"{c}=excluded.{c}" for c in values if c != "run_id")
                db.execute(
                    f"INSERT INTO task_runs ({cols}) VALUES ({marks})"
                    f" ON CONFLICT(run_id) DO UPDATE SET {updates}",
                    tuple(values.values()),
                )
            db.executemany(
                "INSERT INTO task_run_events (run_id, at, reason, message, source)"
                " VALUES (?, ?, ?, ?, ?)",
                [(e.run_id, e.at, e.reason, e.message, e.source) for e in events],
            )

    def get_run(self, run_id: str) -> TaskRun | None:
        row = self._raw_one("SELECT * FROM task_runs WHERE run_id=?", (run_id,))
        return None if row is None else _run(row)

    def unfinished_runs(self) -> list[TaskRun]:
        """Runs the coordinator still acts on: active ones, and stopped ones whose
        whole log is not stored yet."""
        rows = self._raw_all(
            "SELECT * FROM task_runs WHERE status IN ('QUEUED','PENDING','RUNNING')"
            " OR (status='STOPPED' AND machine_id<>'' AND (log_total<0 OR log_size<log_total))"
            " ORDER BY seq"
        )
        return [_run(r) for r in rows]

    def max_run_seq(self) -> int:
        row = self._raw_one("SELECT COALESCE(MAX(seq), 0) FROM task_runs")
        return int(row[0]) if row is not None else 0

    def list_runs(self, tenant: str, query: RunQuery) -> tuple[int, list[TaskRun]]:
        where = ["tenant=?"]
        args: list[Any] = [tenant]
        for column, values in (
            ("definition_id", query.definition_id),
            ("status", query.status),
            ("cluster", query.cluster),
            ("run_id", query.run_id),
        ):
            if values:
                where.append(f"{column} IN ({', '.join('?' for _ in values)})")
                args += values
        for column, values in (
            ("alias", query.alias),
            ("group_name", query.group_name),
            ("image", query.image),
        ):
            if len(values) == 1:
                where.append(f"instr({column}, ?) > 0")
                args.append(values[0])
            elif values:
                where.append(f"{column} IN ({', '.join('?' for _ in values)})")
                args += values
        for name, value in query.env:
            where.append(
                "EXISTS (SELECT 1 FROM json_each(task_runs.env)"
                " WHERE json_extract(value, '$.name')=? AND json_extract(value, '$.value')=?)"
            )
            args += [name, value]
        clause = " AND ".join(where)
        total_row = self._raw_one(f"SELECT COUNT(*) FROM task_runs WHERE {clause}", args)
        total = int(total_row[0]) if total_row is not None else 0
        column = _RUN_SORT.get(query.sort_by, "started_at")
        direction = "DESC" if query.order.lower() == "desc" else "ASC"
        rows = self._raw_all(
            f"SELECT * FROM task_runs WHERE {clause}"
            f" ORDER BY {column} IS NULL, {column} {direction}, seq {direction}"
            " LIMIT ? OFFSET ?",
            [*args, query.limit, query.offset],
        )
        return total, [_run(r) for r in rows]

    def run_events(self, run_id: str) -> list[RunEvent]:
        rows = self._raw_all("SELECT * FROM task_run_events WHERE run_id=? ORDER BY id", (run_id,))
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
        with self._raw_tx() as db:
            row = db.execute("SELECT log_size FROM task_runs WHERE run_id=?", (run_id,)).fetchone()
            if row is None:
                return 0
            stored = int(row[0])
            piece = new_piece(stored, offset, data)
            if not piece:
                return stored
            db.execute(
                "INSERT OR IGNORE INTO task_logs (run_id, offset, data) VALUES (?, ?, ?)",
                (run_id, stored, piece),
            )
            db.execute(
                "UPDATE task_runs SET log_size=? WHERE run_id=?", (stored + len(piece), run_id)
            )
            return stored + len(piece)

    def read_log(self, run_id: str, start: int, max_bytes: int) -> bytes:
        """Up to `max_bytes` of the stored log from byte `start` on."""
        rows = self._raw_all(
            "SELECT offset, data FROM task_logs WHERE run_id=? AND offset+length(data)>?"
            " AND offset<? ORDER BY offset",
            (run_id, start, start + max_bytes),
        )
        out = bytearray()
        for row in rows:
            chunk = bytes(row["data"])
            skip = max(0, start - int(row["offset"]))
            out += chunk[skip:]
        return bytes(out[:max_bytes])
