"""The systemd backend: a thin async client of the systemd manager over D-Bus (dbus-fast).

Only the low-level ``bus.call(Message(...))`` API is used: no introspection and no proxy
objects, so watching 500 units costs nothing while idle (fleet's agent burned CPU
introspecting every unit). Facts this module relies on (systemd 252, checked live):

* states come from ``ListUnitsByNames``, which loads units on demand like ``LoadUnit``
  (a missing file gives ``not-found``) for a whole batch in one call: ~20x cheaper for
  systemd and us than a ``GetAll`` per unit; MainPID/Result are two ``Get`` calls, only
  for units that are not inactive;
* every unit has the object path ``/org/freedesktop/systemd1/unit/<label>`` where the
  label escapes each byte outside ``[A-Za-z0-9]`` (and a leading digit) as ``_xx``; a
  ``GetAll`` on that path loads the unit on demand too (the fallback for aliases and
  names ``ListUnitsByNames`` skips);
* systemd garbage-collects an unreferenced inactive unit right after such a load and
  announces it with ``UnitRemoved``: reporting that echo as a change would make the agent
  re-query, re-load and re-collect the unit forever, so the echo of our own query is
  dropped (see ``_on_unit_removed``);
* a daemon-reload emits ``UnitRemoved``/``UnitNew`` for *every* unit between
  ``Reloading(true)`` and ``Reloading(false)``; those are ignored and every unit this
  backend was asked about is reported once when the reload is over;
* the reply to ``StartUnit`` precedes the job's ``JobRemoved`` on the wire, but both can
  be read in one batch before the awaiting coroutine resumes, so the job path is taken
  from the reply inside the message handler (see ``_on_message``), never after ``await``;
* the system bus allows 128 pending replies per connection by default, so calls in
  flight are capped (``MAX_IN_FLIGHT``).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections.abc import AsyncGenerator, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Final, Literal

import msgspec
from dbus_fast import BusType, Message, MessageFlag, MessageType, Variant
from dbus_fast.aio import MessageBus

from agent.journal import JournalReader
from agent.unitfiles import UnitFiles
from proto.files import write_public
from proto.messages import DesiredUnit, LogLine

from .base import (
    BackendError,
    BackendEvents,
    BackendUnavailable,
    Observed,
    Reading,
    Step,
    UnitRuntime,
    unit_kind,
)

__all__ = ["SystemdBackend", "SystemdError", "unit_name_from_path", "unit_path"]

log = logging.getLogger(__name__)

SYSTEMD_BUS_NAME: Final = "org.freedesktop.systemd1"
MANAGER_PATH: Final = "/org/freedesktop/systemd1"
MANAGER_IFACE: Final = "org.freedesktop.systemd1.Manager"
UNIT_IFACE: Final = "org.freedesktop.systemd1.Unit"
SERVICE_IFACE: Final = "org.freedesktop.systemd1.Service"
PROPERTIES_IFACE: Final = "org.freedesktop.DBus.Properties"
UNIT_PATH_PREFIX: Final = "/org/freedesktop/systemd1/unit/"
DBUS_NAME: Final = "org.freedesktop.DBus"
DBUS_PATH: Final = "/org/freedesktop/DBus"

ERROR_NO_SUCH_UNIT: Final = "org.freedesktop.systemd1.NoSuchUnit"
ERROR_NO_REPLY: Final = "org.freedesktop.DBus.Error.NoReply"
ERROR_INVALID_ARGS: Final = "org.freedesktop.DBus.Error.InvalidArgs"
ERROR_NAME_HAS_NO_OWNER: Final = "org.freedesktop.DBus.Error.NameHasNoOwner"

CONNECT_TIMEOUT: Final = 3.0  # connect + subscribe; a missing manager must not hang the agent
CALL_TIMEOUT: Final = 25.0  # libdbus' default reply timeout
RELOAD_TIMEOUT: Final = 360.0  # systemctl allows daemon-reload 6 minutes on big machines
MAX_IN_FLIGHT: Final = 64  # below dbus-daemon's max_replies_per_connection (128, system bus)
_PATH_CACHE_LIMIT: Final = 20_000
_BATCH: Final = 1000  # names per ListUnitsByNames call: keeps replies well below size limits

# The LoadError texts of systemd (bus_unit_validate_load_state) for units that did not load.
_LOAD_MESSAGES: Final[dict[str, str]] = {
    "not-found": "Unit {} not found.",
    "bad-setting": "Unit {} has a bad unit file setting.",
    "error": "Unit {} failed to load properly.",
    "masked": "Unit {} is masked.",
}

# Unit types whose type-specific interface has a ``Result`` property.
_RESULT_IFACES: Final[dict[str, str]] = {
    t: f"org.freedesktop.systemd1.{t.capitalize()}"
    for t in ("service", "socket", "mount", "swap", "timer", "path", "automount", "scope")
}

_MATCH_RULES: Final = (
    # Only the generic Unit interface: its ActiveState/SubState/LoadState are what we report;
    # arg0 makes the bus drop the (equally frequent) type-specific PropertiesChanged for us.
    f"type='signal',sender='{SYSTEMD_BUS_NAME}',interface='{PROPERTIES_IFACE}',"
    f"member='PropertiesChanged',path_namespace='{UNIT_PATH_PREFIX.rstrip('/')}',"
    f"arg0='{UNIT_IFACE}'",
    *(
        f"type='signal',sender='{SYSTEMD_BUS_NAME}',interface='{MANAGER_IFACE}',"
        f"path='{MANAGER_PATH}',member='{member}'"
        for member in ("JobRemoved", "UnitRemoved", "Reloading")
    ),
    f"type='signal',sender='{DBUS_NAME}',interface='{DBUS_NAME}',"
    f"member='NameOwnerChanged',arg0='{SYSTEMD_BUS_NAME}'",
)

_SAFE_LABEL_CHARS: Final = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
)


class SystemdError(BackendError):
    """systemd refused or failed a request; ``name`` is the D-Bus error name.

    Raised instead of letting D-Bus error replies escape as library exceptions, so the
    agent can report e.g. ``org.freedesktop.systemd1.NoSuchUnit`` per unit and go on.
    """

    def __init__(self, name: str, message: str, *, method: str = "", unit: str = "") -> None:
        self.name = name
        self.dbus_message = message
        self.method = method
        self.unit = unit
        where = f"{method}({unit})" if unit else method
        super().__init__(f"{where}: {message} [{name}]" if where else f"{message} [{name}]")


# --------------------------------------------------------------------------- object paths


def unit_path(name: str) -> str:
    """The object path systemd gives unit ``name`` (sd-bus ``bus_label_escape``)."""
    if not name:
        return UNIT_PATH_PREFIX + "_"
    out: list[str] = []
    for i, byte in enumerate(name.encode()):
        char = chr(byte)
        if char in _SAFE_LABEL_CHARS and not (i == 0 and char.isdigit()):
            out.append(char)
        else:
            out.append(f"_{byte:02x}")
    return UNIT_PATH_PREFIX + "".join(out)


def unit_name_from_path(path: str) -> str | None:
    """Reverse ``unit_path``; None for paths that are not a unit (e.g. ``unit/invocation/...``)."""
    if not path.startswith(UNIT_PATH_PREFIX):
        return None
    label = path[len(UNIT_PATH_PREFIX) :]
    if not label or "/" in label:
        return None
    if label == "_":
        return ""
    raw = bytearray()
    i = 0
    while i < len(label):
        char = label[i]
        if char == "_":
            try:
                raw.append(int(label[i + 1 : i + 3], 16))
            except ValueError:
                return None
            i += 3
        else:
            raw.append(ord(char))
            i += 1
    return raw.decode(errors="replace")


# --------------------------------------------------------------------------- the backend


class SystemdBackend:
    """Start, stop and watch units of one systemd manager (system or user) over D-Bus.

    With ``unit_dir`` (where the agent writes unit files) and ``journal`` it is the
    agent's `agent.backends.base.Backend` for systemd units.
    """

    kind = "systemd"
    made_of = "unit file"
    labels = False

    def __init__(
        self,
        *,
        scope: Literal["system", "user"],
        bus_address: str | None = None,
        unit_dir: Path | None = None,
        journal: JournalReader | None = None,
    ) -> None:
        if scope not in ("system", "user"):
            raise ValueError(f"scope must be 'system' or 'user', not {scope!r}")
        self.scope = scope
        self.bus_address = bus_address
        self.unit_dir = unit_dir or Path("/etc/systemd/system")
        self.files = UnitFiles(self.unit_dir)
        self.journal = journal or JournalReader(scope=scope)
        self._error = "not connected yet"
        self._bus: MessageBus | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._closing = False
        self._systemd_owner = ""  # unique bus name of the manager: signals from others are ignored
        self._in_flight: asyncio.Semaphore | None = None
        self._change_callbacks: list[Callable[[str], None]] = []
        self._disconnect_callbacks: list[Callable[[], None]] = []
        # Job bookkeeping: serial of a pending StartUnit-like call -> its result future, then
        # job path -> futures once the reply named the job (set inside the message handler).
        self._job_calls: dict[int, asyncio.Future[str]] = {}
        self._jobs: dict[str, list[asyncio.Future[str]]] = {}
        self._path_to_name: dict[str, str] = {}
        self._name_to_path: dict[str, str] = {}
        self._watched: set[str] = set()  # every name a caller asked about: re-reported on reload
        self._queried: set[str] = set()  # loaded by our own GetAll since its last real change
        self._reloading = False

    # -- connection

    @property
    def connected(self) -> bool:
        """Whether the bus connection is up (it may still drop at any time)."""
        return self._bus is not None and self._bus.connected and not self._closing

    def _where(self) -> str:
        """The bus we talk to, for error messages shown to operators."""
        if self.bus_address:
            return self.bus_address
        if self.scope == "system":
            return "the system bus"
        return os.environ.get("DBUS_SESSION_BUS_ADDRESS", "the session bus (unset)")

    async def connect(self) -> None:
        """Connect, subscribe to systemd's signals; BackendUnavailable within ~3 s if we can't.

        Safe to call again after a disconnect (the agent reconnects with backoff).
        """
        if self.connected:
            return
        await self._drop_bus()
        self._closing = False
        self._reloading = False
        self._queried.clear()
        bus: MessageBus | None = None
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                if self.bus_address is not None:
                    bus = MessageBus(bus_address=self.bus_address, auth_timeout=CONNECT_TIMEOUT)
                elif self.scope == "system":
                    bus = MessageBus(bus_type=BusType.SYSTEM, auth_timeout=CONNECT_TIMEOUT)
                else:
                    bus = MessageBus(bus_type=BusType.SESSION, auth_timeout=CONNECT_TIMEOUT)
                await bus.connect()
                bus.add_message_handler(self._on_message)
                for rule in _MATCH_RULES:
                    await self._raw_call(
                        bus, _bus_call("AddMatch", "s", [rule]), what="AddMatch", unit=""
                    )
                self._systemd_owner = await self._wait_for_systemd(bus)
                await self._raw_call(bus, _manager_call("Subscribe"), what="Subscribe", unit="")
        except SystemdError as exc:
            _disconnect_quietly(bus)
            raise BackendUnavailable(
                f"no systemd manager answers on {self._where()}: {exc.dbus_message} [{exc.name}]"
            ) from exc
        except TimeoutError as exc:
            _disconnect_quietly(bus)
            raise BackendUnavailable(
                f"systemd on {self._where()} did not answer within {CONNECT_TIMEOUT:.0f} s"
            ) from exc
        except Exception as exc:
            _disconnect_quietly(bus)
            raise BackendUnavailable(
                f"cannot connect to {self._where()}: {type(exc).__name__}: {exc}"
            ) from exc
        self._bus = bus
        self._in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._watcher = asyncio.get_running_loop().create_task(
            self._watch_disconnect(bus), name="systemd-bus-watch"
        )
        log.info("connected to systemd (%s scope) on %s", self.scope, self._where())

    async def _wait_for_systemd(self, bus: MessageBus) -> str:
        """The manager's unique bus name, waiting for it within the connect budget.

        A socket-activated user bus starts on our first connect and the manager takes its
        name only some milliseconds later; on a bus without systemd it never comes.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CONNECT_TIMEOUT - 0.2
        while True:
            try:
                reply = await self._raw_call(
                    bus,
                    _bus_call("GetNameOwner", "s", [SYSTEMD_BUS_NAME]),
                    what="GetNameOwner",
                    unit="",
                )
                return str(reply.body[0])
            except SystemdError as exc:
                if exc.name != ERROR_NAME_HAS_NO_OWNER or loop.time() >= deadline:
                    raise
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        """Disconnect for good; on_disconnect callbacks are not called for this."""
        self._closing = True
        await self._drop_bus()

    async def _drop_bus(self) -> None:
        """Tear the current connection down and wait for its watcher to finish."""
        bus, watcher = self._bus, self._watcher
        if bus is not None and bus.connected:
            _disconnect_quietly(bus)
        if watcher is not None and watcher is not asyncio.current_task():
            try:
                async with asyncio.timeout(5):
                    await asyncio.shield(watcher)
            except (TimeoutError, asyncio.CancelledError):
                watcher.cancel()
        self._fail_jobs(BackendUnavailable("the systemd bus connection was closed"))
        self._bus = None
        self._watcher = None

    async def _watch_disconnect(self, bus: MessageBus) -> None:
        """Wait for the connection to end, then fail waiters and tell the agent."""
        reason = "closed"
        try:
            await bus.wait_for_disconnect()  # type: ignore[no-untyped-call]
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if bus is not self._bus:
            return
        self._fail_jobs(BackendUnavailable(f"lost the systemd bus connection ({reason})"))
        if self._closing:
            return
        log.warning("lost the connection to systemd on %s (%s)", self._where(), reason)
        self._error = "the connection to systemd was lost"
        for callback in list(self._disconnect_callbacks):
            try:
                callback()
            except Exception:
                log.exception("on_disconnect callback failed")

    def _fail_jobs(self, exc: BaseException) -> None:
        """Wake everybody waiting for a job: its JobRemoved will never come on this bus."""
        for fut in [*self._job_calls.values(), *(f for fs in self._jobs.values() for f in fs)]:
            if not fut.done():
                fut.set_exception(exc)
                fut.exception()  # retrieved here; the waiter re-raises it if still waiting
        self._job_calls.clear()
        self._jobs.clear()

    # -- callbacks

    def on_change(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(unit_name)`` whenever that unit's state may have changed.

        Called from the bus reader: it must be cheap and must not block.
        """
        self._change_callbacks.append(callback)

    def on_disconnect(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` when the connection drops or systemd leaves the bus."""
        self._disconnect_callbacks.append(callback)

    def _notify(self, name: str) -> None:
        for callback in self._change_callbacks:
            try:
                callback(name)
            except Exception:
                log.exception("on_change callback failed for %s", name)

    # -- signals

    def _on_message(self, msg: Message) -> None:
        """Every message read from the bus passes here; must return None (never 'handled')."""
        mtype = msg.message_type
        if mtype is MessageType.SIGNAL:
            try:
                self._on_signal(msg)
            except Exception:  # a malformed signal must not kill the reader
                log.exception("bad signal %s.%s from %s", msg.interface, msg.member, msg.sender)
        elif mtype is MessageType.METHOD_RETURN and self._job_calls:
            # The reply of StartUnit & co names the job. Register it now, before any later
            # message in this read batch (possibly its JobRemoved) is processed.
            fut = self._job_calls.pop(msg.reply_serial, None)
            if fut is not None and msg.body:
                self._jobs.setdefault(str(msg.body[0]), []).append(fut)

    def _on_signal(self, msg: Message) -> None:
        member = msg.member
        if member == "NameOwnerChanged":
            if msg.sender == DBUS_NAME and msg.body[0] == SYSTEMD_BUS_NAME and not msg.body[2]:
                self._on_systemd_gone()
            return
        if msg.sender != self._systemd_owner:
            return
        if member == "PropertiesChanged":
            if msg.body[0] != UNIT_IFACE:
                return
            name = self._name_for_path(str(msg.path))
            if name is not None:
                self._queried.discard(name)
                self._notify(name)
        elif msg.interface != MANAGER_IFACE:
            return
        elif member == "JobRemoved":
            _job_id, job_path, name, result = msg.body
            for fut in self._jobs.pop(job_path, ()):
                if not fut.done():
                    fut.set_result(str(result))
            self._queried.discard(name)
            self._notify(name)
        elif member == "UnitRemoved":
            self._on_unit_removed(str(msg.body[0]), str(msg.body[1]))
        elif member == "Reloading":
            self._reloading = bool(msg.body[0])
            if not self._reloading:
                for name in list(self._watched):
                    self._notify(name)

    def _on_unit_removed(self, name: str, path: str) -> None:
        """Report a unit leaving memory, except GC echoes of our own queries and reloads.

        Loading a unit to read its state makes systemd collect it right after (if nothing
        references it); that is no change to report and reporting it would loop forever.
        """
        self._remember_path(name, path)
        if self._reloading:
            return  # every unit is removed and re-added; reported on Reloading(false)
        if name in self._queried:
            self._queried.discard(name)
            return
        self._notify(name)

    def _on_systemd_gone(self) -> None:
        """The manager lost its bus name (exited or re-executing): treat as a disconnect."""
        bus = self._bus
        if bus is not None and bus.connected and not self._closing:
            log.warning("systemd left the bus (%s)", self._where())
            _disconnect_quietly(bus)  # the watcher then calls on_disconnect

    # -- names and paths

    def _remember_path(self, name: str, path: str) -> None:
        if len(self._path_to_name) >= _PATH_CACHE_LIMIT:
            self._path_to_name.clear()
            self._name_to_path.clear()
        self._path_to_name[path] = name
        self._name_to_path[name] = path

    def _path_for_name(self, name: str) -> str:
        path = self._name_to_path.get(name)
        if path is None:
            path = unit_path(name)
            self._remember_path(name, path)
        return path

    def _name_for_path(self, path: str) -> str | None:
        name = self._path_to_name.get(path)
        if name is None:
            name = unit_name_from_path(path)
            if name is not None:
                self._remember_path(name, path)
        return name

    # -- calls

    async def _call(
        self,
        msg: Message,
        *,
        unit: str = "",
        limit: float = CALL_TIMEOUT,
        job: asyncio.Future[str] | None = None,
    ) -> Message:
        """One method call on the live connection; D-Bus errors become SystemdError."""
        bus = self._bus
        if bus is None or self._in_flight is None or not self.connected:
            raise BackendUnavailable(f"not connected to systemd on {self._where()}")
        async with self._in_flight:
            if job is not None:
                # Known serial so the handler can match the reply and record the job path.
                msg.serial = bus.next_serial()
                self._job_calls[msg.serial] = job
            try:
                return await self._raw_call(bus, msg, what=str(msg.member), unit=unit, limit=limit)
            finally:
                if job is not None:
                    self._job_calls.pop(msg.serial, None)

    async def _raw_call(
        self,
        bus: MessageBus,
        msg: Message,
        *,
        what: str,
        unit: str,
        limit: float = CALL_TIMEOUT,
    ) -> Message:
        try:
            async with asyncio.timeout(limit):
                reply = await bus.call(msg)
        except TimeoutError:
            raise SystemdError(
                ERROR_NO_REPLY, f"no reply within {limit:.0f} s", method=what, unit=unit
            ) from None
        except Exception as exc:
            raise BackendUnavailable(
                f"lost the systemd bus connection during {what}: {type(exc).__name__}: {exc}"
            ) from exc
        if reply is None:
            raise BackendUnavailable(f"lost the systemd bus connection during {what}")
        if reply.message_type is MessageType.ERROR:
            body = reply.body
            text = str(body[0]) if body and isinstance(body[0], str) else "(no message)"
            raise SystemdError(str(reply.error_name), text, method=what, unit=unit)
        return reply

    # -- manager operations

    async def reload(self) -> None:
        """daemon-reload; systemd replies only once the reload is complete."""
        await self._call(_manager_call("Reload"), limit=RELOAD_TIMEOUT)

    # ``timeout=`` is part of the agreed API (ASYNC109): past it the job is left running in
    # systemd and "timeout" is returned, which an outer asyncio.timeout could not do.
    async def start(self, name: str, *, timeout: float = 90.0) -> str:  # noqa: ASYNC109
        """Start ``name`` and return its job result (``done``, ``failed``, ``timeout``...)."""
        return await self._run_job("StartUnit", name, timeout)

    async def stop(self, name: str, *, timeout: float = 90.0) -> str:  # noqa: ASYNC109
        """Stop ``name`` and return its job result."""
        return await self._run_job("StopUnit", name, timeout)

    async def restart(self, name: str, *, timeout: float = 90.0) -> str:  # noqa: ASYNC109
        """Restart ``name`` (starts it if stopped) and return its job result."""
        return await self._run_job("RestartUnit", name, timeout)

    async def start_transient(
        self,
        name: str,
        argv: Sequence[str],
        *,
        description: str,
        timeout: float = 30.0,  # noqa: ASYNC109
    ) -> str:
        """Run ``argv`` as the transient service ``name`` of this manager (what
        ``systemd-run`` does) and return its start job's result. Its processes are the
        manager's, not the caller's: they outlive the caller's stop or restart (a
        service's ``KillMode=control-group`` ends every child of the service). A failed
        one of that name left loaded is cleared first; one still active is an error
        (``UnitExists``)."""
        await self.reset_failed(name)
        properties = [
            ("Description", Variant("s", description)),
            ("ExecStart", Variant("a(sasb)", [[argv[0], list(argv), False]])),
            ("Restart", Variant("s", "on-failure")),
        ]
        msg = _manager_call(
            "StartTransientUnit", "ssa(sv)a(sa(sv))", [name, "fail", properties, []]
        )
        return await self._run_job("StartTransientUnit", name, timeout, msg=msg)

    async def _run_job(
        self,
        method: str,
        name: str,
        timeout: float,  # noqa: ASYNC109
        *,
        msg: Message | None = None,
    ) -> str:
        """Enqueue a job in mode ``replace`` (or send `msg`, a call answering with a
        job) and wait for its JobRemoved.

        If ``timeout`` expires first, returns ``"timeout"``: the job may still be queued or
        running in systemd (it is not cancelled).
        """
        self._watched.add(name)
        deadline = time.monotonic() + timeout
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        if msg is None:
            msg = _manager_call(method, "ss", [name, "replace"])
        job_path = ""
        try:
            try:
                reply = await self._call(
                    msg, unit=name, limit=min(CALL_TIMEOUT, max(timeout, 0.001)), job=fut
                )
            except SystemdError as exc:
                if exc.name == ERROR_NO_REPLY:
                    return "timeout"
                raise
            job_path = str(reply.body[0])
            remaining = deadline - time.monotonic()
            try:
                async with asyncio.timeout(max(remaining, 0.0)):
                    return await fut
            except TimeoutError:
                log.warning(
                    "%s %s: job %s not finished after %.1f s", method, name, job_path, timeout
                )
                return "timeout"
        finally:
            waiters = self._jobs.get(job_path)
            if waiters is not None:
                if fut in waiters:
                    waiters.remove(fut)
                if not waiters:
                    del self._jobs[job_path]
            if not fut.done():
                fut.cancel()

    async def usage(self, name: str) -> tuple[int, int, str]:
        """A service's cgroup usage as systemd accounts it: (MemoryCurrent bytes,
        CPUUsageNSec, ControlGroup); 0 for what is not accounted (systemd says
        UINT64_MAX, e.g. a user manager on a hybrid cgroup layout)."""
        path = self._path_for_name(name)
        replies = await asyncio.gather(
            self._call(_get(path, SERVICE_IFACE, "MemoryCurrent"), unit=name),
            self._call(_get(path, SERVICE_IFACE, "CPUUsageNSec"), unit=name),
            self._call(_get(path, SERVICE_IFACE, "ControlGroup"), unit=name),
        )
        mem, cpu = (int(r.body[0].value) for r in replies[:2])
        top = (1 << 64) - 1
        return (0 if mem >= top else mem), (0 if cpu >= top else cpu), str(replies[2].body[0].value)

    async def reset_failed(self, name: str) -> None:
        """Clear ``failed`` state and restart counters; a unit not loaded has none to clear."""
        self._watched.add(name)
        try:
            await self._call(_manager_call("ResetFailedUnit", "s", [name]), unit=name)
        except SystemdError as exc:
            if exc.name != ERROR_NO_SUCH_UNIT:
                raise

    # -- state

    async def state(self, name: str) -> UnitRuntime:
        """Load/Active/Sub state, MainPID and Result of ``name``; loads it if needed.

        ``main_pid`` and ``result`` are read only for units that are not inactive (0 and
        "" otherwise, see ``_extras``). Raises SystemdError if systemd rejects the name.
        """
        result = (await self._states([name]))[name]
        if isinstance(result, SystemdError):
            raise result
        return result

    async def states(self, names: Iterable[str]) -> dict[str, UnitRuntime]:
        """State of many units at once: one ``ListUnitsByNames`` call, then concurrent calls.

        A unit systemd refuses to look at (e.g. an invalid name) is reported with load
        state ``error`` and the reason as message rather than failing the whole batch;
        BackendUnavailable still propagates.
        """
        results = await self._states(list(dict.fromkeys(names)))
        return {
            name: r
            if isinstance(r, UnitRuntime)
            else UnitRuntime(name=name, load_state="error", message=str(r))
            for name, r in results.items()
        }

    async def _states(self, names: list[str]) -> dict[str, UnitRuntime | SystemdError]:
        """``ListUnitsByNames`` (loads units on demand, like ``LoadUnit``) for the basics.

        Measured on systemd 252: 500 units in ~40 ms and ~1 ms of our CPU, where a
        ``GetAll`` per unit took ~800 ms and ~95 ms (systemd computes ~100 properties).
        Names it does not answer for (aliases come back under their real name, invalid
        names are skipped or fail the whole call) go through ``_state_get_all``.
        """
        self._watched.update(names)
        self._queried.update(names)  # before the call: the loads it causes may be GC'd at once
        rows: dict[str, UnitRuntime] = {}
        try:
            for i in range(0, len(names), _BATCH):
                reply = await self._call(
                    _manager_call("ListUnitsByNames", "as", [names[i : i + _BATCH]])
                )
                for row in reply.body[0]:
                    name, _description, load, active, sub, _following, path = row[:7]
                    self._remember_path(name, path)
                    rows[name] = UnitRuntime(
                        name=name,
                        load_state=load,
                        active_state=active,
                        sub_state=sub,
                        message=_load_message(name, load),
                    )
        except SystemdError as exc:
            if exc.name != ERROR_INVALID_ARGS:
                raise
            rows = {}  # one bad name (e.g. "x@.service") fails the batch: ask one by one
        wanted = [rows[n] for n in names if n in rows]
        others = [n for n in names if n not in rows]
        answers = await asyncio.gather(
            *(self._extras(unit) for unit in wanted),
            *(self._state_get_all(name) for name in others),
            return_exceptions=True,
        )
        out: dict[str, UnitRuntime | SystemdError] = {}
        for name, answer in zip([u.name for u in wanted] + others, answers, strict=True):
            if isinstance(answer, UnitRuntime | SystemdError):
                out[name] = answer
            else:
                raise answer
        return out

    async def _extras(self, unit: UnitRuntime) -> UnitRuntime:
        """Add MainPID and Result for a unit that is not inactive.

        An inactive unit has no main PID, and it may be garbage-collected right after the
        load our first call caused: another call would load it again and cause another
        ``UnitRemoved``, which ``_queried`` cannot tell from a real one. Units that are
        not inactive are not collected.
        """
        unit_type = unit.name.rpartition(".")[2]
        result_iface = _RESULT_IFACES.get(unit_type)
        if unit.active_state == "inactive" or result_iface is None:
            return unit
        path = self._path_for_name(unit.name)
        calls = [self._call(_get(path, result_iface, "Result"), unit=unit.name)]
        if unit_type == "service":
            calls.append(self._call(_get(path, SERVICE_IFACE, "MainPID"), unit=unit.name))
        replies = await asyncio.gather(*calls)
        return msgspec.structs.replace(
            unit,
            result=str(replies[0].body[0].value),
            main_pid=int(replies[1].body[0].value) if len(replies) > 1 else 0,
        )

    async def _state_get_all(self, name: str) -> UnitRuntime:
        """Fallback for one name: ``GetAll`` on the unit's path loads it on demand too."""
        path = self._path_for_name(name)
        reply = await self._call(_get_all(path, UNIT_IFACE), unit=name)
        props: dict[str, Any] = reply.body[0]
        load_state = _variant_str(props.get("LoadState"), "not-found")
        message = ""
        load_error = props.get("LoadError")
        if load_state != "loaded" and load_error is not None and load_error.value:
            message = str(load_error.value[1])
        unit = UnitRuntime(
            name=name,
            load_state=load_state,
            active_state=_variant_str(props.get("ActiveState"), "inactive"),
            sub_state=_variant_str(props.get("SubState"), "dead"),
            message=message,
        )
        return await self._extras(unit)

    async def list_units(self) -> list[UnitRuntime]:
        """Every unit systemd has in memory (ListUnits); main_pid and result are not filled."""
        reply = await self._call(_manager_call("ListUnits"))
        units: list[UnitRuntime] = []
        for row in reply.body[0]:
            name, _description, load, active, sub, _following, path = row[:7]
            self._remember_path(str(name), str(path))
            units.append(
                UnitRuntime(name=str(name), load_state=load, active_state=active, sub_state=sub)
            )
        return units

    # -- the agent's Backend (agent.backends.base)

    @property
    def available(self) -> bool:
        return self.connected

    @property
    def unavailable_reason(self) -> str:
        return "" if self.connected else self._error

    def owns(self, name: str) -> bool:
        return unit_kind(name) == self.kind

    def subscribe(self, events: BackendEvents) -> None:
        self.on_change(lambda name: events.changed(self, name))
        self.on_disconnect(lambda: events.down(self))

    async def open(self) -> bool:
        """Connect (the agent retries this from its periodic pass); the first failure
        of each kind is logged."""
        if self.connected:
            return True
        try:
            await self.connect()
        except BackendUnavailable as exc:
            if self._error != str(exc):
                log.warning("systemd is not reachable: %s", exc)
            self._error = str(exc)
            return False
        self._error = ""
        log.info("connected to the systemd %s manager", self.scope)
        return True

    async def observe(self, names: Iterable[str]) -> dict[str, Observed]:
        wanted = list(names)
        runtimes = await self.states(wanted)
        return {n: Observed(self._file_sha(n), runtimes.get(n) or UnitRuntime(n)) for n in wanted}

    def _file_sha(self, name: str) -> str | None:
        """The file as it is now (not the stat-cached `files`: reconcile plans from this)."""
        try:
            return _sha256((self.unit_dir / name).read_text())
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError):
            return "unreadable"

    def observed(self, name: str, runtime: UnitRuntime, version: str | None) -> Observed:
        return Observed(self.files.sha(name), runtime)

    async def read(self, names: Sequence[str]) -> Reading:
        return Reading(await self.states(names))

    def scan_files(self, names: Iterable[str], *, prune: bool = False) -> set[str]:
        return self.files.scan(names, prune=prune)

    async def owned_extras(self) -> set[str]:
        return set()  # unit files carry no owner label: extras are applied units only

    async def apply(self, step: Step, unit: DesiredUnit | None) -> str | None:
        """write/remove a unit file, reload, load (read) or start/stop (a job)."""
        try:
            if step.op == "write":
                self.unit_dir.mkdir(parents=True, exist_ok=True)
                write_public(self.unit_dir / step.unit, step.content.encode())
            elif step.op == "remove":
                (self.unit_dir / step.unit).unlink(missing_ok=True)
            elif step.op == "reload":
                await self.reload()
            elif step.op == "load":
                await self.state(step.unit)
            elif step.op in ("start", "stop"):
                call = self.start if step.op == "start" else self.stop
                outcome = await call(step.unit)
                return (
                    "" if outcome == "done" else f"{step.op} job finished with result '{outcome}'"
                )
        except OSError as exc:
            raise BackendError(str(exc)) from exc
        return None

    async def log_tail(self, name: str, lines: int, *, after_cursor: str = "") -> list[LogLine]:
        return await self.journal.tail(name, lines, after_cursor=after_cursor)

    def log_follow(
        self, name: str, *, after_cursor: str = "", lines: int = 10
    ) -> AsyncGenerator[list[LogLine], None]:
        return self.journal.follow(name, after_cursor=after_cursor, lines=lines)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# --------------------------------------------------------------------------- messages


