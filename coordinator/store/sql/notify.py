"""The change feed (#23): which machines' stored state another coordinator changed.

Every coordinator sharing one PostgreSQL database LISTENs on one channel
(`core.CHANGES_CHANNEL`) over a dedicated psycopg connection of its own (never a
pooled one: a pooled connection would drop the LISTEN when it is handed back). The
writers NOTIFY inside the transaction of the change (`core.bump`, `announce`), so a
notification arrives only once the change is committed and visible. What arrives
together is handed on together (one batch of machine ids), so a burst of commits
becomes one pass over the sessions.

NOTIFY is not durable: while the listener is away (the server restarted, the network
dropped) notifications are lost. So after every (re)connection the feed yields None
("check everything"), and the hub compares stored revisions with what it last sent
(the machines' `desired_revisions`, `revoked_serials`) then and every few seconds.

SQLite: one coordinator, whose services push in process; the feed never yields.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Iterable
from typing import TYPE_CHECKING

import sqlalchemy as sa

from coordinator.store.sql import schema
from coordinator.store.sql.core import CHANGES_CHANNEL, SqlCore, in_chunks, notify_machines

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger("coordinator.storage.feed")

RETRY_MIN_S = 0.2
RETRY_MAX_S = 5.0
KEEPALIVE = "keepalives=1&keepalives_idle=5&keepalives_interval=2&keepalives_count=3"
"""A silently dropped listener connection is noticed in about 11 s, then re-opened."""


def payload_ids(payload: str) -> list[str]:
    """The machine ids of one notification (space-separated, see `core.notify_payloads`). Pure."""
    return payload.split()


class NotifySql(SqlCore):
    """`coordinator.store.ports.ChangeFeed` over LISTEN/NOTIFY."""

    @property
    def shared(self) -> bool:
        return self.dialect == "postgresql"

    def announce(self, machine_ids: Iterable[str]) -> None:
        ids = set(machine_ids)
        if not ids or not self.shared:
            return
        with self._tx() as db:
            notify_machines(db, ids)

    def revoked_serials(self, serials: Iterable[str]) -> set[str]:
        r = schema.revoked_certs
        out: set[str] = set()
        for chunk in in_chunks(sorted(set(serials))):
            rows = self._rows(sa.select(r.c.serial).where(r.c.serial.in_(chunk)))
            out.update(str(row.serial) for row in rows)
        return out

    async def changes(self) -> AsyncGenerator[list[str] | None, None]:
        if not self.shared:
            await asyncio.Event().wait()  # one coordinator: nothing will ever come
        # Here, not at import: ~20 MiB a coordinator on SQLite never needs (#22)
        import psycopg
        from psycopg import sql

        delay = RETRY_MIN_S
        while True:
            queue: asyncio.Queue[list[str] | BaseException] = asyncio.Queue()
            try:
                conn = await psycopg.AsyncConnection.connect(self._conninfo(), autocommit=True)
            except psycopg.Error as exc:
                log.warning("change feed cannot connect (retry in %.1f s): %s", delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            reader: asyncio.Task[None] | None = None
            try:
                await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANGES_CHANNEL)))
                reader = asyncio.create_task(self._listen(conn, queue))
                delay = RETRY_MIN_S
                log.info("change feed listening on %s", CHANGES_CHANNEL)
                yield None  # whatever was notified while nobody listened is lost
                while True:
                    first = await queue.get()
                    if isinstance(first, BaseException):
                        raise first
                    batch = set(first)
                    while not queue.empty():  # what else arrived meanwhile: one batch
                        more = queue.get_nowait()
                        if isinstance(more, BaseException):
                            raise more
                        batch.update(more)
                    yield sorted(batch)
            except psycopg.Error as exc:
                log.warning("change feed lost its connection (retry in %.1f s): %s", delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
            finally:
                if reader is not None:
                    reader.cancel()
                    with contextlib.suppress(asyncio.CancelledError, psycopg.Error):
                        await reader
                with contextlib.suppress(psycopg.Error):
                    await conn.close()

    @staticmethod
    async def _listen(
        conn: psycopg.AsyncConnection[tuple[object, ...]],
        queue: asyncio.Queue[list[str] | BaseException],
    ) -> None:
        """Notifications into `queue` as they arrive; the connection's failure too."""
        import psycopg

        try:
            async for note in conn.notifies():
                if note.channel == CHANGES_CHANNEL:
                    queue.put_nowait(payload_ids(note.payload))
        except psycopg.Error as exc:
            queue.put_nowait(exc)
        else:
            queue.put_nowait(psycopg.OperationalError("the change feed's connection ended"))

    def _conninfo(self) -> str:
        """libpq's URI for this store's database (the SQLAlchemy URL without its driver)."""
        url = sa.engine.make_url(self.url).set(drivername="postgresql")
        text = url.render_as_string(hide_password=False)
        return text + ("&" if "?" in text else "?") + KEEPALIVE
