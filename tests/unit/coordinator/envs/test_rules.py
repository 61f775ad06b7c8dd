"""The promotion rules, as pure functions: approvals, separation of duties, freeze
windows, promotion order, production, binding, health."""

from __future__ import annotations

from coordinator.envs import rules
from coordinator.envs.model import Approval, Environment, FreezeWindow, Promotion, Target


def env(name: str, order: int, **kw: object) -> Environment:
    return Environment(id=f"id-{name}", name=name, order_index=order, **kw)  # type: ignore[arg-type]


def promotion(**kw: object) -> Promotion:
    base: dict[str, object] = {
        "id": "p1",
        "environment_id": "id-prod",
        "application_id": "app",
        "version": "1",
        "requested_by": "user:1",
        "required_approvals": 2,
        "require_sod": True,
    }
    return Promotion(**(base | kw))  # type: ignore[arg-type]


def window(
    start: float, end: float, exceptions: list[str] | None = None, wid: str = "w"
) -> FreezeWindow:
    return FreezeWindow(
        id=wid,
        environment_id="e",
        start=start,
        end=end,
        reason="holiday",
        exceptions=exceptions or [],
    )


def test_separation_of_duties_refuses_the_requester_and_the_builder() -> None:
    p = promotion(built_by="user:9")
    assert "requester" in (rules.approval_refusal(p, "user:1") or "")
    assert "built the release" in (rules.approval_refusal(p, "user:9") or "")
    assert rules.approval_refusal(p, "user:2") is None
    # Without separation of duties, the requester may approve.
    assert rules.approval_refusal(promotion(require_sod=False), "user:1") is None


def test_nobody_approves_twice_nor_a_settled_promotion() -> None:
    p = promotion(approvals=[Approval(by="user:2")])
    assert "already approved" in (rules.approval_refusal(p, "user:2") or "")
    assert "not awaiting" in (rules.approval_refusal(promotion(status="completed"), "user:2") or "")


def test_approvals_count_distinct_approvers() -> None:
    assert rules.approved(0, [])
    assert not rules.approved(2, [Approval(by="a"), Approval(by="a")])
    assert rules.approved(2, [Approval(by="a"), Approval(by="b")])


def test_a_window_is_active_from_start_until_end() -> None:
    w = window(100, 200)
    assert rules.active_windows([w], 99.9) == []
    assert rules.active_windows([w], 100) == [w]
    assert rules.active_windows([w], 199.9) == [w]
    assert rules.active_windows([w], 200) == []


def test_freeze_refuses_unless_every_active_window_excepts_the_actor() -> None:
    a = window(0, 100, ["7"], "a")
    b = window(0, 200, [], "b")
    assert rules.freeze_verdict([a], 50, ["user:1"]) == (a, None)
    assert rules.freeze_verdict([a], 50, ["user:7", "7"]) == (None, a)
    assert rules.freeze_verdict([a, b], 50, ["7"]) == (b, None)
    assert rules.freeze_verdict([a, b], 150, ["7"]) == (b, None)
    assert rules.freeze_verdict([a, b], 250, ["x"]) == (None, None)


def test_promotion_order_follows_order_index_unless_the_policy_says_any() -> None:
    dev, staging, prod = env("dev", 1), env("staging", 2), env("prod", 3)
    envs = [prod, dev, staging]
    assert rules.predecessor(prod, envs) == staging
    assert rules.predecessor(dev, envs) is None
    assert rules.order_refusal(dev, envs, {}, "app", "1") is None
    refusal = rules.order_refusal(prod, envs, {"id-dev": {("app", "1")}}, "app", "1")
    assert refusal is not None and "'staging'" in refusal
    assert rules.order_refusal(prod, envs, {"id-staging": {("app", "1")}}, "app", "1") is None
    anyway = env("prod", 3, promotion_policy="any")
    assert rules.order_refusal(anyway, envs, {}, "app", "1") is None


