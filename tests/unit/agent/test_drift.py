"""Drift rules (agent.drift), on plain values."""

from __future__ import annotations

from agent import drift
from agent.backends.base import UnitRuntime
from agent.reconciler import Observed, file_content, sha256_text
from agent.store import AppliedUnit
from proto.messages import (
    LABEL_DEPLOYMENT,
    LABEL_DRIFT,
    DesiredState,
    DesiredUnit,
    DriftEntry,
)
from proto.units import UnitOption, unit_hash

DIGEST = "sha256:" + "a" * 64
OTHER = "sha256:" + "b" * 64


def service(
    name: str = "web.service",
    state: DesiredState = "launched",
    cmd: str = "/bin/sleep 100",
    policy: str = "",
) -> DesiredUnit:
    opts = [UnitOption("Service", "ExecStart", cmd)]
    labels = {LABEL_DEPLOYMENT: "shop"} | ({LABEL_DRIFT: policy} if policy else {})
    return DesiredUnit(name, opts, desired_state=state, hash=unit_hash(opts), labels=labels)


def container(
    name: str = "db.container",
    state: DesiredState = "launched",
    digest: str = DIGEST,
    policy: str = "",
) -> DesiredUnit:
    opts = [UnitOption("Container", "Image", "busybox@" + DIGEST)]
    labels = {LABEL_DEPLOYMENT: "shop"} | ({LABEL_DRIFT: policy} if policy else {})
    return DesiredUnit(
        name, opts, desired_state=state, hash=unit_hash(opts), labels=labels, image_digest=digest
    )


def applied(u: DesiredUnit) -> AppliedUnit:
    sha = "" if u.name.endswith(".container") else sha256_text(file_content(u))
    return AppliedUnit(u.hash, u.desired_state, sha)


def on_disk(u: DesiredUnit, active: str = "active", sha: str | None = "same") -> Observed:
    file_sha = sha256_text(file_content(u)) if sha == "same" else sha
    return Observed(file_sha, UnitRuntime(u.name, load_state="loaded", active_state=active))


def running(
    u: DesiredUnit, active: str = "active", digest: str = DIGEST, hash: str | None = "same"
) -> Observed:
    sub = {"active": "running", "inactive": "exited", "failed": "exited"}[active]
    rt = UnitRuntime(u.name, "loaded", active, sub, image_digest=digest)
    return Observed(None, rt, container_hash=u.hash if hash == "same" else hash)


def kinds(entries: list[DriftEntry]) -> list[tuple[str, str]]:
    return [(e.unit, e.kind) for e in entries]


def check(*units: DesiredUnit, observed: dict[str, Observed], **kw: object) -> list[DriftEntry]:
    desired = {u.name: u for u in units}
    return drift.compute(desired, {u.name: applied(u) for u in units}, observed, **kw)  # type: ignore[arg-type]


def test_a_machine_as_it_was_told_has_no_drift() -> None:
    s, c = service(), container()
    loaded = service("idle.service", state="loaded")
    observed = {s.name: on_disk(s), c.name: running(c), loaded.name: on_disk(loaded, "inactive")}
    assert check(s, c, loaded, observed=observed) == []


def test_edited_unit_file_is_file_changed_with_both_hashes() -> None:
    s = service()
    [entry] = check(s, observed={s.name: on_disk(s, sha="f" * 64)})
    assert (entry.kind, entry.expected, entry.actual) == (
        "file_changed",
        applied(s).file_sha256,
        "f" * 64,
    )
    assert entry.deployment == "shop" and not entry.repairing


def test_unreadable_file_is_file_changed() -> None:
    s = service()
    [entry] = check(s, observed={s.name: on_disk(s, sha="unreadable")})
    assert entry.kind == "file_changed" and entry.actual == "unreadable"


def test_removed_unit_file_is_missing_not_also_a_state() -> None:
    s = service()
    entries = check(s, observed={s.name: on_disk(s, active="inactive", sha=None)})
    assert kinds(entries) == [("web.service", "missing")]
    assert entries[0].expected == applied(s).file_sha256


def test_stopped_by_hand_is_state_differs() -> None:
    s = service()
    [entry] = check(s, observed={s.name: on_disk(s, active="inactive")})
    assert (entry.kind, entry.expected, entry.actual) == ("state_differs", "active", "inactive")


def test_failed_and_running_when_loaded_are_state_differs() -> None:
    s, idle = service(), service("idle.service", state="loaded")
    entries = check(s, idle, observed={s.name: on_disk(s, "failed"), idle.name: on_disk(idle)})
    assert [(e.unit, e.expected, e.actual) for e in entries] == [
        ("idle.service", "inactive", "active"),
        ("web.service", "active", "failed"),
    ]


def test_activating_and_reloading_are_not_drift() -> None:
    s = service()
    for active in ("activating", "reloading"):
        assert check(s, observed={s.name: on_disk(s, active)}) == []


