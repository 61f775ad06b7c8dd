"""Two coordinators, three real agents, kill -9 of the lease holder mid-rollout (#23).

Coordinators A and B share one PostgreSQL database and the fleet CA and advertise both
hubs; three real agents (each on its own real systemd manager) are spread over them.
A release rolls out machine by machine with a settling time; in its second batch the
leader (the coordinator driving rollouts) is killed with -9. The survivor must lead
within the lease's TTL plus one renewal, take over the agents of the dead one and
finish the rollout; no unit outside the release may stop or restart, the release's
unit is replaced once per machine and otherwise runs on; and every API write that was
answered 2xx before the kill is read back from the survivor."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from proto.units import parse_unit_file
from tests.fmclient import FleetManager
from tests.harness.databases import fresh_database
from tests.harness.postgres import postgres_available
from tests.harness.systemd import UserSystemd, systemd_available
from tests.integration.test_ha_notify import share_ca
from tests.procs import GENEROUS_LIMITS, AgentProc, CoordinatorProc, wait_for

pytestmark = pytest.mark.integration

TTL = 4.0
RENEW = 1.0
SLACK = 2.0
"""Process scheduling, and the poll of the readiness probe."""
SETTLE_S = 4
"""The release's min_healthy_s: each batch takes at least this long, so a kill lands
in the middle of the rollout."""
MACHINES = ("m1", "m2", "m3")
KEEP = "keep.service"
"""A fleet unit on every machine that the release does not touch: it must never stop."""
WEB = "web.service"

MANIFEST = """\
units:
  - name: web.service
    contents: |
      [Service]
      ExecStart=/bin/sh -c 'while true; do echo {word}; sleep 1; done'
rollout:
  batch_size: {batch}
  min_healthy_s: {healthy}
  timeout_s: 120
"""
SLEEPER = "[Unit]\nDescription=Moorage HA rollout test\n\n[Service]\nExecStart=/bin/sleep 900\n"


def hub_url(proc: CoordinatorProc) -> str:
    return f"wss://127.0.0.1:{proc.hub_port}/agent/v1"


class Cluster:
    """Two coordinators on one PostgreSQL database, three agents on real systemd."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        url = fresh_database(tmp / "db", "postgresql")
        self.coordinators = [CoordinatorProc(tmp / "a"), CoordinatorProc(tmp / "b")]
        hubs = [hub_url(c) for c in self.coordinators]
        for c in self.coordinators:
            c.database_url = url
            c.config = (
                f"hub_urls = {json.dumps(hubs)}\n"
                f"lease_ttl_s = {TTL}\nlease_renew_s = {RENEW}\n{GENEROUS_LIMITS}"
            )
        self.systemds: dict[str, UserSystemd] = {}
        self.agents: dict[str, AgentProc] = {}

    def start(self) -> None:
        a, b = self.coordinators
        a.start()
        share_ca(a.state_dir / "pki", b.state_dir / "pki")
        b.start()

    def add_agent(self, mid: str, enrol_at: CoordinatorProc) -> None:
        """A machine enrolled through `enrol_at`: that coordinator's hub comes first in
        its list, so its session is there."""
        sd = UserSystemd()
        self.systemds[mid] = sd
        sd.start()
        agent = AgentProc(self.tmp, mid, enrol_at, extra=sd.agent_flags(), env=sd.agent_env())
        self.agents[mid] = agent
        enrolled = agent.enroll(enrol_at.join_token())
        assert enrolled.returncode == 0, enrolled.stderr
        agent.start()

    def on_hub(self, mid: str, proc: CoordinatorProc) -> bool:
        """Whether machine `mid`'s agent has connected to `proc`'s hub (its log says)."""
        agent = self.agents[mid].proc
        return agent is not None and f"connected to {hub_url(proc)} " in agent.log()

    def close(self) -> None:
        for agent in self.agents.values():
            agent.stop()
        for c in self.coordinators:
            if c.proc is not None and c.proc.alive():
                c.stop()
        for sd in self.systemds.values():
            sd.stop()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    missing = postgres_available()
    if missing:
        pytest.skip(missing)
    reason = systemd_available()
    if reason:
        pytest.skip(f"real systemd --user unavailable: {reason}")
    c = Cluster(tmp_path)
    try:
        c.start()
        yield c
    finally:
        c.close()


def _ready(proc: CoordinatorProc) -> dict[str, Any]:
    status, body = proc.raw("GET", "/readyz", cert=False)
    assert status == 200, body
    answer: dict[str, Any] = json.loads(body)
    return answer


def _leaders(procs: list[CoordinatorProc]) -> list[CoordinatorProc]:
    return [p for p in procs if _ready(p)["leader"]]


def _connected(proc: CoordinatorProc) -> set[str]:
    """Machines connected to any coordinator, as `proc` reads it (sessions are visible
    fleet-wide; which hub an agent is on, its log says)."""
    return {m["id"] for m in proc.machines() if m["state"] == "connected"}


