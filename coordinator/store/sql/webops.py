"""WebOps deployments and their log items; webhooks, databases, load samples (#21)."""

from __future__ import annotations

from typing import Any

import msgspec
import sqlalchemy as sa
from sqlalchemy.engine import Connection, CursorResult, RowMapping

from coordinator.errors import Conflict
from coordinator.store.ports import StorageError
from coordinator.store.sql import schema
from coordinator.store.sql.core import SqlCore, row_record
from coordinator.webops.records import (
    BulkJob,
    Database,
    DatabaseBackup,
    ErrorItem,
    OutboxItem,
    Sample,
    WebDeployment,
    Webhook,
    WebhookDelivery,
    WebLogItem,
    WebQuery,
)

_JSON = ("env", "files", "env_example")
"""Deployment fields kept as JSON text (the same columns on both engines)."""

deps = schema.webops_deployments
logs = schema.webops_logs
hooks = schema.webhooks
deliveries = schema.webhook_deliveries
outbox = schema.webhook_outbox
jobs_t = schema.webops_bulk_jobs
dbs = schema.webops_databases
backups_t = schema.webops_db_backups
samples_t = schema.machine_samples
hourly_t = schema.machine_samples_hourly


def _upsert_sample(insert: Any, values: dict[str, Any]) -> Any:
    """An insert of a sample row that replaces the row of its (machine, minute)."""
    stmt = insert.values(**values)
    return stmt.on_conflict_do_update(
        index_elements=["machine_id", "minute"],
        set_={k: stmt.excluded[k] for k in values if k not in ("machine_id", "minute")},
    )


def _values(dep: WebDeployment) -> dict[str, Any]:
    """A deployment's columns (all but the id, which the database assigns). Pure."""
    out: dict[str, Any] = {}
    for name in dep.__struct_fields__:
        if name == "id":
            continue
        value = getattr(dep, name)
        out[name] = msgspec.json.encode(value).decode() if name in _JSON else value
    return out


def _plain(row: RowMapping) -> dict[str, Any]:
    """A row as a dict with plain `str` keys: SQLAlchemy names the columns of
    `select(table)` with `quoted_name` (a str subclass), which msgspec refuses as a key."""
    return {str(k): v for k, v in row.items()}


def _dep(row: RowMapping) -> WebDeployment:
    data = _plain(row)
    for name in _JSON:
        data[name] = msgspec.json.decode(data[name])
    return msgspec.convert(data, WebDeployment)


def _hook(row: RowMapping) -> Webhook:
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


def _new_id(result: CursorResult[Any]) -> int:
    """The id the database gave the row just inserted (RETURNING on PostgreSQL,
    lastrowid on SQLite)."""
    key = result.inserted_primary_key
    if key is None or key[0] is None:
        raise StorageError("the database returned no id for an inserted row")
    return int(key[0])


def _inserted_or_conflict(db: Connection, stmt: Any, what: str) -> int:
    """Run an `INSERT ... ON CONFLICT DO NOTHING`; the new row's id, or Conflict when a
    unique key already had it. Not catching IntegrityError: on PostgreSQL a failed
    statement aborts the whole transaction, which would poison an enclosing `batch`.
    Nothing inserted shows as no returned key on PostgreSQL (its rowcount is -1 with
    RETURNING) and as a rowcount of 0 on SQLite (whose lastrowid is then stale)."""
    result = db.execute(stmt)
    key = result.inserted_primary_key
    if result.rowcount == 0 or key is None or key[0] is None:
        raise Conflict(f"{what} already exists")
    return int(key[0])


