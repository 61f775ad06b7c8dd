"""The Docker backend: `.container` units as containers of one Docker Engine.

The ``docker`` SDK is synchronous, so every call runs in a small thread pool and the
event loop never blocks. Facts this module relies on (dockerd 20.10, API 1.41, checked
live):

* **Ownership.** A unit's container is named by `proto.container.container_name`
  (``moorage-<unit without .container>``) and labelled ``moorage.unit=<unit>``,
  ``moorage.hash=<fleet hash>``, ``moorage.restart=<policy>`` plus ``moorage.<key>`` for
  each `DesiredUnit.labels` entry (deployment, release). Nothing is ever done to a
  container without the ``moorage.unit`` label of the unit asked about: a container of
  the right name without it is `ContainerConflict`, and is left alone.
* **State comes from Docker events, not polling.** One watcher thread holds
  ``GET /events`` filtered on containers with the ``moorage.unit`` label and hands each
  event to the loop (``call_soon_threadsafe``). Inspections are cached per unit and a
  unit's entry is dropped on each of its events, so idle units cost nothing. When the
  stream ends (dockerd stopped or restarted) the backend is disconnected and the thread
  reconnects with backoff (0.1 s doubling to 5 s); a successful reconnection clears
  every cache and calls the ``on_connect`` callbacks, so the agent re-reads everything
  and repairs what the restart stopped.
* **States** (fleet's vocabulary): load state ``loaded`` whenever the container
  exists; active state ``active`` for running/paused, ``activating`` while Docker
  restarts it, ``inactive`` for created, exited 0, or exited by SIGTERM/SIGKILL
  (codes 143/137 without OOM kill: stopped - by the agent, an operator or dockerd's own
  shutdown - as systemd calls a stopped unit inactive), and ``failed`` for any other
  exit, an OOM kill, a failed start, or an unhealthy healthcheck. The sub-state is
  Docker's state (``running``, ``exited``, ``created``...).
* **Image digest**: the first ``RepoDigests`` entry of the container's image
  (``sha256:…``), else the image ID (imported images have no RepoDigests).
* **Restart policies and dockerd restarts.** dockerd (without live-restore) stops all
  containers when it stops; on start it restarts those whose policy says so (also an
  ``on-failure`` container the agent had stopped: its exit code is non-zero). So when
  the agent stops a container it first sets its policy to ``no``, and when it starts
  one it restores the policy from the ``moorage.restart`` label. A ``Restart=no``
  container stopped by dockerd's shutdown exits by SIGTERM/SIGKILL, which reads as
  inactive, and the agent starts it again with the same ID (repair), as it does for
  systemd units after a reboot; one that had failed on its own stays failed.
* **Logs** are ``docker logs`` with timestamps. A `LogLine` cursor is
  ``<timestamp>/<n>``: the line's RFC 3339 timestamp with exactly nine fraction digits
  (so cursors compare as strings) and its index among the container's lines carrying
  that same timestamp. Resuming asks Docker for lines since a millisecond before the
  timestamp (Docker's ``since`` is inclusive and the SDK passes a float), numbers them
  the same way, and drops everything up to the cursor: no gap, no repeat, even when
  lines share a timestamp.
"""

from __future__ import annotations

import asyncio
import calendar
import concurrent.futures
import contextlib
import functools
import logging
import os
import re
import threading
import time
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping, Sequence
from typing import Any, Final, TypeVar

import msgspec

from agent.backends.base import (
    BackendError,
    BackendEvents,
    BackendUnavailable,
    Observed,
    Reading,
    Step,
    UnitRuntime,
    unit_kind,
)
from agent.journal import (
    BATCH_MAX_BYTES,
    BATCH_MAX_LINES,
    BATCH_WINDOW_S,
    MAX_LINES,
    MAX_MESSAGE_CHARS,
    TRUNCATED_MARK,
)
from proto.container import (
    LABEL_HASH,
    LABEL_PREFIX,
    LABEL_RESTART,
    LABEL_UNIT,
    ContainerOptionError,
    ContainerSpec,
    RestartPolicy,
    container_name,
    parse_container,
)
from proto.messages import DesiredUnit, LogLine

__all__ = [
    "ContainerConflict",
    "ContainerInfo",
    "DockerBackend",
    "DockerError",
    "container_body",
    "format_cursor",
    "parse_cursor",
    "parse_env_file",
    "parse_log_line",
    "runtime_from_inspect",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

CONNECT_TIMEOUT: Final = 3.0  # connect(): a missing dockerd must not hold up the agent
CALL_TIMEOUT: Final = 60  # the SDK's default socket timeout for ordinary calls
PULL_TIMEOUT: Final = 600  # pulling a big image over a slow link
MAX_WORKERS: Final = 8
RETRY_MIN_S: Final = 0.1
RETRY_MAX_S: Final = 5.0
SINCE_SLACK_S: Final = 0.001  # resume a little early: float `since` loses nanoseconds
DEFAULT_STOP_TIMEOUT_S: Final = 10  # Docker's own default

STOPPED_EXIT_CODES: Final[dict[int, str]] = {137: "SIGKILL", 143: "SIGTERM"}
"""Exit codes of a container stopped from outside (``docker stop``, dockerd shutdown)."""

RELEVANT_ACTIONS: Final = frozenset(
    {
        "create",
        "start",
        "restart",
        "die",
        "stop",
        "kill",
        "oom",
        "pause",
        "unpause",
        "destroy",
        "rename",
        "update",
    }
)
"""Container event actions that can change what `states` reports (plus health_status).
Exec events (a healthcheck makes three per interval) and attach/resize are ignored."""

_TIMESTAMP = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?Z")
_CURSOR = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z)/(\d{1,9})")


class DockerError(BackendError):
    """Docker refused or failed a request about one unit; the message is for operators."""


