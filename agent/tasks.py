"""The agent's task runner: one-shot containers for batch runs (issue #19).

Runs are not units: nothing desired is reconciled towards, a run is created once,
never restarted, and forgotten once the coordinator holds its whole log. So the runner
is a service of its own, owned by the daemon beside the unit `Registry`, that borrows
the Docker backend's connection (its thread pool, its reconnecting watcher). It speaks
`TaskStart`/`TaskStop`/`TaskAck` in and `TaskUpdate`/`TaskOutput` out.

* **Containers.** Named ``moorage.run.<run_id>`` (a unit's container is always
  ``moorage-…``: the two never meet) and labelled ``moorage.run=<run_id>``,
  ``moorage.kind=task``, without ``moorage.unit``: the Docker backend's listing, events
  and drift pass only see ``moorage.unit`` containers, so runs are invisible to them.
  Restart policy ``no``, not auto-removed; ``/bin/sh -c <command>`` as entrypoint and
  command (the image's own when the command is empty); memory limit without swap
  beyond it; CPU as ``NanoCpus``.
* **Local state**, per run under ``<state_dir>/tasks/<run_id>/`` (the run id is
  validated first: `valid_run_id`): ``run.json`` (the `RunRecord`, replaced
  atomically, 0600: the env may hold secrets) and ``output``, the run's whole output
  so far, append-only, 0600. Output is shipped from that file, so its size is the
  byte count of the run's output captured so far.
* **Capture is exact.** ``docker logs --follow`` of a non-TTY container replays, from
  the first byte, everything the container wrote (stdout and stderr interleaved as
  written); the runner skips as many bytes as the file already holds and appends the
  rest. After an agent restart (even ``kill -9``) it does the same: no gap, no repeat.
  When the stream ends and the container has exited, one last non-follow read catches
  anything the stream had not delivered.
* **Shipping.** `TaskOutput` frames of at most `CHUNK_BYTES`, from the last offset sent
  in this session; after each Welcome everything from the last acknowledged offset is
  sent again (the coordinator keeps each byte once), after a `TaskUpdate` of every
  run. A STOPPED update is sent once the output is, and again after every Welcome
  until `TaskAck(final=True)`; then the container and the run's files are removed.
* **Exit codes.** Docker's exit code; -1 for a run that never ran (bad image, the
  container could not be created or started, stopped before it started) or whose
  container was removed behind the agent's back, with the problem in ``exit_reason``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import re
import shutil
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Final

import msgspec

from agent.backends.base import BackendError, BackendUnavailable
from agent.backends.docker import DockerBackend, DockerError, SharedStream
from proto import messages as m
from proto.files import write_private

log = logging.getLogger(__name__)

LABEL_RUN: Final = "moorage.run"
LABEL_KIND: Final = "moorage.kind"
KIND_TASK: Final = "task"
NAME_PREFIX: Final = "moorage.run."
CHUNK_BYTES: Final = 64 * 1024
"""Largest `TaskOutput` payload (far under `proto.messages.MAX_FRAME`)."""
APPEND_BATCH_BYTES: Final = 256 * 1024
NEVER_RAN: Final = -1
"""``exit_code`` of a run whose command never ran, or whose exit code is lost (its
container was removed outside Moorage): a STOPPED update always has an exit code."""
RETRY_S: Final = 1.0
"""How often a run waiting for dockerd (or a log stream that broke) tries again."""
MAX_GRACE_S: Final = 3600

_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_ENV_NAME = re.compile(r"[^=\x00]+")

_APPEND_FLAGS: Final = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC

STATE_FILE: Final = "run.json"
OUTPUT_FILE: Final = "output"


# --------------------------------------------------------------------------- pure parts


def valid_run_id(run_id: str) -> bool:
    """Whether ``run_id`` may name a container and a directory: letters, digits, ``_.-``,
    starting with a letter or digit (so never ``.``/``..``, never a ``/``), ≤ 128."""
    return _RUN_ID.fullmatch(run_id) is not None


def container_name(run_id: str) -> str:
    return NAME_PREFIX + run_id


def start_problem(start: m.TaskStart) -> str:
    """Why a TaskStart cannot be run ("" if it can), checked before anything is made."""
    if not valid_run_id(start.run_id):
        return f"invalid run id {start.run_id[:140]!r}: letters, digits, '_', '.', '-' only"
    if not start.image.strip():
        return "no image given"
    if start.memory_mb < 0 or start.cpu_millis < 0:
        return "memory and cpu must not be negative"
    for name, value in start.env.items():
        if _ENV_NAME.fullmatch(name) is None:
            return f"invalid environment variable name {name[:100]!r}"
        if "\x00" in value:
            return f"environment variable {name[:100]!r} holds a NUL byte"
    if "\x00" in start.command:
        return "the command holds a NUL byte"
    return ""


def container_body(start: m.TaskStart, *, network: str = "") -> dict[str, Any]:
    """The Engine API ``POST /containers/create`` body of a run (module doc)."""
    host: dict[str, Any] = {
        "RestartPolicy": {"Name": "no", "MaximumRetryCount": 0},
        "AutoRemove": False,
        # Docker's init (tini) as PID 1: it forwards a stop's SIGTERM to the command and
        # reaps orphans. Without it `/bin/sh -c` is PID 1, which the kernel shields from
        # SIGTERM, so every stop waited the whole grace period and ended in SIGKILL (137).
        "Init": True,
    }
    if start.memory_mb:
        host["Memory"] = start.memory_mb * 1024 * 1024
        host["MemorySwap"] = start.memory_mb * 1024 * 1024  # no swap beyond the limit
    if start.cpu_millis:
        host["NanoCpus"] = start.cpu_millis * 1_000_000
    if network:
        host["NetworkMode"] = network
    body: dict[str, Any] = {
        "Image": start.image,
        "Env": [f"{k}={v}" for k, v in start.env.items()],
        "Labels": {LABEL_RUN: start.run_id, LABEL_KIND: KIND_TASK},
        "HostConfig": host,
    }
    if start.command:
        body["Entrypoint"] = ["/bin/sh", "-c"]
        body["Cmd"] = [start.command]
    return body


_SIGNALS: Final[dict[int, str]] = {137: "killed (SIGKILL)", 143: "terminated (SIGTERM)"}


def never_started(attrs: Mapping[str, Any]) -> bool:
    """Whether the container was created but never started (so starting it is no restart)."""
    state: Mapping[str, Any] = attrs.get("State") or {}
    started = str(state.get("StartedAt") or "")
    return str(state.get("Status") or "") == "created" and (
        not started or started.startswith("0001-")
    )


def run_state(attrs: Mapping[str, Any]) -> m.TaskRunState:
    """PENDING (created, not started yet), RUNNING (running, paused, restarting...) or
    STOPPED (exited, dead), from ``docker inspect``."""
    status = str((attrs.get("State") or {}).get("Status") or "")
    if status == "created":
        return "PENDING" if never_started(attrs) else "STOPPED"
    if status in ("exited", "dead"):
        return "STOPPED"
    return "RUNNING"


def outcome(attrs: Mapping[str, Any], *, stop_requested: bool) -> tuple[int, str]:
    """``(exit_code, exit_reason)`` of a finished container, from ``docker inspect``."""
    state: Mapping[str, Any] = attrs.get("State") or {}
    code = int(state.get("ExitCode") or 0)
    error = str(state.get("Error") or "")
    if never_started(attrs) or (error and str(state.get("Status")) == "created"):
        why = f"the container did not start: {error}" if error else "the container never started"
        return NEVER_RAN, ("stopped by request before it started" if stop_requested else why)
    if state.get("OOMKilled"):
        limit = int((attrs.get("HostConfig") or {}).get("Memory") or 0)
        over = f" of {limit // (1024 * 1024)} MB" if limit else ""
        return code, f"OOMKilled: the run used more than its memory limit{over}"
    if stop_requested:
        return code, "stopped by request"
    if error:
        return code, f"exited with code {code}: {error}"
    if code == 0:
        return 0, "exited"
    if code in _SIGNALS:
        return code, f"{_SIGNALS[code]} from outside Moorage"
    return code, f"exited with code {code}"


def chunks(offset: int, end: int, size: int = CHUNK_BYTES) -> list[tuple[int, int]]:
    """``(offset, length)`` of the frames that ship bytes ``[offset, end)``."""
    if size <= 0:
        raise ValueError("chunk size must be positive")
    return [(o, min(size, end - o)) for o in range(max(offset, 0), end, size)]


def skip_prefix(frame: bytes, skip: int) -> tuple[bytes, int]:
    """What is new in ``frame`` when ``skip`` bytes of the stream are already held, and
    how many are still to skip after it."""
    if skip >= len(frame):
        return b"", skip - len(frame)
    return frame[skip:], 0


def advance_ack(acked: int, offset: int, size: int) -> int:
    """The acknowledged offset after a TaskAck: it never goes back, nor past the bytes
    the agent has (an ack beyond them is a confused peer, not a reason to drop data)."""
    return max(acked, min(offset, size))


# --------------------------------------------------------------------------- local state


class RunRecord(msgspec.Struct, kw_only=True):
    """What the agent keeps about one run (``run.json``)."""

    start: m.TaskStart
    state: m.TaskRunState = "PENDING"
    container_id: str = ""
    exit_code: int | None = None
    exit_reason: str = ""
    event: str = ""
    at: float = 0.0
    acked: int = 0
    stop_requested: bool = False
    grace_s: float = 10.0
    log_bytes: int = 0
    """Set with STOPPED: the whole output's size."""


