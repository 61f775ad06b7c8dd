"""pg-partition: the lease holder of two coordinators cut off from PostgreSQL.

The world is leader-kill's (`PairWorld`: coordinators `a` and `b` on one PostgreSQL
database, agents spread over both), except that each coordinator reaches PostgreSQL
through a TCP proxy of its own (`LinkProxy`, transparent until the fault). In every
round, in the middle of a rollout and of API writes, the proxy of the coordinator that
leads cuts it off the database for longer than the lease's TTL (short config 12 s,
long 30 s; TTL 4 s) and then heals: a blackhole (the connections it holds go silent,
new ones are accepted and stall: packets vanish, no error reaches either end) or, every
third round, a loud cut (every connection reset, new ones reset at once).

What is promised, besides the runner's (nothing wrongly stopped, nothing run twice,
no acknowledged write lost, convergence after the heal):

- the cut-off coordinator's /readyz keeps answering during the first QUIET_S of the
  cut, while it is sent no API request (its event loop is not stuck on the database);
- the other coordinator takes the lease within TTL + RENEW (+ slack) of the cut (its
  /readyz says it leads, and the lease row, read straight from the database, names
  it) and holds it until the heal; the cut-off one never says it leads past TTL;
- the cut-off one stops its singleton work by its own deadline (its log says it no
  longer leads at most TTL + ABDICATE_SLACK_S after the cut, not only once the
  database answers again), and its log shows no singleton work (a release finished,
  another coordinator's sessions reaped, a machine called lost) after the other took
  the lease, nor a new tenure of its own before the heal;
- its API answers writes (sent from QUIET_S on) with 503 (never a 500, never silence
  past WRITE_WAIT_S);
- after the heal a write through it succeeds (within HEAL_WRITE_S).

The round's Writer and rollout go through the coordinator that is not cut off
(`PgPartitionWorld.coord` is the live follower while there is one): its writes are
the ones that must survive. The cut-off coordinator's agents may stay with it or move
over; their units must keep running.

Found by its first runs (December 2026), and fixed: under a blackhole the cut-off
leader's event loop blocked on the database (a store read made synchronously on the
loop, e.g. the rollout singleton's `releases_with_status` waiting for a new pooled
connection, or an API request's `is_serial_revoked`): it neither answered nor stopped
its singleton work until the heal. Every wait on PostgreSQL is now bounded by the
server's answering (`coordinator/store/sql/link.py`, the store's breaker). Then the
next fault: the cut-off coordinator, answering again, kept its agents' sessions, so
the new leader counted them disconnected and then lost and moved their units (short
config: lost after 8 s); it now lets them go once it has been cut off for the lease's
TTL (`Hub.let_go`). The loud cut passed from the start.
"""

from __future__ import annotations

import http.client
import json
import random
import re
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from coordinator.cluster.lease import LEADER
from coordinator.store.ports import StorageError
from coordinator.store.sql import SqlStore
from proto.tls import client_ssl_context
from tests.chaos.leader import (
    RENEW,
    SLACK,
    TTL,
    PairWorld,
    leads,
    ready,
    readyz,
    wait_until,
)
from tests.chaos.runner import Config, Fault, FaultNotTaken, Scenario
from tests.chaos.slow_link_proxy import LinkProxy
from tests.chaos.world import Shape, World, options
from tests.harness.postgres import postgres_available
from tests.procs import CoordinatorProc

WRITE_WAIT_S = 10.0
"""How long a write to the cut-off coordinator may go unanswered (a longer silence is
an event loop stuck on a dead link: the lease's own waits are bounded by its TTL)."""
QUIET_S = TTL + 3.0
"""The first part of the cut sends the cut-off coordinator no API request (the round's
writes go to the other): whether it stops leading by its deadline is judged apart
from what a request it cannot serve does to it."""
ABDICATE_SLACK_S = 1.5
"""A leader cut off stops its singleton work by its tenure's local deadline, at most
TTL after the cut (its last renewal came before it); this much more for scheduling."""
HEAL_WRITE_S = 60.0
"""How long after the heal a write through the healed coordinator may keep failing."""
PROBE_EVERY_S = 1.0
LOUD_EVERY = 3
"""Every third cut of a world is a loud one (connections reset), the others blackholes."""
ABDICATED = "no longer leads"
LEADS = " leads (lease "
SINGLETON_WORK = re.compile(
    r"deployment \S+: release \S+ [A-Z][a-zA-Z]+ |its coordinator is gone|is now lost"
)
"""Log lines only singleton work writes, each after a write it made (a release
finished, another coordinator's sessions reaped, a machine called lost)."""