class ContainerConflict(DockerError):
    """A container has the unit's name but not its ``moorage.unit`` label: not ours."""


class ContainerInfo(msgspec.Struct, frozen=True):
    """One unit's container as inspected: ``owned`` is False for a foreign container."""

    id: str
    owned: bool
    hash: str
    runtime: UnitRuntime


# --------------------------------------------------------------------------- pure parts


def runtime_from_inspect(name: str, attrs: Mapping[str, Any], digest: str = "") -> UnitRuntime:
    """fleet-style state of a unit from its container's ``docker inspect`` (module doc)."""
    state: Mapping[str, Any] = attrs.get("State") or {}
    status = str(state.get("Status") or "unknown")
    exit_code = int(state.get("ExitCode") or 0)
    error = str(state.get("Error") or "")
    health: Mapping[str, Any] = state.get("Health") or {}
    active, result, message = "failed", "", error
    if status in ("running", "paused"):
        active = "active"
        if health.get("Status") == "unhealthy":
            active, result = "failed", "unhealthy"
            message = "unhealthy" + _health_output(health)
        elif health.get("Status") == "starting":
            # Not up until its health check first passes (as a systemd unit is
            # "activating" until it is ready): a rollout waits for it.
            active, message = "activating", "health check not passed yet"
    elif status == "restarting":
        active, message = "activating", f"restarting after exit code {exit_code}"
    elif status == "removing":
        active = "deactivating"
    elif status == "created":
        active = "failed" if error else "inactive"
        result = "exit-code" if error else ""
    elif status == "exited":
        if state.get("OOMKilled"):
            active, result = "failed", "oom-kill"
            message = f"killed by the OOM killer (exit code {exit_code})"
        elif exit_code == 0:
            active, result = "inactive", "success"
        elif exit_code in STOPPED_EXIT_CODES:
            active, result = "inactive", "signal"
            message = f"stopped (exit code {exit_code}, {STOPPED_EXIT_CODES[exit_code]})"
        else:
            active, result = "failed", "exit-code"
            message = f"exited with code {exit_code}" + (f": {error}" if error else "")
    elif not message:
        message = f"container is {status}"
    return UnitRuntime(
        name=name,
        load_state="loaded",
        active_state=active,
        sub_state=status,
        main_pid=int(state.get("Pid") or 0),
        result=result,
        image_digest=digest or str(attrs.get("Image") or ""),
        message=message,
    )


def _health_output(health: Mapping[str, Any]) -> str:
    """ ": <first line of the last probe's output>" (short), or "" if there is none."""
    probes = health.get("Log") or []
    if not probes:
        return ""
    text = str(probes[-1].get("Output") or "").strip().splitlines()
    return f": {text[0][:200]}" if text else ""


def image_digest(image_attrs: Mapping[str, Any]) -> str:
    """``sha256:…`` of the first RepoDigest, else the image ID (local/imported images)."""
    for entry in image_attrs.get("RepoDigests") or []:
        _, at, digest = str(entry).rpartition("@")
        if at and digest:
            return digest
    return str(image_attrs.get("Id") or "")


def container_labels(unit: DesiredUnit, spec: ContainerSpec) -> dict[str, str]:
    """The unit's own ``Label=``s, then Moorage's (which win: ownership depends on them)."""
    labels = dict(spec.labels)
    for key, value in unit.labels.items():
        labels[key if key.startswith(LABEL_PREFIX) else LABEL_PREFIX + key] = value
    labels[LABEL_UNIT] = unit.name
    labels[LABEL_HASH] = unit.hash
    labels[LABEL_RESTART] = spec.restart.label()
    return labels


def container_body(
    unit: DesiredUnit, spec: ContainerSpec, environment: Mapping[str, str]
) -> dict[str, Any]:
    """The Engine API ``POST /containers/create`` body for a unit (pure, tested alone)."""
    body: dict[str, Any] = {
        "Image": spec.image,
        "Env": [f"{k}={v}" for k, v in environment.items()],
        "Labels": container_labels(unit, spec),
    }
    host: dict[str, Any] = {
        "RestartPolicy": {
            "Name": spec.restart.name,
            "MaximumRetryCount": spec.restart.maximum_retry_count,
        },
    }
    if spec.command is not None:
        body["Cmd"] = list(spec.command)
    if spec.user:
        body["User"] = spec.user
    if spec.working_dir:
        body["WorkingDir"] = spec.working_dir
    if spec.stop_timeout_s is not None:
        body["StopTimeout"] = spec.stop_timeout_s
    if spec.network:
        host["NetworkMode"] = spec.network
    if spec.memory_bytes:
        host["Memory"] = spec.memory_bytes
    if spec.init:
        host["Init"] = True
    if spec.ports:
        body["ExposedPorts"] = {f"{p.container_port}/{p.protocol}": {} for p in spec.ports}
        bindings: dict[str, list[dict[str, str]]] = {}
        for p in spec.ports:
            bindings.setdefault(f"{p.container_port}/{p.protocol}", []).append(
                {"HostIp": p.host_ip, "HostPort": str(p.host_port) if p.host_port else ""}
            )
        host["PortBindings"] = bindings
    binds = [
        f"{v.source}:{v.target}:{'ro' if v.read_only else 'rw'}" for v in spec.volumes if v.source
    ]
    if binds:
        host["Binds"] = binds
    anonymous: dict[str, dict[str, str]] = {v.target: {} for v in spec.volumes if not v.source}
    if anonymous:
        body["Volumes"] = anonymous
    if spec.healthcheck is not None:
        check = spec.healthcheck
        health: dict[str, Any] = {"Test": list(check.test)}
        for key, value in (
            ("Interval", check.interval_ns),
            ("Timeout", check.timeout_ns),
            ("StartPeriod", check.start_period_ns),
            ("Retries", check.retries),
        ):
            if value:
                health[key] = value
        body["Healthcheck"] = health
    body["HostConfig"] = host
    return body