class WebOpsSql(SqlCore):
    def webops_create(self, dep: WebDeployment) -> WebDeployment:
        stmt = self._insert(deps).values(**_values(dep)).on_conflict_do_nothing()
        with self._tx() as db:
            new_id = _inserted_or_conflict(db, stmt, f"deployment {dep.name!r}")
        return msgspec.structs.replace(dep, id=new_id)

    def webops_update(self, dep: WebDeployment) -> None:
        with self._tx() as db:
            db.execute(sa.update(deps).where(deps.c.id == dep.id).values(**_values(dep)))

    def webops_get(self, tenant: str, name: str) -> WebDeployment | None:
        row = self._first(sa.select(deps).where(deps.c.tenant == tenant, deps.c.name == name))
        return None if row is None else _dep(row)

    def webops_get_id(self, dep_id: int, tenant: str | None) -> WebDeployment | None:
        row = self._first(sa.select(deps).where(deps.c.id == dep_id))
        if row is None or (tenant is not None and row["tenant"] != tenant):
            return None
        return _dep(row)

    def webops_on_machine(self, machine_id: str) -> list[WebDeployment]:
        rows = self._maps(
            sa.select(deps).where(deps.c.machine_id == machine_id).order_by(deps.c.id)
        )
        return [_dep(r) for r in rows]

    def webops_building(self) -> list[WebDeployment]:
        rows = self._maps(sa.select(deps).where(deps.c.building != "").order_by(deps.c.id))
        return [_dep(r) for r in rows]

    def webops_list(self, tenant: str, query: WebQuery) -> tuple[list[WebDeployment], int]:
        cond: list[sa.ColumnElement[bool]] = [deps.c.tenant == tenant]
        if query.status:
            cond.append(deps.c.status == query.status)
        if query.project_type:
            cond.append(deps.c.project_type == query.project_type)
        if query.search:
            cond.append(self._contains(sa.func.lower(deps.c.name), query.search.lower()))
        total = self._scalar(sa.select(sa.func.count()).select_from(deps).where(*cond))
        rows = self._maps(
            sa.select(deps)
            .where(*cond)
            .order_by(deps.c.id.desc())
            .limit(query.limit)
            .offset(query.offset)
        )
        return [_dep(r) for r in rows], int(total or 0)

    def webops_delete(self, dep_id: int) -> None:
        with self._tx() as db:
            db.execute(sa.delete(logs).where(logs.c.deployment_id == dep_id))
            db.execute(sa.delete(deps).where(deps.c.id == dep_id))

    def webops_log(self, dep_id: int, level: str, message: str, at: float) -> int:
        with self._tx() as db:
            result = db.execute(
                sa.insert(logs).values(
                    deployment_id=dep_id, level=level, message=message, created_at=at
                )
            )
            return _new_id(result)

    def webops_runtime_log(
        self, machine_id: str, name: str, level: str, message: str, at: float
    ) -> None:
        owner = sa.select(
            deps.c.id,
            sa.literal(level, schema.Str),
            sa.literal(message, schema.Str),
            sa.literal(at, schema.Real),
        ).where(deps.c.machine_id == machine_id, deps.c.name == name)
        with self._tx() as db:
            db.execute(
                sa.insert(logs).from_select(
                    ["deployment_id", "level", "message", "created_at"], owner
                )
            )

    def webops_logs_prune(self, machine_id: str, name: str, keep: int) -> int:
        dep_id = sa.select(deps.c.id).where(deps.c.machine_id == machine_id, deps.c.name == name)
        newest = (
            sa.select(logs.c.id)
            .where(logs.c.deployment_id.in_(dep_id))
            .order_by(logs.c.id.desc())
            .offset(keep)
            .limit(1)
            .scalar_subquery()
        )
        with self._tx() as db:
            done = db.execute(
                sa.delete(logs).where(logs.c.deployment_id.in_(dep_id), logs.c.id <= newest)
            )
            return int(done.rowcount)

    def bulk_job_save(self, job: BulkJob, *, keep: int = 0) -> None:
        values = {
            "tenant": job.tenant,
            "action": job.action,
            "total": job.total,
            "status": job.status,
            "results": msgspec.json.encode(job.results).decode(),
            "runner": job.runner,
            "created_at": job.created_at,
            "finished_at": job.finished_at,
        }
        ins = self._insert(jobs_t).values(id=job.id, **values)
        with self._tx() as db:
            db.execute(ins.on_conflict_do_update(index_elements=[jobs_t.c.id], set_=values))
            if keep:
                cutoff = (
                    sa.select(jobs_t.c.created_at)
                    .order_by(jobs_t.c.created_at.desc())
                    .offset(keep)
                    .limit(1)
                    .scalar_subquery()
                )
                db.execute(sa.delete(jobs_t).where(jobs_t.c.created_at <= cutoff))

    def bulk_job_get(self, job_id: str, tenant: str) -> BulkJob | None:
        row = self._first(sa.select(jobs_t).where(jobs_t.c.id == job_id, jobs_t.c.tenant == tenant))
        if row is None:
            return None
        data = {str(k): v for k, v in row.items()}
        data["results"] = msgspec.json.decode(data["results"])
        return msgspec.convert(data, BulkJob, strict=False)

    def bulk_jobs_interrupt(self, runner: str, now: float) -> int:
        with self._tx() as db:
            done = db.execute(
                sa.update(jobs_t)
                .where(jobs_t.c.runner == runner, jobs_t.c.status == "running")
                .values(status="interrupted", finished_at=now)
            )
            return int(done.rowcount)

    def webops_logs(self, dep_id: int, *, after_id: int = 0) -> list[WebLogItem]:
        rows = self._rows(
            sa.select(logs.c.id, logs.c.level, logs.c.message, logs.c.created_at)
            .where(logs.c.deployment_id == dep_id, logs.c.id > after_id)
            .order_by(logs.c.id)
        )
        return [WebLogItem(r[0], r[1], r[2], r[3]) for r in rows]

    def webops_after(self, tenant: str, after_id: int, limit: int) -> list[WebDeployment]:
        rows = self._maps(
            sa.select(deps)
            .where(deps.c.tenant == tenant, deps.c.id > after_id)
            .order_by(deps.c.id)
            .limit(limit)
        )
        return [_dep(r) for r in rows]

    # --- webhooks (#21) -------------------------------------------------------------------

    def webhook_create(self, hook: Webhook) -> Webhook:
        with self._tx() as db:
            result = db.execute(
                sa.insert(hooks).values(
                    tenant=hook.tenant,
                    url=hook.url,
                    events=msgspec.json.encode(hook.events).decode(),
                    secret=hook.secret,
                    active=int(hook.active),
                    created_by=hook.created_by,
                    created_at=hook.created_at,
                )
            )
            return msgspec.structs.replace(hook, id=_new_id(result))

    def webhooks(self, tenant: str) -> list[Webhook]:
        rows = self._maps(sa.select(hooks).where(hooks.c.tenant == tenant).order_by(hooks.c.id))
        return [_hook(r) for r in rows]

    def webhook_get(self, hook_id: int, tenant: str) -> Webhook | None:
        row = self._first(sa.select(hooks).where(hooks.c.id == hook_id, hooks.c.tenant == tenant))
        return None if row is None else _hook(row)

    def webhook_delete(self, hook_id: int) -> None:
        with self._tx() as db:
            db.execute(sa.delete(deliveries).where(deliveries.c.webhook_id == hook_id))
            db.execute(sa.delete(outbox).where(outbox.c.webhook_id == hook_id))
            db.execute(sa.delete(hooks).where(hooks.c.id == hook_id))

    def webhook_delivered(self, d: WebhookDelivery) -> None:
        with self._tx() as db:
            db.execute(
                sa.insert(deliveries).values(
                    webhook_id=d.webhook_id,
                    delivery=d.delivery,
                    event=d.event,
                    attempt=d.attempt,
                    status_code=d.status_code,
                    ok=int(d.ok),
                    error=d.error,
                    duration_ms=d.duration_ms,
                    at=d.at,
                )
            )

    def webhook_deliveries(self, hook_id: int, limit: int) -> list[WebhookDelivery]:
        rows = self._maps(
            sa.select(deliveries)
            .where(deliveries.c.webhook_id == hook_id)
            .order_by(deliveries.c.id.desc())
            .limit(limit)
        )
        return [row_record(r, WebhookDelivery) for r in rows]

    def outbox_add(self, items: list[OutboxItem]) -> None:
        if not items:
            return
        rows = [
            {k: getattr(item, k) for k in item.__struct_fields__ if k != "id"} for item in items
        ]
        with self._tx() as db:
            db.execute(sa.insert(outbox), rows)

    def outbox_claim(self, now: float, limit: int, until: float) -> list[OutboxItem]:
        with self._tx() as db:
            rows = list(
                db.execute(
                    sa.select(outbox)
                    .where(outbox.c.next_at <= now)
                    .order_by(outbox.c.id)
                    .limit(limit)
                ).mappings()
            )
            if rows:
                db.execute(
                    sa.update(outbox)
                    .where(outbox.c.id.in_([r["id"] for r in rows]))
                    .values(next_at=until)
                )
        return [row_record(r, OutboxItem) for r in rows]

    def outbox_next_at(self) -> float | None:
        found = self._scalar(sa.select(sa.func.min(outbox.c.next_at)))
        return None if found is None else float(found)

    def outbox_done(self, item_id: int) -> None:
        with self._tx() as db:
            db.execute(sa.delete(outbox).where(outbox.c.id == item_id))

    def outbox_retry(self, item_id: int, attempts: int, next_at: float) -> None:
        with self._tx() as db:
            db.execute(
                sa.update(outbox)
                .where(outbox.c.id == item_id)
                .values(attempts=attempts, next_at=next_at)
            )

    def outbox_count(self) -> int:
        return int(self._scalar(sa.select(sa.func.count()).select_from(outbox)) or 0)

    # --- databases (#21) ------------------------------------------------------------------

    def database_create(self, db: Database) -> Database:
        values = {k: getattr(db, k) for k in db.__struct_fields__ if k != "id"}
        stmt = self._insert(dbs).values(**values).on_conflict_do_nothing()
        with self._tx() as conn:
            new_id = _inserted_or_conflict(conn, stmt, f"database {db.name!r}")
        return msgspec.structs.replace(db, id=new_id)

    def database_update(self, db: Database) -> None:
        with self._tx() as conn:
            conn.execute(
                sa.update(dbs).where(dbs.c.id == db.id).values(deployment_id=db.deployment_id)
            )

    def databases(self, tenant: str) -> list[Database]:
        rows = self._maps(sa.select(dbs).where(dbs.c.tenant == tenant).order_by(dbs.c.id))
        return [row_record(r, Database) for r in rows]

    def database_get(self, tenant: str, name: str) -> Database | None:
        row = self._first(sa.select(dbs).where(dbs.c.tenant == tenant, dbs.c.name == name))
        return None if row is None else row_record(row, Database)

    def database_get_id(self, db_id: int, tenant: str) -> Database | None:
        row = self._first(sa.select(dbs).where(dbs.c.id == db_id, dbs.c.tenant == tenant))
        return None if row is None else row_record(row, Database)

    def database_delete(self, db_id: int) -> None:
        with self._tx() as conn:
            conn.execute(sa.delete(backups_t).where(backups_t.c.database_id == db_id))
            conn.execute(sa.delete(dbs).where(dbs.c.id == db_id))

    def backup_add(self, b: DatabaseBackup) -> DatabaseBackup:
        with self._tx() as conn:
            result = conn.execute(
                sa.insert(backups_t).values(
                    database_id=b.database_id,
                    path=b.path,
                    size=b.size,
                    sha256=b.sha256,
                    created_at=b.created_at,
                )
            )
            return msgspec.structs.replace(b, id=_new_id(result))

    def backups(self, db_id: int) -> list[DatabaseBackup]:
        rows = self._maps(
            sa.select(backups_t)
            .where(backups_t.c.database_id == db_id)
            .order_by(backups_t.c.id.desc())
        )
        return [row_record(r, DatabaseBackup) for r in rows]

    # --- monitoring (#21) -----------------------------------------------------------------

    def sample_put(
        self, sample: Sample, keep_after_minute: int, keep_hours_after_minute: int = 0
    ) -> None:
        """Upsert the machine's sample of that minute and its hour's average; drop the
        minutes before `keep_after_minute` and the hours before `keep_hours_after_minute`."""
        values = {k: getattr(sample, k) for k in sample.__struct_fields__}
        hour = (sample.minute // 60) * 60
        s = samples_t.c
        average = sa.select(
            sa.func.avg(s.cpu_percent),
            sa.func.avg(s.load1),
            sa.func.max(s.memory_total),
            sa.func.avg(s.memory_used),
            sa.func.max(s.disk_total),
            sa.func.avg(s.disk_used),
            sa.func.max(s.uptime_s),
        ).where(s.machine_id == sample.machine_id, s.minute >= hour, s.minute < hour + 60)
        with self._tx() as conn:
            conn.execute(_upsert_sample(self._insert(samples_t), values))
            got = conn.execute(average).one()
            hourly = {
                **values,
                "minute": hour,
                "cpu_percent": float(got[0] or 0.0),
                "load1": float(got[1] or 0.0),
                "memory_total": int(got[2] or 0),
                "memory_used": int(got[3] or 0),
                "disk_total": int(got[4] or 0),
                "disk_used": int(got[5] or 0),
                "uptime_s": float(got[6] or 0.0),
            }
            conn.execute(_upsert_sample(self._insert(hourly_t), hourly))
            conn.execute(
                sa.delete(samples_t).where(
                    s.machine_id == sample.machine_id, s.minute < keep_after_minute
                )
            )
            if keep_hours_after_minute:
                conn.execute(
                    sa.delete(hourly_t).where(
                        hourly_t.c.machine_id == sample.machine_id,
                        hourly_t.c.minute < keep_hours_after_minute,
                    )
                )

    def samples(
        self,
        tenant: str,
        since_minute: int,
        after: tuple[str, int] = ("", -1),
        limit: int = 100000,
        *,
        hourly: bool = False,
    ) -> list[Sample]:
        """Oldest first by machine then minute; `after` resumes past (machine, minute);
        `hourly`: the hours' averages (`minute`: each hour's first)."""
        table = hourly_t if hourly else samples_t
        key = sa.tuple_(table.c.machine_id, table.c.minute)
        rows = self._maps(
            sa.select(table)
            .where(
                table.c.tenant == tenant,
                table.c.minute >= since_minute,
                key > sa.tuple_(sa.literal(after[0], schema.Str), sa.literal(after[1], schema.Int)),
            )
            .order_by(table.c.machine_id, table.c.minute)
            .limit(limit)
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
        cond: list[sa.ColumnElement[bool]] = [
            deps.c.tenant == tenant,
            logs.c.level.in_(levels),
            logs.c.created_at >= since,
        ]
        if until:
            cond.append(logs.c.created_at < until)
        if search:
            cond.append(self._contains(sa.func.lower(logs.c.message), search.lower()))
        joined = logs.join(deps, deps.c.id == logs.c.deployment_id)
        total = self._scalar(sa.select(sa.func.count()).select_from(joined).where(*cond))
        rows = self._rows(
            sa.select(logs.c.id, deps.c.name, logs.c.level, logs.c.message, logs.c.created_at)
            .select_from(joined)
            .where(*cond)
            .order_by(logs.c.id.desc())
            .limit(limit)
            .offset(offset)
        )
        return [ErrorItem(r[0], r[1], r[2], r[3], r[4]) for r in rows], int(total or 0)
