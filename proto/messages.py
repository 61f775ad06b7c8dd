"""The agent link's messages: one msgspec tagged union, MessagePack on the wire.

Every frame carries exactly one message. Decoding validates types in the same pass,
so a handler never sees a half-checked value. Unknown tags, undecodable bytes and
over-size frames are classified (not just rejected) so both peers can answer with an
`Error` and count the reason.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from proto.units import UnitOption

PROTO_VERSION = 1
"""Bumped on an incompatible change; Hello and Welcome both carry it."""

MAX_FRAME = 4 * 1024 * 1024
"""Largest frame a peer accepts and answers; larger ones get Error(frame_too_large)."""

HARD_FRAME_LIMIT = 4 * MAX_FRAME
"""Beyond this the WebSocket layer drops the connection rather than buffer the frame."""

DesiredState = Literal["inactive", "loaded", "launched"]


class UnitStatus(msgspec.Struct, frozen=True, omit_defaults=True):
    """What a machine reports about one unit (fleet's UnitState plus Moorage's extras)."""

    name: str
    hash: str = ""
    load_state: str = ""
    active_state: str = ""
    sub_state: str = ""
    main_pid: int = 0
    image_digest: str = ""
    message: str = ""
    target_state: str = ""
    """What the agent has done for the current hash: "loaded" or "launched" (fleet's
    currentState), "" while nothing is applied. A unit that started and then failed
    is still "launched": the agent did launch it."""


class DesiredUnit(msgspec.Struct, frozen=True, omit_defaults=True):
    """One unit as the coordinator wants it on this machine."""

    name: str
    options: list[UnitOption]
    desired_state: DesiredState = "launched"
    hash: str = ""
    labels: dict[str, str] = {}
    """Deployment labels (`LABEL_DEPLOYMENT`, `LABEL_RELEASE`, `LABEL_VERSION`,
    `LABEL_DRIFT`) on units that come from a release; empty for plain fleet units."""
    image_digest: str = ""
    """For a `.container` unit of a release: the `sha256:...` digest its image was pinned
    to when the release was cut (drift compares the running container with it)."""


LABEL_DEPLOYMENT = "deployment"
LABEL_RELEASE = "release"
LABEL_VERSION = "version"
LABEL_DRIFT = "drift"
"""`report` (default) or `repair`: what the agent does about drift of this unit."""

DriftKind = Literal["file_changed", "missing", "extra", "image_differs", "state_differs"]


class DriftEntry(msgspec.Struct, frozen=True, omit_defaults=True):
    """One way the machine differs from what it was told."""

    unit: str
    kind: DriftKind
    expected: str = ""
    actual: str = ""
    deployment: str = ""
    message: str = ""
    repairing: bool = False
    """The unit's policy is `repair`: the agent is restoring it."""


class StickerUnit(msgspec.Struct, frozen=True, omit_defaults=True):
    hash: str
    """fleet SHA-1 of the unit's options (its identity)."""
    sha256: str = ""
    """SHA-256 of the unit file text (`proto.units.unit_file_sha256`)."""


class Sticker(msgspec.Struct, frozen=True, omit_defaults=True):
    """What a machine says it runs of one deployment: written by the agent to
    `<sticker dir>/<deployment>.json` once every unit of the release is applied and up."""

    deployment: str
    release: str
    version: str
    units: dict[str, StickerUnit]
    image_digests: dict[str, str] = {}
    applied_at: float = 0.0


class Hello(msgspec.Struct, tag="hello", frozen=True, omit_defaults=True):
    proto: int
    machine_id: str
    hostname: str = ""
    primary_ip: str = ""
    metadata: dict[str, str] = {}
    capabilities: list[str] = []
    applied_revision: int = 0
    snapshot: list[UnitStatus] = []
    agent_version: str = ""
    stickers: list[Sticker] = []
    resources: Resources | None = None
    """For batch tasks (#19): None from agents that predate them."""


class Facts(msgspec.Struct, tag="facts", frozen=True):
    """Host facts that changed after Hello (dockerd started, systemd went away...)."""

    capabilities: list[str]
    resources: Resources | None = None


class Welcome(msgspec.Struct, tag="welcome", frozen=True, omit_defaults=True):
    proto: int
    session: str
    heartbeat_s: float
    cert_not_before: float = 0.0
    cert_not_after: float = 0.0
    """The validity of the certificate this session presented, so the agent can plan
    its renewal without parsing certificates itself."""
    lost_after_s: float = 0.0
    """How long a machine may be without a session before the coordinator calls it lost
    (and may place its units elsewhere): units marked StopWhenIsolated stop themselves
    on a machine cut off that long. 0: not told (the agent keeps what it last heard)."""
    reconnect_spread_s: float = 0.0
    """Spread the first reconnect after this session ends over this many seconds (it
    grows with the fleet, so a restarted coordinator is not met by one wave)."""
    desired_revision: int = -1
    """The machine's desired revision as the session starts: if the agent has exactly
    this one, what it holds is current without waiting for a Desired."""