class Watch:
    """Samples MainPID of units on every machine while a rollout runs, so a stop or a
    restart between two checks is seen, not only its outcome."""

    def __init__(self, systemds: dict[str, UserSystemd], units: tuple[str, ...]) -> None:
        self.systemds = systemds
        self.units = units
        self.seen: dict[tuple[str, str], list[str]] = {
            (mid, u): [] for mid in systemds for u in units
        }
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for (mid, unit), pids in self.seen.items():
                pid = self.systemds[mid].unit_property(unit, "MainPID")
                if not pids or pids[-1] != pid:
                    pids.append(pid)
            time.sleep(0.1)

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def pids(self, mid: str, unit: str) -> list[str]:
        """The unit's distinct main PIDs in order, without the gaps of a replacement."""
        return [p for p in self.seen[(mid, unit)] if p != "0"]


class Acked:
    """API writes answered 2xx, with how to read each back."""

    def __init__(self) -> None:
        self.checks: list[tuple[str, Callable[[CoordinatorProc], bool]]] = []
        self.lock = threading.Lock()

    def add(self, what: str, check: Callable[[CoordinatorProc], bool]) -> None:
        with self.lock:
            self.checks.append((what, check))

    def missing(self, proc: CoordinatorProc) -> list[str]:
        with self.lock:
            return [what for what, check in self.checks if not check(proc)]


def _token_names(proc: CoordinatorProc) -> set[str]:
    return {t["name"] for t in proc.api("GET", "/moorage/v1/api-tokens")["tokens"]}


def _put_keep(proc: CoordinatorProc) -> None:
    options = [
        {"section": o.section, "name": o.name, "value": o.value} for o in parse_unit_file(SLEEPER)
    ]
    body = {"options": options, "desired_state": "launched", "machines": list(MACHINES)}
    proc.api("PUT", f"/moorage/v1/units/{KEEP}", body)


def _keep_writing(proc: CoordinatorProc, acked: Acked, stop: threading.Event) -> None:
    """API tokens created one after another on `proc` until it dies (or `stop`): each
    one answered is an acknowledged write."""
    for n in range(100_000):
        if stop.is_set():
            return
        name = f"burst-{n}"
        try:
            proc.api("POST", "/moorage/v1/api-tokens", {"name": name})
        except Exception:
            return
        acked.add(f"api token {name}", _has_token(name))


def _has_token(name: str) -> Callable[[CoordinatorProc], bool]:
    return lambda proc: name in _token_names(proc)


