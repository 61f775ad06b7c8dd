"""coord-partition: two coordinators cut off from each other, each still reaching
PostgreSQL and its own agents.

The world is leader-kill's (`PairWorld`: coordinators `a` and `b` on one PostgreSQL
database, agents spread over both), except that the hub URL each coordinator
registers (`hub_url`, where the other opens its relays, #23) is a TCP proxy of its own
(`LinkProxy`) in front of its hub, transparent until the fault; agents are given the
hubs themselves (`--hub-url`, the enrolling coordinator's first: enrolment would hand
them the registered URL), so only the relays between coordinators cross the proxies.
In every round, in the middle of a rollout and of API writes, both proxies cut the
link between the coordinators for longer than an open relay's heartbeat window (short
config 20 s, long 30 s) and then heal: a blackhole (the connections held go silent,
new ones are accepted and stall) or, every third round from the second, a loud cut
(every connection reset, new ones reset at once).

What is promised, besides the runner's (nothing wrongly stopped, nothing run twice,
no acknowledged write lost, convergence after the heal):

- a question through a coordinator about a machine whose session is on the other (a
  unit's journal, a drift refresh: both relayed) is answered during the cut with 503
  or 504 naming the other coordinator, never another status, never later than
  ASK_BOUND_S (13 s: the relay's opening gives up by OPEN_TIMEOUT_S, 10 s; under a
  blackhole its TLS handshake already by CONNECT_TIMEOUT_S, 5 s); a question asked
  just before the heal and answered after it may succeed;
- a relay open when the cut starts (a journal follow through each coordinator about a
  machine on the other) ends within FOLLOW_END_S (18 s) of the cut (its heartbeat: a
  ping HEARTBEAT_S after the last frame, 10 s, its pong due within half of that), and
  its stream says why, naming the other coordinator;
- the agents' own sessions are not disturbed: no agent reconnects from the cut until
  the questions after the heal are answered, and both coordinators call every machine
  connected at every look during the cut (their units keep running: the runner's);
- writes through both coordinators keep succeeding during the cut (every one 2xx within
  WRITE_WAIT_S; both still reach the database), and each stays readable;
- after the heal the same questions are answered (200) within HEAL_ASK_S (15 s);
- neither coordinator logs an error from the cut on.

Found by its first runs (December 2026), and fixed: under the loud cut, the
coordinators' API closed connections without an answer now and then, and answered
500: the relays' aiohttp client connected its sockets with `loop.sock_connect` and
handed them to uvloop, which, when the peer reset them, was left holding file
descriptors it no longer owned ("[Errno 17] File exists" from epoll on the next
connections it accepted, "File descriptor N is used by transport"; in a tight loop,
libuv aborts the process). The relays (and webhooks) now let the loop open their
connections itself (`coordinator/connector.py`). And a follow whose relay ended said
"machine m2 disconnected" (it was not: its session on the other coordinator went on);
it now says which relay ended and why, naming the other coordinator, and a relay's
refused opening names the bound that ran out (it said 10 s after 5). The blackhole
kept every other promise from the start: questions refused with 503 after 5.0 s, the
open relays ended 15.1-15.4 s after the cut, no agent disturbed.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from coordinator.hub.relay import HEARTBEAT_S, OPEN_TIMEOUT_S
from proto.tls import client_ssl_context
from tests.chaos.leader import PairWorld, hub_url
from tests.chaos.pg_partition import LOUD_EVERY, cut_scenario, log_lines
from tests.chaos.runner import Config, Fault, FaultNotTaken, Scenario
from tests.chaos.slow_link_proxy import LinkProxy
from tests.chaos.world import ACK_MARK, GLOBAL, Shape, World, options, written_number
from tests.procs import CoordinatorProc

SLACK_S = 3.0
"""Process scheduling on a loaded machine (two coordinators, three agents and their
managers on two cores)."""
ASK_BOUND_S = OPEN_TIMEOUT_S + SLACK_S
"""How long a relayed question sent during the cut may take to be refused: the relay
cannot open (its opening, TCP to the WebSocket upgrade, gives up at OPEN_TIMEOUT_S)."""
FOLLOW_END_S = 1.5 * HEARTBEAT_S + SLACK_S
"""How long after the cut a relay open then may last: its next ping goes HEARTBEAT_S
after the last frame it got (at the latest, at the cut), and it ends when no pong
came HEARTBEAT_S / 2 later."""
ASK_WAIT_S = 40.0
"""How long a question is waited for at all (past ASK_BOUND_S it is a problem, but
its time is still measured)."""
WRITE_WAIT_S = 10.0
HEAL_ASK_S = 15.0
"""How long after the heal a relayed question may keep failing."""
PROBE_EVERY_S = 0.5
FOLLOW_OPEN_S = 15.0
"""How long a follow may take to deliver its first line before the cut."""


class CoordPartitionWorld(PairWorld):
    """PairWorld whose coordinators each register a `LinkProxy` in front of their hub
    as their hub URL (what the other dials for relays); agents dial the hubs."""

    def __init__(self, tmp: Path, shape: Shape) -> None:
        super().__init__(tmp, shape)
        self.proxies: dict[int, LinkProxy] = {}
        self.cuts = 0

    def proxy(self, proc: CoordinatorProc) -> LinkProxy:
        return self.proxies[id(proc)]

    def other(self, proc: CoordinatorProc) -> CoordinatorProc:
        return next(c for c in self.coordinators if c is not proc)

    def ident(self, proc: CoordinatorProc) -> str:
        """The coordinator's id (what a refusal names)."""
        return (proc.state_dir / "coordinator.id").read_text().strip()

    def _make_pair(self) -> None:
        super()._make_pair()
        for c in self.coordinators:
            proxy = LinkProxy(("127.0.0.1", c.hub_port)).start()
            self.proxies[id(c)] = proxy
            # a top-level key: before the config's tables
            url = f"wss://127.0.0.1:{proxy.port}/agent/v1"
            c.config = f"hub_url = {json.dumps(url)}\n{c.config}"

    def agent_flags(self, mid: str) -> list[str]:
        """The hubs themselves, the enrolling coordinator's first (as enrolment orders
        them): enrolment would hand out the registered hub URL, the proxy's. And the
        machine's own journal, so that its units' journals have lines."""
        at = self._enrol_at(self.machines.index(mid))
        hubs = [at, *(c for c in self.coordinators if c is not at)]
        flags = [f for c in hubs for f in ("--hub-url", hub_url(c))]
        return [*flags, "--journal-dir", str(self.systemds[mid].journal_dir)]

    def crossings(self) -> list[tuple[CoordinatorProc, str]]:
        """(coordinator, a machine whose session is on the other), one per coordinator
        that has one."""
        out = []
        for c in self.coordinators:
            other = self.name(self.other(c))
            found = [mid for mid in self.machines if self.hub_of(mid) == other]
            if found:
                out.append((c, found[0]))
        return out

    def reconnects(self) -> dict[str, int]:
        """How many sessions each agent has opened so far (its log says)."""
        out = {}
        for mid, agent in self.agents.items():
            log = agent.proc.log() if agent.proc is not None else ""
            out[mid] = log.count("connected to wss://")
        return out

    def close(self) -> None:
        try:
            super().close()
        finally:
            for proxy in self.proxies.values():
                proxy.close()