class RunFiles:
    """One run's directory: its record and its output (see the module doc)."""

    def __init__(self, root: Path, run_id: str) -> None:
        if not valid_run_id(run_id):
            raise ValueError(f"invalid run id {run_id!r}")
        self.dir = root / run_id
        self.record_path = self.dir / STATE_FILE
        self.output_path = self.dir / OUTPUT_FILE

    def create(self) -> None:
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.output_path, _APPEND_FLAGS, 0o600)
        os.close(fd)

    def load(self) -> RunRecord | None:
        try:
            return msgspec.json.decode(self.record_path.read_bytes(), type=RunRecord)
        except FileNotFoundError:
            return None
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.error("run record %s unreadable (%s): ignored", self.record_path, exc)
            return None

    def save(self, record: RunRecord) -> None:
        write_private(self.record_path, msgspec.json.encode(record))

    def size(self) -> int:
        try:
            return os.stat(self.output_path).st_size
        except FileNotFoundError:
            return 0

    def append(self, data: bytes) -> None:
        fd = os.open(self.output_path, _APPEND_FLAGS, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)

    def read(self, offset: int, length: int) -> bytes:
        try:
            with open(self.output_path, "rb") as f:
                f.seek(offset)
                return f.read(length)
        except FileNotFoundError:
            return b""

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


