"""The systemd backend against a real ``systemd --user`` manager (tests/harness/systemd.py)."""

# The fixture is imported so pytest registers it without a conftest; the test parameters
# then shadow that import, which is how pytest fixtures work.
# ruff: noqa: F811

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from agent.backends.base import BackendUnavailable, UnitRuntime
from agent.backends.systemd import SystemdBackend, SystemdError, unit_name_from_path, unit_path
from tests.harness.fixtures import user_systemd  # noqa: F401
from tests.harness.systemd import UserSystemd, systemd_available

pytestmark = pytest.mark.integration

SLEEPER = "[Service]\nExecStart=/bin/sleep 300\n"


@pytest.fixture
async def backend(user_systemd: UserSystemd) -> AsyncIterator[SystemdBackend]:
    b = SystemdBackend(scope="user", bus_address=user_systemd.bus_address)
    await b.connect()
    try:
        yield b
    finally:
        await b.close()


async def install(us: UserSystemd, backend: SystemdBackend, units: dict[str, str]) -> None:
    for name, text in units.items():
        (us.unit_dir / name).write_text(text)
    await backend.reload()


async def systemctl(us: UserSystemd, *args: str) -> str:
    """systemctl in a thread: the loop must keep reading the bus meanwhile."""
    result = await asyncio.to_thread(us.systemctl, *args, check=True)
    return result.stdout.strip()


async def wait_state(
    backend: SystemdBackend,
    name: str,
    pred: Callable[[UnitRuntime], bool],
    timeout: float = 5.0,
) -> UnitRuntime:
    deadline = time.monotonic() + timeout
    while True:
        state = await backend.state(name)
        if pred(state) or time.monotonic() > deadline:
            return state
        await asyncio.sleep(0.05)


