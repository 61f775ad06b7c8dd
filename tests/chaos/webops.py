"""webops-agent-kill, webops-coordinator-kill: `kill -9` of the agent building a WebOps
deployment, or of the coordinator, in the middle of the build (#25); started again
after 0-2 s (agent) or 0-3 s (coordinator), mid-rollout and mid-writes as the other
kill loops.

The world is the standard one on loopback (`WebOpsWorld`), every agent with its own
nginx on a loopback port of its own (`--webops-proxy-listen`), and one WebOps
deployment, `site`, pinned to the victim: a Node.js project from a local git
repository whose `npm run build` step takes a few seconds (it prints a line every
0.2 s, then writes `dist/index.html` from `page.html`); its server reads that file at
every request. Each round commits a new `page.html` (`<h1>v<n></h1>`), asks for a
redeploy (`POST /api/deployments/site/redeploy/`), waits for the agent's first line
of that build (`cloning ...`), then kills 0-2.5 s later (inside the clone, npm's
start or the build step: the note says where).

The promise, as the code is designed (coordinator/webops/service.py, agent/webops.py):
a redeploy answered 2xx has stored its build (`building = b<n>`) before answering;
the coordinator sends a build whose outcome never arrived again whenever the
machine's agent connects (`_on_connected`: after an agent restart, a coordinator
restart or a dropped link), under the same build id, and the agent makes a build
once: a repeat of the build it is making is answered by that build's outcome, a
repeat of one it made by its stored outcome, and one without a good outcome (the
agent died mid-build) is made from scratch. (Before, a repeat was always made again,
in the same directory: when the first outcome had switched the unit onto it
meanwhile, the live site answered 500 for the length of a build; 2 of 8
coordinator-kill rounds.) The unit that serves is changed only by a good build's
outcome, and neither the agent (its units are systemd's, its nginx is its own
daemon) nor the coordinator runs it. So, judged once the world has converged
(`Fault.judge`, within `FINISH_S`):

* the acknowledged build completes: the deployment ends `running`, not building,
  its live build the redeploy's own (a build sent again keeps its id: a retry is
  fine and counted in the note; no other build is started), "build b<n> succeeded"
  logged exactly once, and no failure of it logged;
* the deployment's unit on the victim runs that build (its description names it)
  and the proxy serves the new version for the deployment's domain;
* while it lasts, the previous version serves: a prober asks the proxy every 0.1 s
  (Host: the domain) from the redeploy on; it must see the previous version, then
  the new one, and between the two at most `GAP_MAX_S` of failed answers (the
  switch-over is a restart of the unit onto the new build, not zero-downtime: nginx
  answers 502 for a few hundred ms); nothing else, no failed answer anywhere else
  (neither the kill nor a repeated build may take the live site away), never the old
  version back.

The deployment's unit is observed as the world's own units are (it must be active
where it is placed for the world to converge); it restarts on purpose at the switch,
so the round does not count it as wrongly stopped (`Fault.replaced`): the prober is
what judges that it served on through the kill.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import random
import re
import shutil
import signal
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from proto.webops import unit_name
from tests.chaos.runner import Config, Fault, FaultNotTaken, Scenario
from tests.chaos.world import OBSERVED, Shape, World
from tests.harness.gitrepo import git
from tests.procs import free_port

NAME = "site"
DOMAIN = "site.chaos.test"
UNIT = unit_name(NAME, "node")
STEPS = 20
"""Lines of the build step, 0.2 s apart (about 4 s of build)."""
KILL_WITHIN_S = 2.5
"""The kill lands this long at most after the build's first line (`cloning ...`)."""
FINISH_S = 120.0
GAP_MAX_S = 3.0
PROBE_EVERY_S = 0.1

PACKAGE_JSON = json.dumps(
    {"name": "chaos-site", "private": True, "scripts": {"build": "node build.js"}}
)
BUILD_JS = f"""\
// The Moorage fault suite's build step: slow on purpose (the kill lands in it).
const fs = require("fs");
const path = require("path");
let step = 0;
const timer = setInterval(() => {{
  step += 1;
  console.log(`building ${{step}}/{STEPS}`);
  if (step === {STEPS}) {{
    clearInterval(timer);
    fs.mkdirSync(path.join(__dirname, "dist"), {{ recursive: true }});
    fs.copyFileSync(path.join(__dirname, "page.html"), path.join(__dirname, "dist", "index.html"));
    console.log("built dist/index.html");
  }}
}}, 200);
"""
SERVER_JS = """\
// Serves the build's dist/index.html, read at every request (as a static server does).
const fs = require("fs");
const http = require("http");
const path = require("path");
const page = path.join(__dirname, "dist", "index.html");
http
  .createServer((req, res) => {
    fs.readFile(page, (err, data) => {
      if (err) {
        res.writeHead(500, { "Content-Type": "text/plain" });
        res.end(`cannot read the page: ${err.code}\\n`);
        return;
      }
      res.writeHead(200, { "Content-Type": "text/html" });
      res.end(data);
    });
  })
  .listen(Number(process.env.PORT), process.env.HOST);
"""
VERSION_RE = re.compile(r"<h1>v([0-9]+)</h1>")


