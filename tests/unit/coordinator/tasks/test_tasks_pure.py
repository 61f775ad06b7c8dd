"""The task domain's pure parts: placement, log cursors, definition lists, body parsing."""

from __future__ import annotations

import pytest

from coordinator.api.errors import ApiError
from coordinator.api.tasks import lower_keys, parse_body, rfc3339
from coordinator.tasks import definitions as defs
from coordinator.tasks.logs import (
    CursorError,
    complete_utf8,
    decode_cursor,
    encode_cursor,
    new_piece,
    slice_log,
)
from coordinator.tasks.placement import MachineRoom, Placement, RunNeed, place
from coordinator.tasks.records import EnvVar, TaskDefinition

# --- placement ---------------------------------------------------------------------------


def room(
    mid: str, memory: int, cpu: int = 4000, clusters: tuple[str, ...] = ("default",), used: int = 0
) -> MachineRoom:
    return MachineRoom(mid, frozenset(clusters), memory, cpu, memory_used=used)


def test_runs_are_placed_in_order_on_the_machine_with_most_room() -> None:
    plan = place(
        [RunNeed("a", "default", 512, 100), RunNeed("b", "default", 512, 100)],
        [room("m1", 1024), room("m2", 2048)],
    )
    assert plan == [Placement("a", "m2"), Placement("b", "m2")]


def test_a_run_that_does_not_fit_now_blocks_those_after_it_in_its_cluster() -> None:
    # m1 has 1000 MB, 600 of it used: the 800 MB run waits, and so does the small one.
    waiting = [RunNeed("big", "default", 800, 0), RunNeed("small", "default", 100, 0)]
    assert place(waiting, [room("m1", 1000, used=600)]) == []
    # Another cluster is not held up by it.
    waiting.append(RunNeed("gpu", "gpu", 100, 0))
    plan = place(waiting, [room("m1", 1000, used=600, clusters=("default", "gpu"))])
    assert plan == [Placement("gpu", "m1")]


def test_a_run_no_machine_could_ever_take_does_not_block() -> None:
    waiting = [RunNeed("huge", "default", 10_000, 0), RunNeed("small", "default", 100, 0)]
    assert place(waiting, [room("m1", 1000)]) == [Placement("small", "m1")]


def test_runs_asking_more_than_the_free_room_run_one_after_the_other() -> None:
    waiting = [RunNeed("one", "default", 700, 0), RunNeed("two", "default", 700, 0)]
    assert place(waiting, [room("m1", 1000)]) == [Placement("one", "m1")]
    # While "one" runs, its memory counts against m1: "two" waits.
    assert place(waiting[1:], [room("m1", 1000, used=700)]) == []
    assert place(waiting[1:], [room("m1", 1000)]) == [Placement("two", "m1")]


def test_cpu_counts_too_and_machines_outside_the_cluster_are_not_used() -> None:
    assert place([RunNeed("a", "default", 0, 3000)], [room("m1", 100, cpu=2000)]) == []
    assert place([RunNeed("a", "web", 0, 0)], [room("m1", 100)]) == []
    assert place([RunNeed("a", "web", 0, 0)], [room("m1", 100, clusters=("web",))]) == [
        Placement("a", "m1")
    ]


# --- log cursors --------------------------------------------------------------------------


def test_a_resent_chunk_adds_only_its_new_bytes() -> None:
    assert new_piece(0, 0, b"hello") == b"hello"
    assert new_piece(5, 0, b"hello") == b""  # all stored already
    assert new_piece(3, 0, b"hello") == b"lo"  # overlaps the stored end
    assert new_piece(5, 5, b"!") == b"!"
    assert new_piece(5, 7, b"x") is None  # a gap: not kept


def test_cursor_tokens_round_trip_and_reject_foreign_text() -> None:
    for offset in (0, 1, 4096, 2**40):
        token = encode_cursor(offset)
        assert token and decode_cursor(token) == offset
    assert decode_cursor("") == 0
    for bad in ("f/123", "m1.!!", "m1.AAAA", "x" * 100):
        with pytest.raises(CursorError):
            decode_cursor(bad)


def test_the_same_token_comes_back_when_nothing_is_new_and_it_is_never_empty() -> None:
    first = slice_log(0, b"line 1\n", finished=False)
    assert first.log == "line 1\n" and first.last_seen
    again = slice_log(decode_cursor(first.last_seen), b"", finished=False)
    assert again.log == "" and again.last_seen == first.last_seen
    empty_finished = slice_log(0, b"", finished=True)
    assert empty_finished.last_seen != "" and empty_finished.log == ""