class PgPartitionWorld(PairWorld):
    """PairWorld with each coordinator's link to PostgreSQL through a `LinkProxy`."""

    def __init__(self, tmp: Path, shape: Shape) -> None:
        super().__init__(tmp, shape)
        self.proxies: dict[int, LinkProxy] = {}
        self.cut: CoordinatorProc | None = None
        """The coordinator cut off now (the round's writes and reads avoid it)."""
        self.cuts = 0
        self.db_url = ""
        self._store: SqlStore | None = None

    def proxy(self, proc: CoordinatorProc) -> LinkProxy:
        return self.proxies[id(proc)]

    def lease(self) -> tuple[str, int, float] | None:
        """The leader lease's row as the database has it, read directly (not through
        either proxy): (holder's name, epoch, seconds left); None: no row, or unread."""
        if self._store is None:
            self._store = SqlStore(self.db_url)
        try:
            info = self._store.lease(LEADER)
        except StorageError:
            return None
        if info is None:
            return None
        names = {
            (c.state_dir / "coordinator.id").read_text().strip(): self.name(c)
            for c in self.coordinators
            if (c.state_dir / "coordinator.id").exists()
        }
        return names.get(info.holder, info.holder), info.epoch, info.remaining_s

    def _make_pair(self) -> None:
        super()._make_pair()
        self.db_url = self.coordinators[0].database_url
        for c in self.coordinators:
            parts = urlsplit(c.database_url)
            assert parts.hostname and parts.port, c.database_url
            proxy = LinkProxy((parts.hostname, parts.port), host=parts.hostname).start()
            self.proxies[id(c)] = proxy
            netloc = parts.netloc.rsplit(":", 1)[0] + f":{proxy.port}"
            c.database_url = urlunsplit(parts._replace(netloc=netloc))

    @property
    def coord(self) -> CoordinatorProc:
        """The coordinator not cut off while a cut lasts; else a live follower that
        answers (the one the next cut will spare), else as PairWorld's."""
        cut = self.cut
        if cut is not None:
            others = [c for c in self.live() if c is not cut]
            if others:
                return others[0]
        leader = super().coord
        for c in self.live():
            if c is not leader and c is not cut and ready(c) is not None:
                return c
        return leader

    def close(self) -> None:
        try:
            super().close()
        finally:
            for proxy in self.proxies.values():
                proxy.close()
            if self._store is not None:
                self._store.close()


