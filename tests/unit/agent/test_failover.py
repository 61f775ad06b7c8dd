"""Failover across the coordinators' hubs (#23): which hub the link dials next and when
(`agent.backoff.next_dial`, pure), and the lists that feed it."""

from __future__ import annotations

import random

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from agent.backoff import PROBE_MAX_S, REFUSED, Dial, next_dial
from agent.identity import LinkInfo
from proto.enrolment import EnrollResponse, hub_urls_of, unique_urls

INITIAL, MAXIMUM = 0.5, 30.0


def dial(
    index: int,
    failures: int,
    hubs: int,
    *,
    welcomed: bool = False,
    refused: bool = False,
    spread: float = 1.0,
    rand: float = 0.5,
) -> Dial:
    return next_dial(
        index,
        failures,
        hubs=hubs,
        welcomed=welcomed,
        refused=refused,
        initial=INITIAL,
        maximum=MAXIMUM,
        spread=spread,
        rand=rand,
    )


outcomes = st.sampled_from(["welcomed", "failed", "refused"])


@given(
    st.integers(1, 6),
    st.integers(0, 40),
    st.data(),
    outcomes,
    st.floats(0, 0.999),
    st.floats(0, 50),
)
def test_every_choice_is_a_hub_of_the_list_with_a_bounded_delay(
    hubs: int, failures: int, data: st.DataObject, outcome: str, rand: float, spread: float
) -> None:
    index = data.draw(st.integers(0, hubs - 1))
    got = dial(
        index,
        failures,
        hubs,
        welcomed=outcome == "welcomed",
        refused=outcome == "refused",
        spread=spread,
        rand=rand,
    )
    assert 0 <= got.hub < hubs
    assert 0 <= got.delay <= MAXIMUM
    if outcome == "welcomed":  # the hub that worked is tried again first, soon
        assert got == Dial(index, 0, got.delay)
        assert got.delay < min(MAXIMUM, max(INITIAL, spread))
    elif outcome == "failed":  # a failure moves on, round the list
        assert (got.hub, got.failures) == ((index + 1) % hubs, failures + 1)
    else:  # so does a refusal, but never soon
        assert (got.hub, got.failures) == ((index + 1) % hubs, max(failures + 1, REFUSED))
        assert got.delay >= MAXIMUM / 2


def test_a_lost_coordinator_costs_one_short_wait_before_the_next() -> None:
    """On hub 0, welcomed; hub 0 dies: it is tried once more (it may be restarting),
    then hub 1, each after well under a second."""
    d = dial(0, 0, 3, welcomed=True, spread=1.0, rand=0.999)
    assert d.hub == 0 and d.delay < 1.0
    d = dial(d.hub, d.failures, 3, rand=0.999)  # hub 0 refuses connections
    assert d.hub == 1 and d.delay < INITIAL


def test_delays_grow_per_round_of_the_list_not_per_attempt() -> None:
    """Three hubs all down: every round sweeps the three at the same step, the step
    doubling per round, up to the longest delay."""
    index, failures, steps, hubs = 0, 0, [], []
    for _ in range(30):
        d = dial(index, failures, 3, rand=0.0)  # the shortest: half the step
        index, failures = d.hub, d.failures
        steps.append(d.delay * 2)
        hubs.append(d.hub)
    assert steps[:9] == [0.5, 0.5, 0.5, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0]
    assert steps[-1] == MAXIMUM
    assert hubs == [1, 2, 0] * 10


def test_after_a_session_the_order_restarts_from_the_hub_that_worked() -> None:
    rng = random.Random(1)
    index, failures = 0, 0
    for _ in range(2):  # hubs 0 and 1 are down
        d = dial(index, failures, 3, rand=rng.random())
        index, failures = d.hub, d.failures
    assert index == 2
    d = dial(index, failures, 3, welcomed=True, rand=rng.random())  # hub 2 worked
    assert (d.hub, d.failures) == (2, 0)
    d = dial(d.hub, d.failures, 3, rand=rng.random())  # then it went: the next is 0
    assert d.hub == 0


def test_a_fleet_that_refuses_this_agent_is_not_asked_in_a_hot_loop() -> None:
    """Revoked: every coordinator refuses. Each is asked in turn, never sooner than
    half the longest delay, whatever the random draw."""
    rng = random.Random(3)
    index, failures, asked, waited = 0, 0, [], 0.0
    for _ in range(12):
        asked.append(index)
        d = dial(index, failures, 3, refused=True, rand=rng.random())
        assert d.delay >= MAXIMUM / 2
        index, failures, waited = d.hub, d.failures, waited + d.delay
    assert asked == [0, 1, 2] * 4
    assert waited >= 12 * MAXIMUM / 2


def test_a_single_hub_keeps_the_old_behaviour() -> None:
    d = dial(0, 4, 1, rand=0.999)
    assert d.hub == 0 and d.failures == 5 and 7.9 < d.delay < 8.0  # 0.5 * 2**4


# --- the lists ----------------------------------------------------------------------------

A, B, C = (f"wss://{h}:7443/agent/v1" for h in "abc")


class OldEnrollResponse(msgspec.Struct, frozen=True):
    """EnrollResponse as agents and coordinators before #23 know it."""

    machine_id: str
    cert_pem: str
    ca_pem: str
    hub_url: str


def test_a_new_agent_and_an_old_coordinator_interoperate_both_ways() -> None:
    old = msgspec.json.encode(OldEnrollResponse("m", "c", "ca", A))
    new = msgspec.json.decode(old, type=EnrollResponse)
    assert new.hub_urls == [] and hub_urls_of(new) == [A], "missing list: the single hub"
    answer = msgspec.json.encode(EnrollResponse("m", "c", "ca", A, [A, B]))
    assert msgspec.json.decode(answer, type=OldEnrollResponse).hub_url == A, "old agent"
    assert hub_urls_of(msgspec.json.decode(answer, type=EnrollResponse)) == [A, B]


def test_link_json_from_before_the_list_still_names_its_hub() -> None:
    raw = b'{"machine_id": "m", "hub_url": "' + A.encode() + b'"}'
    assert msgspec.json.decode(raw, type=LinkInfo).urls() == [A]
    assert LinkInfo("m", A, hub_urls=[B, A, B, ""]).urls() == [B, A]


@given(st.lists(st.sampled_from([A, B, C, ""]), max_size=8))
def test_unique_urls_keeps_first_occurrences_in_order(urls: list[str]) -> None:
    got = unique_urls(urls)
    assert len(got) == len(set(got)) and "" not in got
    assert got == sorted(set(urls) - {""}, key=urls.index)


def test_an_attempt_nobody_answered_is_tried_again_soon_however_long_the_outage() -> None:
    """A partition: each attempt already took its connect timeout and loaded nobody;
    after a long one the machine must come back with its link, not up to 30 s later."""
    long_outage = 12  # failures: the backoff alone would be the longest step by now
    plain = dial(0, long_outage, 1, rand=0.9)
    assert plain.delay > 20
    probing = next_dial(
        0,
        long_outage,
        hubs=1,
        welcomed=False,
        refused=False,
        initial=INITIAL,
        maximum=MAXIMUM,
        spread=1.0,
        rand=0.9,
        unreachable=True,
    )
    assert probing.delay <= PROBE_MAX_S and probing.failures == plain.failures
    # a hub that answered and failed (overloaded, refusing) still backs off in full
    assert dial(0, long_outage, 1, refused=True, rand=0.9).delay > 20