def parse_env_file(text: str, path: str) -> dict[str, str]:
    """A ``docker run --env-file`` file: ``NAME=VALUE`` lines, ``#`` comments, blanks.

    As in Docker the value is taken verbatim (no quotes, no escapes). Unlike Docker, a
    bare ``NAME`` line is refused: it would copy the agent's own environment into the
    container.
    """
    env: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.lstrip()
        if not line or line.startswith("#"):
            continue
        name, eq, value = line.partition("=")
        if not eq:
            raise DockerError(f"{path} line {number}: expected NAME=VALUE, got {line!r}")
        if not name or any(c.isspace() for c in name):
            raise DockerError(f"{path} line {number}: invalid variable name {name!r}")
        env[name] = value
    return env


def container_usage(stats: Mapping[str, Any]) -> tuple[int, int]:
    """(memory bytes, CPU ns) from a dockerd stats sample, as `docker stats` counts
    memory: usage less the page cache that can be dropped (cgroup v2 `inactive_file`,
    v1 `total_inactive_file`). Pure."""
    memory = stats.get("memory_stats") or {}
    detail = memory.get("stats") or {}
    cache = detail.get("inactive_file", detail.get("total_inactive_file", 0)) or 0
    used = max(0, int(memory.get("usage") or 0) - int(cache))
    cpu = int(((stats.get("cpu_stats") or {}).get("cpu_usage") or {}).get("total_usage") or 0)
    return used, cpu


def format_cursor(timestamp: str, seq: int) -> str:
    return f"{timestamp}/{seq}"


def parse_cursor(cursor: str) -> tuple[str, int]:
    """``(timestamp, n)`` of a cursor made by `format_cursor`; DockerError if it is not."""
    match = _CURSOR.fullmatch(cursor)
    if match is None:
        raise DockerError(f"invalid cursor {cursor!r} for container logs")
    return match.group(1), int(match.group(2))


def parse_log_line(raw: bytes) -> tuple[str, str, float] | None:
    """``(timestamp with 9 fraction digits, message, seconds)`` of one timestamped line."""
    head, sep, rest = raw.partition(b" ")
    match = _TIMESTAMP.fullmatch(head.decode("ascii", "replace"))
    if match is None:
        return None
    base, frac = match.group(1), (match.group(2) or "").ljust(9, "0")
    seconds = calendar.timegm(time.strptime(base, "%Y-%m-%dT%H:%M:%S")) + int(frac) / 1e9
    message = rest.decode("utf-8", "replace") if sep else ""
    if message.endswith("\n"):
        message = message[:-1]
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[:MAX_MESSAGE_CHARS] + TRUNCATED_MARK
    return f"{base}.{frac}Z", message, seconds


class _Numbering:
    """Gives each line its index among consecutive lines with the same timestamp."""

    def __init__(self, timestamp: str = "", seq: int = -1) -> None:
        self.timestamp, self.seq = timestamp, seq

    def line(self, entry: tuple[str, str, float]) -> LogLine:
        timestamp, message, seconds = entry
        if timestamp == self.timestamp:
            self.seq += 1
        else:
            self.timestamp, self.seq = timestamp, 0
        return LogLine(
            cursor=format_cursor(timestamp, self.seq), message=message, timestamp=seconds
        )


def _after(lines: Iterable[LogLine], cursor: tuple[str, int] | None) -> list[LogLine]:
    """The lines strictly after ``cursor`` (all of them without one)."""
    if cursor is None:
        return list(lines)
    return [line for line in lines if parse_cursor(line.cursor) > cursor]


def _since(timestamp: str) -> float:
    """Docker ``since`` for lines at ``timestamp`` or later (a little earlier: inclusive)."""
    base, _, frac = timestamp[:-1].partition(".")
    seconds = calendar.timegm(time.strptime(base, "%Y-%m-%dT%H:%M:%S")) + int(frac) / 1e9
    return max(seconds - SINCE_SLACK_S, 0.000001)


def _split_frames(frames: Iterable[bytes]) -> list[tuple[str, str, float]]:
    """Parsed lines of log frames (Docker sends one message per frame)."""
    out: list[tuple[str, str, float]] = []
    for frame in frames:
        for raw in frame.split(b"\n"):
            if raw:
                entry = parse_log_line(raw)
                if entry is not None:
                    out.append(entry)
    return out


def _explain(exc: BaseException) -> str:
    """Docker's own words for an API error (its ``explanation``), else the exception."""
    explanation = getattr(exc, "explanation", None)
    if explanation:
        return str(explanation.decode() if isinstance(explanation, bytes) else explanation)
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# --------------------------------------------------------------------------- the backend