def page(version: int) -> str:
    return f"<h1>v{version}</h1>\n"


def webops_needs() -> str | None:
    for tool in ("nginx", "git", "node", "npm"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (WebOps builds and serves with it)"
    return None


class WebOpsWorld(World):
    """The standard world, every agent with its own nginx on a loopback port, and one
    WebOps deployment (`site`, a Node.js project with a slow build step) on the victim,
    serving `<h1>v0</h1>` once built."""

    observed = (*OBSERVED, UNIT)

    def __init__(self, tmp: Path, shape: Shape) -> None:
        super().__init__(tmp, shape)
        self.proxies = {mid: free_port() for mid in self.machines}
        self.repo = tmp / "repo-site"
        self.token = ""
        self.version = 0
        """The version the repository's last commit serves."""
        self.prober: Prober | None = None

    # --- building it ---------------------------------------------------------------------

    def agent_flags(self, mid: str) -> list[str]:
        return ["--webops-proxy-listen", f"127.0.0.1:{self.proxies[mid]}"]

    def _add_units(self) -> None:
        super()._add_units()
        made = self.coord.api(
            "POST", "/moorage/v1/api-tokens", {"name": "chaos-webops", "unlimited": True}
        )
        self.token = str(made["token"])
        self.repo.mkdir(parents=True)
        git(self.repo, "init", "-q", "-b", "main")
        for name, text in (
            ("package.json", PACKAGE_JSON),
            ("build.js", BUILD_JS),
            ("server.js", SERVER_JS),
            ("page.html", page(0)),
        ):
            (self.repo / name).write_text(text)
        git(self.repo, "add", "-A")
        git(self.repo, "commit", "-q", "-m", "v0")
        status, body = self.call(
            "POST",
            "/api/deployments/create/",
            {
                "name": NAME,
                "repo_url": f"file://{self.repo}",
                "branch": "main",
                "domain": DOMAIN,
                "port": free_port(),
                "machine": self.victim,
            },
        )
        if status != 201:
            raise RuntimeError(f"the deployment was not created: {status} {body}")
        self.wait(lambda: self.finished(""), 180, f"{NAME} running")
        self.wait(lambda: self.served() == (200, 0), 60, f"{DOMAIN} serving v0")
        if self.wait_converged(120) is None:
            raise RuntimeError(f"the world with {NAME} did not converge: {self.problems()}")

    def finished(self, build: str) -> bool:
        got = self.info()
        return (
            got["status"] == "running"
            and not got["building"]
            and (not build or got["live_build"] == build)
        )

    def close(self) -> None:
        try:
            if self.prober is not None:
                self.prober.stop()
            super().close()
        finally:
            # Each agent's own nginx (a daemon of its own: it outlives its agent)
            for mid in self.machines:
                pidfile = self.tmp / f"agent-{mid}" / "webops" / "nginx" / "nginx.pid"
                with contextlib.suppress(OSError, ValueError):
                    os.kill(int(pidfile.read_text().strip()), signal.SIGTERM)

    # --- acting on it and looking at it --------------------------------------------------

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """The WebOps CLI surface, with the world's API token as Bearer."""
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {self.token}"}
        data = None if body is None else json.dumps(body).encode()
        status, raw = self.coord.raw(method, path, headers=headers, data=data, cert=False)
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode(errors="replace")

    def info(self) -> dict[str, Any]:
        status, body = self.call("GET", f"/api/deployments/{NAME}/")
        if status != 200:
            raise RuntimeError(f"GET {NAME}: {status} {body}")
        return dict(body)

    def logs(self) -> list[dict[str, Any]]:
        status, body = self.call("GET", f"/api/deployments/{NAME}/logs/")
        if status != 200:
            raise RuntimeError(f"GET {NAME} logs: {status} {body}")
        return list(body["logs"])

    def commit(self) -> int:
        """A new version of the site in the repository; returns its number."""
        self.version += 1
        (self.repo / "page.html").write_text(page(self.version))
        git(self.repo, "commit", "-q", "-a", "-m", f"v{self.version}")
        return self.version

    def served(self) -> tuple[int, int | None]:
        """(HTTP status, version shown) of the deployment through the victim's proxy
        (0: no answer; version None: not a page of ours)."""
        url = f"http://127.0.0.1:{self.proxies[self.victim]}/"
        req = urllib.request.Request(url, headers={"Host": DOMAIN})
        try:
            with urllib.request.urlopen(req, timeout=2) as resp:
                status, text = resp.status, resp.read().decode(errors="replace")
        except urllib.error.HTTPError as exc:
            return exc.code, None
        except (OSError, http.client.HTTPException):
            return 0, None
        found = VERSION_RE.search(text)
        return status, int(found.group(1)) if found else None


class Prober:
    """Asks the victim's proxy for the deployment every `PROBE_EVERY_S` in a thread of
    its own, recording (time, status, version) until stopped (at most `limit_s`)."""

    def __init__(self, world: WebOpsWorld, limit_s: float = 600.0) -> None:
        self.world = world
        self.limit_s = limit_s
        self.samples: list[tuple[float, int, int | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        began = time.monotonic()
        while not self._stop.is_set() and time.monotonic() - began < self.limit_s:
            status, version = self.world.served()
            self.samples.append((time.monotonic(), status, version))
            self._stop.wait(PROBE_EVERY_S)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def judge_serving(
    samples: list[tuple[float, int, int | None]], old: int, new: int
) -> tuple[list[str], str]:
    """(problems, a summary) of what the proxy served while a build from `old` to
    `new` went on. Pure. The one shape allowed: `old`, at most `GAP_MAX_S` of failed
    answers (the unit restarting onto the new build), then `new`; so a failed answer
    while `old` should serve (the build, or the kill, took the live site away), one
    once `new` was served (the new build taken away), `old` again after `new`, or any
    other page, is a broken promise."""
    problems: list[str] = []
    switched = False
    stretch: list[tuple[float, str]] = []
    """The failed answers since the last good one: (time, what)."""
    longest = 0.0
    failed = 0
    kinds: dict[str, int] = {}

    def what(items: list[tuple[float, str]], until: float) -> str:
        counted: dict[str, int] = {}
        for _, k in items:
            counted[k] = counted.get(k, 0) + 1
        shown = ", ".join(f"{k} x{n}" for k, n in sorted(counted.items()))
        return f"{until - items[0][0]:.1f} s ({shown})"

    for at, status, version in samples:
        if status == 200 and version in (old, new):
            if stretch:
                longest = max(longest, at - stretch[0][0])
                if version == old or switched:
                    where = "after the switch" if switched else f"while v{old} should serve"
                    problems.append(f"the site failed {what(stretch, at)} {where}")
                elif at - stretch[0][0] > GAP_MAX_S:
                    problems.append(f"the switch to v{new} took the site away {what(stretch, at)}")
                stretch = []
            if version == old and switched:
                problems.append(f"v{old} served again after v{new} was")
            switched = switched or version == new
            continue
        failed += 1
        kind = str(status) if version is None else f"{status} v{version}"
        kinds[kind] = kinds.get(kind, 0) + 1
        stretch.append((at, kind))
    if stretch:
        longest = max(longest, samples[-1][0] - stretch[0][0])
        problems.append(f"the site failed {what(stretch, samples[-1][0])} to the end")
    if not switched:
        problems.append(f"the proxy never served v{new}")
    summary = (
        f"{len(samples)} probes, {failed} failed"
        + (f" ({', '.join(f'{k} x{n}' for k, n in sorted(kinds.items()))})" if kinds else "")
        + f", longest gap {longest:.1f} s"
    )
    return problems, summary


def kill_mid_build(world: World, rng: random.Random, *, coordinator: bool) -> Fault:
    """Commit a new version, redeploy, kill the victim's agent (or the coordinator)
    0-`KILL_WITHIN_S` s into the build, start it again; the judge follows."""
    assert isinstance(world, WebOpsWorld), world
    if world.prober is not None:
        world.prober.stop()
    before = world.info()
    if before["building"] or before["status"] != "running":
        raise FaultNotTaken(f"{NAME} is {before['status']} ({before['building']}) before the round")
    old = world.version
    new = world.commit()
    seen = max((i["id"] for i in world.logs()), default=0)
    world.prober = prober = Prober(world)
    asked = time.monotonic()
    status, body = world.call("POST", f"/api/deployments/{NAME}/redeploy/")
    if status != 200:
        raise FaultNotTaken(f"redeploy refused: {status} {body}")
    build = str(world.info()["building"])  # acknowledged: this build must complete
    if not build:
        raise FaultNotTaken("the redeploy was acknowledged without a build in progress")

    def build_lines() -> list[str]:
        return [i["message"] for i in world.logs() if i["id"] > seen]

    while not any(line.startswith("cloning ") for line in build_lines()):
        if time.monotonic() - asked > 60:
            raise FaultNotTaken(f"build {build} printed nothing within 60 s")
        time.sleep(0.05)
    time.sleep(rng.uniform(0.0, KILL_WITHIN_S))
    lines = build_lines()
    if any(f"build {build} succeeded" in line for line in lines):
        raise FaultNotTaken(f"build {build} had succeeded before the kill")
    where = lines[-1] if lines else "?"
    killed = time.monotonic()
    if coordinator:
        world.coord.kill9()
        time.sleep(rng.uniform(0.0, 3.0))
        world.coord.start()
        who = "coordinator"
    else:
        agent = world.agents[world.victim]
        assert agent.proc is not None
        agent.proc.kill9()
        time.sleep(rng.uniform(0.0, 2.0))
        agent.start()
        who = f"agent {world.victim}"
    back = time.monotonic()
    note = (
        f"{who} killed {killed - asked:.1f} s after the redeploy of v{new} ({build}, "
        f"at {where[:40]!r}), back {back - killed:.1f} s later"
    )

    def judge() -> list[str]:
        deadline = time.monotonic() + FINISH_S
        done = served = None
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                if done is None and world.finished(build):
                    done = time.monotonic()
                if served is None and world.served() == (200, new):
                    served = time.monotonic()
            if done is not None and served is not None:
                break
            time.sleep(0.2)
        time.sleep(1.0)  # a little more of the new version, to see it stays
        prober.stop()
        problems, summary = judge_serving(prober.samples, old, new)
        got = world.info()
        if done is None:
            problems.append(
                f"{NAME} {got['status']}, building {got['building'] or '-'}, live build "
                f"{got['live_build']}, {FINISH_S:g} s after the fault (build {build} acknowledged)"
            )
        lines = [i["message"] for i in world.logs() if i["id"] > seen]
        succeeded = sum(1 for line in lines if line.startswith(f"build {build} succeeded"))
        again = sum(1 for line in lines if line.startswith(f"build {build} sent again"))
        made = sum(1 for line in lines if line.startswith("cloning "))
        resent = sum(1 for line in lines if line.startswith(f"build {build} was done"))
        failed = [line for line in lines if " failed" in line and line.startswith("build ")]
        if done is not None and succeeded != 1:
            problems.append(f"build {build} logged as succeeded {succeeded} times")
        problems += [f"logged: {line}" for line in failed]
        description = world.systemds[world.victim].unit_property(UNIT, "Description")
        if f"(build {build})" not in description:
            problems.append(f"{UNIT} on {world.victim} runs {description!r}, not {build}")
        seen_notes.append(
            "; ".join(
                [
                    f"{build} sent again {again}x, made {made}x, its outcome sent again {resent}x",
                    "finished "
                    + ("never" if done is None else f"{done - back:.1f} s after the restart"),
                    f"v{new} served "
                    + ("never" if served is None else f"{served - back:.1f} s after it"),
                    summary,
                ]
            )
        )
        return problems

    seen_notes: list[str] = []
    return Fault(note=note, judge=judge, replaced=(UNIT,), seen=seen_notes)


def webops_agent_kill(world: World, rng: random.Random) -> Fault:
    """kill -9 of the agent building the deployment, mid-build; started again 0-2 s later."""
    return kill_mid_build(world, rng, coordinator=False)


def webops_coordinator_kill(world: World, rng: random.Random) -> Fault:
    """kill -9 of the coordinator mid-build; started again 0-3 s later."""
    return kill_mid_build(world, rng, coordinator=True)


def scenarios(config: Config) -> list[Scenario]:
    return [
        Scenario(
            name,
            inject,
            shape=config.loopback(),
            world=WebOpsWorld,
            needs=webops_needs,
        )
        for name, inject in (
            ("webops-agent-kill", webops_agent_kill),
            ("webops-coordinator-kill", webops_coordinator_kill),
        )
    ]