def test_auto_promote_from_names_the_predecessor_and_the_followers() -> None:
    dev, staging = env("dev", 1), env("staging", 2, auto_promote_from="dev")
    qa = env("qa", 5, auto_promote_from="id-dev")
    envs = [dev, staging, qa]
    assert rules.predecessor(qa, envs) == dev
    assert [e.name for e in rules.auto_promotions(dev, envs)] == ["staging", "qa"]
    assert rules.auto_promotions(staging, envs) == []


def test_production_is_flagged_or_the_highest_order_index() -> None:
    dev, prod = env("dev", 1), env("prod", 3)
    assert rules.is_production(prod, [dev, prod]) and not rules.is_production(dev, [dev, prod])
    assert rules.is_production(env("dev", 1, is_production=True), [dev, prod])
    assert not rules.is_production(env("prod", 3, is_production=False), [dev, prod])


def test_a_target_binds_by_hostname_ip_or_explicit_machine() -> None:
    t = Target(
        id="t",
        environment_id="e",
        name="web",
        target_type="docker_host",
        connection={"host": "Web-1"},
    )
    assert rules.binds_to(t, "web-1", "10.0.0.2", "m1")
    assert rules.binds_to(
        Target(
            id="t",
            environment_id="e",
            name="w",
            target_type="docker_host",
            connection={"host": "10.0.0.2"},
        ),
        "x",
        "10.0.0.2",
        "m1",
    )
    assert not rules.binds_to(t, "web-2", "10.0.0.3", "m2")
    explicit = Target(
        id="t",
        environment_id="e",
        name="w",
        target_type="docker_host",
        machine_id="m2",
        explicit_machine=True,
    )
    assert rules.binds_to(explicit, "", "", "m2") and not rules.binds_to(explicit, "m1", "", "m1")
    assert rules.label_match({"role": "web", "dc": "a"}, {"role": "web"})
    assert not rules.label_match({"role": "db"}, {"role": "web"})


def test_health_from_what_the_agent_answered() -> None:
    assert rules.health_of("machine m1 is not connected", {}, True, {}) == (
        "unreachable",
        "machine m1 is not connected",
    )
    status, message = rules.health_of(
        None, {"systemd": "", "docker": ""}, True, {"a.service": "active"}
    )
    assert status == "healthy"
    assert message.startswith("Docker daemon responding") and "1 unit(s)" in message
    status, message = rules.health_of(None, {"systemd": "", "docker": "socket refused"}, True, {})
    assert status == "unhealthy" and "Docker daemon not responding: socket refused" in message
    status, message = rules.health_of(None, {"systemd": ""}, False, {"a.service": "failed"})
    assert (status, message) == ("unhealthy", "a.service is failed")


def test_freeze_transitions_start_and_end_windows_once() -> None:
    a, b = window(0, 10, wid="a"), window(5, 20, wid="b")
    assert rules.freeze_transitions({}, {"a": a}) == ([a], [])
    assert rules.freeze_transitions({"a": a}, {"a": a, "b": b}) == ([b], [])
    assert rules.freeze_transitions({"a": a, "b": b}, {"b": b}) == ([], [a])
    assert rules.freeze_transitions({"b": b}, {}) == ([], [b])


def test_a_new_tenure_announces_only_windows_that_started_lately() -> None:
    old, new = window(0, 1000, wid="old"), window(95, 1000, wid="new")
    active = {"old": old, "new": new}
    before = rules.announced_before(active, now=100.0, grace_s=15.0)
    assert before == {"old": old}  # started 100 s ago: the previous watcher told of it
    assert rules.freeze_transitions(before, active) == ([new], [])


def test_rollouts_take_the_environments_timeout_and_health_interval() -> None:
    assert rules.rollout_settings({"deploymentTimeout": 600, "healthCheckInterval": 30}) == (
        600.0,
        30.0,
    )
    assert rules.rollout_settings({}) == (None, None)
    assert rules.rollout_settings({"deploymentTimeout": True, "healthCheckInterval": 0}) == (
        None,
        None,
    )