# --- talking to a coordinator's API --------------------------------------------------------


def _connection(proc: CoordinatorProc, timeout: float) -> http.client.HTTPSConnection:
    p = proc.paths
    ctx = client_ssl_context(p.ca_cert, p.admin_cert, p.admin_key)
    return http.client.HTTPSConnection("127.0.0.1", proc.api_port, context=ctx, timeout=timeout)


def request(
    proc: CoordinatorProc, method: str, path: str, body: Any = None, timeout: float = ASK_WAIT_S
) -> tuple[int, str, float]:
    """One API request through `proc`: (status, body, seconds); status 0: no answer
    within `timeout`, -1: the connection failed."""
    started = time.monotonic()
    conn = _connection(proc, timeout)
    try:
        data = None if body is None else json.dumps(body)
        conn.request(method, path, data, {"Content-Type": "application/json"} if data else {})
        resp = conn.getresponse()
        text = resp.read().decode(errors="replace")
        return resp.status, text, time.monotonic() - started
    except TimeoutError:
        return 0, "", time.monotonic() - started
    except (OSError, ssl.SSLError, http.client.HTTPException) as exc:
        return -1, str(exc), time.monotonic() - started
    finally:
        conn.close()


def journal_path(mid: str, follow: bool = False) -> str:
    q = f"machine={quote(mid)}&lines=1" + ("&follow=1" if follow else "")
    return f"/moorage/v1/units/{GLOBAL}/journal?{q}"


