"""The platform's tables: rate-limit hits and the audit log."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import msgspec
import sqlalchemy as sa
from sqlalchemy.engine import RowMapping

from coordinator.models import AuditEntry, AuditQuery
from coordinator.store.sql import schema
from coordinator.store.sql.core import SqlCore

_strings = msgspec.json.Decoder(dict[str, str])

_hits = schema.rate_limit_hits
_audit = schema.audit_log


class PlatformSql(SqlCore):
    # --- rate limits ------------------------------------------------------------------

    def add_rate_hits(self, hits: Sequence[tuple[str, str, float]]) -> None:
        if not hits:
            return
        with self._tx() as db:
            db.execute(
                sa.insert(_hits), [{"class": cls, "key": key, "at": at} for cls, key, at in hits]
            )

    def rate_hits(self, since: float) -> list[tuple[str, str, float]]:
        rows = self._rows(
            sa.select(_hits.c["class"], _hits.c.key, _hits.c.at)
            .where(_hits.c.at > since)
            .order_by(_hits.c.at)
        )
        return [(str(r[0]), str(r[1]), float(r[2])) for r in rows]

    def prune_rate_hits(self, cutoffs: Mapping[str, float]) -> int:
        """Drop hits older than their class's cutoff, and every hit of a class that has
        none (no longer limited); how many rows went."""
        cls = _hits.c["class"]
        with self._tx() as db:
            removed = 0
            for name, cutoff in cutoffs.items():
                removed += db.execute(
                    sa.delete(_hits).where(cls == name, _hits.c.at <= cutoff)
                ).rowcount
            removed += db.execute(sa.delete(_hits).where(cls.not_in(list(cutoffs)))).rowcount
            return removed

    # --- audit ------------------------------------------------------------------------

    def append_audit(self, entries: Sequence[AuditEntry]) -> None:
        if not entries:
            return
        rows = [
            {
                "at": e.at,
                "kind": e.kind,
                "principal_kind": e.principal_kind,
                "principal": e.principal,
                "tenant": e.tenant,
                "method": e.method,
                "route": e.route,
                "path": e.path,
                "target": msgspec.json.encode(e.target).decode(),
                "status": e.status,
                "client_ip": e.client_ip,
                "event": e.event,
                "subject": e.subject,
                "actor": e.actor,
                "data": msgspec.json.encode(e.data).decode(),
            }
            for e in entries
        ]
        with self._tx() as db:
            db.execute(sa.insert(_audit), rows)

    def audit(self, query: AuditQuery) -> list[AuditEntry]:
        stmt = (
            sa.select(_audit)
            .where(*audit_where(query))
            .order_by(_audit.c.id.desc())
            .limit(query.limit)
        )
        return [_entry(r) for r in self._maps(stmt)]


def audit_where(q: AuditQuery) -> list[sa.ColumnElement[bool]]:
    """The WHERE terms of a query (all must hold). Pure: it builds expressions only."""
    a = _audit.c
    where: list[sa.ColumnElement[bool]] = []
    if q.principal:
        kind, sep, name = q.principal.partition(":")
        if sep and kind in ("certificate", "token", "user"):
            where += [a.principal_kind == kind, a.principal == name]
        else:
            where.append(a.principal == q.principal)
    for column, value in (
        (a.tenant, q.tenant),
        (a.kind, q.kind),
        (a.method, q.method.upper()),
        (a.route, q.route),
    ):
        if value:
            where.append(column == value)
    if q.path_prefix:
        where.append(_starts_with(a.path, q.path_prefix))
    if q.status:
        where.append(a.status == q.status)
    if q.event:
        if q.event.endswith("."):
            where.append(_starts_with(a.event, q.event))
        else:
            where.append(a.event == q.event)
    if q.since:
        where.append(a.at >= q.since)
    if q.until:
        where.append(a.at < q.until)
    if q.before:
        where.append(a.id < q.before)
    return where


def _starts_with(column: sa.ColumnElement[str], prefix: str) -> sa.ColumnElement[bool]:
    """`column` begins with `prefix`, case-sensitively and with no wildcard characters
    (LIKE is case-insensitive on SQLite and treats % and _ as wildcards). Pure."""
    head: sa.ColumnElement[Any] = sa.func.substr(column, 1, sa.literal(len(prefix), sa.Integer()))
    return head == prefix


def _entry(row: RowMapping) -> AuditEntry:
    return AuditEntry(
        id=int(row["id"]),
        at=float(row["at"]),
        kind=row["kind"],
        principal_kind=row["principal_kind"],
        principal=row["principal"],
        tenant=row["tenant"],
        method=row["method"],
        route=row["route"],
        path=row["path"],
        target=_strings.decode(row["target"]),
        status=int(row["status"]),
        client_ip=row["client_ip"],
        event=row["event"],
        subject=row["subject"],
        actor=row["actor"],
        data=_strings.decode(row["data"]),
    )
