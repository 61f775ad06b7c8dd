"""`.container` unit options: what is accepted, what is refused (naming the key), and how."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coordinator.fleet.validation import UnitInvalid, validate_unit
from proto.container import (
    ContainerOptionError,
    ContainerSpec,
    EnvironmentFile,
    Healthcheck,
    PortMapping,
    RestartPolicy,
    VolumeMount,
    container_name,
    join_words,
    parse_container,
    parse_duration_ns,
    parse_size,
    split_words,
)
from proto.units import UnitOption, parse_unit_file

IMAGE = "moorage-test/busybox:1"


def spec(lines: str, *, section: str = "Container") -> ContainerSpec:
    text = f"[Container]\nImage={IMAGE}\n"
    if lines:
        text += f"[{section}]\n{lines}\n" if section != "Container" else f"{lines}\n"
    return parse_container(parse_unit_file(text))


def refused(lines: str, *, section: str = "Container") -> ContainerOptionError:
    with pytest.raises(ContainerOptionError) as info:
        spec(lines, section=section)
    return info.value


# --------------------------------------------------------------------------- accepted


def test_minimal_unit_is_the_image_with_docker_defaults() -> None:
    assert spec("") == ContainerSpec(image=IMAGE)
    assert spec("").restart == RestartPolicy("no")


def test_full_unit() -> None:
    text = f"""[Unit]
Description=web
Documentation=https://example.invalid/doc

[Container]
Image={IMAGE}
Exec=/bin/sh -c 'echo hi; sleep 300'
Environment="GREETING=hello world" MODE=prod
Environment=MODE=test
EnvironmentFile=/etc/web.env
EnvironmentFile=-/etc/web.local.env
PublishPort=127.0.0.1:8080:80
PublishPort=53:53/udp
Volume=/srv/web:/data:ro
Volume=cache:/cache
Label=team=web "note=two words"
Network=host
User=1000:1000
WorkingDir=/data
Memory=512M
HealthCmd=wget -q -O- http://localhost/
HealthInterval=30s
HealthTimeout=2s
HealthStartPeriod=1min
HealthRetries=5
RunInit=yes
StopTimeout=20

[Service]
Restart=on-failure

[Install]
WantedBy=multi-user.target

