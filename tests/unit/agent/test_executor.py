"""The executor's ordering and failure rules, in-process, over a recording backend.

The real backends are exercised by the integration tests (test_systemd_units,
test_docker_units); here a small in-memory backend of each kind implements the same
`Backend` protocol so the executor's own rules are checked in milliseconds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Iterable, Sequence

import pytest

from agent.backends.base import (
    BackendError,
    BackendEvents,
    Observed,
    Reading,
    Registry,
    Step,
    UnitRuntime,
    unit_kind,
)
from agent.executor import Executor
from agent.reconciler import plan
from proto.messages import DesiredUnit, LogLine
from proto.units import UnitOption, unit_hash


class Recording:
    """A backend that records the steps it is given; ``fail`` maps (op, unit) to an error."""

    labels = False

    def __init__(self, kind: str, made_of: str, log: list[tuple[str, str, str]]) -> None:
        self.kind, self.made_of, self.log = kind, made_of, log
        self.fail: dict[tuple[str, str], str] = {}
        self.outcome: dict[tuple[str, str], str] = {}

    @property
    def available(self) -> bool:
        return True

    @property
    def unavailable_reason(self) -> str:
        return ""

    def owns(self, name: str) -> bool:
        return unit_kind(name) == self.kind

    def subscribe(self, events: BackendEvents) -> None:
        pass

    async def open(self) -> bool:
        return True

    async def close(self) -> None:
        pass

    async def observe(self, names: Iterable[str]) -> dict[str, Observed]:
        return {n: Observed(None, UnitRuntime(n)) for n in names}

    def observed(self, name: str, runtime: UnitRuntime, version: str | None) -> Observed:
        return Observed(None, runtime)

    async def read(self, names: Sequence[str]) -> Reading:
        return Reading({n: UnitRuntime(n) for n in names})

    def scan_files(self, names: Iterable[str], *, prune: bool = False) -> set[str]:
        return set()

    async def owned_extras(self) -> set[str]:
        return set()

    async def apply(self, step: Step, unit: DesiredUnit | None) -> str | None:
        await asyncio.sleep(0)
        self.log.append((self.kind, step.op, step.unit))
        if (step.op, step.unit) in self.fail:
            raise BackendError(self.fail[(step.op, step.unit)])
        if step.op == "reload":
            return None
        return self.outcome.get((step.op, step.unit), "")

    async def log_tail(self, name: str, lines: int, *, after_cursor: str = "") -> list[LogLine]:
        return []

    async def log_follow(
        self, name: str, *, after_cursor: str = "", lines: int = 10
    ) -> AsyncGenerator[list[LogLine], None]:
        yield []


def unit(name: str, cmd: str = "sleep 100") -> DesiredUnit:
    if name.endswith(".container"):
        opts = [UnitOption("Container", "Image", "busybox"), UnitOption("Container", "Exec", cmd)]
    else:
        opts = [UnitOption("Service", "ExecStart", cmd)]
    return DesiredUnit(name=name, options=opts, desired_state="launched", hash=unit_hash(opts))


def setup() -> tuple[Executor, Recording, Recording, list[tuple[str, str, str]]]:
    calls: list[tuple[str, str, str]] = []
    systemd = Recording("systemd", "unit file", calls)
    docker = Recording("docker", "container", calls)
    return Executor(Registry([systemd, docker])), systemd, docker, calls


def run(executor: Executor, desired: dict[str, DesiredUnit]) -> None:
    asyncio.run(executor.run(plan(desired, {}, {}, repair=False), desired))


def test_steps_run_a_kind_at_a_time_through_each_units_backend() -> None:
    executor, _, _, calls = setup()
    desired = {u.name: u for u in (unit("a.service"), unit("b.container"), unit("c.service"))}
    run(executor, desired)
    ops = ["write", "write", "create", "reload", "reload", "start", "start", "start"]
    assert [op for _, op, _ in calls] == ops
    # a manager-wide step goes to each backend that had a step before it (once each)
    assert sorted(k for k, op, _ in calls if op == "reload") == ["docker", "systemd"]
    assert {(k, n) for k, op, n in calls if op == "start"} == {
        ("systemd", "a.service"),
        ("docker", "b.container"),
        ("systemd", "c.service"),
    }


def test_a_manager_wide_step_skips_backends_with_nothing_before_it() -> None:
    executor, _, _, calls = setup()
    run(executor, {"a.service": unit("a.service")})
    assert [(k, op) for k, op, _ in calls] == [
        ("systemd", "write"),
        ("systemd", "reload"),
        ("systemd", "start"),
    ]


def test_each_step_is_logged_with_its_reason(caplog: pytest.LogCaptureFixture) -> None:
    executor, _, _, _ = setup()
    caplog.set_level(logging.INFO, logger="agent.executor")
    run(executor, {"a.service": unit("a.service")})
    assert "write a.service: new unit" in caplog.text
    assert "start a.service: desired launched, found inactive" in caplog.text


def test_a_failed_step_is_reported_with_its_reason_and_stops_no_other_unit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    executor, systemd, _, calls = setup()
    systemd.fail[("start", "a.service")] = "Unit a.service is masked"
    systemd.outcome[("start", "c.service")] = "start job finished with result 'failed'"
    desired = {u.name: u for u in (unit("a.service"), unit("b.container"), unit("c.service"))}
    run(executor, desired)
    assert executor.errors == {
        "a.service": "start failed (desired launched, found inactive): Unit a.service is masked",
        "c.service": "start job finished with result 'failed' (desired launched, found inactive)",
    }
    assert ("docker", "start", "b.container") in calls
    assert "start a.service failed (desired launched, found inactive)" in caplog.text


def test_a_failed_create_blocks_its_start_until_the_unit_changes() -> None:
    executor, _, docker, calls = setup()
    u = unit("b.container")
    docker.fail[("create", u.name)] = "pulling busybox failed"
    run(executor, {u.name: u})
    assert executor.create_failed == {
        u.name: (u.hash, "cannot create the container: pulling busybox failed")
    }
    assert ("docker", "start", u.name) not in calls
    assert executor.problem(u.name, u) == "cannot create the container: pulling busybox failed"
    assert executor.blocked({u.name: u}, spare=()) == {u.name}
    assert executor.blocked({u.name: u}, spare={u.name}) == set()  # a drift repair
    executor.changed(u.name)
    assert executor.blocked({u.name: u}, spare=()) == set()


def test_a_step_that_succeeds_clears_the_units_last_error() -> None:
    executor, systemd, _, _ = setup()
    u = unit("a.service")
    systemd.fail[("start", u.name)] = "boom"
    run(executor, {u.name: u})
    assert u.name in executor.errors
    del systemd.fail[("start", u.name)]
    run(executor, {u.name: u})
    assert u.name not in executor.errors
