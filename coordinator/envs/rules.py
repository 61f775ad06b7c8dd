"""Promotion rules as pure functions over plain values: approvals, separation of
duties, freeze windows, promotion order, production, target binding, health."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from coordinator.envs.model import Approval, Environment, FreezeWindow, Promotion, Target


def approval_refusal(
    promotion: Promotion, approver: str, *, approver_names: Iterable[str] = ()
) -> str | None:
    """Why `approver` may not approve `promotion` now (None: they may). With separation
    of duties, neither the requester nor whoever built the release may approve; nobody
    approves twice."""
    if promotion.status != "pending_approval":
        return f"promotion {promotion.id} is {promotion.status}, not awaiting approval"
    who = {approver, *approver_names}
    if promotion.require_sod:
        if promotion.requested_by in who:
            return "separation of duties: the requester of a promotion cannot approve it"
        if promotion.built_by and promotion.built_by in who:
            return "separation of duties: whoever built the release cannot approve its promotion"
    if any(a.by == approver for a in promotion.approvals):
        return f"{approver} has already approved promotion {promotion.id}"
    return None


def approved(required: int, approvals: Sequence[Approval]) -> bool:
    """Enough distinct approvers."""
    return len({a.by for a in approvals}) >= required


def active_windows(windows: Iterable[FreezeWindow], now: float) -> list[FreezeWindow]:
    """The windows in force at `now` (start inclusive, end exclusive), earliest end first."""
    return sorted((w for w in windows if w.start <= now < w.end), key=lambda w: (w.end, w.id))


def freeze_verdict(
    windows: Iterable[FreezeWindow], now: float, actor_ids: Iterable[str]
) -> tuple[FreezeWindow | None, FreezeWindow | None]:
    """(refusing window, excepting window): the first active window that does not list
    any of `actor_ids` in its exceptions refuses; if every active window lists one,
    the first of them is the exception used. (None, None): no window is active."""
    ids = {str(a) for a in actor_ids if str(a)}
    excepted: FreezeWindow | None = None
    for w in active_windows(windows, now):
        if ids & set(w.exceptions):
            excepted = excepted or w
        else:
            return w, None
    return None, excepted


def announced_before(
    active: Mapping[str, FreezeWindow], now: float, grace_s: float
) -> dict[str, FreezeWindow]:
    """At the start of a tenure (a coordinator took the lease, or restarted): the active
    windows to take as already announced, those that started more than `grace_s` ago,
    while another coordinator (or this one, before) was watching; the others are
    announced now. Without it every failover told every webhook again that every
    active window had just started. Pure."""
    return {k: w for k, w in active.items() if w.start < now - grace_s}


def freeze_transitions(
    before: Mapping[str, FreezeWindow], now: Mapping[str, FreezeWindow]
) -> tuple[list[FreezeWindow], list[FreezeWindow]]:
    """(started, ended) between two sets of active windows by id, each by id."""
    started = [now[k] for k in sorted(set(now) - set(before))]
    ended = [before[k] for k in sorted(set(before) - set(now))]
    return started, ended


def ordered(envs: Iterable[Environment]) -> list[Environment]:
    return sorted(envs, key=lambda e: (e.order_index, e.name))


def predecessor(env: Environment, envs: Iterable[Environment]) -> Environment | None:
    """The environment a release must pass before `env`: the one named by
    autoPromoteFrom if set, else the next lower orderIndex (None: `env` is first)."""
    others = [e for e in envs if e.id != env.id]
    if env.auto_promote_from:
        for e in others:
            if env.auto_promote_from in (e.id, e.name):
                return e
    below = [e for e in ordered(others) if e.order_index < env.order_index]
    return below[-1] if below else None


def order_refusal(
    env: Environment,
    envs: Iterable[Environment],
    succeeded_in: Mapping[str, set[tuple[str, str]]],
    application_id: str,
    version: str,
) -> str | None:
    """Why (application, version) may not be promoted into `env` yet: under the default
    policy it must have succeeded in the predecessor. `succeeded_in`: environment id ->
    (application id, version) pairs that completed there."""
    if env.promotion_policy == "any":
        return None
    before = predecessor(env, envs)
    if before is None:
        return None
    if (application_id, version) in succeeded_in.get(before.id, set()):
        return None
    return (
        f"promotion order: version {version} has not been promoted successfully into"
        f" {before.name!r} (orderIndex {before.order_index}) before {env.name!r}"
    )


def auto_promotions(done_in: Environment, envs: Iterable[Environment]) -> list[Environment]:
    """Environments whose autoPromoteFrom names `done_in`."""
    return [
        e
        for e in ordered(envs)
        if e.id != done_in.id and e.auto_promote_from in (done_in.id, done_in.name)
    ]


def is_production(env: Environment, envs: Iterable[Environment]) -> bool:
    """Flagged production, or (not flagged either way) the highest orderIndex."""
    if env.is_production is not None:
        return env.is_production
    top = max((e.order_index for e in envs), default=env.order_index)
    return env.order_index >= top


def binds_to(target: Target, hostname: str, primary_ip: str, machine_id: str) -> bool:
    """A target binds to the machine it names explicitly, or whose hostname or primary
    IP is its connection.host."""
    if target.explicit_machine:
        return target.machine_id == machine_id
    host = str(target.connection.get("host", "")).strip().lower()
    return bool(host) and host in {hostname.lower(), primary_ip.lower(), machine_id.lower()}


def label_match(labels: Mapping[str, str], wanted: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in wanted.items())


def rollout_settings(config: Mapping[str, object]) -> tuple[float | None, float | None]:
    """(timeout_s, min_healthy_s) of rollouts into an environment: `deploymentTimeout`
    bounds how long a machine may take to become healthy, and a machine must stay
    healthy for one `healthCheckInterval` before its batch passes. None: the
    manifest's own."""

    def seconds(key: str) -> float | None:
        value = config.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            return None
        return float(value)

    return seconds("deploymentTimeout"), seconds("healthCheckInterval")


def health_of(
    error: str | None,
    backends: Mapping[str, str],
    docker_needed: bool,
    units: Mapping[str, str],
) -> tuple[str, str]:
    """(healthStatus, message) from what the agent just answered. `error`: why it could
    not be asked (not connected, no answer in time), None if it answered; `backends`:
    kind -> "" if it responded, else why not; `units`: the release's units -> state."""
    if error is not None:
        return "unreachable", error
    problems: list[str] = []
    parts: list[str] = []
    systemd = backends.get("systemd")
    if systemd:
        problems.append(f"systemd not responding: {systemd}")
    elif systemd is not None:
        parts.append("systemd running")
    if docker_needed:
        docker = backends.get("docker")
        if docker is None or docker:
            problems.append(f"Docker daemon not responding: {docker or 'no Docker backend'}")
        else:
            parts.insert(0, "Docker daemon responding")
    problems += [f"{n} is {units[n]}" for n in sorted(units) if units[n] != "active"]
    if problems:
        return "unhealthy", "; ".join(problems)
    if units:
        parts.append(f"{len(units)} unit(s) of the release active")
    return "healthy", ", ".join(parts) or "agent answered"