def _manager_call(member: str, signature: str = "", body: list[Any] | None = None) -> Message:
    return Message(
        destination=SYSTEMD_BUS_NAME,
        path=MANAGER_PATH,
        interface=MANAGER_IFACE,
        member=member,
        signature=signature,
        body=body or [],
        flags=MessageFlag.NO_AUTOSTART,
    )


def _bus_call(member: str, signature: str, body: list[Any]) -> Message:
    return Message(
        destination=DBUS_NAME,
        path=DBUS_PATH,
        interface=DBUS_NAME,
        member=member,
        signature=signature,
        body=body,
    )


def _get_all(path: str, interface: str) -> Message:
    return Message(
        destination=SYSTEMD_BUS_NAME,
        path=path,
        interface=PROPERTIES_IFACE,
        member="GetAll",
        signature="s",
        body=[interface],
        flags=MessageFlag.NO_AUTOSTART,
    )


def _get(path: str, interface: str, prop: str) -> Message:
    return Message(
        destination=SYSTEMD_BUS_NAME,
        path=path,
        interface=PROPERTIES_IFACE,
        member="Get",
        signature="ss",
        body=[interface, prop],
        flags=MessageFlag.NO_AUTOSTART,
    )


def _load_message(name: str, load_state: str) -> str:
    """What systemd's LoadError says for a load state (ListUnitsByNames does not carry it)."""
    template = _LOAD_MESSAGES.get(load_state)
    return template.format(name) if template else ""


def _variant_str(variant: Any, default: str) -> str:
    return default if variant is None else str(variant.value)


def _disconnect_quietly(bus: MessageBus | None) -> None:
    """Close a bus that may be half-connected; teardown must not raise."""
    if bus is None:
        return
    try:
        bus.disconnect()
    except Exception:
        log.debug("disconnect failed", exc_info=True)
