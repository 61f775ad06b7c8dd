"""What every backend speaks: units' runtimes, observations, steps, and the protocol.

A backend runs one kind of unit (`unit_kind`: the unit's suffix decides, through
`proto.units.backend_for`). The agent reaches backends only through `Backend` and a
`Registry` (kind -> backend), so a new kind of unit is one more backend registered,
not a branch in the executor, the reports or the drift pass. (Batch task runs are not
units: `agent.tasks` runs them on the Docker backend's connection.)
"""

from __future__ import annotations

import functools
from collections.abc import AsyncGenerator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

import msgspec

from proto.messages import DesiredUnit, LogLine
from proto.units import UnitNameError, backend_for


class UnitRuntime(msgspec.Struct, frozen=True, omit_defaults=True):
    """One unit as the machine sees it right now (systemd's Load/Active/Sub states)."""

    name: str
    load_state: str = "not-found"
    active_state: str = "inactive"
    sub_state: str = "dead"
    main_pid: int = 0
    result: str = ""
    image_digest: str = ""
    message: str = ""


class BackendUnavailable(Exception):
    """The backend cannot run units here; the message says why (shown to operators)."""


class BackendError(Exception):
    """The backend refused or failed one operation (the unit is reported, not raised)."""


class Observed(msgspec.Struct, frozen=True):
    """What the machine shows for one unit.

    systemd units: the SHA-256 of the unit file (None: no file) and systemd's state.
    Container units: ``file_sha256`` is None; ``container_hash`` is the ``moorage.hash``
    label of the unit's container (None: no container) and ``foreign`` says a container
    of that name exists without the unit's ``moorage.unit`` label.
    """

    file_sha256: str | None
    runtime: UnitRuntime
    container_hash: str | None = None
    foreign: bool = False


Op = Literal["stop", "write", "remove", "reload", "load", "create", "start"]


@dataclass(frozen=True, slots=True)
class Step:
    """One thing to do to one unit (``unit`` is "" for a manager-wide step: reload).

    ``reason`` says why, for logs and reports; it explains a step without being part
    of what the step is (two plans with the same steps are equal whatever the reasons).
    """

    op: Op
    unit: str = ""
    content: str = ""
    reason: str = field(default="", compare=False)


class Reading(msgspec.Struct, frozen=True):
    """A backend's read of some units: their runtimes, and for units whose runtime
    object carries its own version (a container's ``moorage.hash`` label) that hash."""

    runtimes: dict[str, UnitRuntime]
    hashes: dict[str, str | None] = {}


class BackendEvents(Protocol):
    """What a backend tells the agent, from its event stream (cheap, never blocking)."""

    def changed(self, backend: Backend, name: str) -> None: ...
    def up(self, backend: Backend) -> None: ...
    def down(self, backend: Backend) -> None: ...


class Backend(Protocol):
    """One kind of unit on this machine: everything the agent needs of its runtime.

    Failures of one operation raise `BackendError` (or `BackendUnavailable` when the
    runtime went away); the caller reports them per unit and goes on with the others.
    """

    kind: str
    """The `unit_kind` it runs; also its capability name in Hello and Facts."""
    made_of: str
    """What one unit is made into here, for messages ("unit file", "container")."""
    labels: bool
    """It labels what it makes as the agent's, so it can list them (`owned_extras`)
    and its events also name units no longer desired (``extra`` drift)."""

    @property
    def available(self) -> bool:
        """Connected, so its states are current and steps can run."""
        ...

    @property
    def unavailable_reason(self) -> str:
        """Why it is not available, for operators ("" while available)."""
        ...

    def owns(self, name: str) -> bool:
        """Whether ``name`` is a unit of this backend (by its suffix)."""
        ...

    def subscribe(self, events: BackendEvents) -> None: ...

    async def open(self) -> bool:
        """Connect if not connected, without waiting for a retry already under way;
        False (the reason in `unavailable_reason`) if it cannot."""
        ...

    async def close(self) -> None: ...

    async def observe(self, names: Iterable[str]) -> dict[str, Observed]:
        """What reconcile plans from: each unit's file/container version and runtime."""
        ...

    def observed(self, name: str, runtime: UnitRuntime, version: str | None) -> Observed:
        """The drift/sticker view of a unit from the last `read` (and the last file scan)."""
        ...

    async def read(self, names: Sequence[str]) -> Reading:
        """Runtimes now, for state reports and drift."""
        ...

    def scan_files(self, names: Iterable[str], *, prune: bool = False) -> set[str]:
        """Re-check the files this backend's units are made of (cheap: a stat each);
        the names whose content changed. Backends without files return nothing."""
        ...

    async def owned_extras(self) -> set[str]:
        """Every unit this backend finds labelled as the agent's (see `labels`)."""
        ...

    async def apply(self, step: Step, unit: DesiredUnit | None) -> str | None:
        """Carry out one step. None: done, the unit's last error stands; "": done and
        the unit is as asked (its error is cleared); else why it is not (e.g. its
        systemd job failed). Raises BackendError/BackendUnavailable on failure."""
        ...

    async def log_tail(self, name: str, lines: int, *, after_cursor: str = "") -> list[LogLine]: ...

    def log_follow(
        self, name: str, *, after_cursor: str = "", lines: int = 10
    ) -> AsyncGenerator[list[LogLine], None]: ...


@runtime_checkable
class ImageBackend(Backend, Protocol):
    """A backend that runs images: resolves a reference to a digest (`ImageResolve`)."""

    async def resolve_image(self, image: str) -> tuple[str, str]: ...


@functools.lru_cache(maxsize=8192)
def unit_kind(name: str) -> str:
    """The backend kind that runs ``name``; names of no known type go to systemd."""
    try:
        return backend_for(name)
    except UnitNameError:
        return "systemd"


class Registry:
    """Unit name -> its backend: the one place a unit's kind picks its runtime."""

    def __init__(self, backends: Sequence[Backend]) -> None:
        self.backends = list(backends)
        self._by_kind: Mapping[str, Backend] = {b.kind: b for b in backends}

    def __iter__(self) -> Iterator[Backend]:
        return iter(self.backends)

    def of(self, name: str) -> Backend:
        return self._by_kind[unit_kind(name)]

    def split(self, names: Iterable[str]) -> dict[str, set[str]]:
        """``names`` by backend kind (every backend present, maybe with none)."""
        out: dict[str, set[str]] = {b.kind: set() for b in self.backends}
        for name in names:
            out[unit_kind(name)].add(name)
        return out

    def get(self, kind: str) -> Backend:
        return self._by_kind[kind]

    def images(self) -> ImageBackend | None:
        """The backend that resolves images, if any."""
        for backend in self.backends:
            if isinstance(backend, ImageBackend):
                return backend
        return None
