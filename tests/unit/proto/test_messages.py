"""Every link message round-trips; bad frames are classified, never crash the decoder."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from proto import messages as m
from proto.units import UnitOption

text = st.text(max_size=40)
small_int = st.integers(min_value=0, max_value=2**53)
options = st.lists(st.builds(UnitOption, text, text, text), max_size=4)
statuses = st.lists(
    st.builds(
        m.UnitStatus,
        name=text,
        hash=text,
        load_state=text,
        active_state=text,
        sub_state=text,
        main_pid=small_int,
        image_digest=text,
        message=text,
    ),
    max_size=3,
)
desired_units = st.lists(
    st.builds(
        m.DesiredUnit,
        name=text,
        options=options,
        desired_state=st.sampled_from(["inactive", "loaded", "launched"]),
        hash=text,
        labels=st.dictionaries(text, text, max_size=3),
        image_digest=text,
    ),
    max_size=3,
)
floats = st.floats(allow_nan=False, allow_infinity=False)
stickers = st.lists(
    st.builds(
        m.Sticker,
        deployment=text,
        release=text,
        version=text,
        units=st.dictionaries(text, st.builds(m.StickerUnit, text, text), max_size=3),
        image_digests=st.dictionaries(text, text, max_size=2),
        applied_at=floats,
    ),
    max_size=2,
)
drift_entries = st.lists(
    st.builds(
        m.DriftEntry,
        unit=text,
        kind=st.sampled_from(
            ["file_changed", "missing", "extra", "image_differs", "state_differs"]
        ),
        expected=text,
        actual=text,
        deployment=text,
        message=text,
        repairing=st.booleans(),
    ),
    max_size=3,
)

STRATEGIES: dict[type, st.SearchStrategy[m.Message]] = {
    m.Hello: st.builds(
        m.Hello,
        proto=small_int,
        machine_id=text,
        hostname=text,
        primary_ip=text,
        metadata=st.dictionaries(text, text, max_size=3),
        capabilities=st.lists(text, max_size=3),
        applied_revision=small_int,
        snapshot=statuses,
        agent_version=text,
        stickers=stickers,
        resources=st.none() | st.builds(m.Resources, small_int, small_int),
    ),
    m.Facts: st.builds(
        m.Facts,
        st.lists(text, max_size=3),
        st.none() | st.builds(m.Resources, small_int, small_int),
    ),
    m.Welcome: st.builds(m.Welcome, small_int, text, floats, floats, floats),
    m.Heartbeat: st.builds(m.Heartbeat, small_int, floats),
    m.Desired: st.builds(
        m.Desired,
        revision=small_int,
        base_revision=small_int,
        full=st.booleans(),
        upserts=desired_units,
        removes=st.lists(text, max_size=3),
    ),
    m.Applied: st.builds(m.Applied, small_int),
    m.StateReport: st.builds(m.StateReport, changes=statuses, removed=st.lists(text, max_size=3)),
    m.Error: st.builds(m.Error, text, text),
    m.LogRequest: st.builds(
        m.LogRequest, request_id=text, unit=text, lines=small_int, follow=st.booleans(), cursor=text
    ),
    m.LogChunk: st.builds(
        m.LogChunk,
        request_id=text,
        lines=st.lists(st.builds(m.LogLine, text, text, floats), max_size=3),
        done=st.booleans(),
        error=text,
    ),
    m.LogCancel: st.builds(m.LogCancel, text),
    m.Stickers: st.builds(m.Stickers, stickers),
    m.DriftRequest: st.builds(m.DriftRequest, text),
    m.DriftReport: st.builds(
        m.DriftReport, entries=drift_entries, request_id=text, checked_at=floats
    ),
    m.ImageResolve: st.builds(m.ImageResolve, text, st.lists(text, max_size=3)),
    m.ImageResolved: st.builds(
        m.ImageResolved,
        request_id=text,
        digests=st.dictionaries(text, text, max_size=2),
        references=st.dictionaries(text, text, max_size=2),
        errors=st.dictionaries(text, text, max_size=2),
    ),
    m.HealthCheck: st.builds(m.HealthCheck, text, st.lists(text, max_size=3)),
    m.HealthReport: st.builds(
        m.HealthReport,
        request_id=text,
        backends=st.dictionaries(text, text, max_size=2),
        units=st.dictionaries(text, text, max_size=2),
    ),
    m.CertRenew: st.builds(m.CertRenew, text),
    m.CertIssued: st.builds(m.CertIssued, text),
    m.TaskStart: st.builds(
        m.TaskStart,
        run_id=text,
        image=text,
        command=text,
        env=st.dictionaries(text, text, max_size=3),
        memory_mb=small_int,
        cpu_millis=small_int,
    ),
    m.TaskStop: st.builds(m.TaskStop, text, floats),
    m.TaskUpdate: st.builds(
        m.TaskUpdate,
        run_id=text,
        state=st.sampled_from(["PENDING", "RUNNING", "STOPPED"]),
        event=text,
        exit_code=st.none() | small_int,
        exit_reason=text,
        container_id=text,
        at=floats,
        log_bytes=small_int,
    ),
    m.TaskOutput: st.builds(m.TaskOutput, text, small_int, st.binary(max_size=64)),
    m.TaskAck: st.builds(m.TaskAck, text, small_int, st.booleans()),
    m.WebBuild: st.builds(
        m.WebBuild,
        name=text,
        build_id=text,
        repo_url=text,
        branch=text,
        project_type=text,
        port=small_int,
        domain=text,
        env=st.dictionaries(text, text, max_size=3),
    ),
    m.WebLog: st.builds(m.WebLog, text, text, text, text, floats),
    m.WebBuilt: st.builds(
        m.WebBuilt,
        text,
        text,
        st.booleans(),
        text,
        text,
        text,
        text,
        text,
        text,
        st.lists(text, max_size=3),
        st.dictionaries(text, text, max_size=3),
    ),
    m.WebEnv: st.builds(m.WebEnv, text, st.dictionaries(text, text, max_size=3)),
    m.WebAction: st.builds(m.WebAction, text, text, text),
    m.WebHealth: st.builds(
        m.WebHealth, text, st.booleans(), small_int, text, floats, small_int, small_int
    ),
    m.MachineStats: st.builds(
        m.MachineStats,
        floats,
        floats,
        floats,
        floats,
        floats,
        small_int,
        small_int,
        small_int,
        small_int,
        floats,
        small_int,
    ),
}


def test_every_message_type_has_a_strategy() -> None:
    assert set(STRATEGIES) == set(m.MESSAGE_TYPES)


@given(st.one_of(*STRATEGIES.values()))
def test_round_trip(message: m.Message) -> None:
    decoded = m.decode(m.encode(message))
    assert type(decoded) is type(message)
    assert decoded == message


def test_tags_are_unique() -> None:
    assert len(m.KNOWN_TAGS) == len(m.MESSAGE_TYPES)


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b"\xc1\xc1\xc1", "undecodable"),
        (b"", "undecodable"),
        (msgspec.msgpack.encode({"type": "launch_missiles"}), "unknown_type"),
        (msgspec.msgpack.encode({"no_type": 1}), "invalid"),
        (msgspec.msgpack.encode([1, 2, 3]), "invalid"),
        (msgspec.msgpack.encode({"type": "heartbeat", "seq": "not-an-int"}), "invalid"),
        (msgspec.msgpack.encode({"type": "hello"}), "invalid"),
    ],
)
def test_bad_frames_are_classified(frame: bytes, reason: str) -> None:
    with pytest.raises(m.FrameError) as err:
        m.decode(frame)
    assert err.value.reason == reason
    assert err.value.message


def test_oversized_frame_is_refused_before_decoding() -> None:
    frame = m.encode(m.Error("x", "y" * 100))
    with pytest.raises(m.FrameError) as err:
        m.decode(frame, max_size=50)
    assert err.value.reason == "too_large"
    assert m.decode(frame) == m.Error("x", "y" * 100)


@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_raise_anything_but_frame_error(data: bytes) -> None:
    try:
        m.decode(data)
    except m.FrameError:
        pass