class Seen:
    """Collects on_change names; ``wait(name)`` returns once that name was reported."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self._event = asyncio.Event()

    def __call__(self, name: str) -> None:
        self.names.append(name)
        self._event.set()

    async def wait(self, name: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while name not in self.names:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._event.clear()
            try:
                await asyncio.wait_for(self._event.wait(), remaining)
            except TimeoutError:
                return False
        return True


# --------------------------------------------------------------------------- paths


def test_unit_path_escaping() -> None:
    assert unit_path("a.service") == "/org/freedesktop/systemd1/unit/a_2eservice"
    assert unit_path("-.mount") == "/org/freedesktop/systemd1/unit/_2d_2emount"
    assert unit_path("1x.service").startswith("/org/freedesktop/systemd1/unit/_31x")
    assert unit_path("foo@bar-1.service").endswith("foo_40bar_2d1_2eservice")
    for name in ("a.service", "-.mount", "1x.service", "web@8080.service", "x\\x2dy.mount", ""):
        assert unit_name_from_path(unit_path(name)) == name
    assert unit_name_from_path("/org/freedesktop/systemd1/unit/invocation/abc") is None
    assert unit_name_from_path("/org/freedesktop/systemd1/job/12") is None


# --------------------------------------------------------------------------- connection


async def test_connect(backend: SystemdBackend) -> None:
    assert backend.connected
    names = {u.name for u in await backend.list_units()}
    assert "basic.target" in names
    await backend.connect()  # idempotent while connected
    assert backend.connected
    # close() is not a lost connection; the same instance can connect again.
    dropped: list[bool] = []
    backend.on_disconnect(lambda: dropped.append(True))
    await backend.close()
    assert not backend.connected
    with pytest.raises(BackendUnavailable):
        await backend.state("basic.target")
    await backend.connect()
    assert (await backend.state("basic.target")).active_state == "active"
    assert dropped == []


async def test_bogus_bus_address_is_unavailable_quickly(tmp_path: Path) -> None:
    began = time.monotonic()
    b = SystemdBackend(scope="user", bus_address=f"unix:path={tmp_path}/no-such-bus")
    with pytest.raises(BackendUnavailable, match="no-such-bus"):
        await b.connect()
    assert time.monotonic() - began < 5
    assert not b.connected


async def test_silent_bus_is_unavailable_within_5s(tmp_path: Path) -> None:
    """A socket that accepts but never speaks D-Bus must not hang the agent."""
    path = tmp_path / "silent.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        server.bind(str(path))
        server.listen(4)
        began = time.monotonic()
        b = SystemdBackend(scope="user", bus_address=f"unix:path={path}")
        with pytest.raises(BackendUnavailable):
            await b.connect()
        assert time.monotonic() - began < 5
    finally:
        server.close()


async def test_system_scope_without_systemd_is_unavailable() -> None:
    """The system scope on these test machines: a bus may exist, PID 1 is not systemd."""
    reason = systemd_available()
    if reason is not None:
        pytest.skip(reason)  # among others: PID 1 is systemd here
    b = SystemdBackend(scope="system")
    began = time.monotonic()
    with pytest.raises(BackendUnavailable):
        await b.connect()
    assert time.monotonic() - began < 5


# --------------------------------------------------------------------------- states


async def test_new_unit_file_after_reload_is_loaded_inactive(
    user_systemd: UserSystemd, backend: SystemdBackend
) -> None:
    await install(user_systemd, backend, {"fresh.service": SLEEPER})
    state = await backend.state("fresh.service")
    assert (state.load_state, state.active_state, state.sub_state) == ("loaded", "inactive", "dead")
    assert state.main_pid == 0
    assert state.message == ""


async def test_missing_unit_is_not_found(backend: SystemdBackend) -> None:
    state = await backend.state("nope.service")
    assert state.load_state == "not-found"
    assert state.active_state == "inactive"
    assert "not found" in state.message
    await backend.reset_failed("nope.service")  # NoSuchUnit is ignored


async def test_broken_unit_file(user_systemd: UserSystemd, backend: SystemdBackend) -> None:
    await install(user_systemd, backend, {"broken.service": "[Service]\nExecStart=relative/path\n"})
    state = await backend.state("broken.service")
    assert state.load_state in ("bad-setting", "error")
    assert state.message
    with pytest.raises(SystemdError) as info:
        await backend.start("broken.service")
    assert info.value.name.startswith("org.freedesktop.systemd1.")
    assert "broken.service" in str(info.value)
    assert backend.connected  # an error reply is not a broken connection


async def test_invalid_names_raise_systemd_error(backend: SystemdBackend) -> None:
    with pytest.raises(SystemdError) as info:
        await backend.state("in valid")
    assert info.value.name == "org.freedesktop.DBus.Error.InvalidArgs"
    with pytest.raises(SystemdError):
        await backend.start("in valid")
    # In a batch, a bad name is reported as such without failing the others; a template
    # without instance makes systemd reject the whole ListUnitsByNames call.
    got = await backend.states(["in valid", "x@.service", "basic.target"])
    assert got["in valid"].load_state == "error"
    assert got["x@.service"].load_state == "error"
    assert got["basic.target"].active_state == "active"


async def test_states_of_50_units(user_systemd: UserSystemd, backend: SystemdBackend) -> None:
    names = [f"many{i}.service" for i in range(50)]
    await install(user_systemd, backend, dict.fromkeys(names, SLEEPER))
    started = names[:10]
    assert await asyncio.gather(*(backend.start(n) for n in started)) == ["done"] * 10
    began = time.monotonic()
    got = await backend.states([*names, "absent.service", names[0]])
    elapsed = time.monotonic() - began
    assert set(got) == {*names, "absent.service"}
    for name in names:
        state = got[name]
        assert state.name == name
        assert state.load_state == "loaded"
        if name in started:
            assert (state.active_state, state.sub_state) == ("active", "running")
            assert state.main_pid > 0
            assert state.result == "success"
        else:
            assert (state.active_state, state.main_pid) == ("inactive", 0)
    assert got["absent.service"].load_state == "not-found"
    assert elapsed < 2, f"states() of 51 units took {elapsed:.2f} s"


# --------------------------------------------------------------------------- jobs


async def test_start_and_stop(user_systemd: UserSystemd, backend: SystemdBackend) -> None:
    await install(user_systemd, backend, {"sleeper.service": SLEEPER})
    began = time.monotonic()
    assert await backend.start("sleeper.service") == "done"
    latency = time.monotonic() - began
    state = await backend.state("sleeper.service")
    assert (state.load_state, state.active_state, state.sub_state) == (
        "loaded",
        "active",
        "running",
    )
    assert state.main_pid > 0
    assert str(state.main_pid) == user_systemd.unit_property("sleeper.service", "MainPID")
    assert latency < 2, f"start took {latency:.3f} s"

    assert await backend.stop("sleeper.service") == "done"
    state = await backend.state("sleeper.service")
    assert (state.active_state, state.sub_state, state.main_pid) == ("inactive", "dead", 0)
    assert user_systemd.unit_property("sleeper.service", "ActiveState") == "inactive"


async def test_restart_gives_a_new_main_pid(
    user_systemd: UserSystemd, backend: SystemdBackend
) -> None:
    await install(user_systemd, backend, {"again.service": SLEEPER})
    assert await backend.start("again.service") == "done"
    first = (await backend.state("again.service")).main_pid
    assert await backend.restart("again.service") == "done"
    second = (await backend.state("again.service")).main_pid
    assert first > 0 and second > 0 and first != second


async def test_many_fast_jobs_are_not_missed(
    user_systemd: UserSystemd, backend: SystemdBackend
) -> None:
    """Jobs that finish at once: JobRemoved may be read in the same batch as the reply."""
    names = [f"quick{i}.service" for i in range(30)]
    unit = "[Service]\nType=oneshot\nExecStart=/bin/true\n"
    await install(user_systemd, backend, dict.fromkeys(names, unit))
    for _ in range(3):
        results = await asyncio.wait_for(
            asyncio.gather(*(backend.start(n) for n in names)), timeout=20
        )
        assert results == ["done"] * len(names)


async def test_job_wait_timeout(user_systemd: UserSystemd, backend: SystemdBackend) -> None:
    unit = "[Service]\nType=oneshot\nExecStart=/bin/sleep 30\n"
    await install(user_systemd, backend, {"slow.service": unit})
    began = time.monotonic()
    assert await backend.start("slow.service", timeout=0.5) == "timeout"
    assert time.monotonic() - began < 2
    state = await backend.state("slow.service")
    assert state.active_state == "activating"  # the job is left running in systemd
    assert await backend.stop("slow.service") == "done"


async def test_failing_unit_and_reset_failed(
    user_systemd: UserSystemd, backend: SystemdBackend
) -> None:
    await install(
        user_systemd,
        backend,
        {
            "false.service": "[Service]\nExecStart=/bin/false\n",
            "false-oneshot.service": "[Service]\nType=oneshot\nExecStart=/bin/false\n",
        },
    )
    # Type=simple: the start job is done once forked; the exit makes the unit fail after.
    assert await backend.start("false.service") == "done"
    state = await wait_state(backend, "false.service", lambda s: s.active_state == "failed")
    assert (state.active_state, state.sub_state, state.result) == ("failed", "failed", "exit-code")
    # Type=oneshot: the job itself fails.
    assert await backend.start("false-oneshot.service") == "failed"
    state = await backend.state("false-oneshot.service")
    assert (state.active_state, state.result) == ("failed", "exit-code")

    for name in ("false.service", "false-oneshot.service"):
        await backend.reset_failed(name)
        state = await backend.state(name)
        assert (state.active_state, state.sub_state) == ("inactive", "dead")


# --------------------------------------------------------------------------- signals


async def test_on_change_for_an_outside_stop(
    user_systemd: UserSystemd, backend: SystemdBackend
) -> None:
    await install(user_systemd, backend, {"watched.service": SLEEPER})
    assert await backend.start("watched.service") == "done"
    seen = Seen()
    backend.on_change(seen)
    await asyncio.sleep(0.1)
    seen.names.clear()
    await systemctl(user_systemd, "stop", "watched.service")
    assert await seen.wait("watched.service", timeout=1.0), seen.names
    assert (await backend.state("watched.service")).active_state == "inactive"
    # Stopping what is stopped is a job that is done at once.
    assert await backend.stop("watched.service") == "done"


async def test_on_change_for_a_crash(user_systemd: UserSystemd, backend: SystemdBackend) -> None:
    await install(user_systemd, backend, {"victim.service": SLEEPER})
    assert await backend.start("victim.service") == "done"
    pid = (await backend.state("victim.service")).main_pid
    seen = Seen()
    backend.on_change(seen)
    began = time.monotonic()
    await systemctl(user_systemd, "kill", "--signal=KILL", "victim.service")
    assert await seen.wait("victim.service", timeout=1.0)
    assert time.monotonic() - began < 1.5
    state = await wait_state(backend, "victim.service", lambda s: s.active_state == "failed")
    assert (state.active_state, state.result) == ("failed", "signal")
    assert pid > 0


async def test_queries_do_not_echo_forever(
    user_systemd: UserSystemd, backend: SystemdBackend
) -> None:
    """Querying an inactive unit loads it and systemd GCs it again (UnitRemoved): an agent
    that re-queries on every change must not loop."""
    await install(user_systemd, backend, {"idle.service": SLEEPER})
    seen = Seen()
    backend.on_change(seen)
    tasks: set[asyncio.Task[UnitRuntime]] = set()

    def requery(name: str) -> None:
        if name == "idle.service":
            tasks.add(asyncio.get_running_loop().create_task(backend.state(name)))

    backend.on_change(requery)
    await backend.state("idle.service")
    await backend.states(["idle.service", "nothing-here.service"])
    await asyncio.sleep(1.0)
    await asyncio.gather(*tasks)
    assert seen.names.count("idle.service") <= 2, seen.names
    assert "nothing-here.service" not in seen.names


async def test_reload_reports_watched_units(
    user_systemd: UserSystemd, backend: SystemdBackend
) -> None:
    assert (await backend.state("later.service")).load_state == "not-found"
    seen = Seen()
    backend.on_change(seen)
    (user_systemd.unit_dir / "later.service").write_text(SLEEPER)
    await systemctl(user_systemd, "daemon-reload")  # by someone else
    assert await seen.wait("later.service", timeout=1.0)
    assert (await backend.state("later.service")).load_state == "loaded"


async def test_on_disconnect_when_the_manager_goes_away(
    user_systemd: UserSystemd, backend: SystemdBackend
) -> None:
    gone = asyncio.Event()
    backend.on_disconnect(gone.set)
    await asyncio.to_thread(user_systemd.stop)
    await asyncio.wait_for(gone.wait(), timeout=10)
    assert not backend.connected
    with pytest.raises(BackendUnavailable):
        await backend.state("basic.target")
    with pytest.raises(BackendUnavailable):
        await backend.connect()