# --------------------------------------------------------------------------- the runner


class Run:
    def __init__(self, files: RunFiles, record: RunRecord) -> None:
        self.files = files
        self.record = record
        self.size = files.size()
        self.sent = record.acked
        self.lock = asyncio.Lock()
        self.driver: asyncio.Task[None] | None = None
        self.wake = asyncio.Event()
        self.stream: SharedStream | None = None

    @property
    def run_id(self) -> str:
        return self.record.start.run_id

    def update(self, event: str = "") -> m.TaskUpdate:
        r = self.record
        return m.TaskUpdate(
            run_id=self.run_id,
            state=r.state,
            event=event,
            exit_code=r.exit_code,
            exit_reason=r.exit_reason,
            container_id=r.container_id,
            at=r.at,
            log_bytes=r.log_bytes if r.state == "STOPPED" else self.size,
        )


class _Gone(Exception):
    """The run's container is not there any more."""


Send = Callable[[m.Message], Awaitable[bool]]


class TaskRunner:
    """Runs `TaskStart`s as one-shot containers (module doc); one per agent."""

    def __init__(
        self,
        docker: DockerBackend,
        state_dir: Path,
        send: Send,
        *,
        network: str = "",
    ) -> None:
        self.docker = docker
        self.root = state_dir / "tasks"
        self.send = send
        self.network = network
        self.runs: dict[str, Run] = {}
        self.adopted = False
        self._session = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._adopting = asyncio.Lock()

    # -- lifecycle

    async def open(self) -> None:
        """Take up the runs of an earlier agent (once dockerd answers): the local ones
        and any container labelled as a run. Cheap when already done."""
        if self.adopted or not self.docker.available:
            return
        async with self._adopting:
            if self.adopted:
                return
            try:
                labelled = await self.docker.call(_list_runs)
            except (BackendError, BackendUnavailable) as exc:
                log.warning("cannot list task runs yet: %s", exc)
                return
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            for entry in sorted(os.listdir(self.root)):
                if not valid_run_id(entry) or entry in self.runs:
                    continue
                files = RunFiles(self.root, entry)
                record = files.load()
                if record is None or record.start.run_id != entry:
                    continue
                self._hold(Run(files, record))
            for run_id, (container_id, image) in labelled.items():
                if run_id in self.runs or not valid_run_id(run_id):
                    continue
                log.info("adopting run %s (container %s, no record)", run_id, container_id[:12])
                files = RunFiles(self.root, run_id)
                files.create()
                record = RunRecord(
                    start=m.TaskStart(run_id=run_id, image=image),
                    state="RUNNING",
                    container_id=container_id,
                    at=time.time(),
                )
                files.save(record)
                self._hold(Run(files, record))
            self.adopted = True
            if self.runs:
                log.info("holding %d task run(s) after start-up", len(self.runs))

    def _hold(self, run: Run) -> None:
        self.runs[run.run_id] = run
        if run.record.state != "STOPPED":
            run.driver = self._spawn(self._drive(run))

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def close(self) -> None:
        """Stop watching (runs keep running; a new agent re-adopts them)."""
        for run in self.runs.values():
            if run.stream is not None:
                run.stream.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # -- messages

    async def on_message(self, message: m.Message) -> None:
        if isinstance(message, m.TaskStart):
            await self.start(message)
        elif isinstance(message, m.TaskStop):
            await self.stop(message)
        elif isinstance(message, m.TaskAck):
            await self.ack(message)

    async def start(self, start: m.TaskStart) -> None:
        run = self.runs.get(start.run_id)
        if run is not None:
            await self.send(run.update())
            return
        problem = start_problem(start)
        if problem:
            log.warning("refused task run %r: %s", start.run_id[:140], problem)
            await self.send(
                m.TaskUpdate(
                    run_id=start.run_id,
                    state="STOPPED",
                    event="refused",
                    exit_code=NEVER_RAN,
                    exit_reason=problem,
                    at=time.time(),
                )
            )
            return
        if not self.adopted:
            await self.open()
        run = self.runs.get(start.run_id)
        if run is not None:  # an earlier agent had it (adopted just now)
            await self.send(run.update())
            return
        files = RunFiles(self.root, start.run_id)
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        files.create()
        record = RunRecord(start=start, at=time.time(), event="accepted")
        files.save(record)  # before anything is made: a restart finds and finishes it
        run = Run(files, record)
        self._hold(run)

    async def stop(self, stop: m.TaskStop) -> None:
        run = self.runs.get(stop.run_id)
        if run is None or run.record.state == "STOPPED":
            if run is not None:
                await self.send(run.update())
            return
        run.record.stop_requested = True
        run.record.grace_s = min(max(stop.grace_s, 0.0), MAX_GRACE_S)
        run.files.save(run.record)  # a restarted agent still calls it stopped by request
        run.wake.set()
        if run.record.container_id and run.record.state == "RUNNING":
            self._spawn(self._docker_stop(run))

    async def _docker_stop(self, run: Run) -> None:
        timeout = math.ceil(run.record.grace_s)
        try:
            was_running = await self.docker.call(_stop_container, run.record.container_id, timeout)
        except (BackendError, BackendUnavailable) as exc:
            log.warning("stopping run %s failed: %s", run.run_id, exc)
            return
        if not was_running and run.record.state != "STOPPED":
            # It had already exited by itself: its own exit reason stands.
            run.record.stop_requested = False
            run.files.save(run.record)

    async def ack(self, ack: m.TaskAck) -> None:
        run = self.runs.get(ack.run_id)
        if run is None:
            return
        acked = advance_ack(run.record.acked, ack.offset, run.size)
        if acked != run.record.acked:
            run.record.acked = acked
            run.files.save(run.record)
        if ack.final:
            if run.record.state != "STOPPED":
                log.warning("final ack for run %s, still %s: ignored", run.run_id, run.record.state)
                return
            await self._forget(run)

    async def _forget(self, run: Run) -> None:
        """The coordinator holds everything: remove the container and the local files."""
        if run.record.container_id:
            try:
                await self.docker.call(_remove_container, run.record.container_id)
            except (BackendError, BackendUnavailable) as exc:
                log.warning("removing the container of run %s failed: %s", run.run_id, exc)
                return  # kept: the next final ack (after the next Welcome) tries again
        self.runs.pop(run.run_id, None)
        run.files.remove()
        log.info("run %s shipped and removed", run.run_id)

    async def on_welcome(self) -> None:
        """A new session: every run's state, then unacknowledged output again."""
        self._session += 1
        for run in list(self.runs.values()):
            run.sent = run.record.acked
            if not await self.send(run.update()):
                return
        for run in list(self.runs.values()):
            self._spawn(self._flush(run))

    # -- output

    async def _flush(self, run: Run) -> None:
        """Ship the run's output from the last offset sent to what the file holds."""
        session = self._session
        async with run.lock:
            while run.sent < run.size and session == self._session:
                length = min(CHUNK_BYTES, run.size - run.sent)
                data = run.files.read(run.sent, length)
                if not data:
                    return
                if not await self.send(m.TaskOutput(run.run_id, run.sent, data)):
                    return
                if session == self._session:
                    run.sent += len(data)

    async def _capture(self, run: Run, *, follow: bool) -> None:
        """Append what the container wrote beyond what the file holds (one ``docker logs``,
        following or not), shipping as it comes."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue()
        stream = SharedStream()
        run.stream = stream
        container_id = run.record.container_id
        new_client = self.docker.new_client

        def put(item: bytes | BaseException | None) -> None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(queue.put_nowait, item)

        def read() -> None:
            client: Any = None
            try:
                client = new_client(None)  # asks dockerd its version: not on the loop
                frames = client.logs(
                    container_id, stream=True, follow=follow, stdout=True, stderr=True
                )
                if stream.attach(frames):
                    for frame in frames:
                        put(frame)
                put(None)
            except BaseException as exc:
                put(exc)
            finally:
                stream.close()
                if client is not None:
                    with contextlib.suppress(Exception):
                        client.close()

        threading.Thread(target=read, name=f"task-logs-{run.run_id[:20]}", daemon=True).start()
        skip = run.size
        try:
            while True:
                item = await queue.get()
                ended = item is None or isinstance(item, BaseException)
                pending: list[bytes] = []
                held = 0
                while not ended and isinstance(item, bytes):
                    fresh, skip = skip_prefix(item, skip)
                    if fresh:
                        pending.append(fresh)
                        held += len(fresh)
                    if held >= APPEND_BATCH_BYTES or queue.empty():
                        break
                    item = queue.get_nowait()
                    ended = item is None or isinstance(item, BaseException)
                if pending:
                    data = b"".join(pending)
                    run.files.append(data)
                    run.size += len(data)
                    if not run.lock.locked():  # a flush under way ships these too
                        self._spawn(self._flush(run))
                if ended:
                    if isinstance(item, BaseException):
                        _raise_docker(item)
                    return
        finally:
            stream.close()
            if run.stream is stream:
                run.stream = None

    # -- one run, from start to STOPPED

    async def _drive(self, run: Run) -> None:
        while True:
            try:
                await self._drive_once(run)
                return
            except asyncio.CancelledError:
                raise
            except BackendUnavailable as exc:
                log.info("run %s waits for dockerd: %s", run.run_id, exc)
            except _Gone as exc:
                await self._finish(run, NEVER_RAN, str(exc))
                return
            except Exception:
                log.exception("run %s: unexpected failure; retrying", run.run_id)
            run.wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(RETRY_S):
                    await run.wake.wait()

    async def _drive_once(self, run: Run) -> None:
        record = run.record
        if not self.docker.available:
            raise BackendUnavailable(self.docker.unavailable_reason or "dockerd is not connected")
        if not record.container_id:
            found = await self.docker.call(_find_run, run.run_id)
            if found is not None:
                record.container_id = found
                run.files.save(record)
        if not record.container_id:
            if record.stop_requested:
                await self._finish(run, NEVER_RAN, "stopped by request before it started")
                return
            try:
                await self._create(run)
            except DockerError as exc:
                await self._finish(run, NEVER_RAN, str(exc))
                return
        attrs = await self._inspect(run)
        if run_state(attrs) == "PENDING":
            if record.stop_requested:
                await self._finish(run, NEVER_RAN, "stopped by request before it started")
                return
            try:
                await self.docker.call(_start_container, record.container_id)
            except DockerError as exc:
                await self._finish(run, NEVER_RAN, f"the container did not start: {exc}")
                return
            attrs = await self._inspect(run)
        if record.state == "PENDING" and not never_started(attrs):
            # Started (by us, now or before a restart): RUNNING, even if already exited.
            record.state = "RUNNING"
            record.event = "started"
            record.at = time.time()
            run.files.save(record)
            await self.send(run.update("started"))
        elif record.state == "RUNNING":
            await self.send(run.update())
        if record.stop_requested and run_state(attrs) == "RUNNING":
            self._spawn(self._docker_stop(run))
        while run_state(attrs) != "STOPPED":
            try:
                await self._capture(run, follow=True)
            except DockerError as exc:
                log.info("log stream of run %s broke: %s", run.run_id, exc)
                await asyncio.sleep(RETRY_S)
            attrs = await self._inspect(run)
        await self._capture(run, follow=False)
        code, reason = outcome(attrs, stop_requested=record.stop_requested)
        await self._finish(run, code, reason)

    async def _create(self, run: Run) -> None:
        start = run.record.start
        present = await self.docker.call(_has_image, start.image)
        if not present:
            await self.send(run.update("pulling image"))
            try:
                await self.docker.call(self.docker.ensure_image_sync, start.image)
            except DockerError as exc:
                raise DockerError(f"image {start.image}: {exc}") from None
            await self.send(run.update("image pulled"))
        body = container_body(start, network=self.network)
        run.record.container_id = await self.docker.call(
            _create_container, body, container_name(start.run_id), start.run_id
        )
        run.record.event = "container created"
        run.files.save(run.record)
        await self.send(run.update("container created"))

    async def _inspect(self, run: Run) -> dict[str, Any]:
        attrs = await self.docker.call(_inspect, run.record.container_id)
        if attrs is None:
            raise _Gone("the run's container was removed outside Moorage")
        return attrs

    async def _finish(self, run: Run, exit_code: int, reason: str) -> None:
        record = run.record
        record.state = "STOPPED"
        record.exit_code = exit_code
        record.exit_reason = reason
        record.event = "failed" if exit_code == NEVER_RAN else "exited"
        record.at = time.time()
        record.log_bytes = run.size
        run.files.save(record)
        log.info("run %s stopped: %s (exit code %s)", run.run_id, reason, exit_code)
        await self._flush(run)
        await self.send(run.update(record.event))


# --------------------------------------------------------------------------- docker calls
# Each runs in the Docker backend's thread pool as ``fn(api, *args)``.


def _list_runs(api: Any) -> dict[str, tuple[str, str]]:
    rows = api.containers(all=True, filters={"label": f"{LABEL_KIND}={KIND_TASK}"})
    out: dict[str, tuple[str, str]] = {}
    for row in rows:
        run_id = (row.get("Labels") or {}).get(LABEL_RUN)
        if isinstance(run_id, str):
            out[run_id] = (str(row["Id"]), str(row.get("Image") or ""))
    return out


def _find_run(api: Any, run_id: str) -> str | None:
    rows = api.containers(all=True, filters={"label": f"{LABEL_RUN}={run_id}"})
    for row in rows:
        if (row.get("Labels") or {}).get(LABEL_KIND) == KIND_TASK:
            return str(row["Id"])
    return None


def _has_image(api: Any, image: str) -> bool:
    import docker

    try:
        api.inspect_image(image)
        return True
    except docker.errors.NotFound:
        return False


def _create_container(api: Any, body: dict[str, Any], name: str, run_id: str) -> str:
    import docker

    try:
        created = api.create_container_from_config(body, name)
    except docker.errors.APIError as exc:
        if exc.status_code != 409:
            raise
        existing = _find_run(api, run_id)  # made by an earlier attempt
        if existing is None:
            raise
        return existing
    for warning in created.get("Warnings") or []:
        log.warning("creating the container of run %s: %s", run_id, warning)
    return str(created["Id"])


def _start_container(api: Any, container_id: str) -> None:
    api.start(container_id)


def _inspect(api: Any, container_id: str) -> dict[str, Any] | None:
    import docker

    try:
        return dict(api.inspect_container(container_id))
    except docker.errors.NotFound:
        return None


def _stop_container(api: Any, container_id: str, timeout: int) -> bool:
    """Stop the container; whether it was running (or paused, restarting) to be stopped."""
    import docker

    try:
        state = api.inspect_container(container_id).get("State") or {}
        if not (state.get("Running") or state.get("Restarting") or state.get("Paused")):
            return False
        api.stop(container_id, timeout=timeout)
        return True
    except docker.errors.NotFound:
        return False


def _remove_container(api: Any, container_id: str) -> None:
    import docker

    with contextlib.suppress(docker.errors.NotFound):
        api.remove_container(container_id, v=True, force=True)


def _raise_docker(exc: BaseException) -> None:
    import docker
    import requests

    if isinstance(exc, docker.errors.NotFound):
        raise _Gone("the run's container was removed outside Moorage")
    if isinstance(exc, requests.exceptions.RequestException):
        raise DockerError(f"log stream: {exc}")
    if isinstance(exc, docker.errors.DockerException):
        raise DockerError(f"log stream: {exc}")
    raise exc
