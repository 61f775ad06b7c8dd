"""The hub against what no real agent sends (issue 14): nesting, out-of-range values,
request floods, answers of the wrong type, and hypothesis-generated frames. The
session gets an Error frame (or a close); the hub and other sessions stay up."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proto import messages as m
from tests.integration.linkclient import RawLink, enrolled_identity
from tests.procs import CoordinatorProc, wait_for

pytestmark = pytest.mark.integration
T = TypeVar("T")


class LoopThread:
    """An event loop in a thread, so sync hypothesis tests can drive async links."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


class Rig:
    def __init__(self, root: Path) -> None:
        # Raw links beat only when a test says so: a long interval keeps them connected.
        self.coord = CoordinatorProc(root / "coordinator", heartbeat=30).start()
        self.loop = LoopThread()
        self.root = root
        self.identities: dict[str, Any] = {}
        self.links: dict[str, RawLink] = {}
        self.seq = 0

    def link(self, machine_id: str) -> RawLink:
        """An open session for `machine_id` (a new one if the last was closed)."""
        link = self.links.get(machine_id)
        if link is not None and not link.ws.closed:
            return link
        if machine_id not in self.identities:
            self.identities[machine_id] = self.loop.run(
                enrolled_identity(self.coord, self.root, machine_id)
            )

        async def open_() -> RawLink:
            new = await RawLink.open(self.coord, self.identities[machine_id])
            assert isinstance(await new.hello(machine_id), m.Welcome)
            return new

        self.links[machine_id] = self.loop.run(open_())
        return self.links[machine_id]

    def alive(self, machine_id: str) -> bool:
        """The session still answers a heartbeat (other frames on the way are skipped)."""
        self.seq += 1
        beat = m.Heartbeat(self.seq, 1.0)
        link = self.link(machine_id)

        async def go() -> bool:
            await link.send(beat)
            while True:
                reply = await link.recv(timeout=10, skip=(m.Desired, m.Error))
                if reply == beat:
                    return True

        return self.loop.run(go())

    def close(self) -> None:
        for link in self.links.values():
            self.loop.run(link.close())
        self.loop.close()
        self.coord.stop()


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    made = Rig(tmp_path_factory.mktemp("hubprobe"))
    try:
        made.link("bystander")
        yield made
    finally:
        made.close()


def send_and_reply(rig: Rig, machine_id: str, frame: bytes) -> m.Message:
    link = rig.link(machine_id)

    async def go() -> m.Message:
        await link.ws.send_bytes(frame)
        return await link.recv(timeout=10)

    return rig.loop.run(go())


# --- the probe's findings -----------------------------------------------------------------


@pytest.mark.parametrize(
    "frame",
    [
        b"\x91" * 200_000 + b"\xc0",
        msgspec.msgpack.encode({"type": "heartbeat", "seq": 1, "x": 0})[:-1]
        + b"\x91" * 200_000
        + b"\xc0",
        b"\x81\xa4type" + b"\x81\xa1k" * 100_000 + b"\xc0",
    ],
    ids=["arrays", "in-a-skipped-field", "maps"],
)
def test_deeply_nested_msgpack_gets_an_error_frame(rig: Rig, frame: bytes) -> None:
    reply = send_and_reply(rig, "nester", frame)
    assert isinstance(reply, m.Error) and reply.code in ("frame_too_deep", "frame_invalid")
    assert rig.alive("nester") and rig.alive("bystander")


@pytest.mark.parametrize("revision", [-1, 2**63 - 1, 2**64 - 1])
def test_out_of_range_revisions_are_refused_not_stored(rig: Rig, revision: int) -> None:
    frame = msgspec.msgpack.encode({"type": "applied", "revision": revision})
    reply = send_and_reply(rig, "ranger", frame)
    assert isinstance(reply, m.Error) and reply.code in ("frame_out_of_range", "frame_invalid")
    assert rig.alive("ranger")
    machine = next(x for x in rig.coord.machines() if x["id"] == "ranger")
    assert 0 <= machine["applied_revision"] <= 2**53