[X-Fleet]
MachineMetadata=role=web
"""
    text = text.replace("Network=host", "Network=web-net")
    got = parse_container(parse_unit_file(text))
    assert got == ContainerSpec(
        image=IMAGE,
        command=["/bin/sh", "-c", "echo hi; sleep 300"],
        environment={"GREETING": "hello world", "MODE": "test"},
        environment_files=[
            EnvironmentFile("/etc/web.env"),
            EnvironmentFile("/etc/web.local.env", True),
        ],
        ports=[PortMapping(80, "tcp", 8080, "127.0.0.1"), PortMapping(53, "udp", 53)],
        volumes=[VolumeMount("/data", "/srv/web", True), VolumeMount("/cache", "cache")],
        labels={"team": "web", "note": "two words"},
        network="web-net",
        user="1000:1000",
        working_dir="/data",
        memory_bytes=512 << 20,
        healthcheck=Healthcheck(
            test=["CMD-SHELL", "wget -q -O- http://localhost/"],
            interval_ns=30 * 10**9,
            timeout_ns=2 * 10**9,
            start_period_ns=60 * 10**9,
            retries=5,
        ),
        restart=RestartPolicy("on-failure"),
        init=True,
        stop_timeout_s=20,
    )


@pytest.mark.parametrize(
    ("line", "field", "expected"),
    [
        ("Exec=", "command", None),
        ("Exec=/bin/true", "command", ["/bin/true"]),
        ("Exec=a\"b c\"d 'e f' \\s g", "command", ["ab cd", "e f", " ", "g"]),
        ("Exec=echo \\x41\\101\\u00e9\\n", "command", ["echo", "AAé\n"]),
        ("Environment=A=1 B=", "environment", {"A": "1", "B": ""}),
        ('Environment="A=x y" A=z', "environment", {"A": "z"}),
        ("Environment=A=1\nEnvironment=\nEnvironment=B=2", "environment", {"B": "2"}),
        ("Environment=A=a=b", "environment", {"A": "a=b"}),
        ("PublishPort=80", "ports", [PortMapping(80)]),
        ("PublishPort=8080:80", "ports", [PortMapping(80, host_port=8080)]),
        ("PublishPort=:80/sctp", "ports", [PortMapping(80, "sctp")]),
        ("PublishPort=10.0.0.1::80", "ports", [PortMapping(80, host_ip="10.0.0.1")]),
        ("PublishPort=[::1]:8080:80", "ports", [PortMapping(80, host_port=8080, host_ip="::1")]),
        ("Volume=/data", "volumes", [VolumeMount("/data")]),
        ("Volume=/a:/b:rw", "volumes", [VolumeMount("/b", "/a")]),
        ("Volume=my-vol:/b:ro", "volumes", [VolumeMount("/b", "my-vol", True)]),
        ("Memory=6M", "memory_bytes", 6 << 20),
        ("Memory=1g", "memory_bytes", 1 << 30),
        ("Memory=1.5GiB", "memory_bytes", 3 << 29),
        ("Memory=10000000", "memory_bytes", 10_000_000),
        ("Network=none", "network", "none"),
        ("User=nobody", "user", "nobody"),
        ("RunInit=false", "init", False),
        ("StopTimeout=1.5", "stop_timeout_s", 2),
        ("StopTimeout=0", "stop_timeout_s", 0),
        ("HealthCmd=none", "healthcheck", Healthcheck(test=["NONE"])),
        ("HealthInterval=1m30s", "healthcheck", Healthcheck(interval_ns=90 * 10**9)),
        ("Label=a.b/c-d=e", "labels", {"a.b/c-d": "e"}),
    ],
)
def test_accepted_values(line: str, field: str, expected: object) -> None:
    assert getattr(spec(line), field) == expected


@pytest.mark.parametrize(
    ("value", "policy"),
    [
        ("no", "no"),
        ("always", "unless-stopped"),
        ("unless-stopped", "unless-stopped"),
        ("on-failure", "on-failure"),
    ],
)
def test_restart_maps_to_docker_policies(value: str, policy: str) -> None:
    assert spec(f"Restart={value}", section="Service").restart == RestartPolicy(policy)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "image",
    [
        "busybox",
        "busybox:1.36",
        "library/busybox:latest",
        "registry.example.com:5000/team/app:v1.2-rc_3",
        "localhost/app",
        "localhost:1/a/b",
        "app@sha256:" + "a" * 64,
        "app:1@sha256:" + "0" * 64,
        "a__b.c-d/e",
        "[::1]:5000/app",
    ],
)
def test_image_references_accepted(image: str) -> None:
    assert parse_container([UnitOption("Container", "Image", image)]).image == image


# --------------------------------------------------------------------------- refused


@pytest.mark.parametrize(
    ("line", "key", "words"),
    [
        ("Imag=x", "Imag", "unknown key"),
        ("Privileged=true", "Privileged", "unknown key"),
        ("Image=", "Image", "required"),
        ("Image=Busybox", "Image", "invalid image reference"),
        ("Image=busybox:", "Image", "invalid image reference"),
        ("Image=bad image", "Image", "whitespace"),
        ("Image=app@sha256:abc", "Image", "invalid image reference"),
        ("Image=-app", "Image", "invalid image reference"),
        ("Exec=sh -c 'unterminated", "Exec", "unterminated"),
        ("Exec=echo \\q", "Exec", "invalid escape"),
        ("Exec=echo \\x0", "Exec", "invalid escape"),
        ("Exec=echo \\0", "Exec", "invalid escape"),
        ("Exec=echo \\x00", "Exec", "NUL"),
        ("Environment=NOEQUALS", "Environment", "NAME=VALUE"),
        ("Environment=1A=x", "Environment", "invalid variable name"),
        ("Environment=A-B=x", "Environment", "invalid variable name"),
        ("Environment==x", "Environment", "invalid variable name"),
        ("EnvironmentFile=relative.env", "EnvironmentFile", "absolute"),
        ("PublishPort=99999:80", "PublishPort", "1-65535"),
        ("PublishPort=80:0", "PublishPort", "1-65535"),
        ("PublishPort=8000-8010:80", "PublishPort", "ranges"),
        ("PublishPort=80/icmp", "PublishPort", "protocol"),
        ("PublishPort=999.1.1.1:80:80", "PublishPort", "IP address"),
        ("PublishPort=a:b:c:d", "PublishPort", "expected"),
        ("PublishPort=http", "PublishPort", "container port"),
        ("PublishPort=[::1:80:80", "PublishPort", "IPv6"),
        ("Volume=relative/path:/data", "Volume", "absolute host path or a volume name"),
        ("Volume=/a:relative", "Volume", "absolute path"),
        ("Volume=/a:/b:rx", "Volume", "invalid mode"),
        ("Volume=/a:/", "Volume", "cannot mount over /"),
        ("Volume=:/b", "Volume", "empty source"),
        ("Volume=/a:/b:ro:x", "Volume", "expected"),
        ("Volume=/a:/b\nVolume=/c:/b", "Volume", "mounted twice"),
        ("Label=moorage.unit=x", "Label", "reserved"),
        ("Label=novalue", "Label", "KEY=VALUE"),
        ("Label=-x=y", "Label", "invalid label key"),
        ("Network=container:other", "Network", "not supported"),
        ("Network=bad name", "Network", "invalid network name"),
        ("User=a b", "User", "USER[:GROUP]"),
        ("User=a:", "User", "USER[:GROUP]"),
        ("WorkingDir=data", "WorkingDir", "absolute"),
        ("Memory=lots", "Memory", "invalid size"),
        ("Memory=1k", "Memory", "minimum"),
        ("Memory=-5M", "Memory", "invalid size"),
        ("Memory=5P", "Memory", "invalid size"),
        ("HealthInterval=5 fortnights", "HealthInterval", "unknown time unit"),
        ("HealthInterval=infinity", "HealthInterval", "time"),
        ("HealthInterval=100us", "HealthInterval", "at least 1ms"),
        ("HealthTimeout=-1s", "HealthTimeout", "invalid time span"),
        ("HealthRetries=three", "HealthRetries", "whole number"),
        ("HealthCmd=none\nHealthRetries=3", "HealthRetries", "HealthCmd=none"),
        ("RunInit=maybe", "RunInit", "boolean"),
        ("StopTimeout=soon", "StopTimeout", "time span"),
        ("Network=none\nPublishPort=80", "PublishPort", "Network=none"),
        ("PublishPort=80\nNetwork=host", "PublishPort", "Network=host"),
    ],
)
def test_refused_values_name_the_key(line: str, key: str, words: str) -> None:
    error = refused(line)
    assert error.section == "Container" and error.key == key
    assert str(error).startswith(f"[Container] {key}: ")
    assert words in str(error)


@pytest.mark.parametrize(
    ("text", "section", "key", "words"),
    [
        ("[Service]\nRestart=on-success\n", "Service", "Restart", "no Docker restart policy"),
        ("[Service]\nRestart=on-abnormal\n", "Service", "Restart", "no Docker restart policy"),
        ("[Service]\nRestartSec=5\n", "Service", "RestartSec", "only Restart="),
        ("[Service]\nExecStart=/bin/true\n", "Service", "ExecStart", "only Restart="),
        ("[Unit]\nAfter=network.target\n", "Unit", "After", "not supported"),
        ("[Socket]\nListenStream=80\n", "Socket", "", "section not allowed"),
        ("[container]\nImage=x\n", "container", "", "section not allowed"),
    ],
)
def test_other_sections(text: str, section: str, key: str, words: str) -> None:
    with pytest.raises(ContainerOptionError) as info:
        parse_container(parse_unit_file(f"[Container]\nImage={IMAGE}\n{text}"))
    assert (info.value.section, info.value.key) == (section, key)
    assert words in str(info.value)


def test_trailing_backslash_is_refused() -> None:
    # In a unit file a trailing backslash continues the line; as an API value it is refused.
    with pytest.raises(ContainerOptionError, match="trailing backslash"):
        parse_container(
            [UnitOption("Container", "Image", IMAGE), UnitOption("Container", "Exec", "a\\")]
        )


def test_image_is_required_even_without_a_container_section() -> None:
    with pytest.raises(ContainerOptionError, match=r"\[Container\] Image: required"):
        parse_container(parse_unit_file("[Unit]\nDescription=x\n"))


def test_last_assignment_wins_for_single_keys() -> None:
    assert spec("Image=other:2\nNetwork=a\nNetwork=b") == ContainerSpec(
        image="other:2", network="b"
    )


def test_coordinator_validation_uses_it() -> None:
    options = parse_unit_file(f"[Container]\nImage={IMAGE}\nPublishPort=http\n")
    with pytest.raises(UnitInvalid, match=r"\[Container\] PublishPort"):
        validate_unit("web.container", options)
    validate_unit("web.service", options)  # not a container: [Container] means nothing there
    validate_unit("web.container", parse_unit_file(f"[Container]\nImage={IMAGE}\n"))


# --------------------------------------------------------------------------- values


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("30", 30 * 10**9),
        ("30s", 30 * 10**9),
        ("1min 30s", 90 * 10**9),
        ("1m30s", 90 * 10**9),
        ("1h", 3600 * 10**9),
        ("500ms", 500 * 10**6),
        ("1.5s", 1500 * 10**6),
        (".5s", 500 * 10**6),
        ("2d 3h", (2 * 24 + 3) * 3600 * 10**9),
        ("10us", 10_000),
        ("7ns", 7),
        ("1w", 7 * 86400 * 10**9),
        ("0", 0),
    ],
)
def test_durations(text: str, ns: int) -> None:
    assert parse_duration_ns(text) == ns


@pytest.mark.parametrize("text", ["", "s", "5x", "-1s", "1M", "infinity", "1s-2s", "1 2"])
def test_bad_durations(text: str) -> None:
    if text == "1 2":  # systemd adds bare numbers up: 1s + 2s
        assert parse_duration_ns(text) == 3 * 10**9
        return
    with pytest.raises(ValueError):
        parse_duration_ns(text)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("512", 512),
        ("1K", 1024),
        ("1k", 1024),
        ("2MB", 2 << 20),
        ("3GiB", 3 << 30),
        ("1T", 1 << 40),
        ("7B", 7),
    ],
)
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_container_names() -> None:
    assert container_name("web.container") == "moorage-web"
    assert container_name("a_b-c.d.container") == "moorage-a_b-c.d"
    odd = container_name("a:b.container")
    assert odd.startswith("moorage-a_b-") and len(odd) == len("moorage-a_b-") + 8
    assert container_name("a\\b.container") != odd  # same sanitised stem, other hash
    assert container_name("a:b.container") == odd  # deterministic


# --------------------------------------------------------------------------- round trips

_word_chars = st.characters(codec="utf-8", exclude_characters="\0", max_codepoint=0x2FF)
words = st.lists(st.text(_word_chars, max_size=12), max_size=6)


@given(words)
def test_split_words_inverts_join_words(argv: list[str]) -> None:
    assert split_words(join_words(argv)) == argv


@given(words.filter(lambda a: bool(a) and a[0] != ""))
def test_exec_round_trips_through_the_unit_file(argv: list[str]) -> None:
    joined = join_words(argv)
    if "\n" in joined or joined != joined.strip():
        return  # a unit-file value cannot hold those bare (join_words never emits them)
    got = spec(f"Exec={joined}").command
    assert got == argv


env_names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True)
env_values = st.text(
    st.characters(exclude_categories=("Cs", "Cc"), max_codepoint=0x2FF), max_size=12
)


@given(st.dictionaries(env_names, env_values, min_size=1, max_size=5))
def test_environment_round_trips(env: dict[str, str]) -> None:
    line = join_words([f"{k}={v}" for k, v in env.items()])
    assert spec(f"Environment={line}").environment == env


@given(
    st.integers(1, 65535),
    st.sampled_from(["tcp", "udp", "sctp"]),
    st.integers(0, 65535),
    st.sampled_from(["", "127.0.0.1", "::1", "10.1.2.3"]),
)
def test_ports_round_trip(container: int, protocol: str, host: int, ip: str) -> None:
    host_text = str(host) if host else ""
    address = f"[{ip}]" if ":" in ip else ip
    text = (
        f"{address}:{host_text}:{container}/{protocol}"
        if ip
        else f"{host_text}:{container}/{protocol}"
    )
    assert spec(f"PublishPort={text}").ports == [PortMapping(container, protocol, host, ip)]  # type: ignore[arg-type]


@given(st.text(string.ascii_letters + string.digits + "_.-", min_size=1, max_size=40))
def test_container_names_are_docker_names(stem: str) -> None:
    name = container_name(stem + ".container")
    assert all(c in string.ascii_letters + string.digits + "_.-" for c in name)