class SharedStream:
    """A streaming response shared by a reader thread and the loop that may close it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stream: Any = None
        self.closed = False

    def attach(self, stream: Any) -> bool:
        """Keep ``stream`` for `close`; False (and closed) if `close` came first."""
        with self._lock:
            if self.closed:
                _close_quietly(stream)
                return False
            self._stream = stream
            return True

    def close(self) -> None:
        with self._lock:
            self.closed = True
            stream, self._stream = self._stream, None
        if stream is not None:
            _close_quietly(stream)


def _close_quietly(stream: Any) -> None:
    with contextlib.suppress(Exception):
        stream.close()


class DockerBackend:
    """Create, start, stop, remove and watch the containers of `.container` units: the
    agent's `agent.backends.base.Backend` for them."""

    kind = "docker"
    made_of = "container"
    labels = True

    def __init__(self, *, docker_host: str = "", environment: Mapping[str, str] | None = None):
        self.docker_host = docker_host
        self._environment = dict(os.environ if environment is None else environment)
        self._pool = concurrent.futures.ThreadPoolExecutor(MAX_WORKERS, thread_name_prefix="docker")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._api: Any = None
        self._connected = False
        self._closing = threading.Event()
        self._watcher: threading.Thread | None = None
        self._events = SharedStream()
        self._last_error = "not connected yet"
        self._attempts: list[asyncio.Future[str]] = []
        self._change_callbacks: list[Callable[[str], None]] = []
        self._connect_callbacks: list[Callable[[], None]] = []
        self._disconnect_callbacks: list[Callable[[], None]] = []
        self._cache: dict[str, ContainerInfo | None] = {}
        self._generation: dict[str, int] = {}
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._digests: dict[str, str] = {}

    # -- connection

    @property
    def connected(self) -> bool:
        """Whether the event stream is up (so states are current); may drop at any time."""
        return self._connected and not self._closing.is_set()

    @property
    def last_error(self) -> str:
        """Why the backend is not connected (for operators); "" while connected."""
        return "" if self.connected else self._last_error

    def where(self) -> str:
        """The Docker endpoint, for messages: the configured one, $DOCKER_HOST or default."""
        return (
            self.docker_host
            or self._environment.get("DOCKER_HOST")
            or "unix:///var/run/docker.sock"
        )

    def on_change(self, callback: Callable[[str], None]) -> None:
        """``callback(unit)`` whenever Docker reports an event for a unit's container."""
        self._change_callbacks.append(callback)

    def on_connect(self, callback: Callable[[], None]) -> None:
        """``callback()`` on every (re)connection after the first `connect`."""
        self._connect_callbacks.append(callback)

    def on_disconnect(self, callback: Callable[[], None]) -> None:
        """``callback()`` when the event stream is lost (dockerd stopped or unreachable)."""
        self._disconnect_callbacks.append(callback)

    async def connect(self) -> None:
        """Start watching Docker; BackendUnavailable within ~3 s if it does not answer.

        The watcher thread keeps trying in the background after a failure and calls the
        ``on_connect`` callbacks when it gets through, so this need not be retried.
        """
        if self.connected:
            return
        self._loop = asyncio.get_running_loop()
        attempt: asyncio.Future[str] = self._loop.create_future()
        self._attempts.append(attempt)
        if self._watcher is None or not self._watcher.is_alive():
            self._closing.clear()
            self._watcher = threading.Thread(target=self._watch, name="docker-events", daemon=True)
            self._watcher.start()
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                reason = await asyncio.shield(attempt)
        except TimeoutError:
            reason = f"dockerd at {self.where()} did not answer within {CONNECT_TIMEOUT:.0f} s"
            self._last_error = reason
        finally:
            if attempt in self._attempts:
                self._attempts.remove(attempt)
        if reason:
            raise BackendUnavailable(reason)

    async def close(self) -> None:
        """Stop watching (containers are untouched); callbacks are not called for this."""
        self._closing.set()
        self._connected = False
        self._events.close()
        watcher = self._watcher
        if watcher is not None and watcher.is_alive():
            await asyncio.get_running_loop().run_in_executor(None, watcher.join, 5)
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._api is not None:
            _close_quietly(self._api)

    def _client(self, timeout: int | None) -> Any:
        """An SDK API client configured like the docker CLI ($DOCKER_HOST, TLS variables)."""
        import docker

        kwargs = docker.utils.kwargs_from_env(environment=self._environment)
        if self.docker_host:
            kwargs["base_url"] = self.docker_host
        return docker.APIClient(version="auto", timeout=timeout, **kwargs)

    def _watch(self) -> None:
        """The watcher thread: subscribe, forward events, reconnect after the stream ends."""
        delay = RETRY_MIN_S
        while not self._closing.is_set():
            api = events_api = None
            try:
                self._check_socket()
                api = self._client(CALL_TIMEOUT)
                events_api = self._client(None)
                stream = events_api.events(
                    decode=True, filters={"type": ["container"], "label": [LABEL_UNIT]}
                )
            except Exception as exc:
                for client in (api, events_api):
                    if client is not None:
                        _close_quietly(client)
                if not self._post(self._on_attempt_failed, self._describe(exc)):
                    return
                self._closing.wait(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            self._events = events = SharedStream()
            if not events.attach(stream) or not self._post(self._on_up, api):
                _close_quietly(api)
                _close_quietly(events_api)
                return
            delay = RETRY_MIN_S
            reason = "the event stream ended (dockerd stopped or restarted)"
            try:
                for event in stream:
                    if not self._post(self._on_event, event):
                        break
            except Exception as exc:
                reason = f"lost the event stream: {self._describe(exc)}"
            events.close()
            _close_quietly(events_api)
            if not self._post(self._on_down, reason):
                return
            self._closing.wait(delay)

    def _check_socket(self) -> None:
        """Fail early, without loading the SDK (~7 MB), while a unix socket is absent."""
        where = self.where()
        for prefix in ("unix://", "http+unix://"):
            if where.startswith(prefix) and not os.path.exists(where[len(prefix) :]):
                raise FileNotFoundError(f"no socket at {where[len(prefix) :]}")

    def _describe(self, exc: BaseException) -> str:
        return f"cannot reach dockerd at {self.where()}: {_explain(exc)}"

    def _post(self, callback: Callable[..., None], *args: Any) -> bool:
        """Run ``callback(*args)`` on the loop; False once the loop (or we) are done."""
        loop = self._loop
        if loop is None or self._closing.is_set():
            return False
        try:
            loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # loop closed
            return False
        return True

    def _on_attempt_failed(self, reason: str) -> None:
        if reason != self._last_error:
            log.warning("%s", reason)
        self._last_error = reason
        for attempt in self._attempts:
            if not attempt.done():
                attempt.set_result(reason)

    def _on_up(self, api: Any) -> None:
        old, self._api = self._api, api
        if old is not None:
            _close_quietly(old)
        first = not self._connected and self._last_error == "not connected yet"
        self._connected = True
        self._last_error = ""
        self._cache.clear()
        self._digests.clear()
        log.info("watching docker at %s (API %s)", self.where(), api.api_version)
        for attempt in self._attempts:
            if not attempt.done():
                attempt.set_result("")
        self._wake_all()
        if not first:
            self._call_all(self._connect_callbacks)

    def _on_down(self, reason: str) -> None:
        if self._closing.is_set():
            return
        log.warning("docker at %s: %s; reconnecting", self.where(), reason)
        self._connected = False
        self._last_error = reason
        self._cache.clear()
        self._wake_all()
        self._call_all(self._disconnect_callbacks)

    def _on_event(self, event: Mapping[str, Any]) -> None:
        actor: Mapping[str, Any] = event.get("Actor") or {}
        attributes: Mapping[str, Any] = actor.get("Attributes") or {}
        name = attributes.get(LABEL_UNIT)
        action = str(event.get("Action") or event.get("status") or "")
        if not isinstance(name, str) or not (
            action in RELEVANT_ACTIONS or action.startswith("health_status")
        ):
            return
        self._invalidate(name)
        for callback in list(self._change_callbacks):
            try:
                callback(name)
            except Exception:
                log.exception("on_change callback failed")

    def _invalidate(self, name: str) -> None:
        """Forget the cached inspection of ``name`` and wake its log followers."""
        self._generation[name] = self._generation.get(name, 0) + 1
        self._cache.pop(name, None)
        for waiter in self._waiters.get(name, ()):
            waiter.set()

    def _wake_all(self) -> None:
        for waiters in self._waiters.values():
            for waiter in waiters:
                waiter.set()

    @staticmethod
    def _call_all(callbacks: Iterable[Callable[[], None]]) -> None:
        for callback in list(callbacks):
            try:
                callback()
            except Exception:
                log.exception("docker backend callback failed")

    # -- calls

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(api, *args)`` in the pool; Docker's refusals become DockerError."""
        import docker
        import requests

        api = self._api
        if api is None or not self.connected:
            raise BackendUnavailable(
                f"not connected to dockerd at {self.where()}: {self._last_error}"
            )
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, functools.partial(fn, api, *args))
        except docker.errors.APIError as exc:
            raise DockerError(_explain(exc)) from exc
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
            raise BackendUnavailable(self._describe(exc)) from exc
        except docker.errors.DockerException as exc:
            raise DockerError(_explain(exc)) from exc

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(api, *args)`` in the backend's thread pool (for the task runner, which
        shares this connection): DockerError for Docker's refusals, BackendUnavailable
        while dockerd is unreachable."""
        return await self._call(fn, *args)

    def new_client(self, timeout: int | None) -> Any:
        """A client of its own (for a long stream that must not hold a pooled one)."""
        return self._client(timeout)

    def ensure_image_sync(self, api: Any, image: str) -> None:
        """Pull ``image`` unless it is on the machine (in a pool thread, via `call`)."""
        self._ensure_image(api, image)

    # -- state

    async def inspect(self, names: Iterable[str]) -> dict[str, ContainerInfo | None]:
        """Each unit's container (None: there is none), from the cache or Docker."""
        wanted = list(dict.fromkeys(names))
        missing = [n for n in wanted if n not in self._cache]
        if missing:
            generations = {n: self._generation.get(n, 0) for n in missing}
            found = await asyncio.gather(*(self._call(self._inspect_sync, n) for n in missing))
            for name, info in zip(missing, found, strict=True):
                if self.connected and self._generation.get(name, 0) == generations[name]:
                    self._cache[name] = info
                else:
                    self._cache.pop(name, None)
            fresh = dict(zip(missing, found, strict=True))
        else:
            fresh = {}
        return {n: fresh[n] if n in fresh else self._cache.get(n) for n in wanted}

    async def states(self, names: Iterable[str]) -> dict[str, UnitRuntime]:
        """The state of each unit's container; ``not-found`` for units without one."""
        return {n: self.runtime(n, info) for n, info in (await self.inspect(names)).items()}

    @staticmethod
    def runtime(name: str, info: ContainerInfo | None) -> UnitRuntime:
        """What `states` reports for one `inspect` result."""
        if info is None:
            return UnitRuntime(name)
        if not info.owned:
            return UnitRuntime(
                name,
                load_state="error",
                active_state="failed",
                sub_state=info.runtime.sub_state,
                message=f"container {container_name(name)} was not created by Moorage",
            )
        return info.runtime

    def _inspect_sync(self, api: Any, name: str) -> ContainerInfo | None:
        attrs = self._inspect_container(api, name)
        if attrs is None:
            return None
        labels: Mapping[str, str] = (attrs.get("Config") or {}).get("Labels") or {}
        owned = labels.get(LABEL_UNIT) == name
        digest = self._digest(api, str(attrs.get("Image") or "")) if owned else ""
        return ContainerInfo(
            id=str(attrs["Id"]),
            owned=owned,
            hash=labels.get(LABEL_HASH, "") if owned else "",
            runtime=runtime_from_inspect(name, attrs, digest),
        )

    @staticmethod
    def _inspect_container(api: Any, name: str) -> dict[str, Any] | None:
        import docker

        try:
            return dict(api.inspect_container(container_name(name)))
        except docker.errors.NotFound:
            return None

    def _digest(self, api: Any, image_id: str) -> str:
        """The digest of an image ID (cached: an ID names the same bytes forever)."""
        import docker

        if not image_id:
            return ""
        cached = self._digests.get(image_id)
        if cached is None:
            try:
                cached = image_digest(api.inspect_image(image_id))
            except docker.errors.NotFound:  # removed while the container still uses it
                cached = image_id
            self._digests[image_id] = cached
        return cached

    async def list_owned(self) -> dict[str, str]:
        """unit name -> container ID of every container carrying a ``moorage.unit`` label."""

        def run(api: Any) -> dict[str, str]:
            rows = api.containers(all=True, filters={"label": LABEL_UNIT})
            return {str(r["Labels"][LABEL_UNIT]): str(r["Id"]) for r in rows}

        return await self._call(run)

    # -- operations

    async def ensure(self, unit: DesiredUnit, spec: ContainerSpec) -> str:
        """The unit's container for this hash: kept if its hash matches (and, for a unit
        pinned to `DesiredUnit.image_digest`, its image is that digest), else (re)created.

        The image is pulled only if it is not on the machine, checked against the pinned
        digest, and environment files are read, *before* an old container is removed: if
        any of it fails (DockerError with Docker's message) the old container is left as
        it was. Labels are set when the container is made: a change of
        `DesiredUnit.labels` alone does not recreate it.
        """
        try:
            return await self._call(self._ensure_sync, unit, spec)
        finally:
            self._invalidate(unit.name)

    def _ensure_sync(self, api: Any, unit: DesiredUnit, spec: ContainerSpec) -> str:
        import docker

        old = self._inspect_container(api, unit.name)
        if old is not None:
            labels = (old.get("Config") or {}).get("Labels") or {}
            if labels.get(LABEL_UNIT) != unit.name:
                raise ContainerConflict(
                    f"a container named {container_name(unit.name)} exists that Moorage"
                    " did not create; it is left alone"
                )
            same_image = not unit.image_digest or (
                self._digest(api, str(old.get("Image") or "")) == unit.image_digest
            )
            if labels.get(LABEL_HASH) == unit.hash and same_image:
                return str(old["Id"])
        self._ensure_image(api, spec.image)
        if unit.image_digest:
            have = image_digest(api.inspect_image(spec.image))
            if have != unit.image_digest:
                raise DockerError(
                    f"image {spec.image} is {have} on this machine, not {unit.image_digest}"
                    " as the release pinned"
                )
        environment = dict(spec.environment)
        for env_file in spec.environment_files:
            try:
                with open(env_file.path, encoding="utf-8") as f:
                    text = f.read()
            except FileNotFoundError:
                if env_file.optional:
                    continue
                raise DockerError(f"environment file {env_file.path} does not exist") from None
            except (OSError, UnicodeDecodeError) as exc:
                raise DockerError(f"cannot read environment file {env_file.path}: {exc}") from None
            environment.update(parse_env_file(text, env_file.path))
        body = container_body(unit, spec, environment)
        if old is not None:
            self._stop_sync(api, old)
            with contextlib.suppress(docker.errors.NotFound):
                api.remove_container(old["Id"], v=True, force=True)
        created = api.create_container_from_config(body, container_name(unit.name))
        for warning in created.get("Warnings") or []:
            log.warning("creating the container of %s: %s", unit.name, warning)
        return str(created["Id"])

    def _ensure_image(self, api: Any, image: str) -> None:
        """Pull ``image`` unless it is on the machine; DockerError with Docker's message."""
        import docker

        try:
            api.inspect_image(image)
            return
        except docker.errors.NotFound:
            pass
        repository, tag = docker.utils.parse_repository_tag(image)
        log.info("pulling image %s", image)
        try:
            puller = self._client(PULL_TIMEOUT)
            try:
                for progress in puller.pull(
                    repository, tag=tag or "latest", stream=True, decode=True
                ):
                    if isinstance(progress, dict) and progress.get("error"):
                        raise DockerError(str(progress["error"]))
            finally:
                _close_quietly(puller)
            api.inspect_image(image)
        except DockerError as exc:
            raise DockerError(
                f"image {image} is not on this machine and pulling it failed: {exc}"
            ) from None
        except docker.errors.DockerException as exc:
            raise DockerError(
                f"image {image} is not on this machine and pulling it failed: {_explain(exc)}"
            ) from exc
        self._digests.clear()

    async def resolve_image(self, image: str) -> tuple[str, str]:
        """``(digest, reference)`` of an image reference, pulling it if it is missing.

        The digest is `image_digest`; the reference names exactly that image:
        ``repo@sha256:...`` from a RepoDigest (of the same repository when there are
        several), else the image ID, which ``docker create`` takes for local images.
        """
        return await self._call(self._resolve_sync, image)

    def _resolve_sync(self, api: Any, image: str) -> tuple[str, str]:
        import docker

        self._ensure_image(api, image)
        attrs = api.inspect_image(image)
        digest = image_digest(attrs)
        repository, _ = docker.utils.parse_repository_tag(image)
        repo_digests = [str(r) for r in attrs.get("RepoDigests") or [] if "@" in str(r)]
        for entry in repo_digests:
            if entry.rpartition("@")[0] == repository and entry.endswith("@" + digest):
                return digest, entry
        for entry in repo_digests:
            if entry.endswith("@" + digest):
                return digest, entry
        return digest, str(attrs.get("Id") or digest)

    async def start(self, name: str) -> None:
        """Start the unit's container, first restoring the restart policy of its unit."""
        try:
            await self._call(self._start_sync, name)
        finally:
            self._invalidate(name)

    def _start_sync(self, api: Any, name: str) -> None:
        attrs = self._owned(api, name)
        if attrs is None:
            raise DockerError(f"unit {name} has no container on this machine")
        labels = attrs["Config"].get("Labels") or {}
        want = RestartPolicy.from_label(str(labels.get(LABEL_RESTART, "no")))
        self._set_policy(api, attrs, want)
        api.start(attrs["Id"])

    async def stop(self, name: str) -> None:
        """Stop the unit's container (its policy set to ``no`` first, see module doc)."""
        try:
            await self._call(self._stop_named, name)
        finally:
            self._invalidate(name)

    def _stop_named(self, api: Any, name: str) -> None:
        attrs = self._owned(api, name)
        if attrs is not None:
            self._stop_sync(api, attrs)

    def _stop_sync(self, api: Any, attrs: Mapping[str, Any]) -> None:
        """Keep dockerd from restarting it later, then stop it with its own timeout."""
        self._set_policy(api, attrs, RestartPolicy("no"))
        state = attrs.get("State") or {}
        if state.get("Running") or state.get("Restarting") or state.get("Paused"):
            timeout = (attrs.get("Config") or {}).get("StopTimeout")
            api.stop(attrs["Id"], timeout=int(timeout or DEFAULT_STOP_TIMEOUT_S))

    @staticmethod
    def _set_policy(api: Any, attrs: Mapping[str, Any], want: RestartPolicy) -> None:
        have = (attrs.get("HostConfig") or {}).get("RestartPolicy") or {}
        current = (have.get("Name") or "no", int(have.get("MaximumRetryCount") or 0))
        if current != (want.name, want.maximum_retry_count):
            api.update_container(
                attrs["Id"],
                restart_policy={"Name": want.name, "MaximumRetryCount": want.maximum_retry_count},
            )

    async def remove(self, name: str) -> None:
        """Stop (gracefully) and remove the unit's container with its anonymous volumes."""
        import docker

        def run(api: Any) -> None:
            attrs = self._owned(api, name)
            if attrs is None:
                return
            self._stop_sync(api, attrs)
            with contextlib.suppress(docker.errors.NotFound):
                api.remove_container(attrs["Id"], v=True, force=True)

        try:
            await self._call(run)
        finally:
            self._invalidate(name)

    def _owned(self, api: Any, name: str) -> dict[str, Any] | None:
        """The unit's container if there is one; ContainerConflict if it is not ours."""
        attrs = self._inspect_container(api, name)
        if attrs is None:
            return None
        if ((attrs.get("Config") or {}).get("Labels") or {}).get(LABEL_UNIT) != name:
            raise ContainerConflict(
                f"container {container_name(name)} was not created by Moorage; it is left alone"
            )
        return attrs

    async def usage(self, name: str) -> tuple[int, int]:
        """(memory bytes, CPU ns used so far) of the unit's running container, from one
        dockerd stats sample ((0, 0): no running container)."""
        return await self._call(self._usage_sync, name)

    def _usage_sync(self, api: Any, name: str) -> tuple[int, int]:
        attrs = self._owned(api, name)
        if attrs is None or not (attrs.get("State") or {}).get("Running"):
            return 0, 0
        stats = api.stats(attrs["Id"], stream=False, one_shot=True)
        return container_usage(stats)

    # -- logs

    async def logs(self, name: str, lines: int, *, after_cursor: str = "") -> list[LogLine]:
        """The container's last ``lines`` lines, oldest first; or, with ``after_cursor``,
        every line after it (at most `MAX_LINES`, the first ones, so resuming again from
        the last one continues without a gap). ``lines <= 0`` without a cursor: none.
        """
        cursor = parse_cursor(after_cursor) if after_cursor else None
        if cursor is None and lines <= 0:
            return []
        info = (await self.inspect([name]))[name]
        if info is None or not info.owned:
            raise DockerError(f"unit {name} has no container on this machine")
        if cursor is not None:
            entries = await self._call(self._read_sync, info.id, _since(cursor[0]), None, "all")
            numbering = _Numbering()
            return _after((numbering.line(e) for e in entries), cursor)[:MAX_LINES]
        count = min(lines, MAX_LINES)
        entries = await self._call(self._read_sync, info.id, None, None, count + 1)
        offset = 0
        if len(entries) == count + 1 and entries[0][0] == entries[1][0]:
            # The window may start inside a group of lines sharing one timestamp: count
            # the group's lines before it so the numbers match a resumed read.
            group = await self._call(
                self._read_sync,
                info.id,
                _since(entries[0][0]),
                _since(entries[0][0]) + 0.002,
                "all",
            )
            same = sum(1 for e in group if e[0] == entries[0][0])
            offset = same - sum(1 for e in entries if e[0] == entries[0][0])
        numbering = _Numbering(entries[0][0], offset - 1) if entries else _Numbering()
        numbered = [numbering.line(e) for e in entries]
        return numbered[-count:] if len(numbered) > count else numbered

    @staticmethod
    def _read_sync(
        api: Any, container_id: str, since: float | None, until: float | None, tail: int | str
    ) -> list[tuple[str, str, float]]:
        stream = api.logs(
            container_id,
            stream=True,
            follow=False,
            timestamps=True,
            since=since,
            until=until,
            tail=tail,
        )
        try:
            return _split_frames(stream)
        finally:
            _close_quietly(stream)

    def follow_logs(
        self, name: str, *, after_cursor: str = "", lines: int = 10
    ) -> AsyncGenerator[list[LogLine], None]:
        """Batches of lines as they come: the last ``lines`` first, or all after the cursor.

        It goes on across container stops, restarts and re-creations (it waits for the
        unit's next Docker event) until the consumer closes it or is cancelled. Problems
        before the first batch raise DockerError/BackendUnavailable.
        """
        cursor = parse_cursor(after_cursor) if after_cursor else None
        return self._follow(name, cursor, max(0, min(lines, MAX_LINES)))

    async def _follow(
        self, name: str, cursor: tuple[str, int] | None, lines: int
    ) -> AsyncGenerator[list[LogLine], None]:
        if cursor is None:
            initial = await self.logs(name, max(lines, 1))
            if initial:
                cursor = parse_cursor(initial[-1].cursor)
            if lines and initial:
                yield initial[-lines:]
        waiter = asyncio.Event()
        self._waiters.setdefault(name, set()).add(waiter)
        try:
            while True:
                waiter.clear()
                try:
                    info = (await self.inspect([name]))[name]
                except (BackendUnavailable, DockerError):
                    info = None
                if info is not None and info.owned:
                    # aclosing: closing us must close the stream (and its reader) at once.
                    async with contextlib.aclosing(self._stream(info.id, cursor)) as stream:
                        async for batch in stream:
                            cursor = parse_cursor(batch[-1].cursor)
                            yield batch
                await waiter.wait()
        finally:
            waiters = self._waiters.get(name)
            if waiters is not None:
                waiters.discard(waiter)
                if not waiters:
                    del self._waiters[name]

    async def _stream(
        self, container_id: str, cursor: tuple[str, int] | None
    ) -> AsyncGenerator[list[LogLine], None]:
        """One ``docker logs --follow`` of one container, until it ends (container stops)."""
        api = self._api
        if api is None:
            return
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue()
        holder = SharedStream()
        since = _since(cursor[0]) if cursor is not None else None

        def put(item: bytes | BaseException | None) -> None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(queue.put_nowait, item)

        def read() -> None:
            try:
                stream = api.logs(
                    container_id, stream=True, follow=True, timestamps=True, since=since, tail="all"
                )
                if holder.attach(stream):
                    for frame in stream:
                        put(frame)
                put(None)
            except BaseException as exc:
                put(exc)
            finally:
                holder.close()

        thread = threading.Thread(target=read, name="docker-logs", daemon=True)
        thread.start()
        numbering = _Numbering()
        try:
            while True:
                item = await queue.get()
                if item is None or isinstance(item, BaseException):
                    if isinstance(item, BaseException):
                        log.debug("log stream of %s ended: %s", container_id[:12], item)
                    return
                batch, size = self._lines(item, numbering, cursor), len(item)
                deadline = loop.time() + BATCH_WINDOW_S
                ended = False
                while len(batch) < BATCH_MAX_LINES and size < BATCH_MAX_BYTES:
                    try:
                        async with asyncio.timeout(max(deadline - loop.time(), 0)):
                            item = await queue.get()
                    except TimeoutError:
                        break
                    if item is None or isinstance(item, BaseException):
                        ended = True
                        break
                    batch += self._lines(item, numbering, cursor)
                    size += len(item)
                if batch:
                    cursor = parse_cursor(batch[-1].cursor)
                    yield batch
                if ended:
                    return
        finally:
            holder.close()

    @staticmethod
    def _lines(
        frame: bytes, numbering: _Numbering, cursor: tuple[str, int] | None
    ) -> list[LogLine]:
        return _after((numbering.line(e) for e in _split_frames([frame])), cursor)

    # -- the agent's Backend (agent.backends.base)

    @property
    def available(self) -> bool:
        return self.connected

    @property
    def unavailable_reason(self) -> str:
        return "" if self.connected else (self._last_error or "not connected yet")

    def owns(self, name: str) -> bool:
        return unit_kind(name) == self.kind

    def subscribe(self, events: BackendEvents) -> None:
        self.on_change(lambda name: events.changed(self, name))
        self.on_connect(lambda: events.up(self))
        self.on_disconnect(lambda: events.down(self))

    async def open(self) -> bool:
        """Connect once; after a failure the watcher keeps trying by itself (and calls
        ``up`` when it gets through), so a later call does not wait for it again."""
        if self.connected:
            return True
        if self._watcher is not None and self._watcher.is_alive():
            return False
        try:
            await self.connect()
        except BackendUnavailable:
            return False  # the watcher logged it
        return True

    async def observe(self, names: Iterable[str]) -> dict[str, Observed]:
        out: dict[str, Observed] = {}
        for name, info in (await self.inspect(names)).items():
            if info is None:
                out[name] = Observed(None, UnitRuntime(name))
            elif not info.owned:
                out[name] = Observed(None, info.runtime, foreign=True)
            else:
                out[name] = Observed(None, info.runtime, container_hash=info.hash)
        return out

    def observed(self, name: str, runtime: UnitRuntime, version: str | None) -> Observed:
        return Observed(None, runtime, container_hash=version)

    async def read(self, names: Sequence[str]) -> Reading:
        """States, and the hash label of each of our containers (None: none of ours)."""
        infos = await self.inspect(names)
        return Reading(
            {n: self.runtime(n, i) for n, i in infos.items()},
            {n: i.hash if i is not None and i.owned else None for n, i in infos.items()},
        )

    def scan_files(self, names: Iterable[str], *, prune: bool = False) -> set[str]:
        return set()

    async def owned_extras(self) -> set[str]:
        return set(await self.list_owned())

    async def apply(self, step: Step, unit: DesiredUnit | None) -> str | None:
        """create (the unit's container, see `ensure`), start, stop or remove."""
        name = step.unit
        if step.op == "create":
            assert unit is not None
            try:
                spec = parse_container(unit.options)
            except ContainerOptionError as exc:
                raise DockerError(f"invalid unit: {exc}") from None
            await self.ensure(unit, spec)
        elif step.op == "start":
            await self.start(name)
        elif step.op == "stop":
            await self.stop(name)
        elif step.op == "remove":
            await self.remove(name)
        else:
            return None
        return ""

    def _require(self) -> None:
        if not self.connected:
            raise DockerError(f"docker is not available on this machine: {self.unavailable_reason}")

    async def log_tail(self, name: str, lines: int, *, after_cursor: str = "") -> list[LogLine]:
        self._require()
        return await self.logs(name, lines, after_cursor=after_cursor)

    async def log_follow(
        self, name: str, *, after_cursor: str = "", lines: int = 10
    ) -> AsyncGenerator[list[LogLine], None]:
        self._require()
        follow = self.follow_logs(name, after_cursor=after_cursor, lines=lines)
        async with contextlib.aclosing(follow) as batches:
            async for batch in batches:
                yield batch