class Heartbeat(msgspec.Struct, tag="heartbeat", frozen=True, omit_defaults=True):
    """Sent by the agent every `heartbeat_s`; the hub echoes it so both sides see silence."""

    seq: int
    sent_at: float = 0.0


class Desired(msgspec.Struct, tag="desired", frozen=True, omit_defaults=True):
    """A revisioned diff against `base_revision`; `full` replaces everything the agent has."""

    revision: int
    base_revision: int = 0
    full: bool = False
    upserts: list[DesiredUnit] = []
    removes: list[str] = []


class Applied(msgspec.Struct, tag="applied", frozen=True, omit_defaults=True):
    revision: int


class StateReport(msgspec.Struct, tag="state", frozen=True, omit_defaults=True):
    changes: list[UnitStatus] = []
    removed: list[str] = []


class Error(msgspec.Struct, tag="error", frozen=True, omit_defaults=True):
    code: str
    message: str = ""


class LogRequest(msgspec.Struct, tag="log_request", frozen=True, omit_defaults=True):
    """Ask for a unit's last `lines` lines; `follow` keeps streaming after `cursor`."""

    request_id: str
    unit: str
    lines: int = 10
    follow: bool = False
    cursor: str = ""


class LogLine(msgspec.Struct, frozen=True, omit_defaults=True):
    cursor: str
    message: str
    timestamp: float = 0.0


class LogChunk(msgspec.Struct, tag="log_chunk", frozen=True, omit_defaults=True):
    request_id: str
    lines: list[LogLine] = []
    done: bool = False
    error: str = ""


class LogCancel(msgspec.Struct, tag="log_cancel", frozen=True):
    request_id: str


class Stickers(msgspec.Struct, tag="stickers", frozen=True):
    """Every sticker on the machine (the whole set: it is small), sent when one changes."""

    stickers: list[Sticker]


class DriftRequest(msgspec.Struct, tag="drift_request", frozen=True):
    request_id: str


class DriftReport(msgspec.Struct, tag="drift", frozen=True, omit_defaults=True):
    """The machine's whole drift: sent when it changes, and in answer to a DriftRequest
    (then with its `request_id`). No entries: the machine is as it was told."""

    entries: list[DriftEntry] = []
    request_id: str = ""
    checked_at: float = 0.0


class ImageResolve(msgspec.Struct, tag="image_resolve", frozen=True):
    """Pin image references to digests (pulling what is missing) when a release is cut."""

    request_id: str
    images: list[str]


class ImageResolved(msgspec.Struct, tag="image_resolved", frozen=True, omit_defaults=True):
    request_id: str
    digests: dict[str, str] = {}
    """image reference -> `sha256:...` (`agent.backends.docker.image_digest`)."""
    references: dict[str, str] = {}
    """image reference -> a reference that names exactly that digest (`repo@sha256:...`
    for registry images, the image ID for local ones), used as the release's `Image=`."""
    errors: dict[str, str] = {}


class CertRenew(msgspec.Struct, tag="cert_renew", frozen=True):
    csr_pem: str


class CertIssued(msgspec.Struct, tag="cert_issued", frozen=True):
    cert_pem: str


# --- batch tasks (#19) -----------------------------------------------------------------


class Resources(msgspec.Struct, frozen=True, omit_defaults=True):
    """What a machine offers one-off task runs: totals, not what is free (the scheduler
    subtracts the runs it placed there)."""

    memory_mb: int = 0
    cpu_millis: int = 0
    """1000 per core."""


TaskRunState = Literal["PENDING", "RUNNING", "STOPPED"]


class TaskStart(msgspec.Struct, tag="task_start", frozen=True, omit_defaults=True):
    """Coordinator → agent: run `command` under `/bin/sh -c` in `image`, once. The agent
    answers with TaskUpdates; a start for a run it already has is answered with that
    run's current state (starts are retried after reconnects)."""

    run_id: str
    image: str
    command: str = ""
    """Empty: the image's own entrypoint/command."""
    env: dict[str, str] = {}
    memory_mb: int = 0
    """Hard memory limit of the container; 0: none."""
    cpu_millis: int = 0
    """CPU quota; 0: none."""


