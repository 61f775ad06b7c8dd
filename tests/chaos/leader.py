"""leader-kill: two coordinators on one PostgreSQL database, kill -9 of the lease holder.

Coordinators `a` and `b` share one PostgreSQL database and the fleet CA and advertise
both hubs (`hub_urls`); the three agents are spread over them (each enrolled through
one coordinator, whose hub comes first in its list). In every round, in the middle of
a rollout and of API writes, the coordinator whose `/readyz` says `"leader": true` is
killed with -9; the survivor must take the lease within its TTL plus one renewal (and
some slack for a loaded machine), take over the dead one's agents and finish the
rollout. The dead one is started again 0-3 s after the survivor leads, so that the
next round has two coordinators again.

It is started again only once the survivor leads: a coordinator keeps its id across
restarts and may take back its own lease at once (`try_acquire` accepts the same
holder), so one back within the TTL would take the lease again before the survivor
ever could, and the round would not be a failover.

`PairWorld.coord` is the live lease holder when there is one, else a live coordinator:
the round's Writer aims at the leader until it dies (then at it again once restarted,
as a follower), and the judgement reads through the survivor.
"""

from __future__ import annotations

import http.client
import json
import random
import ssl
import threading
import time
from pathlib import Path
from typing import Any

from tests.chaos.runner import Config, Fault, FaultNotTaken, Scenario
from tests.chaos.world import Shape, World
from tests.harness.databases import fresh_database
from tests.harness.postgres import postgres_available
from tests.integration.test_ha_notify import share_ca
from tests.procs import GENEROUS_LIMITS, CoordinatorProc

TTL = 4.0
RENEW = 1.0
SLACK = 3.0
"""Process scheduling on a loaded machine, and the poll of the readiness probe (the HA
integration test allows 2 s on a quiet one)."""
TAKEOVER_WAIT_S = 60.0
"""How long a takeover is waited for at all (past TTL + RENEW + SLACK it is a problem
of the round, but its time is still measured)."""
RESTART_MAX_S = 3.0
BATCH_WAIT_S = 30.0
"""How long the kill waits for the batch it was drawn to fall in (it falls anyway)."""
NAMES = ("a", "b")


def hub_url(proc: CoordinatorProc) -> str:
    return f"wss://127.0.0.1:{proc.hub_port}/agent/v1"


def readyz(proc: CoordinatorProc, timeout: float = 2.0) -> tuple[int, dict[str, Any]]:
    """`/readyz`'s status and JSON (0: no answer within `timeout`; 503 is an answer: the
    coordinator says its storage refuses writes)."""
    try:
        ctx = ssl.create_default_context(cafile=str(proc.paths.ca_cert))
        conn = http.client.HTTPSConnection("127.0.0.1", proc.api_port, context=ctx, timeout=timeout)
        try:
            conn.request("GET", "/readyz")
            resp = conn.getresponse()
            body = resp.read()
        finally:
            conn.close()
    except (OSError, ssl.SSLError, http.client.HTTPException):
        return 0, {}
    try:
        answer = json.loads(body)
    except ValueError:
        answer = {}
    return resp.status, answer if isinstance(answer, dict) else {}


def ready(proc: CoordinatorProc, timeout: float = 2.0) -> dict[str, Any] | None:
    """`/readyz`'s JSON (None: the coordinator does not answer, or is not ready)."""
    if proc.proc is None or not proc.proc.alive():
        return None
    status, answer = readyz(proc, timeout)
    return answer if status == 200 and answer else None


def leads(proc: CoordinatorProc) -> bool:
    answer = ready(proc)
    return bool(answer and answer.get("leader") is True)


