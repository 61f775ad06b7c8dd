"""The security probe's findings as pure-function regressions: limits, nesting, names,
the re-enrolment rule, agent message ranges and the per-session rate limit."""

from __future__ import annotations

import msgspec
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from coordinator import limits
from coordinator.api.errors import ApiError, decode_fleet
from coordinator.api.fleet_manager import same_shape
from coordinator.deploy.groups import name_problem, version_problem
from coordinator.deploy.manifest import ManifestError, parse_manifest
from coordinator.fleet.validation import UnitInvalid, validate_unit
from proto import messages as m
from proto.enrolment import machine_id_problem
from proto.tokens import enrolment_refusal
from proto.units import UnitOption

# --- bodies and nesting ---------------------------------------------------------------


def test_route_body_limits() -> None:
    assert limits.body_limit("POST", "/agent/v1/enroll") == 64 << 10
    assert limits.body_limit("post", "/agent/v1/enroll") == 64 << 10
    assert limits.body_limit("PUT", "/moorage/v1/units") == 256 << 20
    assert limits.body_limit("POST", "/api/v2/cluster-groups") == limits.DEFAULT_BODY_MAX
    assert limits.body_limit("GET", "") == limits.DEFAULT_BODY_MAX


def test_json_10000_deep_is_too_deep_not_a_recursion_error() -> None:
    deep = b"[" * 10_000 + b"]" * 10_000
    with pytest.raises(limits.TooDeep):
        limits.decode_json(deep, object)
    # Skipped unknown fields recurse too (the fleet and /api/v2 bodies' case).
    body = b'{"name": "x", "junk": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"
    with pytest.raises(ApiError) as caught:
        decode_fleet(body, dict)
    assert caught.value.status == 400


def test_yaml_5000_deep_names_the_line() -> None:
    text = "units: " + "[" * 5000 + "]" * 5000 + "\n"
    with pytest.raises(yaml.YAMLError, match="nested too deeply"):
        limits.compose_yaml(text)
    with pytest.raises(ManifestError, match=r"line 1: .*nested too deeply"):
        parse_manifest(text)
    block = "units:\n" + "".join("  " * i + "-\n" for i in range(1, 200))
    with pytest.raises(ManifestError, match="nested too deeply"):
        parse_manifest(block)


def test_yaml_nesting_within_the_limit_is_parsed() -> None:
    depth = limits.MAX_YAML_DEPTH - 1
    node = limits.compose_yaml("[" * depth + "]" * depth)
    assert isinstance(node, yaml.SequenceNode)


def test_manifest_size_and_unit_count_caps() -> None:
    huge = "units: []\n#" + "x" * limits.MANIFEST_MAX_BYTES
    with pytest.raises(ManifestError, match="at most"):
        parse_manifest(huge)
    many = "units:\n" + "".join(
        f'  - name: u{i}.service\n    contents: "[Service]\\nExecStart=/bin/true\\n"\n'
        for i in range(limits.MANIFEST_MAX_UNITS + 1)
    )
    with pytest.raises(ManifestError, match=f"at most {limits.MANIFEST_MAX_UNITS}"):
        parse_manifest(many)


def test_msgpack_nested_200000_deep_is_a_frame_error() -> None:
    for frame in (
        b"\x91" * 200_000 + b"\xc0",
        # a known message with a deep unknown field (skipped, recursively)
        b"\x82\xa4type\xa9heartbeat\xa1x" + b"\x91" * 200_000 + b"\xc0",
        b"\x81" + b"\x81\xa1k" * 100_000 + b"\xc0",
    ):
        with pytest.raises(m.FrameError) as caught:
            m.decode(frame)
        assert caught.value.reason in ("too_deep", "invalid")


# --- units --------------------------------------------------------------------------------


def test_a_unit_that_cannot_reach_an_agent_is_refused() -> None:
    many = [UnitOption("Service", "Environment", f"K{i}=v") for i in range(500_000)]
    with pytest.raises(UnitInvalid, match=f"at most {limits.UNIT_MAX_OPTIONS} are accepted"):
        validate_unit("many.service", many)
    big = [UnitOption("Service", "Environment", "K=" + "v" * 2000) for _ in range(200)]
    with pytest.raises(UnitInvalid, match="frame"):
        validate_unit("big.service", big)
    # The largest accepted unit fits a frame with room to spare.
    fits = [UnitOption("Service", "Environment", "K=" + "v" * 1000)] * 200
    validate_unit("fits.service", fits)
    frame = m.encode(m.Desired(revision=1, upserts=[m.DesiredUnit("fits.service", fits)]))
    assert len(frame) < m.MAX_FRAME // 4


