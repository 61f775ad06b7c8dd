"""WebOps deployments on the machine (#20): fetch a git repository, build it for its
type in a versioned build directory, keep its environment file (0600), put its
domain on the agent's own nginx, check its health over HTTP, and send what the running
app writes (its unit's journal, or `docker logs`) as runtime log items.

The coordinator turns a good build into an ordinary unit (the unit text names the
build directory, so a new build means a new unit hash and a restart onto it); this
module never starts or stops the app itself, except for an explicit restart.

Layout under `<state_dir>/webops/`:
  <name>/env                      the EnvironmentFile (0600)
  <name>/site.json                port, domain, live build (for the health loop)
  <name>/runtime.cursor           where the runtime log was read up to (no repeats
                                  after an agent restart)
  <name>/builds/<build_id>/src    the checkout; venv/ beside it for python apps
  <name>/builds/<build_id>/outcome.json   a good build's outcome (what it was asked,
                                  what it reported): a repeat of the build gets it again
  nginx/nginx.conf, nginx/sites/<name>.conf, nginx/nginx.pid   the agent's own nginx
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import sys
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Collection, Coroutine
from pathlib import Path
from typing import Any

import msgspec

from proto import messages as m
from proto import webops as w
from proto.bucket import TokenBucket
from proto.files import write_private, write_public

log = logging.getLogger(__name__)

BUILD_ID_RE = re.compile(r"^b[0-9]{1,9}$")
KEEP_BUILDS = 2
HEALTH_EVERY_S = 2.0
HEALTH_RESEND_S = 15.0
STEP_TIMEOUT_S = 900.0
MAX_LINE = 2000

Send = Callable[[m.Message], Awaitable[object]]
Restart = Callable[[str], Awaitable[None]]
Usage = Callable[[str], Awaitable[tuple[int, int]]]
Follow = Callable[[str, str, int], AsyncGenerator[list[m.LogLine], None]]
"""(unit, after cursor, lines before now when there is no cursor) -> batches of its log
lines as they come (the unit's backend)."""
RUNTIME_RATE_PER_S = 20.0
RUNTIME_BURST = 200
"""Runtime output sent as log items per deployment: at most this many lines a second
(bursts of this many); the rest is counted in one warning item a second (all of it stays
in the journal, `moorctl journal`)."""
RUNTIME_FIRST_LINES = 50
"""Without a saved cursor (a new deployment), the follow starts this far back, so the
app's first words (written before the follower started) are items too."""
CURSOR_SAVE_S = 1.0
ORPHAN_GRACE_S = 20.0
"""A site whose unit is not desired is removed once its build is this old (the unit
arrives in a Desired right after the build; a remove sent while the machine was away
is not lost)."""


OUTCOME = "outcome.json"
PROXY_UNIT = "moorage-webops-proxy.service"
"""The agent's nginx, where a systemd manager runs it (see `WebOps._start_nginx`)."""
PROXY_PID_WAIT_S = 5.0
GIT_QUERY_TIMEOUT_S = 30.0

StartProxy = Callable[[str, list[str]], Awaitable[bool]]
"""Run (unit name, argv) as a transient service of the agent's systemd manager; False
when there is no manager to run it (the agent then runs nginx itself)."""


class BuildFailed(Exception):
    pass


def build_key(req: m.WebBuild) -> dict[str, Any]:
    """What makes a build request the same request again (its env is not in it: the
    env file is written afresh either way, and secrets stay out of the outcome)."""
    return {
        "name": req.name,
        "build_id": req.build_id,
        "repo_url": req.repo_url,
        "branch": req.branch,
        "project_type": req.project_type,
        "port": req.port,
        "domain": req.domain,
    }


def nginx_conf(root: Path, listen: str) -> str:
    n = root / "nginx"
    temps = "".join(
        f"  {kind}_temp_path {n / 'tmp' / kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return (
        "# Written by moorage-agent: its own nginx for WebOps deployments.\n"
        "worker_processes 1;\n"
        f"pid {n / 'nginx.pid'};\n"
        f"error_log {n / 'error.log'};\n"
        "events { worker_connections 512; }\n"
        "http {\n"
        "  access_log off;\n"
        f"{temps}"
        f"  server {{ listen {listen} default_server; return 404; }}\n"
        f"  include {n / 'sites'}/*.conf;\n"
        "}\n"
    )


def site_conf(listen: str, domain: str, port: int) -> str:
    return (
        "server {\n"
        f"  listen {listen};\n"
        f"  server_name {domain};\n"
        "  location / {\n"
        f"    proxy_pass http://127.0.0.1:{port};\n"
        "    proxy_set_header Host $host;\n"
        "    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n"
        "    proxy_set_header X-Forwarded-Proto $scheme;\n"
        "  }\n"
        "}\n"
    )


def wsgi_entry(src: Path, project_type: str) -> str:
    """The gunicorn application of a checkout (raises BuildFailed naming what it
    looked for)."""
    if project_type == "django":
        for child in sorted(src.iterdir()):
            if (child / "wsgi.py").is_file():
                return f"{child.name}.wsgi:application"
        raise BuildFailed("django project without <package>/wsgi.py")
    for module in ("wsgi", "app", "main"):
        f = src / f"{module}.py"
        if f.is_file():
            text = f.read_text(errors="replace")
            for var in ("application", "app"):
                if re.search(rf"^{var}\s*=", text, re.M) or re.search(rf"^def {var}\(", text, re.M):
                    return f"{module}:{var}"
    raise BuildFailed(
        "no WSGI entry point: looked for application or app in wsgi.py, app.py, main.py"
    )


class WebOps:
    def __init__(
        self,
        state_dir: Path,
        send: Send,
        restart: Restart,
        *,
        usage: Usage | None = None,
        desired: Callable[[], Collection[str]] | None = None,
        proxy_listen: str = "80",
        nginx: str = "nginx",
        docker_host: str = "",
        follow: Follow | None = None,
        start_proxy: StartProxy | None = None,
    ) -> None:
        self.root = state_dir / "webops"
        self.start_proxy = start_proxy
        self.send = send
        self.restart = restart
        self.usage = usage
        self.desired = desired
        self.proxy_listen = proxy_listen
        self.nginx = nginx
        self.docker_host = docker_host
        self._tasks: set[asyncio.Task[None]] = set()
        self._locks: dict[str, asyncio.Lock] = {}
        self._building: set[tuple[str, str]] = set()
        """(name, build id) of the builds asked for and not ended yet (running, or
        waiting for the deployment's lock)."""
        self._health: dict[str, tuple[bool, int, float]] = {}
        self._nginx_lock = asyncio.Lock()
        self.follow = follow
        self._runtime: dict[str, tuple[str, asyncio.Task[None]]] = {}
        """Deployment name -> (its unit, the task sending its runtime output)."""

    # --- messages -----------------------------------------------------------------------

    async def on_message(self, message: m.Message) -> None:
        if isinstance(message, m.WebBuild | m.WebAction):
            what = message.build_id if isinstance(message, m.WebBuild) else message.action
            log.info("webops %s: %s", message.name, what)
        if isinstance(message, m.WebBuild):
            self._background(self._build(message))
        elif isinstance(message, m.WebEnv):
            if w.name_problem(message.name) or w.env_problem(message.env):
                return
            self._write_env(message.name, message.env)
        elif isinstance(message, m.WebAction):
            if w.name_problem(message.name):
                return
            if message.action == "restart" and message.unit:
                self._background(self._restart(message.name, message.unit))
            elif message.action == "remove":
                self._background(self._remove(message.name))

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("webops task failed", exc_info=task.exception())

    async def close(self) -> None:
        for task in [*self._tasks, *(t for _, t in self._runtime.values())]:
            task.cancel()

    async def _log(self, name: str, build_id: str, level: str, message: str) -> None:
        if not name:
            return
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.send(m.WebLog(name, build_id, level, message[:MAX_LINE], time.time()))

    # --- build --------------------------------------------------------------------------

    async def _build(self, req: m.WebBuild) -> None:
        problem = (
            w.name_problem(req.name)
            or w.repo_url_problem(req.repo_url)
            or w.branch_problem(req.branch)
            or w.domain_problem(req.domain)
            or w.env_problem(req.env)
            or (None if BUILD_ID_RE.match(req.build_id) else f"invalid build id {req.build_id!r}")
        )
        if problem:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self.send(m.WebBuilt(req.name, req.build_id, ok=False, error=problem))
            return
        # The coordinator sends a build again whenever the machine connects while it has
        # no outcome of it (the agent, the coordinator or the link went down mid-build):
        # the same build is never made twice at once, and a good build is never made
        # again over itself (its directory may be what the unit runs by now: rebuilding
        # it in place took the live site away for the length of a build, and a failed
        # rebuild would delete it). Found by the fault suite's webops-coordinator-kill.
        key = (req.name, req.build_id)
        if key in self._building:
            log.info(
                "webops %s: build %s is under way: its outcome will answer the repeat",
                req.name,
                req.build_id,
            )
            return
        self._building.add(key)
        try:
            lock = self._locks.setdefault(req.name, asyncio.Lock())
            async with lock:
                built = await self._build_once(req)
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self.send(built)
        finally:
            self._building.discard(key)

    async def _build_once(self, req: m.WebBuild) -> m.WebBuilt:
        """The build's outcome: made now, or the one it had if it was made already."""
        build = self.root / req.name / "builds" / req.build_id
        done = self.outcome_of(req)
        if done is not None:
            made, commit = done
            head = await self._branch_head(req)
            if head == commit:
                self._write_env(req.name, req.env)
                await self._log(
                    req.name,
                    req.build_id,
                    "info",
                    f"build {req.build_id} was done: outcome sent again",
                )
                return made
            # Not the same build after all (the deployment made again under its name
            # while a remove was lost, a coordinator restored from an older backup):
            # the branch moved on since, or cannot be read. Made afresh.
            await self._log(
                req.name,
                req.build_id,
                "info",
                f"build {req.build_id} was made from {commit[:12] or 'an unknown commit'},"
                f" {req.branch} is at {head[:12] or 'an unreadable commit'} now: made again",
            )
        try:
            built = await self._build_in(req, build)
        except BuildFailed as exc:
            shutil.rmtree(build, ignore_errors=True)
            return m.WebBuilt(req.name, req.build_id, ok=False, error=str(exc))
        except Exception as exc:
            log.exception("webops build %s/%s", req.name, req.build_id)
            shutil.rmtree(build, ignore_errors=True)
            return m.WebBuilt(req.name, req.build_id, ok=False, error=f"agent error: {exc}")
        commit = await self._git_output(["git", "-C", str(build / "src"), "rev-parse", "HEAD"])
        outcome = {
            "request": build_key(req),
            "commit": commit,
            "built": msgspec.to_builtins(built),
        }
        write_private(build / OUTCOME, json.dumps(outcome).encode())
        return built

    def outcome_of(self, req: m.WebBuild) -> tuple[m.WebBuilt, str] | None:
        """The outcome of this very build and the commit it built, if it was made with
        success already (its directory still there, asked the same), else None."""
        build = self.root / req.name / "builds" / req.build_id
        try:
            outcome = json.loads((build / OUTCOME).read_text())
            if outcome["request"] != build_key(req) or not (build / "src").is_dir():
                return None
            built = msgspec.convert(outcome["built"], m.WebBuilt)
            commit = str(outcome.get("commit", ""))
        except (OSError, ValueError, KeyError, TypeError, msgspec.ValidationError):
            return None
        if not built.ok or built.build_id != req.build_id:
            return None
        return built, commit

    async def _branch_head(self, req: m.WebBuild) -> str:
        """The commit the requested branch is at now ("" when it cannot be read)."""
        out = await self._git_output(
            ["git", "ls-remote", "--", req.repo_url, f"refs/heads/{req.branch}"]
        )
        return out.split()[0] if out.split() else ""

    async def _git_output(self, argv: list[str]) -> str:
        """A short git query's output ("" on any failure), bounded in time."""
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
                env={**os.environ, "GIT_TERMINAL_PROMPT": "0"},
            )
        except OSError:
            return ""
        try:
            async with asyncio.timeout(GIT_QUERY_TIMEOUT_S):
                out, _ = await proc.communicate()
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return ""
        return out.decode(errors="replace").strip() if proc.returncode == 0 else ""

    async def _build_in(self, req: m.WebBuild, build: Path) -> m.WebBuilt:
        name, bid = req.name, req.build_id
        fresh_dir(build)
        src = build / "src"
        await self._log(name, bid, "info", f"cloning {req.repo_url} branch {req.branch}")
        await self._run(
            name,
            bid,
            [
                "git",
                "clone",
                "--depth",
                "1",
                "--single-branch",
                "--branch",
                req.branch,
                "--",
                req.repo_url,
                str(src),
            ],
            env={"GIT_TERMINAL_PROMPT": "0"},
        )
        files = sorted(p.name for p in src.iterdir() if p.name != ".git")
        example_file = src / ".env.example"
        example = (
            w.parse_env_example(example_file.read_text(errors="replace")[:65536])
            if example_file.is_file()
            else {}
        )
        kind = req.project_type
        if not kind:
            detected, why = w.detect_project_type(files)
            if detected is None:
                raise BuildFailed(why)
            kind = detected
            await self._log(name, bid, "info", f"project type {kind} ({why})")
        exec_start = image = ""
        if kind == "static":
            if not (src / "index.html").is_file():
                raise BuildFailed("static site without index.html")
            # The agent's own interpreter: it has `agent.static_site` (quiet per request)
            exec_start = (
                f"{sys.executable} -m agent.static_site --bind 127.0.0.1 --directory {src}"
                f" {req.port}"
            )
        elif kind in ("python", "django"):
            exec_start = await self._python(req, build, src, kind)
        elif kind == "node":
            exec_start = await self._node(req, build, src)
        elif kind == "docker":
            image = f"moorage-webops/{name}:{bid}"
            await self._log(name, bid, "info", f"docker build -t {image}")
            await self._run(
                name,
                bid,
                ["docker", "build", "--network", "host", "-t", image, str(src)],
                env={"DOCKER_HOST": self.docker_host} if self.docker_host else {},
            )
        else:
            raise BuildFailed(f"unsupported project type {kind!r}")
        env_file = self._write_env(name, req.env)
        if req.domain:
            await self._put_site(name, bid, req.domain, req.port)
        site = {
            "port": req.port,
            "domain": req.domain,
            "live_build": bid,
            "unit": w.unit_name(name, kind),
        }
        write_public(self.root / name / "site.json", json.dumps(site).encode())
        self._prune(name, bid)
        await self._log(name, bid, "success", f"build {bid} ready ({kind})")
        return m.WebBuilt(
            name,
            bid,
            ok=True,
            project_type=kind,
            exec_start=exec_start,
            workdir=str(src),
            image=image,
            env_file=str(env_file),
            files=files,
            env_example=example,
        )

    async def _python(self, req: m.WebBuild, build: Path, src: Path, kind: str) -> str:
        name, bid = req.name, req.build_id
        venv = build / "venv"
        python = shutil.which("python3") or sys.executable
        await self._log(name, bid, "info", "creating virtualenv")
        await self._run(name, bid, [python, "-m", "venv", str(venv)])
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check"]
        if (src / "requirements.txt").is_file():
            await self._log(name, bid, "info", "pip install -r requirements.txt")
            await self._run(name, bid, [*pip, "-r", str(src / "requirements.txt")], cwd=src)
        if not (venv / "bin" / "gunicorn").exists():
            await self._log(name, bid, "info", "installing gunicorn (not in requirements.txt)")
            await self._run(name, bid, [*pip, "gunicorn"])
        if kind == "django":
            manage = [str(venv / "bin" / "python"), "manage.py"]
            env = self._env_of(name, req.env)
            await self._run(name, bid, [*manage, "migrate", "--noinput"], cwd=src, env=env)
            try:
                await self._run(
                    name, bid, [*manage, "collectstatic", "--noinput"], cwd=src, env=env
                )
            except BuildFailed as exc:
                await self._log(name, bid, "warning", f"collectstatic skipped: {exc}")
        entry = wsgi_entry(src, kind)
        await self._log(name, bid, "info", f"application server: gunicorn {entry}")
        return (
            f"{venv / 'bin' / 'gunicorn'} --bind 127.0.0.1:{req.port} --workers 2"
            f" --chdir {src} {entry}"
        )

    async def _node(self, req: m.WebBuild, build: Path, src: Path) -> str:
        """`npm ci` (with a lock file) or `npm install` when it has dependencies, `npm run
        build` when it has that script; run by its `start` script, else `node <main>`,
        with PORT (and HOST, 127.0.0.1) in its environment, as Node.js hosts do."""
        name, bid = req.name, req.build_id
        node, npm, env_cmd = shutil.which("node"), shutil.which("npm"), shutil.which("env")
        if node is None or npm is None or env_cmd is None:
            raise BuildFailed("node projects need node and npm on the machine (not found)")
        package = w.node_package(src / "package.json")
        if isinstance(package, str):
            raise BuildFailed(package)
        npm_env = {"npm_config_cache": str(build / ".npm"), "npm_config_update_notifier": "false"}
        if package.dependencies:
            verb = "ci" if (src / "package-lock.json").is_file() else "install"
            await self._log(name, bid, "info", f"npm {verb}")
            await self._run(name, bid, [npm, verb, "--no-audit", "--no-fund"], cwd=src, env=npm_env)
        if package.build_script:
            await self._log(name, bid, "info", "npm run build")
            await self._run(name, bid, [npm, "run", "build"], cwd=src, env=npm_env)
        listen = f"{env_cmd} PORT={req.port} HOST=127.0.0.1"
        if package.start_script:
            await self._log(name, bid, "info", "application: npm start")
            return f"{listen} {npm} start --prefix {src}"
        main = package.main_file(src)
        if main is None:
            raise BuildFailed(
                "package.json has no start script and no main file (looked for"
                " scripts.start, main, server.js, index.js)"
            )
        await self._log(name, bid, "info", f"application: node {main.name}")
        return f"{listen} {node} {main}"

    def _env_of(self, name: str, env: dict[str, str]) -> dict[str, str]:
        del name
        return dict(env)

    async def _run(
        self,
        name: str,
        bid: str,
        argv: list[str],
        *,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        """Run one build step, its output shipped line by line; BuildFailed on a
        non-zero exit or a timeout."""
        full_env = {**os.environ, **(env or {})}
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                cwd=cwd,
                env=full_env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
        except OSError as exc:
            raise BuildFailed(f"{argv[0]}: {exc.strerror or exc}") from None
        assert proc.stdout is not None
        last = ""

        async def pump() -> None:
            nonlocal last
            assert proc.stdout is not None
            async for raw in proc.stdout:
                line = raw.decode(errors="replace").rstrip()
                if line:
                    last = line
                    await self._log(name, bid, "info", line)

        try:
            async with asyncio.timeout(STEP_TIMEOUT_S):
                await pump()
            code = await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise BuildFailed(f"{Path(argv[0]).name} timed out") from None
        if code != 0:
            step = " ".join(Path(a).name if i == 0 else a for i, a in enumerate(argv[:3]))
            raise BuildFailed(f"{step}... exited with {code}: {last}")

    def _write_env(self, name: str, env: dict[str, str]) -> Path:
        path = self.root / name / "env"
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        write_private(path, w.env_file_text(env).encode())
        return path

    def _prune(self, name: str, keep: str) -> None:
        builds = self.root / name / "builds"
        found = sorted(
            (p for p in builds.iterdir() if BUILD_ID_RE.match(p.name)),
            key=lambda p: int(p.name[1:]),
        )
        old = [p for p in found if p.name != keep][: -(KEEP_BUILDS - 1) or None]
        for p in old:
            shutil.rmtree(p, ignore_errors=True)

    # --- proxy --------------------------------------------------------------------------

    def _nginx_args(self) -> list[str]:
        n = self.root / "nginx"
        return [self.nginx, "-p", str(n), "-c", str(n / "nginx.conf"), "-e", str(n / "error.log")]

    async def _put_site(self, name: str, bid: str, domain: str, port: int) -> None:
        async with self._nginx_lock:
            n = self.root / "nginx"
            (n / "sites").mkdir(parents=True, exist_ok=True)
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
                (n / "tmp" / kind).mkdir(parents=True, exist_ok=True)
            write_public(n / "nginx.conf", nginx_conf(self.root, self.proxy_listen).encode())
            site = n / "sites" / f"{name}.conf"
            before = site.read_bytes() if site.exists() else None
            write_public(site, site_conf(self.proxy_listen, domain, port).encode())
            try:
                await self._run(name, bid, [*self._nginx_args(), "-t", "-q"])
            except BuildFailed as exc:
                if before is None:
                    site.unlink(missing_ok=True)
                else:
                    write_public(site, before)
                raise BuildFailed(f"proxy configuration refused: {exc}") from None
            await self._reload(name, bid)
            await self._log(name, bid, "info", f"proxy: {domain} -> 127.0.0.1:{port}")

    async def ensure_proxy(self) -> None:
        sites = self.root / "nginx" / "sites"
        if not sites.is_dir() or not any(sites.glob("*.conf")) or self.nginx_pid() is not None:
            return
        async with self._nginx_lock:
            n = self.root / "nginx"
            write_public(n / "nginx.conf", nginx_conf(self.root, self.proxy_listen).encode())
            await self._start_nginx("", "")

    def nginx_pid(self) -> int | None:
        try:
            pid = int((self.root / "nginx" / "nginx.pid").read_text().strip())
            os.kill(pid, 0)
        except (OSError, ValueError):
            return None
        return pid

    async def _reload(self, name: str, bid: str) -> None:
        if self.nginx_pid() is None:
            await self._start_nginx(name, bid)
        else:
            await self._run(name, bid, [*self._nginx_args(), "-s", "reload"])

    async def _start_nginx(self, name: str, bid: str) -> None:
        """Start the agent's nginx: where a systemd manager can run it, as its own
        transient service (`PROXY_UNIT`), so every site stays up while the agent is
        stopped, restarted or upgraded (the agent's service, `KillMode=control-group`,
        ends every process of its own cgroup, a daemonised child included); else as
        the agent's own (daemonised) child."""
        argv = [shutil.which(self.nginx) or self.nginx, *self._nginx_args()[1:]]
        try:
            started = self.start_proxy is not None and await self.start_proxy(
                PROXY_UNIT, [*argv, "-g", "daemon off;"]
            )
        except Exception as exc:
            raise BuildFailed(f"nginx could not be started as {PROXY_UNIT}: {exc}") from None
        if not started:
            await self._run(name, bid, argv)
            return
        deadline = time.monotonic() + PROXY_PID_WAIT_S
        while self.nginx_pid() is None:  # reloads signal the pid its pid file names
            if time.monotonic() > deadline:
                raise BuildFailed(
                    f"{PROXY_UNIT} started, but nginx wrote no pid file within"
                    f" {PROXY_PID_WAIT_S:g} s (its journal says why)"
                )
            await asyncio.sleep(0.05)

    # --- actions ------------------------------------------------------------------------

    async def _restart(self, name: str, unit: str) -> None:
        try:
            await self.restart(unit)
            await self._log(name, "", "info", f"{unit} restarted")
        except Exception as exc:
            await self._log(name, "", "error", f"restart of {unit} failed: {exc}")

    async def _remove(self, name: str) -> None:
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            site = self.root / "nginx" / "sites" / f"{name}.conf"
            if site.exists():
                site.unlink()
                async with self._nginx_lock:
                    if self.nginx_pid() is not None:
                        with contextlib.suppress(BuildFailed):
                            await self._run(name, "", [*self._nginx_args(), "-s", "reload"])
            self._stop_runtime(name)
            shutil.rmtree(self.root / name, ignore_errors=True)
            self._health.pop(name, None)

    # --- health -------------------------------------------------------------------------

    async def health_loop(self) -> None:
        """Health checks; first, the proxy back if sites exist but nginx is not running
        (the machine rebooted): the sites were served before, so they are again."""
        with contextlib.suppress(Exception):
            await self.ensure_proxy()
        while True:
            await asyncio.sleep(HEALTH_EVERY_S)
            with contextlib.suppress(Exception):
                await self.check_all()

    async def check_all(self) -> None:
        if not self.root.is_dir():
            return
        for site in self.root.glob("*/site.json"):
            name = site.parent.name
            if w.name_problem(name):
                continue
            try:
                info = json.loads(site.read_text())
                port, domain = int(info["port"]), str(info.get("domain") or "")
                unit = str(info.get("unit") or "")
                age = time.time() - site.stat().st_mtime
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if self.desired is not None and unit and unit not in self.desired():
                if age > ORPHAN_GRACE_S and not self._locks.get(name, asyncio.Lock()).locked():
                    log.info("webops %s: %s is no longer desired: removing its site", name, unit)
                    await self._remove(name)
                continue
            self._watch_runtime(name, unit)
            healthy, status, detail = await http_check(port, domain)
            now = time.monotonic()
            before = self._health.get(name)
            if before and before[:2] == (healthy, status) and now - before[2] < HEALTH_RESEND_S:
                continue
            self._health[name] = (healthy, status, now)
            memory = cpu = 0
            if self.usage is not None and unit:
                try:
                    memory, cpu = await self.usage(unit)
                except Exception as exc:  # reported as 0: health matters more
                    log.warning("webops %s: usage of %s not read: %s", name, unit, exc)
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self.send(
                    m.WebHealth(name, healthy, status, detail, time.time(), memory, cpu)
                )

    # --- runtime output -----------------------------------------------------------------

    def _watch_runtime(self, name: str, unit: str) -> None:
        """A follower for the deployment's unit (again, if the last one ended: the unit
        was not there yet, or it changed kind)."""
        if self.follow is None or not unit:
            return
        current = self._runtime.get(name)
        if current is not None and current[0] == unit and not current[1].done():
            return
        self._stop_runtime(name)
        self._runtime[name] = (unit, asyncio.create_task(self._send_runtime(name, unit)))

    def _stop_runtime(self, name: str) -> None:
        current = self._runtime.pop(name, None)
        if current is not None:
            current[1].cancel()

    async def _send_runtime(self, name: str, unit: str) -> None:
        assert self.follow is not None
        cursor_file = self.root / name / "runtime.cursor"
        try:
            cursor = cursor_file.read_text().strip()[:4096]
        except OSError:
            cursor = ""
        budget = TokenBucket(RUNTIME_RATE_PER_S, RUNTIME_BURST, time.monotonic())
        dropped, noted, saved = 0, time.monotonic(), 0.0

        def save() -> None:
            if cursor and cursor_file.parent.is_dir():  # not after a remove
                with contextlib.suppress(OSError):
                    write_public(cursor_file, cursor.encode())

        try:
            batches = self.follow(unit, cursor, 0 if cursor else RUNTIME_FIRST_LINES)
            async with contextlib.aclosing(batches):
                async for batch in batches:
                    now = time.monotonic()
                    for line in batch:
                        cursor = line.cursor or cursor
                        if not budget.take(now):
                            dropped += 1
                            continue
                        at = line.timestamp or time.time()
                        await self.send(m.WebLog(name, "", "info", line.message[:MAX_LINE], at))
                    if dropped and now - noted >= 1.0:
                        message = (
                            f"{dropped} line(s) of output not kept as items (more than"
                            f" {RUNTIME_RATE_PER_S:g} a second; all are in the unit's journal)"
                        )
                        await self.send(m.WebLog(name, "", "warning", message, time.time()))
                        dropped, noted = 0, now
                    if now - saved >= CURSOR_SAVE_S:
                        save()
                        saved = now
        except Exception as exc:  # the unit is not there yet, the link went down...
            log.debug("webops %s: runtime output of %s: %s", name, unit, exc)
        finally:
            save()


def fresh_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, mode=0o755)


