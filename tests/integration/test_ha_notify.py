"""Two coordinator processes on one PostgreSQL database (#23): a unit submitted through
A's API reaches an agent whose hub session is on B, through the change feed
(LISTEN/NOTIFY), well under a second; a machine revoked through A loses its session on B.

The agent is simulated (`RawLink`: the hub protocol by hand, with heartbeats); both
coordinators share one CA, copied from A's state directory into B's before B starts.
These two process tests skip while a store module is still on SQLite-only SQL.

Below them: the same on real components in one process (two Coordinators on one SQLite
file, B told by calling what the feed calls), and B's hub following PostgreSQL's feed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import shutil
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import cast

import aiohttp
import msgspec
import pytest
import sqlalchemy as sa
from aiohttp import web

from agent.enrol import enrol
from agent.identity import Identity
from coordinator.config import CoordinatorConfig
from coordinator.hub.sessions import Hub, Session
from coordinator.metrics import CoordinatorMetrics
from coordinator.server import Coordinator
from coordinator.store import sql
from coordinator.store.sql import SqlStore, schema
from coordinator.store.sql.core import bump
from coordinator.tasks import definitions as defs
from coordinator.trust import pki
from coordinator.trust.enrolment import Enroller
from proto import messages as m
from proto.units import UnitOption
from tests.harness.databases import fresh_database
from tests.harness.postgres import postgres_available
from tests.integration.linkclient import RawLink, enrolled_identity
from tests.procs import CoordinatorProc, wait_for

pytestmark = pytest.mark.integration

MACHINE = "agent-on-b"
FEED_DEADLINE_S = 1.0


def share_ca(source: Path, target: Path) -> None:
    """The second coordinator's PKI starts from the first one's CA (certificate and
    key): it then issues its own server and admin certificates from it."""
    target.mkdir(parents=True, exist_ok=True, mode=0o700)
    theirs, mine = pki.PkiPaths.under(source), pki.PkiPaths.under(target)
    shutil.copy2(theirs.ca_cert, mine.ca_cert)
    shutil.copy2(theirs.ca_key, mine.ca_key)


def transitional_modules() -> list[str]:
    """Store modules still on SQLite-only qmark SQL (#23 converts them one by one): a
    coordinator cannot start on PostgreSQL until none is left."""
    package = Path(sql.__file__).parent
    return sorted(
        path.stem
        for path in package.glob("*.py")
        if path.stem not in ("core", "legacy") and "self._raw_" in path.read_text()
    )


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[CoordinatorProc, CoordinatorProc]]:
    missing = postgres_available()
    if missing:
        pytest.skip(missing)
    waiting = transitional_modules()
    if waiting:
        pytest.skip(f"store modules not yet on Core statements: {', '.join(waiting)}")
    url = fresh_database(tmp_path / "db", "postgresql")
    a = CoordinatorProc(tmp_path / "a")
    b = CoordinatorProc(tmp_path / "b")
    a.database_url = b.database_url = url
    started: list[CoordinatorProc] = []
    try:
        started.append(a.start())
        share_ca(a.state_dir / "pki", b.state_dir / "pki")
        started.append(b.start())
        yield a, b
    finally:
        for proc in reversed(started):
            proc.stop()


@contextlib.asynccontextmanager
async def agent_on(
    enrol_at: CoordinatorProc, connect_to: CoordinatorProc, root: Path
) -> AsyncIterator[tuple[RawLink, m.Welcome]]:
    """A machine enrolled through one coordinator, its session on the other, beating."""
    identity = await enrolled_identity(enrol_at, root, MACHINE)
    link = await RawLink.open(connect_to, identity)
    welcome = await link.hello(MACHINE)
    assert isinstance(welcome, m.Welcome), welcome

    async def beat() -> None:
        for seq in itertools.count(1):
            await asyncio.sleep(0.5)
            await link.send(m.Heartbeat(seq))

    beating = asyncio.create_task(beat())
    try:
        yield link, welcome
    finally:
        beating.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await beating
        await link.close()


async def next_desired(link: RawLink, timeout: float) -> m.Desired:
    deadline = time.monotonic() + timeout
    while True:
        message = await link.recv(timeout=max(0.01, deadline - time.monotonic()), skip=())
        if isinstance(message, m.Desired):
            return message


def put_unit(coordinator: CoordinatorProc, name: str, text: str, state: str = "launched") -> None:
    body = {
        "options": [{"section": "Service", "name": "ExecStart", "value": text}],
        "desired_state": state,
        "machines": [MACHINE],
    }
    coordinator.api("PUT", f"/moorage/v1/units/{name}", body)


async def test_a_unit_put_through_a_reaches_the_agent_on_b(
    pair: tuple[CoordinatorProc, CoordinatorProc], tmp_path: Path
) -> None:
    a, b = pair
    async with agent_on(a, b, tmp_path) as (link, welcome):
        await asyncio.to_thread(wait_for, lambda: MACHINE in b.connected(), 10, what="session on B")

        started = time.monotonic()
        await asyncio.to_thread(put_unit, a, "web.service", "/bin/sleep 1000")
        desired = await next_desired(link, FEED_DEADLINE_S)
        took = time.monotonic() - started
        assert desired.revision > welcome.desired_revision
        assert [u.name for u in desired.upserts] == ["web.service"]
        assert took < FEED_DEADLINE_S + 0.5, took  # the API call's own time included
        await link.send(m.Applied(desired.revision))

        # A change (a diff on what B sent), then a stop: each reaches the agent on B.
        await asyncio.to_thread(put_unit, a, "web.service", "/bin/sleep 2000")
        changed = await next_desired(link, FEED_DEADLINE_S)
        assert changed.revision > desired.revision
        assert [o.value for o in changed.upserts[0].options] == ["/bin/sleep 2000"]
        assert not changed.full and changed.base_revision == desired.revision

        await asyncio.to_thread(a.api, "DELETE", "/moorage/v1/units/web.service")
        gone = await next_desired(link, FEED_DEADLINE_S)
        assert gone.removes == ["web.service"]


async def test_a_machine_revoked_through_a_loses_its_session_on_b(
    pair: tuple[CoordinatorProc, CoordinatorProc], tmp_path: Path
) -> None:
    a, b = pair
    async with agent_on(a, b, tmp_path) as (link, _welcome):
        await asyncio.to_thread(wait_for, lambda: MACHINE in b.connected(), 10, what="session on B")
        await asyncio.to_thread(a.api, "POST", f"/moorage/v1/machines/{MACHINE}/revoke")
        assert await link.closed(timeout=3.0) == 4001  # CLOSE_REVOKED


# --- the hub's side, on real components in one process ------------------------------------
#
# Two Coordinators (listeners, services, hub) on one SQLite file, the agent's session on
# B. SQLite's feed is silent (one coordinator is the supported set-up), so the test calls
# what the feed's batches and the safety net call (`Hub.nudge`, `Hub.recheck`): what B
# does once it hears of A's change, without PostgreSQL.


@contextlib.asynccontextmanager
async def coordinators_in_process(
    tmp: Path, server_names: list[str] | None = None
) -> AsyncIterator[tuple[Coordinator, Coordinator]]:
    """A and B on one SQLite file, sharing A's CA (`server_names`: the name each puts in
    the hub URL it registers, for what one asks of the other)."""
    shared = str(tmp / "shared.db")

    def config(name: str) -> CoordinatorConfig:
        return CoordinatorConfig(
            state_dir=str(tmp / name),
            api_listen="127.0.0.1:0",
            hub_listen="127.0.0.1:0",
            server_names=list(server_names or []),
            database_url=shared,
            heartbeat_s=1.0,
            lost_after_s=30.0,
        )

    a = Coordinator(config("a"))
    share_ca(tmp / "a" / "pki", tmp / "b" / "pki")
    b = Coordinator(config("b"))
    started: list[Coordinator] = []
    try:
        for c in (a, b):
            await c.start()
            started.append(c)
        yield a, b
    finally:
        for c in reversed(started):
            await c.stop()


async def link_to(
    a: Coordinator, b: Coordinator, root: Path, hello: m.Hello | None = None
) -> RawLink:
    """Enrolled through A's API, the session on B's hub (ready: its hooks ran), opened
    with `hello` (default: a machine with docker and room for tasks)."""
    identity = Identity(root / f"raw-{MACHINE}")
    await enrol(
        coordinator_url=f"https://127.0.0.1:{a.api_port}",
        token=a.tokens.create_join_token(600),
        machine_id=MACHINE,
        identity=identity,
    )
    http = aiohttp.ClientSession()
    ws = await http.ws_connect(
        f"wss://127.0.0.1:{b.hub_port}/agent/v1", ssl=identity.ssl_context(), max_msg_size=0
    )
    link = RawLink(http, ws)
    hello = hello or m.Hello(
        proto=m.PROTO_VERSION,
        machine_id=MACHINE,
        hostname="sim",
        capabilities=["docker"],
        resources=m.Resources(1024, 2000),
    )
    await link.send(hello)
    assert isinstance(await link.recv(), m.Welcome)
    deadline = time.monotonic() + 5
    while not ((s := b.hub.sessions.get(MACHINE)) and s.ready):
        assert time.monotonic() < deadline, "no ready session on B"
        await asyncio.sleep(0.01)
    return link


async def quiet(link: RawLink, seconds: float = 0.3) -> None:
    with pytest.raises(TimeoutError):
        await link.recv(timeout=seconds, skip=(m.Heartbeat,))


async def test_b_sends_what_a_changed_once_told_and_only_then(tmp_path: Path) -> None:
    async with coordinators_in_process(tmp_path) as (a, b):
        assert a.hub.feed is not None and not a.hub.feed.shared  # SQLite: no feed to follow
        link = await link_to(a, b, tmp_path)
        try:
            option = UnitOption(section="Service", name="ExecStart", value="/bin/sleep 1000")
            await a.units.put("web.service", [option], "launched", machines=[MACHINE])
            await quiet(link)  # A has no session for it, and nobody told B yet

            await b.hub.recheck()  # the safety net, or a feed batch (`nudge`)
            desired = await link.recv(skip=())
            assert isinstance(desired, m.Desired)
            assert [u.name for u in desired.upserts] == ["web.service"]
            assert b.hub.sessions[MACHINE].sent_revision == desired.revision

            await b.hub.recheck()  # nothing new: nothing sent again
            await b.hub.nudge([MACHINE])
            await quiet(link)

            await a.units.destroy("web.service")
            await b.hub.nudge([MACHINE, "some-machine-elsewhere"])
            gone = await link.recv(skip=())
            assert isinstance(gone, m.Desired) and gone.removes == ["web.service"]
            assert gone.base_revision == desired.revision
        finally:
            await link.close()


async def test_b_starts_and_stops_a_run_a_placed_on_its_machine(tmp_path: Path) -> None:
    async with coordinators_in_process(tmp_path) as (a, b):
        link = await link_to(a, b, tmp_path)
        try:
            definition = a.tasks.create_definition(
                "default", defs.DefinitionInput(alias="hello", image="busybox", memory=64)
            )
            queued = await a.tasks.execute(
                "default", definition, defs.ExecuteInput(), require_owner=False
            )
            placed = msgspec.structs.replace(queued, status="PENDING", machine_id=MACHINE)
            a.storage.put_runs([placed], [])  # as A's scheduler would, were sessions shared
            a.tasks._runs[placed.run_id] = placed

            await b.hub.nudge([MACHINE])
            start = await link.recv(skip=(m.Desired, m.Heartbeat))
            assert isinstance(start, m.TaskStart) and start.run_id == placed.run_id

            await a.tasks.stop("default", placed.run_id)  # A: no session, so it announces
            await b.hub.nudge([MACHINE])
            sent = [await link.recv(skip=(m.Desired, m.Heartbeat)) for _ in range(2)]
            assert {type(x) for x in sent} == {m.TaskStart, m.TaskStop}  # unacked: both again
        finally:
            await link.close()


async def test_a_machine_revoked_on_a_is_closed_on_b_at_the_next_check(tmp_path: Path) -> None:
    async with coordinators_in_process(tmp_path) as (a, b):
        link = await link_to(a, b, tmp_path)
        try:
            assert await a.hub.revoke(MACHINE)
            await b.hub.recheck()
            assert await link.closed(timeout=3.0) == 4001
        finally:
            await link.close()


# --- the hub following the feed, on PostgreSQL ---------------------------------------------
#
# Two stores on one PostgreSQL database as two coordinators hold them; B's hub follows
# its feed (`follow_changes`, as server.py starts it) with a session standing in for an
# agent's WebSocket (the hub only calls its `send`/`close`).


class Socket:
    """Stands in for an agent's WebSocket: what the hub sent, and the close code."""

    def __init__(self) -> None:
        self.sent: list[m.Message] = []
        self.closed_with: int | None = None

    async def send_bytes(self, data: bytes) -> None:
        self.sent.append(m.decode(data))

    async def close(self, *, code: int, message: bytes) -> None:
        self.closed_with = code