class TaskStop(msgspec.Struct, tag="task_stop", frozen=True, omit_defaults=True):
    """Coordinator → agent: SIGTERM the run, SIGKILL after `grace_s`."""

    run_id: str
    grace_s: float = 10.0


class TaskUpdate(msgspec.Struct, tag="task_update", frozen=True, omit_defaults=True):
    """Agent → coordinator: where a run is. Sent on every change, and again for every
    run the agent holds after each Welcome (so a restarted coordinator learns them)."""

    run_id: str
    state: TaskRunState
    event: str = ""
    """What just happened, for the run's events: "image pulled", "container created"..."""
    exit_code: int | None = None
    exit_reason: str = ""
    container_id: str = ""
    at: float = 0.0
    log_bytes: int = 0
    """How many bytes of output the agent has produced so far (all of it shipped or
    still to ship): with STOPPED, the coordinator knows when it holds the whole log."""


class TaskOutput(msgspec.Struct, tag="task_output", frozen=True, omit_defaults=True):
    """Agent → coordinator: the run's output from byte `offset` on (stdout and stderr
    interleaved as the container wrote them). Resent from the last acknowledged offset
    after a reconnect; the coordinator keeps each byte once."""

    run_id: str
    offset: int
    data: bytes


class TaskAck(msgspec.Struct, tag="task_ack", frozen=True, omit_defaults=True):
    """Coordinator → agent: output stored up to `offset`; `final` once the STOPPED
    update and the whole log are durable, after which the agent removes the container
    and forgets the run."""

    run_id: str
    offset: int = 0
    final: bool = False


class HealthCheck(msgspec.Struct, tag="health_check", frozen=True, omit_defaults=True):
    """A target health check (environments): are the machine's runtimes responding, and
    what state are these units in now."""

    request_id: str
    units: list[str] = []


class HealthReport(msgspec.Struct, tag="health", frozen=True, omit_defaults=True):
    request_id: str
    backends: dict[str, str] = {}
    """backend kind (`systemd`, `docker`) -> "" when it answered just now, else why not."""
    units: dict[str, str] = {}
    """unit -> its active state as read just now."""
    checked_at: float = 0.0


# --- WebOps deployments (#20) -----------------------------------------------------------


class WebBuild(msgspec.Struct, tag="web_build", frozen=True, omit_defaults=True):
    """Coordinator → agent: fetch `repo_url` at `branch` into a new build directory,
    build it for its type (detected when empty) and, once it built, put the site on the
    agent's proxy. Answered by WebLog lines and one WebBuilt."""

    name: str
    build_id: str
    repo_url: str
    branch: str = "main"
    project_type: str = ""
    port: int = 0
    domain: str = ""
    env: dict[str, str] = {}


class WebLog(msgspec.Struct, tag="web_log", frozen=True, omit_defaults=True):
    """Agent → coordinator: one line of a build's log, as it happens."""

    name: str
    build_id: str = ""
    level: str = "info"
    message: str = ""
    at: float = 0.0


class WebBuilt(msgspec.Struct, tag="web_built", frozen=True, omit_defaults=True):
    """Agent → coordinator: a build ended. On success, what the unit runs: `exec_start`
    and `workdir` (systemd) or `image` (docker), and `env_file`."""

    name: str
    build_id: str
    ok: bool = False
    project_type: str = ""
    error: str = ""
    exec_start: str = ""
    workdir: str = ""
    image: str = ""
    env_file: str = ""
    files: list[str] = []
    """The repository's top-level file names (project checks)."""
    env_example: dict[str, str] = {}
    """Its `.env.example` (`proto.webops.parse_env_example`): what the app expects."""


class WebEnv(msgspec.Struct, tag="web_env", frozen=True, omit_defaults=True):
    """Coordinator → agent: the deployment's environment (its EnvironmentFile, 0600)."""

    name: str
    env: dict[str, str] = {}


class WebAction(msgspec.Struct, tag="web_action", frozen=True, omit_defaults=True):
    """Coordinator → agent: `restart` the deployment's unit, or `remove` its files,
    builds and proxy entry (its unit is removed through desired state)."""

    name: str
    action: str
    unit: str = ""


class WebHealth(msgspec.Struct, tag="web_health", frozen=True, omit_defaults=True):
    """Agent → coordinator: an HTTP GET of the deployment's port (on change, and every
    few seconds)."""

    name: str
    healthy: bool = False
    status: int = 0
    detail: str = ""
    at: float = 0.0
    memory_bytes: int = 0
    """The unit's cgroup memory (systemd's MemoryCurrent; 0: not accounted)."""
    cpu_ns: int = 0
    """The unit's CPU time so far (systemd's CPUUsageNSec; 0: not accounted)."""


