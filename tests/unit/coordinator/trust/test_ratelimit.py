"""Rate limits: the sliding-log arithmetic (pure, property-tested), and the limiter
over a real SQLite store (reservations, concurrency, what survives a restart)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.config import LimitConfig, RateLimits
from coordinator.store.sql import SqlStore
from coordinator.trust.ratelimit import (
    AUTH,
    DEPLOY,
    TOKEN,
    Log,
    RateLimited,
    RateLimiter,
    decide,
    limits_of,
    live_hits,
    without,
)
from tests.harness.databases import fresh_database, open_test_store

limits_st = st.builds(
    LimitConfig,
    count=st.integers(min_value=1, max_value=12),
    window_s=st.floats(min_value=1.0, max_value=5000.0),
)
gaps_st = st.lists(st.floats(min_value=0.0, max_value=2000.0), min_size=1, max_size=60)


def run(limit: LimitConfig, gaps: list[float]) -> list[tuple[float, bool]]:
    hits: tuple[float, ...] = ()
    now = 1_000_000.0
    out = []
    for gap in gaps:
        now += gap
        decision, hits = decide(hits, now, limit)
        out.append((now, decision.allowed))
    return out


@given(limits_st, gaps_st)
def test_never_more_than_count_in_any_window(limit: LimitConfig, gaps: list[float]) -> None:
    allowed = [t for t, ok in run(limit, gaps) if ok]
    for t in allowed:
        inside = [u for u in allowed if t < u + limit.window_s and u <= t]
        assert len(inside) <= limit.count


@given(limits_st, gaps_st)
def test_allowed_exactly_when_fewer_than_count_were_allowed_in_the_window(
    limit: LimitConfig, gaps: list[float]
) -> None:
    """The model: a hit is allowed iff fewer than `count` allowed hits lie in
    (now - window, now]. The arithmetic agrees with it at every step."""
    allowed: list[float] = []
    for t, ok in run(limit, gaps):
        expected = len([u for u in allowed if u + limit.window_s > t]) < limit.count
        assert ok == expected
        if ok:
            allowed.append(t)


@given(limits_st, gaps_st)
def test_decision_fields_are_consistent(limit: LimitConfig, gaps: list[float]) -> None:
    hits: tuple[float, ...] = ()
    now = 5000.0
    for gap in gaps:
        now += gap
        decision, new = decide(hits, now, limit)
        assert decision.limit == limit.count
        assert new == tuple(sorted(new))
        if decision.allowed:
            assert decision.retry_after == 0
            assert decision.remaining == limit.count - len(new) >= 0
            assert now < decision.reset_at <= now + limit.window_s
        else:
            assert decision.remaining == 0
            assert decision.retry_after >= 1
            assert decision.retry_after >= max(1, math.ceil(decision.reset_at - now))
            assert decision.retry_after <= max(1, math.ceil(decision.reset_at - now)) + 1
            # Waiting as told is enough (with nothing else counted meanwhile)...
            later, _ = decide(new, now + decision.retry_after, limit)
            assert later.allowed
            # ...and a refusal does not count.
            assert new == live_hits(hits, now, limit.window_s)
        hits = new


@given(limits_st, gaps_st)
def test_giving_back_a_reservation_restores_the_state(
    limit: LimitConfig, gaps: list[float]
) -> None:
    hits: tuple[float, ...] = ()
    now = 0.0
    for gap in gaps:
        now += gap
        decision, new = decide(hits, now, limit)
        if decision.allowed:
            assert without(new, now) == live_hits(hits, now, limit.window_s)
        hits = new


@given(
    limits_st,
    st.lists(
        st.tuples(st.floats(min_value=-5.0, max_value=2000.0), st.booleans()),
        min_size=1,
        max_size=60,
    ),
)
def test_the_limiters_in_place_log_is_the_pure_arithmetic(
    limit: LimitConfig, steps: list[tuple[float, bool]]
) -> None:
    """What the limiter does to its deques equals `decide` on tuples, even when the
    clock steps back a little and some hits are given back (released reservations)."""
    hits: tuple[float, ...] = ()
    log = Log()
    now = 10_000.0
    for gap, give_back in steps:
        now += gap
        expected, hits = decide(hits, now, limit)
        assert log.take(now, limit) == expected
        if expected.allowed and give_back:
            hits = without(hits, now)
            log.remove(now)
        assert tuple(log.hits) == hits


def test_headers_of_a_refusal() -> None:
    limit = LimitConfig(2, 60.0)
    hits: tuple[float, ...] = ()
    for t in (100.0, 110.0):
        _, hits = decide(hits, t, limit)
    decision, _ = decide(hits, 120.5, limit)
    assert not decision.allowed
    assert decision.headers() == {
        "X-RateLimit-Limit": "2",
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": "160",
        "Retry-After": "40",
    }


def test_config_problems_name_the_field() -> None:
    bad = RateLimits(auth=LimitConfig(0, 900.0), deploy=LimitConfig(1, 0.0))
    assert bad.problems() == [
        "rate_limits.deploy.window_s must be positive",
        "rate_limits.auth.count must be at least 1",
    ]
    assert RateLimits().problems() == []


# --- the limiter over a real store --------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqlStore]:
    opened = open_test_store(tmp_path)
    yield opened
    opened.close()


def small() -> RateLimits:
    return RateLimits(
        token=LimitConfig(3, 3600.0), deploy=LimitConfig(2, 3600.0), auth=LimitConfig(5, 900.0)
    )


async def test_fifty_concurrent_failures_let_exactly_five_through(store: SqlStore) -> None:
    limiter = RateLimiter(limits_of(small()), store)
    processed = 0

    async def attempt() -> int:
        nonlocal processed
        try:
            slot = await limiter.reserve(AUTH, "198.51.100.7")
        except RateLimited:
            return 429
        processed += 1
        await asyncio.sleep(0.01)  # the password check
        await limiter.keep(slot)  # it failed
        return 401

    statuses = await asyncio.gather(*(attempt() for _ in range(50)))
    assert processed == 5
    assert statuses.count(401) == 5 and statuses.count(429) == 45
    assert len(store.rate_hits(0)) == 5


async def test_concurrent_successes_are_not_refused(store: SqlStore) -> None:
    """Honest concurrent logins from one address wait for slots to settle, never 429."""
    limiter = RateLimiter(limits_of(small()), store)

    async def attempt() -> None:
        slot = await limiter.reserve(AUTH, "192.0.2.1")
        await asyncio.sleep(0.01)
        limiter.release(slot)  # it succeeded

    await asyncio.gather(*(attempt() for _ in range(30)))
    assert store.rate_hits(0) == []


async def test_kept_hits_survive_a_restart_and_expire(tmp_path: Path) -> None:
    clock = Clock()
    target = fresh_database(tmp_path)
    store = SqlStore(target)
    limiter = RateLimiter(limits_of(small()), store, clock=clock)
    for _ in range(5):
        await limiter.keep(await limiter.reserve(AUTH, "ip"))
    for _ in range(3):
        limiter.hit(TOKEN, "tok")
    limiter.flush()
    store.close()  # the hits are stored already: as after kill -9

    store = SqlStore(target)
    again = RateLimiter(limits_of(small()), store, clock=clock)
    assert again.load() == 8
    with pytest.raises(RateLimited) as refused:
        await again.reserve(AUTH, "ip")
    assert refused.value.decision.retry_after == 900
    with pytest.raises(RateLimited):
        again.hit(TOKEN, "tok")
    clock.now += 900.5
    slot = await again.reserve(AUTH, "ip")
    again.release(slot)
    assert again.peek(AUTH, "ip") is not None
    assert store.prune_rate_hits({AUTH: clock.now - 900, TOKEN: clock.now - 3600}) == 5
    store.close()


async def test_disabled_limits_count_nothing(store: SqlStore) -> None:
    limiter = RateLimiter(limits_of(small()), store, enabled=False)
    for _ in range(10):
        assert limiter.hit(TOKEN, "t") is None
        assert await limiter.reserve(DEPLOY, "u") is None


@settings(max_examples=30, deadline=None)
@given(st.lists(st.sampled_from(["ok", "fail"]), min_size=1, max_size=25))
def test_limiter_keeps_only_failures(outcomes: list[str]) -> None:
    limiter = RateLimiter(limits_of(small()), None)

    async def go() -> int:
        refused = 0
        for outcome in outcomes:
            try:
                slot = await limiter.reserve(AUTH, "ip")
            except RateLimited:
                refused += 1
                continue
            if outcome == "ok":
                limiter.release(slot)
            else:
                await limiter.keep(slot)
        return refused

    refused = asyncio.run(go())
    failures_before_refusals = 0
    expected_refused = 0
    for outcome in outcomes:
        if failures_before_refusals >= 5:
            expected_refused += 1
        elif outcome == "fail":
            failures_before_refusals += 1
    assert refused == expected_refused


def test_config_file_limits_are_read_and_checked(tmp_path: Path) -> None:
    from coordinator.config import ConfigError, load_config

    good = tmp_path / "good.toml"
    good.write_text("[rate_limits]\nenabled = false\nauth = { count = 3, window_s = 60 }\n")
    config = load_config(good)
    assert not config.rate_limits.enabled
    assert config.rate_limits.auth == LimitConfig(3, 60.0)
    assert config.rate_limits.token == LimitConfig(100, 3600.0)
    bad = tmp_path / "bad.toml"
    bad.write_text("[rate_limits]\ntoken = { count = 0, window_s = 60 }\n")
    with pytest.raises(ConfigError, match=r"rate_limits\.token\.count must be at least 1"):
        load_config(bad)
