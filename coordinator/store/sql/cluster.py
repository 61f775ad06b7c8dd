"""Several coordinators on one database (#23), the store's side: coordinators and
their heartbeats, leases for singleton work, fencing, and which coordinator holds
each machine's hub session.

Every lease change is one conditional statement, timed by the database's clock
(PostgreSQL's `clock_timestamp()`, SQLite's `julianday('now')`), so coordinators whose
clocks disagree still agree on who holds a lease and until when. The epoch (the
fencing token) grows with every new tenure; `_check_fence` refuses a fenced write
once its tenure is over.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from coordinator.store.fence import FENCE, CoordinatorInfo, LeaseInfo, LeaseLost
from coordinator.store.ports import StorageUnavailable
from coordinator.store.sql import schema
from coordinator.store.sql.core import SqlCore, in_chunks, row_record

L = schema.leases
C = schema.coordinators
M = schema.machines


class ClusterSql(SqlCore):
    """The `ClusterStore` port."""

    def _db_now(self) -> sa.ColumnElement[float]:
        """The database's clock, in seconds since the epoch (a double)."""
        if self.dialect == "postgresql":
            return sa.cast(sa.extract("epoch", sa.func.clock_timestamp()), schema.Real)
        return sa.cast((sa.func.julianday("now") - 2440587.5) * 86400.0, schema.Real)

    def _healthy(self) -> None:
        """The cluster's own rows (leases, heartbeats) are not written while the store
        reports a fault: their tiny writes may fit where others do not (a nearly full
        disk), and one that got through would tell /readyz and the metrics the storage
        takes writes again. The state buffer's probe ends the fault; meanwhile a tenure
        runs on until its deadline, so a short fault costs no leadership."""
        if self.health.fault:
            raise StorageUnavailable(self.health.fault, self.health.detail)

    # -- fencing ------------------------------------------------------------------------

    def _check_fence(self, conn: Connection) -> None:
        fence = FENCE.get()
        if fence is None:
            return
        stmt: Any = sa.select(L.c.epoch).where(
            L.c.name == fence.lease,
            L.c.holder == fence.holder,
            L.c.epoch == fence.epoch,
            L.c.expires_at > self._db_now(),
        )
        if self.dialect == "postgresql":
            # Held to COMMIT: a new holder's acquisition waits for this write to land.
            stmt = stmt.with_for_update()
        if conn.execute(stmt).first() is None:
            raise LeaseLost(fence)

    # -- coordinators -------------------------------------------------------------------

    def register_coordinator(
        self, coordinator_id: str, api_url: str, hub_url: str, now: float
    ) -> None:
        ins = self._insert(C).values(
            id=coordinator_id,
            api_url=api_url,
            hub_url=hub_url,
            started_at=now,
            heartbeat_at=self._db_now(),
        )
        self._healthy()
        with self._tx() as db:
            db.execute(
                ins.on_conflict_do_update(
                    index_elements=[C.c.id],
                    set_={
                        "api_url": ins.excluded.api_url,
                        "hub_url": ins.excluded.hub_url,
                        "started_at": ins.excluded.started_at,
                        "heartbeat_at": ins.excluded.heartbeat_at,
                    },
                )
            )

    def heartbeat_coordinator(self, coordinator_id: str) -> bool:
        self._healthy()
        with self._tx() as db:
            done = db.execute(
                sa.update(C).where(C.c.id == coordinator_id).values(heartbeat_at=self._db_now())
            )
            return bool(done.rowcount)

    def live_coordinators(self, stale_after_s: float) -> list[CoordinatorInfo]:
        rows = self._maps(
            sa.select(C).where(C.c.heartbeat_at > self._db_now() - stale_after_s).order_by(C.c.id)
        )
        return [row_record(r, CoordinatorInfo) for r in rows]

    # -- leases -------------------------------------------------------------------------

    def try_acquire(self, name: str, holder: str, ttl_s: float) -> int | None:
        now = self._db_now()
        ins = self._insert(L).values(name=name, holder=holder, epoch=1, expires_at=now + ttl_s)
        stmt = ins.on_conflict_do_update(
            index_elements=[L.c.name],
            set_={
                "holder": ins.excluded.holder,
                "epoch": L.c.epoch + 1,
                "expires_at": ins.excluded.expires_at,
            },
            where=sa.or_(L.c.expires_at <= now, L.c.holder == holder),
        ).returning(L.c.epoch)
        self._healthy()
        with self._tx() as db:
            epoch = db.execute(stmt).scalar()
        return None if epoch is None else int(epoch)

    def renew(self, name: str, holder: str, epoch: int, ttl_s: float) -> bool:
        now = self._db_now()
        self._healthy()
        with self._tx() as db:
            done = db.execute(
                sa.update(L)
                .where(
                    L.c.name == name,
                    L.c.holder == holder,
                    L.c.epoch == epoch,
                    L.c.expires_at > now,
                )
                .values(expires_at=now + ttl_s)
            )
            return done.rowcount == 1

    def release(self, name: str, holder: str, epoch: int) -> None:
        """Give the lease up now (a clean stop): another coordinator need not wait for
        the TTL. The epoch stays, so the next tenure's is still higher."""
        with self._tx() as db:
            db.execute(
                sa.update(L)
                .where(L.c.name == name, L.c.holder == holder, L.c.epoch == epoch)
                .values(expires_at=0.0)
            )

    def lease(self, name: str) -> LeaseInfo | None:
        row = self._first(
            sa.select(
                L.c.name,
                L.c.holder,
                L.c.epoch,
                (L.c.expires_at - self._db_now()).label("remaining_s"),
            ).where(L.c.name == name)
        )
        if row is None:
            return None
        return LeaseInfo(
            name=row["name"],
            holder=row["holder"],
            epoch=int(row["epoch"]),
            remaining_s=float(row["remaining_s"]),
        )

    # -- hub sessions -------------------------------------------------------------------

    def sessions_elsewhere(self, coordinator_id: str) -> set[str]:
        rows = self._rows(
            sa.select(M.c.id).where(
                M.c.state == "connected",
                M.c.session_owner != "",
                M.c.session_owner != coordinator_id,
            )
        )
        return {r[0] for r in rows}

    def session_route(self, machine_id: str, stale_after_s: float) -> tuple[str, str] | None:
        row = self._first(
            sa.select(C.c.id, C.c.hub_url)
            .select_from(M.join(C, C.c.id == M.c.session_owner))
            .where(
                M.c.id == machine_id,
                M.c.state == "connected",
                C.c.heartbeat_at > self._db_now() - stale_after_s,
            )
        )
        return None if row is None else (str(row["id"]), str(row["hub_url"]))

    def drop_session(
        self, machine_id: str, coordinator_id: str, now: float, *, last_seen: float
    ) -> bool:
        """The session this coordinator held ended: the machine is disconnected, unless
        another coordinator holds its session by now (the agent failed over)."""
        with self._tx() as db:
            done = db.execute(
                sa.update(M)
                .where(M.c.id == machine_id, M.c.session_owner.in_([coordinator_id, ""]))
                .values(
                    state="disconnected", state_since=now, last_seen=last_seen, session_owner=""
                )
            )
            return done.rowcount == 1

    def release_sessions(self, coordinator_id: str, now: float, *, unowned: bool) -> int:
        """At start and stop: the sessions this coordinator held are gone (and, with
        `unowned`, connected machines no coordinator claims: rows from before #23)."""
        owned = M.c.session_owner == coordinator_id
        if unowned:
            owned = sa.or_(owned, sa.and_(M.c.session_owner == "", M.c.state == "connected"))
        with self._tx() as db:
            done = db.execute(
                sa.update(M)
                .where(owned, M.c.state == "connected")
                .values(state="disconnected", state_since=now, session_owner="")
            )
            db.execute(sa.update(M).where(owned).values(session_owner=""))
            return int(done.rowcount)

    def disconnect_orphans(self, now: float, stale_after_s: float, *, alive: str = "") -> list[str]:
        """Sessions held by coordinators whose heartbeat stopped (killed, cut off): their
        machines are disconnected now (the leader's job). `alive`: the caller, whose own
        sessions are never orphans however stale its stored heartbeat (a storage outage
        kept it from writing it: found by the fault suite's disk-full scenario)."""
        live = sa.select(C.c.id).where(C.c.heartbeat_at > self._db_now() - stale_after_s)
        orphaned = sa.and_(
            M.c.session_owner != "", M.c.session_owner != alive, M.c.session_owner.not_in(live)
        )
        # A read first: the leader asks every second and the answer is almost always
        # none, which needs no write transaction (nor SQLite's write lock).
        if self._scalar(sa.select(M.c.id).where(orphaned).limit(1)) is None:
            return []
        with self._tx() as db:
            ids = [r[0] for r in db.execute(sa.select(M.c.id).where(orphaned).order_by(M.c.id))]
            if ids:
                db.execute(
                    sa.update(M)
                    .where(M.c.id.in_(ids), orphaned)
                    .values(state="disconnected", state_since=now, session_owner="")
                )
            return ids

    def claim_sessions(
        self, coordinator_id: str, machine_ids: list[str], now: float, *, seen_at: float
    ) -> int:
        """The sessions this coordinator holds (as of `seen_at`), stored as its own and
        connected where the store has them unowned (taken for orphans while a storage
        outage kept this coordinator's heartbeat from being written); how many were
        wrong. Never one another coordinator holds (the agent moved: this session is
        about to end), nor one whose state changed after `seen_at` (it just ended)."""
        fixed = 0
        with self._tx() as db:
            for chunk in in_chunks(sorted(machine_ids)):
                done = db.execute(
                    sa.update(M)
                    .where(
                        M.c.id.in_(chunk),
                        M.c.revoked == 0,
                        M.c.session_owner.in_(["", coordinator_id]),
                        sa.or_(M.c.session_owner != coordinator_id, M.c.state != "connected"),
                        M.c.state_since <= seen_at,
                    )
                    .values(state="connected", state_since=now, session_owner=coordinator_id)
                )
                fixed += int(done.rowcount)
        return fixed

    def unowned_disconnected(self, before: float | None = None) -> list[tuple[str, float]]:
        """Machines disconnected and held by no coordinator, and since when (with
        `before`: only those disconnected since then or earlier)."""
        stmt = sa.select(M.c.id, M.c.state_since).where(
            M.c.state == "disconnected", M.c.session_owner == ""
        )
        if before is not None:
            stmt = stmt.where(M.c.state_since <= before)
        rows = self._rows(stmt.order_by(M.c.id))
        return [(str(r[0]), float(r[1])) for r in rows]

    def mark_lost(self, machine_id: str, now: float, disconnected_since: float) -> bool:
        """`lost`, only if nothing changed since the liveness rule looked (no session
        since, on any coordinator)."""
        with self._tx() as db:
            done = db.execute(
                sa.update(M)
                .where(
                    M.c.id == machine_id,
                    M.c.state == "disconnected",
                    M.c.session_owner == "",
                    M.c.state_since == disconnected_since,
                )
                .values(state="lost", state_since=now)
            )
            return done.rowcount == 1