@dataclass
class Probe:
    """Writes to the cut-off coordinator's API, one after another, while the cut lasts:
    the status of each (0: no answer within WRITE_WAIT_S; -1: the connection failed)
    and how long it took."""

    proc: CoordinatorProc
    answers: list[tuple[int, float]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Probe:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    @property
    def started(self) -> bool:
        return self._thread is not None

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(WRITE_WAIT_S + 5)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            started = time.monotonic()
            status = write(self.proc, f"pg-probe-{n % 4}.service", f"probe {n}", WRITE_WAIT_S)
            self.answers.append((status, time.monotonic() - started))
            n += 1
            self._stop.wait(PROBE_EVERY_S)


def write(proc: CoordinatorProc, unit: str, word: str, timeout: float) -> int:
    """One fleet API write through `proc`: its HTTP status (0: no answer in `timeout`,
    -1: no connection)."""
    p = proc.paths
    ctx = client_ssl_context(p.ca_cert, p.admin_cert, p.admin_key)
    text = f"[Unit]\nDescription=pg-partition {word}\n\n[Service]\nExecStart=/bin/true\n"
    body = json.dumps({"desiredState": "inactive", "options": options(text)})
    conn = http.client.HTTPSConnection("127.0.0.1", proc.api_port, context=ctx, timeout=timeout)
    try:
        conn.request("PUT", f"/fleet/v1/units/{unit}", body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    except TimeoutError:
        return 0
    except (OSError, ssl.SSLError, http.client.HTTPException):
        return -1
    finally:
        conn.close()


def log_lines(proc: CoordinatorProc) -> list[str]:
    """The current process's log lines (each start has a log of its own)."""
    assert proc.proc is not None
    return proc.proc.log().splitlines()


def pg_partition(seconds: float) -> Callable[[World, random.Random], Fault]:
    def inject(world: World, rng: random.Random) -> Fault:
        assert isinstance(world, PgPartitionWorld), world
        time.sleep(rng.uniform(0.5, 2.0))  # into the rollout's first batch
        wait_until(lambda: len(world.leaders()) == 1, 10)
        leaders = world.leaders()
        if len(leaders) != 1:
            raise FaultNotTaken(f"no single leader before the cut ({len(leaders)} lead)")
        (victim,) = leaders
        other = next(c for c in world.coordinators if c is not victim)
        vname, oname = world.name(victim), world.name(other)
        proxy = world.proxy(victim)
        world.cuts += 1
        loud = world.cuts % LOUD_EVERY == 0
        kind = "reset" if loud else "blackhole"
        hubs = world.hubs()
        log_from = len(log_lines(victim))
        other_log_from = len(log_lines(other))
        problems: list[str] = []

        world.cut = victim
        world.forget_leader()
        cut_at = time.monotonic()
        if loud:
            proxy.refuse()
        else:
            proxy.blackhole()
        probe = Probe(victim)
        took: float | None = None
        both: list[float] = []
        victim_led: list[float] = []
        silent = looks = 0
        silent_before = (0, 0)
        rows: list[tuple[float, str, int, float]] = []
        cut_wall = time.time()
        try:
            while time.monotonic() - cut_at < seconds:
                now = time.monotonic() - cut_at
                if now >= QUIET_S and not probe.started:
                    probe.start()
                    silent_before = (silent, looks)
                o = leads(other)
                row = world.lease()
                if row is not None:
                    rows.append((now, *row))
                status, answer = readyz(victim)
                v = bool(answer and answer.get("leader") is True)
                looks += 1
                silent += status == 0
                if o and took is None:
                    took = now
                if took is not None and not o:
                    problems.append(f"{oname} stopped leading {now:.1f} s into the cut")
                if v and now > TTL:
                    victim_led.append(now)
                if o and v:
                    both.append(now)
                time.sleep(0.2)
        finally:
            healed_at = time.monotonic()
            heal_wall = time.time()
            proxy.transparent()
            probe.stop()
        cut_s = healed_at - cut_at

        # after the heal, a write through the healed coordinator succeeds
        back: float | None = None
        last = 0
        while time.monotonic() - healed_at < HEAL_WRITE_S:
            last = write(victim, "pg-probe-healed.service", "healed", WRITE_WAIT_S)
            if 200 <= last < 300:
                back = time.monotonic() - healed_at
                break
            time.sleep(0.5)
        world.cut = None
        world.forget_leader()
        hubs_after = world.hubs()

        statuses: dict[int, int] = {}
        for status, _ in probe.answers:
            statuses[status] = statuses.get(status, 0) + 1
        slowest = max((s for _, s in probe.answers), default=0.0)
        note = (
            f"{kind} cut of {vname} (leader; agents {hubs}) for {cut_s:.1f} s; "
            f"{oname} led {'never' if took is None else f'{took:.1f} s'} after the cut; "
            f"{vname}'s API during the cut: {dict(sorted(statuses.items()))} "
            f"(slowest {slowest:.1f} s); a write through it succeeded "
            f"{'never' if back is None else f'{back:.1f} s'} after the heal; "
            f"agents after the heal {hubs_after}; its /readyz unanswered at {silent_before[0]}/{silent_before[1]} looks before the "
            f"writes to it began ({QUIET_S:g} s in), {silent}/{looks} in all"
        )
        if took is None:
            problems.append(f"{oname} never led during the {cut_s:.0f} s cut")
        elif took > TTL + RENEW + SLACK:
            problems.append(
                f"{oname} took the lease {took:.1f} s into the cut (> {TTL + RENEW + SLACK:g} s)"
            )
        if both:
            problems.append(f"both said they lead at {len(both)} looks (first {both[0]:.1f} s in)")
        if victim_led:
            problems.append(f"{vname} still said it leads {victim_led[-1]:.1f} s into the cut")
        bad = {s: n for s, n in statuses.items() if s != 503 and not 200 <= s < 300}
        if bad:
            problems.append(f"{vname}'s API answered writes during the cut with {bad} (want 503)")
        if not probe.answers:
            problems.append(f"{vname}'s API answered no write during the cut")
        held = [(t, h, e) for t, h, e, left in rows if left > 0]
        took_row = next((t for t, h, _ in held if h == oname), None)
        after = [(t, h, e) for t, h, e in held if took_row is not None and t >= took_row]
        wrong = [(t, h, e) for t, h, e in after if h != oname]
        epochs = sorted({e for _, h, e in held})
        note += (
            f"; lease row: {oname} holds it from "
            f"{'never' if took_row is None else f'{took_row:.1f} s'} (epochs {epochs})"
        )
        if took_row is None:
            problems.append(f"the lease row never named {oname} during the cut ({rows[-3:]})")
        if wrong:
            problems.append(f"the lease row named another holder after {oname} took it: {wrong[0]}")
        if silent_before[0]:
            problems.append(
                f"{vname}'s /readyz did not answer (2 s) at {silent_before[0]} of "
                f"{silent_before[1]} looks in the first {QUIET_S:g} s of the cut, before any "
                "API write was sent to it"
            )
        if back is None:
            problems.append(
                f"a write through {vname} still failed {HEAL_WRITE_S:g} s after the heal ({last})"
            )
        seen, found = _fencing(world, victim, other, log_from, other_log_from, cut_wall, heal_wall)
        problems += found
        return Fault(note=f"{note}; {seen}", problems=tuple(problems))

    return inject


def _when(line: str) -> float | None:
    """The wall-clock time a coordinator log line was written (None: not a record)."""
    try:
        stamp = time.strptime(line[:19], "%Y-%m-%d %H:%M:%S")
        return time.mktime(stamp) + int(line[20:23]) / 1000
    except ValueError:
        return None


def _fencing(
    world: PgPartitionWorld,
    victim: CoordinatorProc,
    other: CoordinatorProc,
    log_from: int,
    other_log_from: int,
    cut_wall: float,
    heal_wall: float,
) -> tuple[str, list[str]]:
    """The cut-off coordinator's log from the cut on: it stopped its singleton work by
    its own deadline (TTL after the cut, not only once the database answered again),
    did no singleton work from the other's takeover until it stopped, and did not lead
    again. Returns what was seen (for the note) and the problems."""
    vname, oname = world.name(victim), world.name(other)
    lines = log_lines(victim)[log_from:]
    other_lines = log_lines(other)[other_log_from:]
    out: list[str] = []
    took = next((_when(x) for x in other_lines if LEADS in x), None)
    if took is None:
        out.append(f"{oname}'s log never says it took the lease")
    fenced = sum("LeaseLost" in x or "is no longer held by" in x for x in lines)
    at = next((i for i, x in enumerate(lines) if ABDICATED in x), None)
    if at is None:
        return f"{vname} never stopped leading", [
            *out,
            f"{vname}'s log never says it stopped leading",
        ]
    stopped = _when(lines[at]) or 0.0
    seen = (
        f"{vname} stopped leading {stopped - cut_wall:.1f} s after the cut "
        f"({stopped - heal_wall:+.1f} s from the heal; {oname} led "
        f"{'?' if took is None else f'{took - cut_wall:.1f} s'} after the cut); "
        f"{fenced} fenced writes refused in its log"
    )
    if stopped > cut_wall + TTL + ABDICATE_SLACK_S:
        out.append(
            f"{vname} stopped its singleton work only {stopped - cut_wall:.1f} s after the cut "
            f"({stopped - heal_wall:+.1f} s from the heal), past its lease's deadline "
            f"(TTL {TTL:g} s): {lines[at].strip()[:160]}"
        )
    if took is not None:
        for line in lines[:at]:
            when = _when(line)
            if when is None or when < took:
                continue
            if SINGLETON_WORK.search(line):
                out.append(f"{vname} did singleton work after {oname} led: {line.strip()[:200]}")
                break
    for line in lines[at + 1 :]:
        when = _when(line)
        if LEADS in line and when is not None and when < heal_wall:
            out.append(f"{vname} led again during the cut: {line.strip()[:200]}")
    return seen, out


def cut_scenario(
    name: str,
    inject: Callable[[float], Callable[[World, random.Random], Fault]],
    world: Callable[[Path, Shape], World],
    config: Config,
    short_s: float,
) -> Scenario:
    """A scenario of two coordinators on PostgreSQL whose proxies cut a link for 30 s
    (`short_s` in the short run), loudly every LOUD_EVERY rounds: 30 rounds at most,
    10 loud cuts and 20 silent ones."""
    return Scenario(
        name,
        inject(short_s if config.shorter else 30.0),
        config.loopback(),
        world=world,
        needs=postgres_available,
        rounds=lambda c: min(c.rounds, 3 * 10),
    )


def scenarios(config: Config) -> list[Scenario]:
    return [cut_scenario("pg-partition", pg_partition, PgPartitionWorld, config, 12.0)]