def stand_in(machine_id: str, serial: str) -> tuple[Session, Socket]:
    """A ready session (its Hello handled) on a socket the test reads."""
    socket = Socket()
    session = Session(machine_id, serial, cast(web.WebSocketResponse, socket), CoordinatorMetrics())
    session.ready = True
    session.sent_revision = 0
    return session, socket


async def eventually(check: Callable[[], object], timeout: float = FEED_DEADLINE_S) -> float:
    """Seconds until `check()` holds (AssertionError after `timeout`)."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout, f"not within {timeout} s"
        await asyncio.sleep(0.005)
    return time.monotonic() - started


def enroller_for(store: SqlStore, directory: Path) -> Enroller:
    paths = pki.init_pki(directory, ["localhost"], ["127.0.0.1"])
    ca_key = pki.load_key(Path(paths.ca_key).read_bytes())
    return Enroller(store, ca_key, pki.load_cert(Path(paths.ca_cert).read_bytes()), cert_ttl_s=60)


async def test_the_hub_follows_another_coordinators_commits(tmp_path: Path) -> None:
    if postgres_available():
        pytest.skip(str(postgres_available()))
    url = fresh_database(tmp_path / "db", "postgresql")
    a, b = SqlStore(url), SqlStore(url)
    enroller = enroller_for(b, tmp_path / "pki")
    hub = Hub(b, enroller, CoordinatorMetrics(), heartbeat_s=1, lost_after_s=30, feed=b)
    desired: list[list[str]] = []
    nudged: list[list[str]] = []

    async def on_desired(ids: list[str]) -> None:
        desired.append(ids)
        for mid in ids:  # as the unit service would: push, and the session remembers
            revision = b.desired_revisions([mid])[mid]
            await hub.sessions[mid].send(m.Desired(revision=revision, full=True))

    async def on_nudge(ids: list[str]) -> None:
        nudged.append(ids)

    hub.on_desired.append(on_desired)
    hub.on_nudge.append(on_nudge)
    with a.batch() as db:
        db.execute(
            sa.insert(schema.machines),
            [{"id": mid, "enrolled_at": 1.0} for mid in ("here", "there", "gone")],
        )
    (here, here_ws), (gone, gone_ws) = stand_in("here", "s-here"), stand_in("gone", "s-gone")
    hub.sessions = {"here": here, "gone": gone}
    following = asyncio.create_task(hub.follow_changes(recheck_s=0.3))
    try:
        await eventually(lambda: nudged)  # connected: every session checked once
        assert nudged.pop() == ["gone", "here"] and not desired

        with a.batch() as db:
            bump(db, {"here", "there"})  # "there": a session on another coordinator
        took = await eventually(lambda: desired)
        assert desired == [["here"]] and nudged == [["here"]], (desired, nudged)
        revision = b.desired_revisions(["here"])["here"]
        assert revision > 0 and here.sent_revision == revision
        assert here_ws.sent == [m.Desired(revision=revision, full=True)]
        print(f"a commit on A reached B's session in {took * 1000:.0f} ms")

        with a.batch() as db:  # revoked through A: the session here ends
            db.execute(
                sa.insert(schema.revoked_certs).values(
                    serial="s-gone", machine_id="gone", revoked_at=1.0
                )
            )
        a.announce(["gone"])
        await eventually(lambda: gone_ws.closed_with is not None)
        assert gone_ws.closed_with == 4001 and here_ws.closed_with is None
        del hub.sessions["gone"]

        # A change nobody notified (a NOTIFY lost): the recheck finds it.
        m_ = schema.machines
        with a.batch() as db:
            db.execute(sa.update(m_).where(m_.c.id == "here").values(desired_revision=5))
        await eventually(lambda: here.sent_revision == 5)

        # The listener's connection dies: the feed reconnects and every session is
        # checked again (what was notified meanwhile is lost).
        nudged.clear()
        with a.batch() as db:
            killed = db.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE query LIKE 'LISTEN%' AND datname = current_database()"
                )
            ).scalars()
            assert list(killed) == [True]
        await eventually(lambda: nudged, timeout=3.0)
        assert nudged == [["here"]]
        with a.batch() as db:
            bump(db, {"here"})
        await eventually(lambda: here.sent_revision == b.desired_revisions(["here"])["here"] > 5)
    finally:
        following.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await following
        a.close()
        b.close()