def test_a_split_utf8_character_waits_for_the_rest_while_the_run_may_write() -> None:
    data = "héllo €".encode()
    cut = data[:-1]
    assert complete_utf8(cut) == len(data) - 3
    part = slice_log(0, cut, finished=False)
    assert part.log == "héllo " and decode_cursor(part.last_seen) == len(data) - 3
    assert slice_log(0, data, finished=False).log == "héllo €"
    assert complete_utf8(b"") == 0 and complete_utf8(b"abc") == 3


# --- definitions ---------------------------------------------------------------------------


def definition(
    alias: str, group: str, image: str = "alpine", memory: int = 0, tags: tuple[str, ...] = ()
) -> TaskDefinition:
    return TaskDefinition(
        definition_id=f"{group}-{alias}",
        alias=alias,
        image=image,
        group_name=group,
        memory=memory,
        tags=list(tags),
    )


def test_definition_lists_filter_sort_and_page() -> None:
    found = [
        definition("hello", "b", memory=5, tags=("x",)),
        definition("help", "a", image="busybox", memory=7),
        definition("other", "a", memory=1, tags=("x", "y")),
    ]
    total, page = defs.select_definitions(found, defs.DefinitionQuery(alias=["hel"]))
    assert total == 2 and [d.alias for d in page] == ["help", "hello"]  # by group_name
    total, page = defs.select_definitions(found, defs.DefinitionQuery(alias=["hel", "other"]))
    assert [d.alias for d in page] == ["other"]  # repeated values: exact IN
    total, page = defs.select_definitions(
        found, defs.DefinitionQuery(sort_by="memory", order="desc", limit=2, offset=1)
    )
    assert total == 3 and [d.alias for d in page] == ["hello", "other"]
    _, page = defs.select_definitions(found, defs.DefinitionQuery(tag=["y"]))
    assert [d.alias for d in page] == ["other"]
    _, page = defs.select_definitions(found, defs.DefinitionQuery(image=["busy"]))
    assert [d.alias for d in page] == ["help"]


def test_create_requires_image_and_alias_with_flotillas_messages() -> None:
    problems = defs.definition_problems(defs.DefinitionInput(), create=True)
    assert (
        "\n".join(problems) == "string [image] must be specified\nstring [alias] must be specified"
    )
    assert defs.definition_problems(defs.DefinitionInput(memory=-1), create=False)


def test_update_merges_the_non_empty_fields_only() -> None:
    old = definition("a", "g", memory=512)
    new = defs.merged(old, defs.DefinitionInput(image="busybox", memory=0, command=""), 1.0)
    assert (new.image, new.memory, new.command, new.group_name) == ("busybox", 512, "", "g")


def test_the_run_env_is_the_definitions_the_overrides_and_the_run_id() -> None:
    env = defs.merged_env([EnvVar("A", "1"), EnvVar("B", "2")], [EnvVar("B", "3")], "r1")
    assert env == [EnvVar("A", "1"), EnvVar("B", "3"), EnvVar("FLOTILLA_RUN_ID", "r1")]


def test_v4_and_v6_executes_need_an_owner() -> None:
    assert defs.execute_problems(defs.ExecuteInput(), require_owner=True) == [
        "run_tags must exist in body and contain [owner_id]"
    ]
    assert defs.execute_problems(defs.ExecuteInput(), require_owner=False) == []


# --- bodies --------------------------------------------------------------------------------


def test_keys_are_matched_case_insensitively() -> None:
    body = parse_body(
        b'{"Cluster": "default", "RUN_TAGS": {"OWNER_ID": "me"}, "Env": [{"NAME": "A", "Value": "1"}]}',
        defs.ExecuteInput,
    )
    assert body.cluster == "default"
    assert body.run_tags == {"owner_id": "me"}
    assert body.env == [EnvVar("A", "1")]
    assert lower_keys({"A": [{"B": 1}]}) == {"a": [{"b": 1}]}


def test_bad_bodies_are_400_naming_the_problem() -> None:
    assert parse_body(b"", defs.ExecuteInput) == defs.ExecuteInput()
    for raw, words in (
        (b"{", "not valid JSON"),
        (b"[1]", "must be a JSON object"),
        (b'{"memory": "lots"}', "memory"),
    ):
        with pytest.raises(ApiError) as caught:
            parse_body(raw, defs.DefinitionInput)
        assert caught.value.status == 400 and words in caught.value.message


def test_times_are_rfc3339_with_fractional_seconds() -> None:
    assert rfc3339(1767225600.123456) == "2026-01-01T00:00:00.123456Z"
    assert rfc3339(None) is None


def test_the_hub_refuses_task_messages_with_negative_offsets() -> None:
    from coordinator import limits
    from proto import messages as m

    assert limits.message_problem(m.TaskOutput("r", -1, b"x"))
    assert limits.message_problem(m.TaskUpdate("r", "STOPPED", log_bytes=-5))
    assert limits.message_problem(m.TaskOutput("r", 0, b"x")) == ""