class MachineStats(msgspec.Struct, tag="machine_stats", frozen=True, omit_defaults=True):
    """Agent → coordinator, every half minute (#21): the machine's own load, for
    WebOps monitoring. Percentages are 0-100; bytes are bytes."""

    at: float
    cpu_percent: float = 0.0
    """Of all CPUs, since the previous report (0 on the first)."""
    load1: float = 0.0
    load5: float = 0.0
    load15: float = 0.0
    memory_total: int = 0
    memory_used: int = 0
    disk_total: int = 0
    disk_used: int = 0
    """Of the file system holding the agent's state."""
    uptime_s: float = 0.0
    cpus: int = 0


Message = (
    Hello
    | Facts
    | Welcome
    | Heartbeat
    | Desired
    | Applied
    | StateReport
    | Error
    | LogRequest
    | LogChunk
    | LogCancel
    | Stickers
    | DriftRequest
    | DriftReport
    | ImageResolve
    | ImageResolved
    | CertRenew
    | CertIssued
    | TaskStart
    | TaskStop
    | TaskUpdate
    | TaskOutput
    | TaskAck
    | HealthCheck
    | HealthReport
    | WebBuild
    | WebLog
    | WebBuilt
    | WebEnv
    | WebAction
    | WebHealth
    | MachineStats
)

MESSAGE_TYPES: tuple[type[msgspec.Struct], ...] = (
    Hello,
    Facts,
    Welcome,
    Heartbeat,
    Desired,
    Applied,
    StateReport,
    Error,
    LogRequest,
    LogChunk,
    LogCancel,
    Stickers,
    DriftRequest,
    DriftReport,
    ImageResolve,
    ImageResolved,
    CertRenew,
    CertIssued,
    TaskStart,
    TaskStop,
    TaskUpdate,
    TaskOutput,
    TaskAck,
    HealthCheck,
    HealthReport,
    WebBuild,
    WebLog,
    WebBuilt,
    WebEnv,
    WebAction,
    WebHealth,
    MachineStats,
)

KNOWN_TAGS = frozenset(str(t.__struct_config__.tag) for t in MESSAGE_TYPES)

FrameErrorReason = Literal["too_large", "undecodable", "unknown_type", "invalid", "too_deep"]


class FrameError(Exception):
    """A frame that cannot become a Message; `reason` is the metrics label."""

    def __init__(self, reason: FrameErrorReason, message: str) -> None:
        super().__init__(message)
        self.reason: FrameErrorReason = reason
        self.message = message


_encoder = msgspec.msgpack.Encoder()
_decoder: msgspec.msgpack.Decoder[Message] = msgspec.msgpack.Decoder(Message)
_raw_decoder = msgspec.msgpack.Decoder()


def encode(message: Message) -> bytes:
    return _encoder.encode(message)


def decode(frame: bytes, *, max_size: int = MAX_FRAME) -> Message:
    """Decode one frame or raise FrameError saying why it was refused."""
    if len(frame) > max_size:
        raise FrameError(
            "too_large", f"frame of {len(frame)} bytes exceeds the {max_size} byte limit"
        )
    try:
        return _decoder.decode(frame)
    except RecursionError:
        # msgspec recurses into nested arrays and maps (even ones it skips) and stops
        # cleanly at Python's recursion limit: a frame, not the session, is refused.
        raise FrameError("too_deep", "frame is nested too deeply") from None
    except msgspec.ValidationError as exc:
        raise _classify(frame, exc) from None
    except msgspec.DecodeError as exc:
        raise FrameError("undecodable", f"frame is not valid MessagePack: {exc}") from None


def _classify(frame: bytes, exc: msgspec.ValidationError) -> FrameError:
    """Tell an unknown message type from a known one with bad fields."""
    try:
        raw = _raw_decoder.decode(frame)
    except RecursionError:
        return FrameError("too_deep", "frame is nested too deeply")
    except (msgspec.DecodeError, UnicodeDecodeError, ValueError):
        return FrameError("undecodable", str(exc))
    if isinstance(raw, dict):
        tag = raw.get("type")
        if tag is None:
            return FrameError("invalid", "message has no 'type' field")
        if tag not in KNOWN_TAGS:
            return FrameError("unknown_type", f"unknown message type {tag!r}")
    else:
        return FrameError("invalid", "message is not a map")
    return FrameError("invalid", f"invalid {raw.get('type')!r} message: {exc}")