# --- names ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["web\n", "web\n\n", "\nweb", "we b", "", "-web", "x" * 129])
def test_bad_group_names_are_refused(name: str) -> None:
    assert name_problem(name, "cluster group")


@pytest.mark.parametrize("name", ["web", "web-1.prod_2", "x" * 128])
def test_good_group_names_pass(name: str) -> None:
    assert name_problem(name, "cluster group") == ""


def test_machine_id_with_a_trailing_newline_is_refused() -> None:
    assert machine_id_problem("m1\n")
    assert machine_id_problem("m1") is None


@pytest.mark.parametrize("label", ["1", "v2.3.0", "2024-05-01+build.7", ""])
def test_version_labels_pass(label: str) -> None:
    assert version_problem(label) == ""


@pytest.mark.parametrize("label", ["v1\n", "latest", "a b", "../x", "-1", "v" * 65, "é"])
def test_bad_version_labels_are_refused(label: str) -> None:
    assert version_problem(label)


@given(st.text(max_size=20))
def test_names_that_pass_are_plain(name: str) -> None:
    if name_problem(name, "group") == "":
        assert name.strip() == name and "\n" not in name and "/" not in name


# --- cursors --------------------------------------------------------------------------------


def test_cursor_shape() -> None:
    assert same_shape([1, 1700000000.5, "id"], (1, 1700000000.0, "x"))
    assert not same_shape(["a", None], (1, 1.0, "x"))
    assert not same_shape(["a", None], ("a", "b"))
    assert not same_shape([True], (1,))
    assert not same_shape([], ("x",))


# --- enrolment -------------------------------------------------------------------------------


def test_enrolment_rule() -> None:
    assert enrolment_refusal("m1", "", enrolled=False, revoked=False) is None
    refusal = enrolment_refusal("m1", "", enrolled=True, revoked=False)
    assert refusal is not None and refusal[0] == 409
    assert "moorctl machine revoke m1" in refusal[1]
    assert "moorctl token create --machine m1" in refusal[1]
    assert enrolment_refusal("m1", "", enrolled=True, revoked=True) is None
    assert enrolment_refusal("m1", "m1", enrolled=True, revoked=False) is None
    assert enrolment_refusal("m1", "m1", enrolled=False, revoked=False) is None
    bound_elsewhere = enrolment_refusal("m2", "m1", enrolled=False, revoked=False)
    assert bound_elsewhere is not None and bound_elsewhere[0] == 403


# --- agent messages ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        m.Applied(revision=-1),
        m.Applied(revision=2**63 - 1),
        m.Hello(proto=1, machine_id="m", applied_revision=-5),
        m.Heartbeat(seq=-1),
        m.StateReport(changes=[m.UnitStatus("a.service", main_pid=-3)]),
        m.StateReport(removed=["x.service"] * (limits.MAX_LIST + 1)),
    ],
)
def test_out_of_range_agent_values(message: m.Message) -> None:
    assert limits.message_problem(message)


@pytest.mark.parametrize(
    "message",
    [
        m.Applied(revision=0),
        m.Applied(revision=2**53),
        m.Hello(proto=1, machine_id="m", applied_revision=12),
        m.Heartbeat(seq=7, sent_at=1.0),
        m.StateReport(changes=[m.UnitStatus("a.service", main_pid=4242)]),
    ],
)
def test_ordinary_agent_values(message: m.Message) -> None:
    assert limits.message_problem(message) == ""


def test_expensive_requests_are_rate_limited() -> None:
    assert limits.is_expensive(m.Error("resync", ""))
    assert limits.is_expensive(m.CertRenew("csr"))
    assert not limits.is_expensive(m.Error("frame_invalid", ""))
    assert not limits.is_expensive(m.Heartbeat(1))
    bucket = limits.TokenBucket(rate=0.5, burst=5, now=0.0)
    allowed = sum(bucket.take(0.0) for _ in range(500))
    assert allowed == 5
    assert not bucket.take(1.0)
    assert bucket.take(2.0)
    assert 0 < bucket.retry_after() <= 2.0


def test_struct_decoding_of_skipped_fields_is_bounded() -> None:
    """A guard on msgspec itself: the RecursionError the limits turn into 400s."""
    with pytest.raises(RecursionError):
        msgspec.json.decode(b"[" * 100_000 + b"]" * 100_000)