def test_kill9_of_the_leader_mid_rollout_the_survivor_completes_it(cluster: Cluster) -> None:
    procs = cluster.coordinators
    wait_for(lambda: len(_leaders(procs)) == 1, timeout=TTL + SLACK, what="one leader")
    (leader,) = _leaders(procs)
    other = next(p for p in procs if p is not leader)
    acked = Acked()

    # m1 and m2 have their sessions on the leader, m3 on the other coordinator; m1, m2
    # are the rollout's first two batches, so the kill falls on a machine being updated.
    for mid, at in (("m1", leader), ("m2", leader), ("m3", other)):
        cluster.add_agent(mid, at)
    wait_for(lambda: _connected(leader) == set(MACHINES), timeout=30, what="three agents")
    for mid, at in (("m1", leader), ("m2", leader), ("m3", other)):
        wait_for(
            lambda mid=mid, at=at: cluster.on_hub(mid, at),
            timeout=15,
            what=f"{mid} on its coordinator's hub",
        )

    _put_keep(leader)
    acked.add(
        f"unit {KEEP}",
        lambda p: KEEP in {u["name"] for u in p.api("GET", "/moorage/v1/units")["units"]},
    )
    wait_for(
        lambda: all(
            sd.unit_property(KEEP, "ActiveState") == "active" for sd in cluster.systemds.values()
        ),
        timeout=30,
        what=f"{KEEP} active everywhere",
    )

    # v1 everywhere, in one batch
    fm = FleetManager(leader)
    acked.add("the GitOps API token", _has_token("gitops"))
    app = fm.ok(
        "POST",
        "/deployment-applications",
        {"name": "web", "sourceConfig": MANIFEST.format(word="v1", batch=3, healthy=1)},
        expect=201,
    )
    dep = fm.ok(
        "POST",
        "/deployments",
        {"applicationId": app["id"], "clusterGroupId": "default"},
        expect=201,
    )
    acked.add(
        "deployment web-default",
        lambda p: fm.aimed_at(p).call("GET", f"/deployments/{dep['id']}")[0] == 200,
    )
    fm.ok("POST", f"/deployments/{dep['id']}/deploy", expect=201)
    fm.wait_release(dep["id"], "Success")
    units = {mid: sd.unit_dir / WEB for mid, sd in cluster.systemds.items()}
    assert all("v1" in f.read_text() for f in units.values())

    before = {
        mid: {
            u: (
                sd.unit_property(u, "MainPID"),
                sd.unit_property(u, "ExecMainStartTimestampMonotonic"),
            )
            for u in (KEEP, WEB)
        }
        for mid, sd in cluster.systemds.items()
    }
    assert all(int(pid) > 0 for units_ in before.values() for pid, _ in units_.values())

    with Watch(cluster.systemds, (KEEP, WEB)) as watch:
        # v2 one machine at a time, each settling; the deploy is asked of the other
        # coordinator (the leader drives it from the database)
        fm.ok(
            "PUT",
            f"/deployment-applications/{app['id']}",
            {"sourceConfig": MANIFEST.format(word="v2", batch=1, healthy=SETTLE_S)},
        )
        acked.add(
            "application version 2",
            lambda p: (
                fm.aimed_at(p).ok("GET", f"/deployment-applications/{app['id']}")["version"] == "2"
            ),
        )
        release = fm.aimed_at(other).ok("POST", f"/deployments/{dep['id']}/deploy", expect=201)
        assert (release["batches"], release["batchSize"]) == (3, 1)
        acked.add(
            "release v2",
            lambda p: any(
                r["id"] == release["id"]
                for r in fm.aimed_at(p).ok("GET", f"/deployments/{dep['id']}/releases")
            ),
        )

        # API writes keep coming at the leader up to the moment it dies
        stop = threading.Event()
        writer = threading.Thread(target=_keep_writing, args=(leader, acked, stop), daemon=True)
        writer.start()

        def in_batch_2() -> bool:
            jobs = {
                j["clusterId"]: j
                for j in fm.ok("GET", f"/deployment-releases/{release['id']}/jobs")
            }
            return bool(jobs["m1"]["status"] == "Success" and jobs["m2"]["status"] == "Running")

        wait_for(in_batch_2, timeout=60, interval=0.2, what="batch 2 running")
        wait_for(lambda: "v2" in units["m2"].read_text(), timeout=15, what="v2 on m2")
        killed = time.monotonic()
        leader.kill9()
        stop.set()
        writer.join(30)
        assert not writer.is_alive()
        assert any(what.startswith("api token burst-") for what, _ in acked.checks)

        # the survivor leads within TTL plus one renewal
        wait_for(
            lambda: _ready(other)["leader"],
            timeout=TTL + RENEW + SLACK,
            interval=0.1,
            what="takeover",
        )
        assert time.monotonic() - killed <= TTL + RENEW + SLACK
        # the dead coordinator's agents are on the survivor's hub
        for mid in ("m1", "m2"):
            wait_for(
                lambda mid=mid: cluster.on_hub(mid, other),
                timeout=15,
                what=f"{mid} failed over",
            )
        wait_for(lambda: _connected(other) == set(MACHINES), timeout=30, what="all on the survivor")

        # ... and completes the rollout
        fm.coordinator = other
        releases = fm.wait_release(dep["id"], "Success", timeout=90)
        assert releases[-1]["id"] == release["id"]
        assert releases[-1]["progress"]["succeeded"] == 3
        jobs = fm.ok("GET", f"/deployment-releases/{release['id']}/jobs")
        assert sorted((j["clusterId"], j["batch"], j["status"]) for j in jobs) == [
            ("m1", 1, "Success"),
            ("m2", 2, "Success"),
            ("m3", 3, "Success"),
        ]
        assert fm.ok("GET", f"/deployments/{dep['id']}")["status"] == "Success"
        assert all("v2" in f.read_text() for f in units.values())
        wait_for(
            lambda: all(
                sd.unit_property(WEB, "ActiveState") == "active" for sd in cluster.systemds.values()
            ),
            what="v2 active everywhere",
        )
        time.sleep(2)  # a late wrong stop or restart would show now

    for mid, sd in cluster.systemds.items():
        # the unit the release does not touch: the same process throughout
        keep_pid, keep_started = before[mid][KEEP]
        assert watch.pids(mid, KEEP) == [keep_pid], (mid, watch.seen[(mid, KEEP)])
        assert sd.unit_property(KEEP, "MainPID") == keep_pid
        assert sd.unit_property(KEEP, "ExecMainStartTimestampMonotonic") == keep_started
        assert sd.unit_property(KEEP, "NRestarts") == "0"
        # the release's unit: v1's process until its own replacement, then v2's, once
        web_pid, web_started = before[mid][WEB]
        now_pid = sd.unit_property(WEB, "MainPID")
        assert watch.pids(mid, WEB) == [web_pid, now_pid], (mid, watch.seen[(mid, WEB)])
        assert now_pid != web_pid
        assert int(sd.unit_property(WEB, "ExecMainStartTimestampMonotonic")) > int(web_started)
        assert sd.unit_property(WEB, "NRestarts") == "0"
    for agent in cluster.agents.values():
        assert agent.proc is not None and agent.proc.alive()

    # every write answered before the kill is there
    assert acked.missing(other) == []
