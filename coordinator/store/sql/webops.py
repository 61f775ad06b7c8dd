"""WebOps deployments and their log items."""

from __future__ import annotations

import sqlite3
from typing import Any

import msgspec

from coordinator.errors import Conflict
from coordinator.store.sql.core import SqlCore, row_record
from coordinator.webops.records import (
    Database,
    DatabaseBackup,
    ErrorItem,
    Sample,
    WebDeployment,
    Webhook,
    WebhookDelivery,
    WebLogItem,
    WebQuery,
)

_JSON = ("env", "files", "env_example")


def _values(dep: WebDeployment) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in dep.__struct_fields__:
        if name == "id":
            continue
        value = getattr(dep, name)
        out[name] = msgspec.json.encode(value).decode() if name in _JSON else value
    return out


def _dep(row: sqlite3.Row) -> WebDeployment:
    data = {k: row[k] for k in row.keys()}  # noqa: SIM118
    for name in _JSON:
        data[name] = msgspec.json.decode(data[name])
    return msgspec.convert(data, WebDeployment)


class WebOpsSql(SqlCore):
    def webops_create(self, dep: WebDeployment) -> WebDeployment:
        values = _values(dep)
        with self._raw_tx() as db:
            try:
                cur = db.execute(
                    f"INSERT INTO webops_deployments ({', '.join(values)})"
                    f" VALUES ({', '.join('?' for _ in values)})",
                    tuple(values.values()),
                )
            except sqlite3.IntegrityError:
                raise Conflict(f"deployment {dep.name!r} already exists") from None
            return msgspec.structs.replace(dep, id=int(cur.lastrowid or 0))

    def webops_update(self, dep: WebDeployment) -> None:
        values = _values(dep)
        with self._raw_tx() as db:
            db.execute(
                f"UPDATE webops_deployments SET {', '.join(f'{k}=?' for k in values)} WHERE id=?",
                (*values.values(), dep.id),
            )

    def webops_get(self, tenant: str, name: str) -> WebDeployment | None:
        row = self._raw_one(
            "SELECT * FROM webops_deployments WHERE tenant=? AND name=?", (tenant, name)
        )
        return None if row is None else _dep(row)

    def webops_get_id(self, dep_id: int, tenant: str | None) -> WebDeployment | None:
        row = self._raw_one("SELECT * FROM webops_deployments WHERE id=?", (dep_id,))
        if row is None or (tenant is not None and row["tenant"] != tenant):
            return None
        return _dep(row)

    def webops_on_machine(self, machine_id: str) -> list[WebDeployment]:
        rows = self._raw_all(
            "SELECT * FROM webops_deployments WHERE machine_id=? ORDER BY id", (machine_id,)
        )
        return [_dep(r) for r in rows]

    def webops_list(self, tenant: str, query: WebQuery) -> tuple[list[WebDeployment], int]:
        where = ["tenant=?"]
        args: list[object] = [tenant]
        if query.status:
            where.append("status=?")
            args.append(query.status)
        if query.project_type:
            where.append("project_type=?")
            args.append(query.project_type)
        if query.search:
            where.append("instr(lower(name), ?) > 0")
            args.append(query.search.lower())
        cond = " AND ".join(where)
        total = self._raw_one(f"SELECT count(*) FROM webops_deployments WHERE {cond}", args)
        rows = self._raw_all(
            f"SELECT * FROM webops_deployments WHERE {cond} ORDER BY id DESC LIMIT ? OFFSET ?",
            (*args, query.limit, query.offset),
        )
        return [_dep(r) for r in rows], int(total[0]) if total else 0

    def webops_delete(self, dep_id: int) -> None:
        with self._raw_tx() as db:
            db.execute("DELETE FROM webops_logs WHERE deployment_id=?", (dep_id,))
            db.execute("DELETE FROM webops_deployments WHERE id=?", (dep_id,))

    def webops_log(self, dep_id: int, level: str, message: str, at: float) -> int:
        with self._raw_tx() as db:
            cur = db.execute(
                "INSERT INTO webops_logs (deployment_id, level, message, created_at)"
                " VALUES (?, ?, ?, ?)",
                (dep_id, level, message, at),
            )
            return int(cur.lastrowid or 0)

    def webops_logs(self, dep_id: int, *, after_id: int = 0) -> list[WebLogItem]:
        rows = self._raw_all(
            "SELECT id, level, message, created_at FROM webops_logs"
            " WHERE deployment_id=? AND id>? ORDER BY id",
            (dep_id, after_id),
        )
        return [WebLogItem(r[0], r[1], r[2], r[3]) for r in rows]

    def webops_after(self, tenant: str, after_id: int, limit: int) -> list[WebDeployment]:
        rows = self._raw_all(
            "SELECT * FROM webops_deployments WHERE tenant=? AND id>? ORDER BY id LIMIT ?",
            (tenant, after_id, limit),
        )
        return [_dep(r) for r in rows]

    # --- webhooks (#21) -------------------------------------------------------------------

    def webhook_create(self, hook: Webhook) -> Webhook:
        with self._raw_tx() as db:
            cur = db.execute(
                "INSERT INTO webhooks (tenant, url, events, secret, active, created_by,"
                " created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    hook.tenant,
                    hook.url,
                    msgspec.json.encode(hook.events).decode(),
                    hook.secret,
                    int(hook.active),
                    hook.created_by,
                    hook.created_at,
                ),
            )
            return msgspec.structs.replace(hook, id=int(cur.lastrowid or 0))

    def webhooks(self, tenant: str) -> list[Webhook]:
        rows = self._raw_all("SELECT * FROM webhooks WHERE tenant=? ORDER BY id", (tenant,))
        return [_hook(r) for r in rows]

    def webhook_get(self, hook_id: int, tenant: str) -> Webhook | None:
        row = self._raw_one("SELECT * FROM webhooks WHERE id=? AND tenant=?", (hook_id, tenant))
        return None if row is None else _hook(row)

    def webhook_delete(self, hook_id: int) -> None:
        with self._raw_tx() as db:
            db.execute("DELETE FROM webhook_deliveries WHERE webhook_id=?", (hook_id,))
            db.execute("DELETE FROM webhooks WHERE id=?", (hook_id,))

    def webhook_delivered(self, d: WebhookDelivery) -> None:
        with self._raw_tx() as db:
            db.execute(
                "INSERT INTO webhook_deliveries (webhook_id, delivery, event, attempt,"
                " status_code, ok, error, duration_ms, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    d.webhook_id,
                    d.delivery,
                    d.event,
                    d.attempt,
                    d.status_code,
                    int(d.ok),
                    d.error,
                    d.duration_ms,
                    d.at,
                ),
            )

    def webhook_deliveries(self, hook_id: int, limit: int) -> list[WebhookDelivery]:
        rows = self._raw_all(
            "SELECT * FROM webhook_deliveries WHERE webhook_id=? ORDER BY id DESC LIMIT ?",
            (hook_id, limit),
        )
        return [
            WebhookDelivery(
                id=r["id"],
                webhook_id=r["webhook_id"],
                delivery=r["delivery"],
                event=r["event"],
                attempt=r["attempt"],
                status_code=r["status_code"],
                ok=bool(r["ok"]),
                error=r["error"],
                duration_ms=r["duration_ms"],
                at=r["at"],
            )
            for r in rows
        ]

    # --- databases (#21) ------------------------------------------------------------------

    def database_create(self, db: Database) -> Database:
        values = {k: getattr(db, k) for k in db.__struct_fields__ if k != "id"}
        with self._raw_tx() as conn:
            try:
                cur = conn.execute(
                    f"INSERT INTO webops_databases ({', '.join(values)})"
                    f" VALUES ({', '.join('?' for _ in values)})",
                    tuple(values.values()),
                )
            except sqlite3.IntegrityError:
                raise Conflict(f"database {db.name!r} already exists") from None
            return msgspec.structs.replace(db, id=int(cur.lastrowid or 0))

    def database_update(self, db: Database) -> None:
        with self._raw_tx() as conn:
            conn.execute(
                "UPDATE webops_databases SET deployment_id=? WHERE id=?",
                (db.deployment_id, db.id),
            )

    def databases(self, tenant: str) -> list[Database]:
        rows = self._raw_all("SELECT * FROM webops_databases WHERE tenant=? ORDER BY id", (tenant,))
        return [row_record(r, Database) for r in rows]

    def database_get(self, tenant: str, name: str) -> Database | None:
        row = self._raw_one(
            "SELECT * FROM webops_databases WHERE tenant=? AND name=?", (tenant, name)
        )
        return None if row is None else row_record(row, Database)

    def database_get_id(self, db_id: int, tenant: str) -> Database | None:
        row = self._raw_one(
            "SELECT * FROM webops_databases WHERE id=? AND tenant=?", (db_id, tenant)
        )
        return None if row is None else row_record(row, Database)

    def database_delete(self, db_id: int) -> None:
        with self._raw_tx() as conn:
            conn.execute("DELETE FROM webops_db_backups WHERE database_id=?", (db_id,))
            conn.execute("DELETE FROM webops_databases WHERE id=?", (db_id,))

    def backup_add(self, b: DatabaseBackup) -> DatabaseBackup:
        with self._raw_tx() as conn:
            cur = conn.execute(
                "INSERT INTO webops_db_backups (database_id, path, size, sha256, created_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (b.database_id, b.path, b.size, b.sha256, b.created_at),
            )
            return msgspec.structs.replace(b, id=int(cur.lastrowid or 0))

    def backups(self, db_id: int) -> list[DatabaseBackup]:
        rows = self._raw_all(
            "SELECT * FROM webops_db_backups WHERE database_id=? ORDER BY id DESC", (db_id,)
        )
        return [row_record(r, DatabaseBackup) for r in rows]

    # --- monitoring (#21) -----------------------------------------------------------------

    def sample_put(self, sample: Sample, keep_after_minute: int) -> None:
        """Upsert the machine's sample of that minute; drop those before keep_after."""
        values = {k: getattr(sample, k) for k in sample.__struct_fields__}
        with self._raw_tx() as conn:
            conn.execute(
                f"INSERT OR REPLACE INTO machine_samples ({', '.join(values)})"
                f" VALUES ({', '.join('?' for _ in values)})",
                tuple(values.values()),
            )
            conn.execute(
                "DELETE FROM machine_samples WHERE machine_id=? AND minute<?",
                (sample.machine_id, keep_after_minute),
            )

    def samples(
        self, tenant: str, since_minute: int, after: tuple[str, int] = ("", -1), limit: int = 100000
    ) -> list[Sample]:
        """Oldest first by machine then minute; `after` resumes past (machine, minute)."""
        rows = self._raw_all(
            "SELECT * FROM machine_samples WHERE tenant=? AND minute>=?"
            " AND (machine_id, minute) > (?, ?) ORDER BY machine_id, minute LIMIT ?",
            (tenant, since_minute, after[0], after[1], limit),
        )
        return [row_record(r, Sample) for r in rows]

    def webops_errors(
        self,
        tenant: str,
        *,
        levels: tuple[str, ...],
        since: float,
        until: float,
        search: str,
        offset: int,
        limit: int,
    ) -> tuple[list[ErrorItem], int]:
        where = ["d.tenant=?", f"l.level IN ({', '.join('?' for _ in levels)})", "l.created_at>=?"]
        args: list[object] = [tenant, *levels, since]
        if until:
            where.append("l.created_at<?")
            args.append(until)
        if search:
            where.append("instr(lower(l.message), ?) > 0")
            args.append(search.lower())
        cond = " AND ".join(where)
        base = (
            f"FROM webops_logs l JOIN webops_deployments d ON d.id = l.deployment_id WHERE {cond}"
        )
        total = self._raw_one(f"SELECT count(*) {base}", args)
        rows = self._raw_all(
            f"SELECT l.id, d.name, l.level, l.message, l.created_at {base}"
            " ORDER BY l.id DESC LIMIT ? OFFSET ?",
            (*args, limit, offset),
        )
        return [ErrorItem(r[0], r[1], r[2], r[3], r[4]) for r in rows], int(
            total[0]
        ) if total else 0


def _hook(row: sqlite3.Row) -> Webhook:
    return Webhook(
        id=row["id"],
        tenant=row["tenant"],
        url=row["url"],
        events=msgspec.json.decode(row["events"]),
        secret=row["secret"],
        active=bool(row["active"]),
        created_by=row["created_by"],
        created_at=row["created_at"],
    )
