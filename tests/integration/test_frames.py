"""Malformed, oversized and unknown frames: answered, counted, and nobody else notices."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec
import pytest

from proto import messages as m
from tests.integration.linkclient import RawLink, enrolled_identity
from tests.integration.test_enrolment import enrol_and_start
from tests.procs import AgentProc, CoordinatorProc, wait_for

pytestmark = pytest.mark.integration


def frame_errors(coordinator: CoordinatorProc) -> dict[str, float]:
    found = re.findall(
        r'moorage_hub_frame_errors_total\{reason="(\w+)"\} ([0-9.]+)', coordinator.metrics()
    )
    return {reason: float(value) for reason, value in found}


async def test_bad_frames_get_errors_and_are_counted(
    coordinator: CoordinatorProc, agents: list[AgentProc], tmp_path: Path
) -> None:
    bystander = enrol_and_start(coordinator, tmp_path, agents, "bystander")
    wait_for(lambda: "bystander" in coordinator.connected(), what="bystander connected")

    identity = await enrolled_identity(coordinator, tmp_path, "fuzzer")
    link = await RawLink.open(coordinator, identity)
    try:
        assert isinstance(await link.hello("fuzzer"), m.Welcome)

        await link.ws.send_bytes(b"\xc1 definitely not msgpack")
        reply = await link.recv()
        assert isinstance(reply, m.Error) and reply.code == "frame_undecodable"

        await link.ws.send_bytes(msgspec.msgpack.encode({"type": "self_destruct", "now": True}))
        reply = await link.recv()
        assert isinstance(reply, m.Error) and reply.code == "frame_unknown_type"
        assert "self_destruct" in reply.message

        await link.ws.send_bytes(msgspec.msgpack.encode({"type": "heartbeat", "seq": "x"}))
        reply = await link.recv()
        assert isinstance(reply, m.Error) and reply.code == "frame_invalid"

        await link.ws.send_bytes(m.encode(m.Error("pad", "x" * (m.MAX_FRAME + 1))))
        reply = await link.recv(timeout=15)
        assert isinstance(reply, m.Error) and reply.code == "frame_too_large"

        await link.ws.send_str("text is not the protocol")
        reply = await link.recv()
        assert isinstance(reply, m.Error) and reply.code == "frame_undecodable"

        # the session survives all of that
        await link.send(m.Heartbeat(7, 1.0))
        assert await link.recv() == m.Heartbeat(7, 1.0)
        wait_for(
            lambda: "fuzzer" in coordinator.connected(), timeout=5, what="fuzzer still connected"
        )
    finally:
        await link.close()

    counts = frame_errors(coordinator)
    assert counts.get("undecodable") == 2
    assert counts.get("unknown_type") == 1
    assert counts.get("invalid") == 1
    assert counts.get("too_large") == 1
    assert bystander.proc is not None and "bystander" in coordinator.connected()


async def test_frame_beyond_the_hard_limit_drops_only_that_session(
    coordinator: CoordinatorProc, agents: list[AgentProc], tmp_path: Path
) -> None:
    bystander = enrol_and_start(coordinator, tmp_path, agents, "bystander2")
    identity = await enrolled_identity(coordinator, tmp_path, "flooder")
    link = await RawLink.open(coordinator, identity)
    try:
        assert isinstance(await link.hello("flooder"), m.Welcome)
        await link.ws.send_bytes(b"\x00" * (m.HARD_FRAME_LIMIT + 1))
        # 1009 "message too big" when the close frame gets through, else an abnormal close
        assert await link.closed(timeout=15) in (1009, 1006)
    finally:
        await link.close()
    assert frame_errors(coordinator).get("too_large") == 1
    wait_for(lambda: coordinator.connected() == {"bystander2"}, what="bystander still connected")
    assert bystander.proc is not None and bystander.proc.alive()