def test_unit_being_changed_is_not_judged() -> None:
    """Desired moved on, the agent has not applied it yet: work in progress, not drift."""
    old, new = service(cmd="/bin/sleep 1"), service(cmd="/bin/sleep 2")
    observed = {new.name: on_disk(old, active="inactive")}
    assert drift.compute({new.name: new}, {old.name: applied(old)}, observed) == []
    assert drift.compute({new.name: new}, {}, observed) == []  # never applied yet
    launched, loaded = service(), service(state="loaded")  # not stopped yet
    observed = {launched.name: on_disk(launched)}
    assert drift.compute({loaded.name: loaded}, {launched.name: applied(launched)}, observed) == []


def test_problems_are_state_differs_with_the_reason() -> None:
    c = container()
    [entry] = drift.compute({c.name: c}, {}, {}, problems={c.name: "cannot create: no image"})
    assert (entry.kind, entry.actual, entry.message) == (
        "state_differs",
        "failed",
        "cannot create: no image",
    )


def test_container_gone_is_missing() -> None:
    c = container()
    [entry] = check(c, observed={c.name: Observed(None, UnitRuntime(c.name))})
    assert (entry.kind, entry.expected) == ("missing", "moorage-db")


def test_container_of_another_image_is_image_differs() -> None:
    c = container()
    [entry] = check(c, observed={c.name: running(c, digest=OTHER)})
    assert (entry.kind, entry.expected, entry.actual) == ("image_differs", DIGEST, OTHER)


def test_unpinned_container_has_no_image_drift() -> None:
    c = container(digest="")
    assert check(c, observed={c.name: running(c, digest=OTHER)}) == []


def test_container_stopped_by_hand_is_state_differs() -> None:
    c = container()
    [entry] = check(c, observed={c.name: running(c, "inactive")})
    assert (entry.kind, entry.actual) == ("state_differs", "inactive")


def test_container_of_another_hash_is_state_differs() -> None:
    c = container()
    [entry] = check(c, observed={c.name: running(c, hash="0" * 40)})
    assert entry.kind == "state_differs" and entry.actual == "0" * 40


def test_extra_applied_unit_and_extra_labelled_container() -> None:
    gone = service("gone.service")
    observed = {gone.name: on_disk(gone), "stray.container": Observed(None, UnitRuntime("x"))}
    entries = drift.compute({}, {gone.name: applied(gone)}, observed, owned={"stray.container"})
    assert kinds(entries) == [("gone.service", "extra"), ("stray.container", "extra")]
    assert not any(e.repairing for e in entries)


def test_extra_that_is_gone_already_is_not_reported() -> None:
    gone = service("gone.service")
    observed = {gone.name: on_disk(gone, active="inactive", sha=None)}
    assert drift.compute({}, {gone.name: applied(gone)}, observed) == []


def test_labelled_container_of_a_desired_inactive_unit_is_extra() -> None:
    c = container(state="inactive")
    [entry] = drift.compute({c.name: c}, {}, {}, owned={c.name})
    assert entry.kind == "extra" and entry.deployment == "shop"


def test_repair_policy_marks_what_the_agent_restores() -> None:
    s = service(policy="repair")
    c = container(policy="repair")
    idle = service("idle.service", state="loaded", policy="repair")
    cases = {
        "edited": ({s.name: on_disk(s, sha="f" * 64)}, True),
        "stopped": ({s.name: on_disk(s, "inactive")}, True),
        "failed": ({s.name: on_disk(s, "failed")}, False),
        "file gone": ({s.name: on_disk(s, sha=None)}, True),
        "image": ({c.name: running(c, digest=OTHER)}, True),
        "container gone": ({c.name: Observed(None, UnitRuntime(c.name))}, True),
        "loaded runs": ({idle.name: on_disk(idle)}, True),
    }
    for what, (observed, repairing) in cases.items():
        units = [u for u in (s, c, idle) if u.name in observed]
        [entry] = check(*units, observed=observed)
        assert entry.repairing is repairing, what
    assert drift.repair_names(check(s, observed=cases["stopped"][0])) == {s.name}


def test_report_policy_and_unknown_policies_only_report() -> None:
    for policy in ("", "report", "fix-it"):
        s = service(policy=policy)
        [entry] = check(s, observed={s.name: on_disk(s, "inactive")})
        assert not entry.repairing, policy


def test_entries_are_sorted_by_unit_then_kind() -> None:
    a, b = service("a.service"), service("b.service")
    observed = {
        b.name: on_disk(b, "inactive", sha="f" * 64),
        a.name: on_disk(a, "failed"),
    }
    assert kinds(check(b, a, observed=observed)) == [
        ("a.service", "state_differs"),
        ("b.service", "file_changed"),
        ("b.service", "state_differs"),
    ]