def test_hello_with_an_absurd_revision_is_refused(rig: Rig) -> None:
    identity = rig.loop.run(enrolled_identity(rig.coord, rig.root, "absurd"))

    async def go() -> tuple[m.Message, int | None]:
        link = await RawLink.open(rig.coord, identity)
        try:
            await link.send(
                m.Hello(proto=m.PROTO_VERSION, machine_id="absurd", applied_revision=-7)
            )
            return await link.recv(), await link.closed()
        finally:
            await link.close()

    reply, code = rig.loop.run(go())
    assert isinstance(reply, m.Error) and reply.code == "bad_hello"
    assert "applied_revision -7" in reply.message and code == 4000


def test_a_resync_flood_gets_a_few_full_pushes(rig: Rig) -> None:
    link = rig.link("flooder")
    resync = m.encode(m.Error("resync", "please"))

    async def go() -> tuple[int, int]:
        for _ in range(500):
            await link.ws.send_bytes(resync)
        pushes = limited = 0
        beat = m.Heartbeat(10**6, 1.0)
        await link.send(beat)
        while True:
            reply = await link.recv(timeout=10, skip=())
            if reply == beat:
                return pushes, limited
            if isinstance(reply, m.Desired) and reply.full:
                pushes += 1
            elif isinstance(reply, m.Error) and reply.code == "rate_limited":
                limited += 1

    pushes, limited = rig.loop.run(go(), timeout=60)
    assert pushes <= 8 and limited >= 490, (pushes, limited)
    assert rig.alive("flooder") and rig.alive("bystander")


def test_drift_refresh_answered_by_another_type_is_not_a_500(rig: Rig) -> None:
    link = rig.link("liar")

    async def answer() -> None:
        while True:
            request = await link.recv(timeout=15, skip=(m.Desired, m.Error, m.Heartbeat))
            if isinstance(request, m.DriftRequest):
                break
        await link.send(m.ImageResolved(request.request_id, digests={"x": "sha256:0"}))
        await link.send(m.Stickers([]))
        await link.send(m.DriftReport(entries=[], request_id=request.request_id, checked_at=5.0))

    task = asyncio.run_coroutine_threadsafe(answer(), rig.loop.loop)
    status, body = rig.coord.raw("GET", "/moorage/v1/drift?machine=liar&refresh=1")
    task.result(15)
    assert status == 200, body
    assert msgspec.json.decode(body)["machines"][0]["checked_at"] == 5.0


# --- hypothesis: whatever arrives, an Error or a close, never a dead hub -------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.binary(max_size=40),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=30,
)
tags = st.sampled_from([*sorted(m.KNOWN_TAGS), "", "nope", "hello\n"])
field_names = st.sampled_from(
    [
        "seq",
        "revision",
        "changes",
        "removed",
        "entries",
        "request_id",
        "csr_pem",
        "code",
        "message",
        "stickers",
        "capabilities",
        "lines",
        "digests",
        "proto",
        "machine_id",
        "x",
    ]
)
messages = st.builds(
    lambda tag, fields: {"type": tag, **fields},
    tags,
    st.dictionaries(field_names, values, max_size=5),
)


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["message", "value", "bytes", "deep", "wide"]))
    if kind == "message":
        return msgspec.msgpack.encode(draw(messages))
    if kind == "value":
        return msgspec.msgpack.encode(draw(values))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    depth = draw(st.integers(min_value=500, max_value=300_000))
    if kind == "deep":
        opener = draw(st.sampled_from([b"\x91", b"\x81\xa1k", b"\xdc\x00\x01"]))
        return b"\x82\xa4type\xa5state\xa7changes" + opener * depth + b"\xc0"
    return msgspec.msgpack.encode({"type": "state", "removed": ["a.service"] * depth})


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(frame=frames())
def test_generated_frames_never_kill_the_hub(rig: Rig, frame: bytes) -> None:
    link = rig.link("fuzzed")
    rig.loop.run(link.ws.send_bytes(frame))
    # The answer, if any, is an Error or the session's close; then it answers a beat.
    if link.ws.closed:
        link = rig.link("fuzzed")
    assert rig.alive("fuzzed")


def test_after_the_fuzzing_the_hub_and_bystander_are_fine(rig: Rig) -> None:
    assert rig.alive("bystander")
    assert rig.coord.proc is not None and rig.coord.proc.alive()
    wait_for(lambda: "bystander" in rig.coord.connected(), what="bystander connected")
    assert "Traceback" not in rig.coord.proc.log()
