"""The dashboard's pure parts: paging, search, navigation by permission, secrets
comparison, the bounded session store, and the live hub's bounded per-tenant queues."""

from __future__ import annotations

import asyncio

from coordinator.events import Event, EventBus
from coordinator.models import Machine
from coordinator.trust import permissions as perms
from coordinator.ui import live
from coordinator.ui.dashboard import (
    Window,
    ago,
    frozen_days,
    machine_matches,
    midnight,
    nav_for,
    page_number,
    page_of,
)
from coordinator.ui.sessions import SessionStore, same_secret


def test_page_of_clamps_and_counts() -> None:
    items = list(range(120))
    first = page_of(items, 1, 50)
    assert first.items == list(range(50)) and first.pages == 3 and first.total == 120
    assert page_of(items, 3, 50).items == list(range(100, 120))
    assert page_of(items, 99, 50).number == 3
    assert page_of([], 5, 50).number == 1 and page_of([], 5, 50).pages == 1
    assert page_number("x") == 1 and page_number("-3") == 1 and page_number("4") == 4


def test_search_matches_every_word_anywhere() -> None:
    m = Machine(
        id="m-17",
        hostname="web-3",
        metadata={"region": "eu"},
        capabilities=["docker"],
        state="connected",
    )
    assert machine_matches(m, "")
    assert machine_matches(m, "WEB region=eu")
    assert machine_matches(m, "docker connected")
    assert not machine_matches(m, "web region=us")


def test_nav_hides_what_the_server_would_refuse() -> None:
    fleet_only = nav_for(lambda p: p == perms.FLEET)
    assert [n.label for n in fleet_only] == ["Fleet", "Units"]
    assert "Users" in [n.label for n in nav_for(lambda p: True)]
    assert nav_for(lambda p: False) == []


def test_secrets_and_ago() -> None:
    assert same_secret("abc", "abc")
    assert not same_secret("", "") and not same_secret("abd", "abc")
    assert not same_secret("a" * 500, "a" * 500)
    assert ago(0, 100) == "never" and ago(95, 100) == "5s ago" and ago(0.5, 7201) == "2h ago"


def test_session_store_is_bounded_and_drops() -> None:
    store = SessionStore(max_sessions=2)
    a = store.create("tok-a", "a")
    b = store.create("tok-b", "b")
    c = store.create("tok-c", "c")
    assert store.get(a.id) is None and store.get(b.id) == b and store.get(c.id) == c
    assert a.csrf != a.id and len(store) == 2
    assert store.drop(b.id) == b and store.get(b.id) is None
    assert store.get("x" * 1000) is None


async def test_live_hub_is_per_tenant_and_bounded() -> None:
    bus = EventBus()
    hub = live.LiveHub(bus)
    mine = hub.open("default")
    other = hub.open("acme")
    assert mine is not None and other is not None
    bus.publish(Event("unit.reported", tenant="default", subject="m1", data={"units": {}}))
    frame = await hub.next_frame(mine)
    assert frame.startswith(b"data: ") and b'"unit.reported"' in frame
    assert other.queue.empty()
    for i in range(live.QUEUE_MAX + 5):
        bus.publish(Event("machine.up", subject=f"m{i}"))
    assert mine.queue.qsize() == live.QUEUE_MAX  # bounded: the oldest were dropped
    assert await hub.next_frame(mine) == live.RESYNC
    assert mine.queue.empty()
    hub.close(mine)
    bus.publish(Event("machine.up"))
    assert mine.queue.empty()
    live.KEEPALIVE_S, saved = 0.01, live.KEEPALIVE_S
    try:
        assert await asyncio.wait_for(hub.next_frame(other), 5) == b": keep-alive\n\n"
    finally:
        live.KEEPALIVE_S = saved


def test_frozen_days_marks_each_day_a_window_overlaps() -> None:
    day = 86400.0
    first = midnight(10 * day + 3600)
    assert first == 10 * day
    windows = [
        Window(first + 1.5 * day, first + 3 * day, "release freeze"),  # days 1 and 2
        Window(first - day, first + 0.1 * day, ""),  # day 0, from before
    ]
    days = frozen_days(windows, first, 5)
    assert days == ["frozen", "release freeze", "release freeze", "", ""]


def test_live_streams_are_capped_per_session() -> None:
    hub = live.LiveHub(EventBus())
    mine = [hub.open("default", "s1") for _ in range(live.MAX_PER_OWNER)]
    assert all(mine) and hub.refusal("s1") == 429 and hub.open("default", "s1") is None
    assert hub.refusal("s2") == 0 and hub.open("default", "s2") is not None
    first = mine[0]
    assert first is not None
    hub.close(first)
    assert hub.refusal("s1") == 0
