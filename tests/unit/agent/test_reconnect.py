"""Reconnect decisions of the agent link, as pure functions."""

from __future__ import annotations

import random
import socket

import pytest

from agent.backoff import REFUSED, next_failures, reconnect_delay
from agent.link import describe, session_end
from agent.wsclient import CLOSE_ABNORMAL
from proto.keepalive import DEAD_AFTER_S, enable_keepalive


def delays(failures: int, n: int = 2000, spread: float = 1.0) -> list[float]:
    rng = random.Random(failures)
    return [
        reconnect_delay(failures, initial=0.5, maximum=30, spread=spread, rand=rng.random())
        for _ in range(n)
    ]


def test_a_welcomed_session_resets_the_count_however_short_it_was() -> None:
    failures = 0
    for _ in range(10):  # the coordinator restarts while the agent retries
        failures = next_failures(failures, welcomed=False)
    assert failures == 10
    assert next_failures(failures, welcomed=True) == 0
    # ten short sessions in a row (restarts 5 s apart): never more than one failure
    # between two Welcomes, so the delay never reaches the 30 s ceiling
    failures = 0
    worst = 0.0
    for _ in range(10):
        failures = next_failures(failures, welcomed=True)
        worst = max(worst, max(delays(failures)))
        failures = next_failures(failures, welcomed=False)
        worst = max(worst, max(delays(failures)))
    assert worst <= 1.0


def test_the_first_reconnect_is_spread_over_the_window_the_coordinator_gave() -> None:
    small = delays(0, spread=1.0)
    assert 0 <= min(small) < 0.05 and 0.95 < max(small) < 1.0
    big = delays(0, spread=5.0)  # 10,000 agents: a 5 s window, 2,000 a second
    assert max(big) > 4.9
    buckets = [0] * 5
    for d in big:
        buckets[int(d)] += 1
    assert min(buckets) > len(big) / 5 * 0.8, "uniform: no wave"
    assert max(delays(0, spread=500)) <= 30, "never beyond the longest delay"


def test_failures_back_off_exponentially_with_jitter() -> None:
    assert min(delays(1)) >= 0.25 and max(delays(1)) <= 0.5
    assert min(delays(2)) >= 0.5 and max(delays(2)) <= 1.0
    assert min(delays(20)) >= 15 and max(delays(20)) <= 30
    assert next_failures(3, welcomed=False, refused=True) == REFUSED
    assert min(delays(REFUSED)) >= 15


def test_a_refusal_is_never_retried_soon() -> None:
    rng = random.Random(7)
    refused = [
        reconnect_delay(
            REFUSED, initial=0.5, maximum=30, spread=1, rand=rng.random(), hubs=3, refused=True
        )
        for _ in range(2000)
    ]
    assert min(refused) >= 15 and max(refused) <= 30


def test_log_reasons_say_who_closed_and_are_never_empty() -> None:
    assert session_end("no heartbeat echo for 30 s", 1000, "") == (
        "closed the link: no heartbeat echo for 30 s"
    )
    assert session_end("", 1001, "coordinator shutting down") == (
        "link closed by the coordinator (code 1001: coordinator shutting down)"
    )
    assert session_end("", CLOSE_ABNORMAL, "[Errno 110] Connection timed out") == (
        "link lost: [Errno 110] Connection timed out"
    )
    assert describe(TimeoutError()) == "timed out"
    assert describe(ConnectionRefusedError()) == "ConnectionRefusedError"


def test_keepalive_is_set_on_a_real_socket() -> None:
    with socket.socket() as s:
        assert enable_keepalive(s)
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        idle = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE)
        intvl = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL)
        cnt = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT)
        assert idle + intvl * cnt == DEAD_AFTER_S <= 15
    assert not enable_keepalive(None)


class _Closed:
    """A WebSocket that closed before any message, with the given close code."""

    def __init__(self, code: int | None, reason: str = "") -> None:
        self.close_code = code
        self.close_reason = reason

    async def receive(self) -> bytes | None:
        return None


async def test_only_the_hubs_own_refusals_count_as_refused() -> None:
    from agent.link import Link, LinkRefused
    from agent.wsclient import WsError

    link = Link.__new__(Link)
    with pytest.raises(LinkRefused, match="4003"):
        await link._welcome(_Closed(4003, "identity"))  # type: ignore[arg-type]
    for code in (1001, CLOSE_ABNORMAL, None):  # a hub going away: retry soon
        with pytest.raises(WsError, match="no Welcome"):
            await link._welcome(_Closed(code))  # type: ignore[arg-type]