def drift_path(mid: str) -> str:
    return f"/moorage/v1/drift?refresh=1&machine={quote(mid)}"


QUESTIONS: tuple[tuple[str, Callable[[str], str]], ...] = (
    ("journal", journal_path),
    ("drift", drift_path),
)
"""The relayed questions asked: a unit's journal (as `moorctl journal`), a drift refresh."""


def asked(proc: CoordinatorProc, mid: str) -> list[tuple[str, int, str, float]]:
    """Each question about `mid` through `proc`: (question, status, body, seconds)."""
    return [(q, *request(proc, "GET", path(mid))) for q, path in QUESTIONS]


@dataclass
class Follow:
    """A journal follow through `proc` about `mid` (a relay, the machine's session being
    on the other coordinator): the lines it streamed, and when it ended."""

    proc: CoordinatorProc
    mid: str
    status: int = 0
    lines: list[str] = field(default_factory=list)
    first_line: threading.Event = field(default_factory=threading.Event)
    ended_at: float | None = None
    """time.monotonic() when the stream ended (None: still open)."""
    failure: str = ""
    _sock: socket.socket | None = None
    _thread: threading.Thread | None = None

    def start(self) -> Follow:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        conn = _connection(self.proc, 300.0)
        try:
            conn.request("GET", journal_path(self.mid, follow=True))
            self._sock = conn.sock
            resp = conn.getresponse()
            self.status = resp.status
            while True:
                line = resp.readline()
                if not line:
                    break
                self.lines.append(line.decode(errors="replace").strip())
                self.first_line.set()
        except (OSError, ssl.SSLError, http.client.HTTPException) as exc:
            self.failure = f"{type(exc).__name__}: {exc}"
        finally:
            self.ended_at = time.monotonic()
            self.first_line.set()
            conn.close()

    @property
    def last(self) -> str:
        return self.lines[-1] if self.lines else self.failure

    def stop(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(10)


class Loop:
    """`step()` again and again in a thread of its own, PROBE_EVERY_S apart, until
    stopped."""

    def __init__(self, step: Callable[[], None]) -> None:
        self.step = step
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.step()
            self._stop.wait(PROBE_EVERY_S)

    def start(self) -> Loop:
        self._thread.start()
        return self

    def halt(self) -> None:
        """No new step (the one under way goes on)."""
        self._stop.set()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(ASK_WAIT_S + 5)


@dataclass
class Writes:
    """Fleet API writes through one coordinator, one after another: each status and
    time, and the last acknowledged write of each slot."""

    proc: CoordinatorProc
    name: str
    tag: str
    answers: list[tuple[int, float]] = field(default_factory=list)
    last_acked: dict[str, int] = field(default_factory=dict)
    n: int = 0

    def step(self) -> None:
        slot = f"cp-{self.name}-{self.n % 4}.service"
        text = (
            f"[Unit]\nDescription={ACK_MARK}{self.tag}#{self.n}\n\n[Service]\nExecStart=/bin/true\n"
        )
        body = {"desiredState": "inactive", "options": options(text)}
        status, _, took = request(self.proc, "PUT", f"/fleet/v1/units/{slot}", body, WRITE_WAIT_S)
        self.answers.append((status, took))
        if 200 <= status < 300:
            self.last_acked[slot] = self.n
        self.n += 1

    def lost(self, through: CoordinatorProc) -> list[str]:
        status, text, _ = request(through, "GET", "/moorage/v1/units", timeout=30)
        if status != 200:
            return [f"could not read the units back ({status})"]
        held = {
            u["name"]: written_number(u["options"], self.tag) for u in json.loads(text)["units"]
        }
        return [
            f"{slot}: write {self.tag}#{n} was acknowledged, the unit holds {held.get(slot)}"
            for slot, n in sorted(self.last_acked.items())
            if held.get(slot) is None or held[slot] < n
        ]


def _message(body: str) -> str:
    try:
        found = json.loads(body)
    except ValueError:
        return body[:200]
    error = found.get("error") if isinstance(found, dict) else None
    if isinstance(error, dict):
        return str(error.get("message", error))
    return str(error if error is not None else body[:200])


def _counts(statuses: list[int]) -> dict[int, int]:
    out: dict[int, int] = {}
    for s in statuses:
        out[s] = out.get(s, 0) + 1
    return dict(sorted(out.items()))


def coord_partition(seconds: float) -> Callable[[World, random.Random], Fault]:
    def inject(world: World, rng: random.Random) -> Fault:
        assert isinstance(world, CoordPartitionWorld), world
        time.sleep(rng.uniform(0.5, 2.0))  # into the rollout's first batch
        crossings = world.crossings()
        hubs = world.hubs()
        if len(crossings) < 2:
            raise FaultNotTaken(f"no machine on each coordinator to ask across ({hubs})")
        names = {id(c): world.name(c) for c in world.coordinators}
        problems: list[str] = []

        # before the cut: the questions are answered across, and a follow is open each way
        for proc, mid in crossings:
            answered = [(q, s) for q, s, _, _ in asked(proc, mid) if s != 200]
            if answered:
                raise FaultNotTaken(
                    f"before the cut, {names[id(proc)]} could not ask {mid} across: {answered}"
                )
        follows = [Follow(proc, mid).start() for proc, mid in crossings]
        for f in follows:
            if not f.first_line.wait(FOLLOW_OPEN_S) or f.ended_at is not None:
                for g in follows:
                    g.stop()
                raise FaultNotTaken(
                    f"the follow of {f.mid} through {names[id(f.proc)]} did not stream "
                    f"before the cut ({f.status}, {f.last})"
                )

        world.cuts += 1
        loud = world.cuts % LOUD_EVERY == 2  # the second (CI's short run has two), fifth...
        kind = "reset" if loud else "blackhole"
        reconnects = world.reconnects()
        log_from = {id(c): len(log_lines(c)) for c in world.coordinators}
        answers: dict[int, list[tuple[str, int, str, float, float]]] = {
            id(p): [] for p, _ in crossings
        }
        """(question, status, body, seconds, when it was answered: time.monotonic())"""
        states: list[tuple[str, dict[str, str]]] = []

        def ask_loop(proc: CoordinatorProc, mid: str) -> Callable[[], None]:
            def step() -> None:
                for q, path in QUESTIONS:
                    answers[id(proc)].append(
                        (q, *request(proc, "GET", path(mid)), time.monotonic())
                    )

            return step

        def look() -> None:
            for c in world.coordinators:
                status, text, _ = request(c, "GET", "/moorage/v1/machines", timeout=5)
                got = (
                    {m["id"]: m["state"] for m in json.loads(text)["machines"]}
                    if status == 200
                    else {"?": str(status)}
                )
                states.append((names[id(c)], got))

        writes = [Writes(c, names[id(c)], f"cp{world.cuts}") for c in world.coordinators]
        cut_at = time.monotonic()
        for c in world.coordinators:
            proxy = world.proxy(c)
            if loud:
                proxy.refuse()
            else:
                proxy.blackhole()
        loops = [
            *(Loop(ask_loop(p, mid)).start() for p, mid in crossings),
            *(Loop(w.step).start() for w in writes),
            Loop(look).start(),
        ]
        try:
            time.sleep(max(0.0, seconds - (time.monotonic() - cut_at)))
        finally:
            for loop in loops:
                loop.halt()
            healed_at = time.monotonic()
            for c in world.coordinators:
                world.proxy(c).transparent()
            for loop in loops:
                loop.stop()
        cut_s = healed_at - cut_at

        # after the heal: the questions are answered again, each way
        back: dict[int, float | None] = {}
        last_seen: dict[int, list[tuple[str, int]]] = {}
        for proc, mid in crossings:
            back[id(proc)] = None
            while time.monotonic() - healed_at < HEAL_ASK_S:
                got = asked(proc, mid)
                last_seen[id(proc)] = [(q, s) for q, s, _, _ in got]
                if all(s == 200 for _, s, _, _ in got):
                    back[id(proc)] = time.monotonic() - healed_at
                    break
                time.sleep(0.25)
        reconnected = {
            mid: n - reconnects[mid]
            for mid, n in world.reconnects().items()
            if n != reconnects[mid]
        }
        for f in follows:
            f.stop()

        # the judgement
        notes = []
        for proc, mid in crossings:
            pname, oname = names[id(proc)], world.name(world.other(proc))
            other_id = world.ident(world.other(proc))
            # answered during the cut; a question asked before the heal and answered
            # after it (its relay's opening held, then let through) may be answered
            got = [(q, s, b, t) for q, s, b, t, at in answers[id(proc)] if at < healed_at]
            straddled = [(q, s, t) for q, s, _, t, at in answers[id(proc)] if at >= healed_at]
            everything = [(q, s, t) for q, s, _, t, _ in answers[id(proc)]]
            slowest = max((t for *_, t in everything), default=0.0)
            by_q = {q: _counts([s for qq, s, _, _ in got if qq == q]) for q, _ in QUESTIONS}
            notes.append(
                f"through {pname} about {mid}@{oname}: {by_q} (slowest {slowest:.1f} s; "
                f"across the heal {_counts([s for _, s, _ in straddled])}), "
                f"answered again {'never' if back[id(proc)] is None else f'{back[id(proc)]:.1f} s'} after the heal"
            )
            if not got:
                problems.append(f"{pname} answered no question about {mid} during the cut")
            for q, status, body, took in got:
                message = _message(body)
                if status not in (503, 504):
                    problems.append(
                        f"{pname} answered a {q} question about {mid} during the cut with "
                        f"{status} after {took:.1f} s (want 503/504): {message[:200]}"
                    )
                    break
                if other_id not in message:
                    problems.append(
                        f"{pname}'s {status} to a {q} question about {mid} during the cut does "
                        f"not name {oname} ({other_id}): {message[:200]}"
                    )
                    break
            late = [(q, s, t) for q, s, t in everything if t > ASK_BOUND_S]
            late += [(q, s, t) for q, s, t in straddled if s not in (200, 503, 504)]
            if late:
                problems.append(
                    f"{pname} took {late[0][2]:.1f} s (bound {ASK_BOUND_S:g} s) to answer a "
                    f"{late[0][0]} question about {mid} during the cut ({late[0][1]})"
                )
            if back[id(proc)] is None:
                problems.append(
                    f"{pname} still could not ask {mid} {HEAL_ASK_S:g} s after the heal "
                    f"({last_seen.get(id(proc))})"
                )
        for f in follows:
            pname, oname = names[id(f.proc)], world.name(world.other(f.proc))
            other_id = world.ident(world.other(f.proc))
            ended = None if f.ended_at is None else f.ended_at - cut_at
            notes.append(
                f"follow through {pname} of {f.mid}@{oname} ended "
                f"{'never' if ended is None else f'{ended:.1f} s'} after the cut ({f.last[:120]})"
            )
            if ended is None or ended > min(FOLLOW_END_S, cut_s):
                problems.append(
                    f"the follow through {pname} of {f.mid}@{oname} (a relay open at the cut) "
                    f"ended {'not before the heal' if ended is None else f'{ended:.1f} s after the cut'}"
                    f" (want within {FOLLOW_END_S:g} s)"
                )
            elif other_id not in f.last:
                problems.append(
                    f"the follow through {pname} of {f.mid}@{oname} ended without naming "
                    f"{oname} ({other_id}): {f.last[:200]}"
                )
        if reconnected:
            problems.append(f"agents reconnected during the cut: {reconnected}")
        for c in world.coordinators:
            errors = [x for x in log_lines(c)[log_from[id(c)] :] if " ERROR " in x]
            if errors:
                problems.append(
                    f"{names[id(c)]} logged {len(errors)} errors from the cut on: {errors[0][:200]}"
                )
        off = [
            (who, mid, state)
            for who, got in states
            for mid, state in got.items()
            if state != "connected"
        ]
        if off:
            problems.append(f"a machine not connected during the cut: {off[0]} ({len(off)} looks)")
        for w in writes:
            statuses = _counts([s for s, _ in w.answers])
            slowest = max((t for _, t in w.answers), default=0.0)
            notes.append(
                f"writes through {names[id(w.proc)]}: {statuses} (slowest {slowest:.1f} s)"
            )
            bad = {s: n for s, n in statuses.items() if not 200 <= s < 300}
            if bad or not w.answers:
                problems.append(
                    f"writes through {names[id(w.proc)]} during the cut: {statuses} (want all 2xx)"
                )

        def judge() -> list[str]:
            return [f"lost: {x}" for w in writes for x in w.lost(world.coord)]

        note = (
            f"{kind} cut of both relay links for {cut_s:.1f} s (agents {hubs}); "
            + "; ".join(notes)
            + f"; {len(states)} looks at the machines"
        )
        return Fault(note=note, problems=tuple(problems), judge=judge)

    return inject


def scenarios(config: Config) -> list[Scenario]:
    return [cut_scenario("coord-partition", coord_partition, CoordPartitionWorld, config, 20.0)]
