"""slow-link: every agent reaches the hub through a userspace TCP proxy of the world's
own (`ProxiedWorld`, `tests.chaos.slow_link_proxy`), transparent until the fault turns
it slow and lossy for a while in the middle of a rollout (short config 5 s, long 20 s):
each chunk held 100-300 ms (order kept), now and then a stall of 1-3 s during which
nothing passes, now and then a connection reset (RST both ways) -- then transparent
again. Agents reconnect through it as they would through a bad network; nothing may be
stopped or run twice, and the world must converge (the release succeeded, every
sticker true) once the link is good again.

The coordinator's hub listens on its own loopback port; the hub URL it hands agents at
enrolment is the proxy's, so every session (and every reconnect) goes through it. The
proxy runs in a thread of the runner and is closed with the world.

A round costs about 10 s in the short run and 30 s in the long one (20 s slow): the
long run does 30 of them (`Scenario.rounds`, about 15 minutes).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path

from tests.chaos.runner import Config, Fault, FaultNotTaken, Scenario
from tests.chaos.slow_link_proxy import LinkProxy
from tests.chaos.world import Shape, World

STALL_S = (1.0, 3.0)


class ProxiedWorld(World):
    """The standard world (no namespace), each agent's link through one `LinkProxy`."""

    def __init__(self, tmp: Path, shape: Shape) -> None:
        super().__init__(tmp, shape)
        self.proxy: LinkProxy | None = None

    def _hub_url(self, host: str, port: int) -> str:
        """Agents are given the proxy's address; it forwards to the hub."""
        self.proxy = LinkProxy((host, port), host=host).start()
        return f"wss://{host}:{self.proxy.port}/agent/v1"

    @property
    def link(self) -> LinkProxy:
        assert self.proxy is not None
        return self.proxy

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self.proxy is not None:
                self.proxy.close()


def plan(seconds: float, rng: random.Random) -> list[tuple[float, str, float]]:
    """(offset from the start, "stall" or "reset", stall length) of one slow period: a
    stall about every 6 s and a reset about every 5 s, at least one of each; each
    stall ends within the period."""
    events: list[tuple[float, str, float]] = []
    for _ in range(max(1, round(seconds / 6))):
        length = rng.uniform(*STALL_S)
        events.append((rng.uniform(0.0, max(0.0, seconds - length)), "stall", length))
    for _ in range(max(1, round(seconds / 5))):
        events.append((rng.uniform(0.3, seconds - 0.3), "reset", 0.0))
    return sorted(events)


def slow_link(seconds: float) -> Callable[[World, random.Random], Fault]:
    def inject(world: World, rng: random.Random) -> Fault:
        assert isinstance(world, ProxiedWorld)
        proxy = world.link
        time.sleep(rng.uniform(0.0, 1.0))
        before = (proxy.counts.delayed, proxy.counts.stalls, proxy.counts.resets)
        stalled = 0.0
        events = plan(seconds, rng)
        proxy.slow(rng)
        started = time.monotonic()
        try:
            for offset, kind, length in events:
                time.sleep(max(0.0, started + offset - time.monotonic()))
                if kind == "stall":
                    proxy.stall(length)
                    stalled += length
                else:
                    proxy.reset_one(rng)
            time.sleep(max(0.0, started + seconds - time.monotonic()))
        finally:
            proxy.transparent()
        delayed = proxy.counts.delayed - before[0]
        stalls = proxy.counts.stalls - before[1]
        resets = proxy.counts.resets - before[2]
        note = (
            f"slow {time.monotonic() - started:.1f} s: {delayed} chunks delayed, "
            f"{stalls} stalls ({stalled:.1f} s), {resets} connections reset"
        )
        if delayed == 0:
            raise FaultNotTaken(f"nothing went through the slow link [{note}]")
        return Fault(note=note)

    return inject


def scenarios(config: Config) -> list[Scenario]:
    seconds = 5.0 if config.shorter else 20.0
    return [
        Scenario(
            "slow-link",
            slow_link(seconds),
            shape=config.loopback(),
            world=ProxiedWorld,
            rounds=lambda c: min(c.rounds, 30),
        )
    ]