class PairWorld(World):
    """The chaos world with two coordinators on one PostgreSQL database."""

    CACHE_S = 1.0
    """How long `coord` trusts its last look at who leads (while that one lives)."""

    def __init__(self, tmp: Path, shape: Shape) -> None:
        super().__init__(tmp, shape)
        self.coordinators: list[CoordinatorProc] = []
        self.names: dict[int, str] = {}
        self._lock = threading.Lock()
        self._leader: tuple[CoordinatorProc, object, float] | None = None
        """(coordinator, its process then, when it was seen leading)."""

    # --- which coordinator -------------------------------------------------------------

    def name(self, proc: CoordinatorProc) -> str:
        return self.names.get(id(proc), "?")

    def live(self) -> list[CoordinatorProc]:
        return [c for c in self.coordinators if c.proc is not None and c.proc.alive()]

    def leaders(self) -> list[CoordinatorProc]:
        """The live coordinators whose /readyz says they lead, asked now."""
        return [c for c in self.live() if leads(c)]

    def forget_leader(self) -> None:
        with self._lock:
            self._leader = None

    @property
    def coord(self) -> CoordinatorProc:
        """The live lease holder, else a live coordinator (else the first, dead: a look
        through it fails, as a look through a dead single coordinator would)."""
        with self._lock:
            cached = self._leader
            if cached is not None:
                proc, process, seen = cached
                fresh = time.monotonic() - seen < self.CACHE_S
                if fresh and proc.proc is process and proc.proc is not None and proc.proc.alive():
                    return proc
            self._leader = None
            live = self.live()
            for c in live:
                if leads(c):
                    self._leader = (c, c.proc, time.monotonic())
                    return c
            if live:
                return live[0]
            assert self.coordinators, "no coordinator built yet"
            return self.coordinators[0]

    # --- building it -------------------------------------------------------------------

    def _make_coordinator(self, host: str) -> CoordinatorProc:
        raise NotImplementedError("PairWorld builds its two coordinators in _start")

    def _make_pair(self) -> None:
        url = fresh_database(self.tmp / "db", "postgresql")
        # each in a folder of its own: CoordinatorProc names its logs after the parent
        # folder (coordinator-N.log), which two coordinators must not share
        self.coordinators = [CoordinatorProc(self.tmp / n / "state") for n in NAMES]
        hubs = [hub_url(c) for c in self.coordinators]
        for n, c in zip(NAMES, self.coordinators, strict=True):
            self.names[id(c)] = n
            c.database_url = url
            c.options.update(
                {"lost-after": self.shape.lost_after, "heartbeat": self.shape.heartbeat}
            )
            c.config = (
                f"hub_urls = {json.dumps(hubs)}\n"
                f"lease_ttl_s = {TTL}\nlease_renew_s = {RENEW}\n{GENEROUS_LIMITS}"
            )

    def _start(self) -> None:
        if self.shape.isolated:
            raise RuntimeError("PairWorld runs on loopback only (Shape(isolated=False))")
        self._make_pair()
        a, b = self.coordinators
        a.start()
        share_ca(a.state_dir / "pki", b.state_dir / "pki")
        b.start()
        self.wait(lambda: len(self.leaders()) == 1, TTL + RENEW + 30, "one leader")
        self._add_agents()
        want = {
            mid: self.name(self.coordinators[i % len(self.coordinators)])
            for i, mid in enumerate(self.machines)
        }
        self.wait(lambda: all(self.hub_of(m) == at for m, at in want.items()), 30, "spread")
        self._add_units()

    def _enrol_at(self, index: int) -> CoordinatorProc:
        """Spread over both: machine i through coordinator i mod 2."""
        return self.coordinators[index % len(self.coordinators)]

    def deploy(self, word: str) -> None:
        """As World's, asked of the coordinator that leads now (the one it was asked of
        last may have been killed since)."""
        assert self.fm is not None
        self.fm = self.fm.aimed_at(self.coord)
        super().deploy(word)

    def close(self) -> None:
        for agent in self.agents.values():
            agent.stop()
        for c in self.coordinators:
            if c.proc is not None:
                c.stop()
        for sd in self.systemds.values():
            sd.stop()

    # --- looking at it -----------------------------------------------------------------

    def hub_of(self, mid: str) -> str:
        """The coordinator whose hub `mid`'s agent last connected to (its log says), or
        "-" before its first session."""
        agent = self.agents[mid].proc
        if agent is None:
            return "-"
        log = agent.log()
        found, at = "-", -1
        for c in self.coordinators:
            i = log.rfind(f"connected to {hub_url(c)} ")
            if i > at:
                found, at = self.name(c), i
        return found

    def jobs(self, through: CoordinatorProc) -> list[dict[str, Any]] | None:
        """The current release's jobs as `through` reads them (None: it cannot)."""
        if self.fm is None or not self.release_id:
            return None
        try:
            status, jobs = self.fm.aimed_at(through).call(
                "GET", f"/deployment-releases/{self.release_id}/jobs"
            )
        except Exception:
            return None
        if status != 200 or not isinstance(jobs, list):
            return None
        return sorted(jobs, key=lambda j: (j.get("batch", 0), j.get("clusterId", "")))

    def rollout_state(self, through: CoordinatorProc) -> str:
        """The current release's jobs, e.g. "m1 Success, m2 Running, m3 Created"."""
        jobs = self.jobs(through)
        if jobs is None:
            return "?"
        return ", ".join(f"{j['clusterId']} {j['status']}" for j in jobs)

    def hubs(self) -> str:
        return " ".join(f"{mid}@{self.hub_of(mid)}" for mid in self.machines)


