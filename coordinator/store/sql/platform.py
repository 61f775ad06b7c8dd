"""The platform's tables: rate-limit hits and the audit log."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence

import msgspec

from coordinator.models import AuditEntry, AuditQuery
from coordinator.store.sql.core import SqlCore

_strings = msgspec.json.Decoder(dict[str, str])

_AUDIT_COLUMNS = (
    "at, kind, principal_kind, principal, tenant, method, route, path, target, status,"
    " client_ip, event, subject, actor, data"
)


class PlatformSql(SqlCore):
    # --- rate limits ------------------------------------------------------------------

    def add_rate_hits(self, hits: Sequence[tuple[str, str, float]]) -> None:
        if not hits:
            return
        with self._raw_tx() as db:
            db.executemany("INSERT INTO rate_limit_hits (class, key, at) VALUES (?, ?, ?)", hits)

    def rate_hits(self, since: float) -> list[tuple[str, str, float]]:
        rows = self._raw_all(
            "SELECT class, key, at FROM rate_limit_hits WHERE at > ? ORDER BY at", (since,)
        )
        return [(str(r[0]), str(r[1]), float(r[2])) for r in rows]

    def prune_rate_hits(self, cutoffs: Mapping[str, float]) -> int:
        with self._raw_tx() as db:
            removed = 0
            for cls, cutoff in cutoffs.items():
                removed += db.execute(
                    "DELETE FROM rate_limit_hits WHERE class=? AND at <= ?", (cls, cutoff)
                ).rowcount
            marks = ",".join("?" for _ in cutoffs) or "''"
            removed += db.execute(
                f"DELETE FROM rate_limit_hits WHERE class NOT IN ({marks})", tuple(cutoffs)
            ).rowcount
            return removed

    # --- audit ------------------------------------------------------------------------

    def append_audit(self, entries: Sequence[AuditEntry]) -> None:
        if not entries:
            return
        rows = [
            (
                e.at,
                e.kind,
                e.principal_kind,
                e.principal,
                e.tenant,
                e.method,
                e.route,
                e.path,
                msgspec.json.encode(e.target).decode(),
                e.status,
                e.client_ip,
                e.event,
                e.subject,
                e.actor,
                msgspec.json.encode(e.data).decode(),
            )
            for e in entries
        ]
        with self._raw_tx() as db:
            db.executemany(
                f"INSERT INTO audit_log ({_AUDIT_COLUMNS}) VALUES ({','.join('?' * 15)})", rows
            )

    def audit(self, query: AuditQuery) -> list[AuditEntry]:
        where, args = audit_where(query)
        sql = f"SELECT id, {_AUDIT_COLUMNS} FROM audit_log"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id DESC LIMIT ?"
        return [_entry(r) for r in self._raw_all(sql, (*args, query.limit))]


def audit_where(q: AuditQuery) -> tuple[list[str], list[object]]:
    """The WHERE terms of a query, with their arguments. Pure."""
    where: list[str] = []
    args: list[object] = []
    if q.principal:
        kind, sep, name = q.principal.partition(":")
        if sep and kind in ("certificate", "token", "user"):
            where.append("principal_kind=? AND principal=?")
            args += [kind, name]
        else:
            where.append("principal=?")
            args.append(q.principal)
    for column, value in (
        ("tenant", q.tenant),
        ("kind", q.kind),
        ("method", q.method.upper()),
        ("route", q.route),
    ):
        if value:
            where.append(f"{column}=?")
            args.append(value)
    if q.path_prefix:
        where.append("substr(path, 1, ?)=?")
        args += [len(q.path_prefix), q.path_prefix]
    if q.status:
        where.append("status=?")
        args.append(q.status)
    if q.event:
        if q.event.endswith("."):
            where.append("substr(event, 1, ?)=?")
            args += [len(q.event), q.event]
        else:
            where.append("event=?")
            args.append(q.event)
    if q.since:
        where.append("at>=?")
        args.append(q.since)
    if q.until:
        where.append("at<?")
        args.append(q.until)
    if q.before:
        where.append("id<?")
        args.append(q.before)
    return where, args


def _entry(row: sqlite3.Row) -> AuditEntry:
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