async def http_check(port: int, host: str, limit_s: float = 3.0) -> tuple[bool, int, str]:
    """GET / on 127.0.0.1:port: healthy when it answers below 500."""
    try:
        async with asyncio.timeout(limit_s):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(
                    f"GET / HTTP/1.0\r\nHost: {host or '127.0.0.1'}\r\n"
                    "User-Agent: moorage-agent\r\n\r\n".encode()
                )
                await writer.drain()
                line = await reader.readline()
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except (OSError, TimeoutError) as exc:
        return False, 0, f"no answer on port {port}: {exc}"
    parts = line.decode(errors="replace").split()
    if len(parts) < 2 or not parts[1].isdigit():
        return False, 0, "not an HTTP answer"
    status = int(parts[1])
    return status < 500, status, f"HTTP {status}"


CGROUP_ROOTS = (
    Path("/sys/fs/cgroup"),
    Path("/sys/fs/cgroup/unified"),
    Path("/sys/fs/cgroup/systemd"),
)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def cgroup_usage(cgroup: str, roots: tuple[Path, ...] = CGROUP_ROOTS) -> tuple[int, int]:
    """(memory bytes, CPU ns) of the processes in a unit's cgroup, when systemd does not
    account them: cgroup v2's memory.current / cpu.stat where the controllers are
    enabled, else the sum of the member processes' RSS and CPU time from /proc."""
    rel = cgroup.lstrip("/")
    if not rel or ".." in rel.split("/"):
        return 0, 0
    for root in roots:
        d = root / rel
        if not (d / "cgroup.procs").is_file():
            continue
        mem = cpu = 0
        with contextlib.suppress(OSError, ValueError):
            mem = int((d / "memory.current").read_text())
        with contextlib.suppress(OSError, ValueError):
            for line in (d / "cpu.stat").read_text().splitlines():
                if line.startswith("usage_usec "):
                    cpu = int(line.split()[1]) * 1000
        if mem and cpu:
            return mem, cpu
        try:
            pids = [int(p) for p in (d / "cgroup.procs").read_text().split()]
        except (OSError, ValueError):
            continue
        pmem = pcpu = 0
        for pid in pids:
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = Path(f"/proc/{pid}/stat").read_text()
                fields = stat[stat.rindex(")") + 2 :].split()
                pcpu += (int(fields[11]) + int(fields[12])) * 1_000_000_000 // CLOCK_TICKS
                pmem += int(fields[21]) * PAGE
        return mem or pmem, cpu or pcpu
    return 0, 0
