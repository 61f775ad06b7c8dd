"""The Docker backend's pure parts: states, the create body, log lines and cursors."""

from __future__ import annotations

import pytest

from agent.backends.docker import (
    DockerError,
    _after,
    _Numbering,
    _since,
    container_body,
    format_cursor,
    image_digest,
    parse_cursor,
    parse_env_file,
    parse_log_line,
    runtime_from_inspect,
)
from proto.container import (
    ContainerSpec,
    Healthcheck,
    PortMapping,
    RestartPolicy,
    VolumeMount,
    parse_container,
)
from proto.messages import DesiredUnit
from proto.units import parse_unit_file, unit_hash


def inspect(status: str, exit_code: int = 0, **state: object) -> dict[str, object]:
    return {
        "Id": "c" * 64,
        "Image": "sha256:" + "1" * 64,
        "State": {"Status": status, "ExitCode": exit_code, "Pid": 42 if status == "running" else 0}
        | state,
    }


@pytest.mark.parametrize(
    ("status", "exit_code", "extra", "active", "words"),
    [
        ("running", 0, {}, "active", ""),
        ("paused", 0, {}, "active", ""),
        ("restarting", 1, {}, "activating", "restarting after exit code 1"),
        ("created", 0, {}, "inactive", ""),
        ("created", 127, {"Error": "exec: nope: not found"}, "failed", "not found"),
        ("exited", 0, {}, "inactive", ""),
        ("exited", 143, {}, "inactive", "SIGTERM"),
        ("exited", 137, {}, "inactive", "SIGKILL"),
        ("exited", 137, {"OOMKilled": True}, "failed", "OOM"),
        ("exited", 3, {}, "failed", "exited with code 3"),
        ("exited", 139, {}, "failed", "exited with code 139"),
        ("dead", 0, {}, "failed", "dead"),
        ("removing", 0, {}, "deactivating", ""),
        (
            "running",
            0,
            {"Health": {"Status": "unhealthy", "Log": [{"Output": "boom\nmore"}]}},
            "failed",
            "unhealthy: boom",
        ),
        ("running", 0, {"Health": {"Status": "starting"}}, "activating", "not passed yet"),
        ("running", 0, {"Health": {"Status": "healthy"}}, "active", ""),
    ],
)
def test_states(
    status: str, exit_code: int, extra: dict[str, object], active: str, words: str
) -> None:
    rt = runtime_from_inspect("x.container", inspect(status, exit_code, **extra))
    assert (rt.load_state, rt.active_state, rt.sub_state) == ("loaded", active, status)
    assert words in rt.message
    assert rt.image_digest == "sha256:" + "1" * 64
    assert rt.main_pid == (42 if status == "running" else 0)


def test_image_digest_prefers_repo_digests() -> None:
    assert image_digest({"Id": "sha256:aa", "RepoDigests": []}) == "sha256:aa"
    assert image_digest({"Id": "sha256:aa", "RepoDigests": ["r/x@sha256:bb"]}) == "sha256:bb"
    assert image_digest({"Id": "sha256:aa"}) == "sha256:aa"


def test_create_body() -> None:
    text = """[Container]
Image=img:1
Exec=/bin/app --flag
Environment=A=1
PublishPort=127.0.0.1:8080:80
PublishPort=8081:80
PublishPort=53/udp
Volume=/srv:/data:ro
Volume=/anon
Label=team=web
Network=web-net
User=app
WorkingDir=/data
Memory=64M
HealthCmd=true
HealthInterval=10s
RunInit=yes
StopTimeout=5
[Service]
Restart=always
"""
    options = parse_unit_file(text)
    unit = DesiredUnit("web.container", options, hash=unit_hash(options), labels={"release": "r1"})
    body = container_body(unit, parse_container(options), {"A": "1", "B": "from file"})
    assert body == {
        "Image": "img:1",
        "Cmd": ["/bin/app", "--flag"],
        "Env": ["A=1", "B=from file"],
        "Labels": {
            "team": "web",
            "moorage.release": "r1",
            "moorage.unit": "web.container",
            "moorage.hash": unit.hash,
            "moorage.restart": "unless-stopped",
        },
        "User": "app",
        "WorkingDir": "/data",
        "StopTimeout": 5,
        "ExposedPorts": {"80/tcp": {}, "53/udp": {}},
        "Volumes": {"/anon": {}},
        "Healthcheck": {"Test": ["CMD-SHELL", "true"], "Interval": 10 * 10**9},
        "HostConfig": {
            "RestartPolicy": {"Name": "unless-stopped", "MaximumRetryCount": 0},
            "NetworkMode": "web-net",
            "Memory": 64 << 20,
            "Init": True,
            "PortBindings": {
                "80/tcp": [
                    {"HostIp": "127.0.0.1", "HostPort": "8080"},
                    {"HostIp": "", "HostPort": "8081"},
                ],
                "53/udp": [{"HostIp": "", "HostPort": ""}],
            },
            "Binds": ["/srv:/data:ro"],
        },
    }