def wait_until(check: Any, timeout: float, interval: float = 0.1) -> float | None:
    """Seconds until `check()` held, None if it did not within `timeout`."""
    started = time.monotonic()
    while True:
        if check():
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            return None
        time.sleep(interval)


def _batch_running(jobs: list[dict[str, Any]] | None, batch: int) -> bool:
    return any(j.get("batch") == batch and j.get("status") == "Running" for j in jobs or [])


def leader_kill(world: World, rng: random.Random) -> Fault:
    """kill -9 of the lease holder in the middle of the rollout and of API writes; the
    survivor must lead within TTL + RENEW (+ slack); the dead one is started again 0-3 s
    after that."""
    assert isinstance(world, PairWorld), world
    # the kill falls in a batch drawn at random (each lasts at least min_healthy_s, 1 s)
    batch = rng.randint(1, len(world.machines))
    wait_until(lambda: _batch_running(world.jobs(world.coord), batch), BATCH_WAIT_S)
    time.sleep(rng.uniform(0.0, 1.0))
    wait_until(lambda: len(world.leaders()) == 1, 10)
    leaders = world.leaders()
    if len(leaders) != 1:
        raise FaultNotTaken(f"no single leader before the kill ({len(leaders)} lead)")
    (leader,) = leaders
    survivor = next(c for c in world.coordinators if c is not leader)
    hubs = world.hubs()
    rollout = world.rollout_state(leader)
    killed = time.monotonic()
    leader.kill9()
    world.forget_leader()
    try:
        took = wait_until(lambda: leads(survivor), TAKEOVER_WAIT_S)
    finally:
        delay = rng.uniform(0.0, RESTART_MAX_S)
        time.sleep(delay)
        leader.start()
        world.forget_leader()
    back = time.monotonic() - killed
    killed_name, survivor_name = world.name(leader), world.name(survivor)
    if took is None:
        raise FaultNotTaken(
            f"{survivor_name} did not lead within {TAKEOVER_WAIT_S:g} s of the kill of "
            f"{killed_name} (agents before: {hubs})"
        )
    note = (
        f"killed {killed_name} (leader; agents {hubs}; release {rollout}); "
        f"{survivor_name} led {took:.1f} s later; {killed_name} back after {back:.1f} s"
    )
    if took > TTL + RENEW + SLACK:
        raise FaultNotTaken(f"{note}: the takeover took longer than {TTL + RENEW + SLACK:g} s")
    return Fault(note=note)


def _needs() -> str | None:
    return postgres_available()


def scenarios(config: Config) -> list[Scenario]:
    shape = config.loopback()
    return [Scenario("leader-kill", leader_kill, shape, world=PairWorld, needs=_needs)]
