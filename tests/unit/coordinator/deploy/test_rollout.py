"""Rolling rollouts and group membership as pure functions."""

from __future__ import annotations

import msgspec
import pytest

from coordinator.api.fleet_manager import keyset_page
from coordinator.deploy import groups, rollout
from coordinator.models import (
    JobStatus,
    Machine,
    MachineGroup,
    Release,
    ReleaseJob,
    ReleaseUnit,
    UnitState,
)

UNITS = [
    ReleaseUnit(name="web.service", options=[], hash="h-web", sha256="s1"),
    ReleaseUnit(
        name="cache.container",
        options=[],
        hash="h-cache",
        sha256="s2",
        image="redis:7",
        image_digest="sha256:aaa",
    ),
]
RELEASE = Release(
    id="r2",
    deployment_id="d",
    seq=2,
    application_id="a",
    version="2",
    version_number=2,
    units=UNITS,
    min_healthy_s=2.0,
    timeout_s=30.0,
    batches=2,
    status="Running",
)


def job(status: JobStatus = "Running", batch: int = 0, **kw: object) -> ReleaseJob:
    return ReleaseJob(
        id=f"j-{batch}-{status}",
        release_id="r2",
        machine_id="m1",
        batch=batch,
        status=status,
        started_at=100.0,
        **kw,  # type: ignore[arg-type]
    )


def state(name: str, hash: str, active: str = "active", **kw: object) -> UnitState:
    return UnitState(name=name, machine_id="m1", hash=hash, active_state=active, **kw)  # type: ignore[arg-type]


def healthy() -> dict[str, UnitState]:
    return {
        "web.service": state("web.service", "h-web"),
        "cache.container": state("cache.container", "h-cache", image_digest="sha256:aaa"),
    }


@pytest.mark.parametrize(
    ("total", "size", "cap", "want"),
    [
        (4, 2, None, 2),
        (4, "25%", None, 1),
        (10, "25%", None, 3),
        (4, 3, 2, 2),
        (0, 5, None, 1),
        (3, "100%", 1, 1),
    ],
)
def test_batch_size(total: int, size: int | str, cap: int | None, want: int) -> None:
    assert rollout.batch_size(total, size, cap) == want


def test_batches_are_in_id_order() -> None:
    assert rollout.plan_batches(["m3", "m1", "m4", "m2", "m5"], 2) == [
        ["m1", "m2"],
        ["m3", "m4"],
        ["m5"],
    ]
    assert rollout.plan_batches([], 2) == []


def test_a_job_succeeds_only_after_staying_healthy() -> None:
    first = rollout.evaluate_job(job(), RELEASE, healthy(), now=101.0)
    assert first.status == "Running" and first.healthy_since == 101.0
    still = rollout.evaluate_job(first, RELEASE, healthy(), now=102.5)
    assert still.status == "Running"
    done = rollout.evaluate_job(still, RELEASE, healthy(), now=103.0)
    assert done.status == "Success" and done.finished_at == 103.0
    # a blip resets the clock
    blip = dict(healthy(), **{"web.service": state("web.service", "h-web", "activating")})
    reset = rollout.evaluate_job(first, RELEASE, blip, now=102.0)
    assert (
        reset.status == "Running" and reset.healthy_since == 0.0 and "activating" in reset.message
    )


def test_a_failed_unit_fails_the_job_with_its_reason() -> None:
    states = dict(
        healthy(), **{"web.service": state("web.service", "h-web", "failed", message="exit 3")}
    )
    out = rollout.evaluate_job(job(), RELEASE, states, now=101.0)
    assert out.status == "Failed" and out.message == "web.service failed: exit 3"


def test_old_versions_and_other_images_are_not_healthy() -> None:
    old = dict(healthy(), **{"web.service": state("web.service", "h-old", "failed")})
    out = rollout.evaluate_job(job(), RELEASE, old, now=101.0)
    assert (
        out.status == "Running" and "not applied yet" in out.message
    )  # the old one failing is not ours
    other = dict(
        healthy(),
        **{"cache.container": state("cache.container", "h-cache", image_digest="sha256:bbb")},
    )
    out = rollout.evaluate_job(job(), RELEASE, other, now=101.0)
    assert out.status == "Running" and "sha256:bbb" in out.message


def test_a_job_times_out() -> None:
    out = rollout.evaluate_job(job(), RELEASE, {}, now=130.0)
    assert out.status == "Failed" and "not healthy after 30 s" in out.message
    assert rollout.evaluate_job(job("Created"), RELEASE, {}, now=500.0).status == "Created"


def test_next_step_judges_a_settled_batch() -> None:
    assert rollout.next_step(RELEASE, [job("Success"), job("Running"), job("Created", 1)]) == "wait"
    assert rollout.next_step(RELEASE, [job("Failed"), job("Running")]) == "wait"
    assert rollout.next_step(RELEASE, [job("Failed"), job("Success"), job("Created", 1)]) == "fail"
    assert rollout.next_step(RELEASE, [job("Success"), job("Created", 1)]) == "advance"
    last = msgspec.structs.replace(RELEASE, batch=1)
    assert rollout.next_step(last, [job("Success"), job("Success", 1)]) == "succeed"
    empty = msgspec.structs.replace(RELEASE, batches=0)
    assert rollout.next_step(empty, []) == "succeed"


def test_group_membership() -> None:
    web = Machine(id="a", metadata={"role": "web", "dc": "x"})
    db = Machine(id="b", metadata={"role": "db"})
    gone = Machine(id="c", metadata={"role": "web"}, revoked=True)
    fleet = [db, gone, web]
    builtin = MachineGroup(id="g0", name="default", builtin=True)
    by_meta = MachineGroup(id="g1", name="web", selector={"role": "web"})
    by_both = MachineGroup(
        id="g2", name="mixed", selector={"role": "web", "dc": "y"}, machines=["b"]
    )
    empty = MachineGroup(id="g3", name="none")
    assert [m.id for m in groups.members(builtin, fleet)] == ["a", "b"]
    assert [m.id for m in groups.members(by_meta, fleet)] == ["a"]
    assert [m.id for m in groups.members(by_both, fleet)] == ["b"]
    assert groups.members(empty, fleet) == []


@pytest.mark.parametrize("name", ["web", "web-default", "a.b_c-1", "x" * 128])
def test_good_names(name: str) -> None:
    assert groups.name_problem(name, "deployment") == ""


@pytest.mark.parametrize("name", ["", "-web", "web/../x", "a b", "x" * 129, "é"])
def test_bad_names_are_explained(name: str) -> None:
    assert "deployment name" in groups.name_problem(name, "deployment")


def test_keyset_pages_neither_skip_nor_repeat() -> None:
    items = [(3, "c"), (1, "a"), (2, "b"), (2, "a")]
    page, cursor = keyset_page(items, lambda i: i, 2, None)
    assert page == [(1, "a"), (2, "a")] and cursor == [2, "a"]
    items.append((1, "z"))  # created meanwhile, before the cursor: not repeated
    page, cursor = keyset_page(items, lambda i: i, 2, cursor)
    assert page == [(2, "b"), (3, "c")] and cursor is None