def test_minimal_body_keeps_image_defaults() -> None:
    unit = DesiredUnit("m.container", [], hash="h")
    body = container_body(unit, ContainerSpec(image="img"), {})
    assert "Cmd" not in body and "Healthcheck" not in body and "StopTimeout" not in body
    assert body["HostConfig"] == {"RestartPolicy": {"Name": "no", "MaximumRetryCount": 0}}


def test_moorage_labels_win_over_the_units_own() -> None:
    unit = DesiredUnit("m.container", [], hash="h", labels={"moorage.unit": "evil"})
    spec = ContainerSpec(image="img", labels={"x": "y"})
    labels = container_body(unit, spec, {})["Labels"]
    assert labels["moorage.unit"] == "m.container" and labels["x"] == "y"


def test_spec_types_are_what_the_body_uses() -> None:
    spec = ContainerSpec(
        image="i",
        ports=[PortMapping(80)],
        volumes=[VolumeMount("/v", "vol")],
        healthcheck=Healthcheck(test=["NONE"]),
        restart=RestartPolicy("on-failure", 3),
    )
    body = container_body(DesiredUnit("u.container", [], hash="h"), spec, {})
    assert body["HostConfig"]["Binds"] == ["vol:/v:rw"]
    assert body["HostConfig"]["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 3}
    assert body["Labels"]["moorage.restart"] == "on-failure:3"
    assert body["Healthcheck"] == {"Test": ["NONE"]}


def test_restart_policy_labels_round_trip() -> None:
    for policy in (
        RestartPolicy(),
        RestartPolicy("unless-stopped"),
        RestartPolicy("on-failure", 5),
    ):
        assert RestartPolicy.from_label(policy.label()) == policy
    assert RestartPolicy.from_label("garbage") == RestartPolicy("no")


def test_env_files() -> None:
    text = "# comment\n\n  A=1\nB= spaced value \nC=x=y\nEMPTY=\n"
    assert parse_env_file(text, "/f") == {"A": "1", "B": " spaced value ", "C": "x=y", "EMPTY": ""}
    with pytest.raises(DockerError, match="/f line 1: expected NAME=VALUE"):
        parse_env_file("BARE\n", "/f")
    with pytest.raises(DockerError, match="invalid variable name"):
        parse_env_file("A B=1\n", "/f")


def test_log_lines() -> None:
    ts, message, seconds = parse_log_line(b"2024-05-06T07:08:09.123Z hello world\n")  # type: ignore[misc]
    assert ts == "2024-05-06T07:08:09.123000000Z"
    assert message == "hello world"
    assert seconds == pytest.approx(1714979289.123)
    assert parse_log_line(b"2024-05-06T07:08:09Z ")[:2] == ("2024-05-06T07:08:09.000000000Z", "")  # type: ignore[index]
    assert parse_log_line(b"not a timestamp") is None
    long = parse_log_line(b"2024-05-06T07:08:09Z " + b"x" * 70_000)
    assert long is not None and long[1].endswith("[truncated]")


def test_cursors_number_lines_sharing_a_timestamp() -> None:
    t1, t2 = "2024-05-06T07:08:09.000000001Z", "2024-05-06T07:08:09.000000002Z"
    numbering = _Numbering()
    lines = [numbering.line((t, m, 0.0)) for t, m in ((t1, "a"), (t1, "b"), (t2, "c"), (t2, "d"))]
    assert [line.cursor for line in lines] == [
        f"{t1}/0",
        f"{t1}/1",
        f"{t2}/0",
        f"{t2}/1",
    ]
    assert [line.cursor for line in lines] == sorted(line.cursor for line in lines)
    assert [line.message for line in _after(lines, parse_cursor(f"{t1}/1"))] == ["c", "d"]
    assert _after(lines, None) == lines
    # a window that starts inside a group continues its numbering
    continued = _Numbering(t1, 0).line((t1, "b", 0.0))
    assert continued.cursor == format_cursor(t1, 1)


def test_bad_cursors_are_refused() -> None:
    for bad in ("", "s=abc;i=1", "2024-05-06T07:08:09Z/0", "2024-05-06T07:08:09.000000001Z"):
        with pytest.raises(DockerError, match="invalid cursor"):
            parse_cursor(bad)


def test_since_is_a_little_earlier() -> None:
    since = _since("2024-05-06T07:08:09.500000000Z")
    assert 1714979289.498 < since < 1714979289.5


def test_container_usage_counts_memory_as_docker_stats_does() -> None:
    from agent.backends.docker import container_usage

    v2 = {
        "memory_stats": {"usage": 50_000_000, "stats": {"inactive_file": 8_000_000}},
        "cpu_stats": {"cpu_usage": {"total_usage": 123_456_789}},
    }
    assert container_usage(v2) == (42_000_000, 123_456_789)
    v1 = {"memory_stats": {"usage": 10, "stats": {"total_inactive_file": 4}}, "cpu_stats": {}}
    assert container_usage(v1) == (6, 0)
    assert container_usage({}) == (0, 0)  # a stopped container's sample is empty
