"""parse_entry decodes every form journalctl prints; the reader's process handling, faked.

The second half runs `JournalReader` against a fake ``journalctl`` (a shell script), so
the command line, batching, errors and killing the process are checked without systemd;
tests/integration/test_journal.py does the same against a real journald.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import stat
import time
from pathlib import Path
from typing import Any, Literal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent import journal
from agent.journal import (
    MAX_MESSAGE_CHARS,
    TRUNCATED_MARK,
    JournalError,
    JournalReader,
    parse_entry,
)
from proto.messages import LogLine

CURSOR = "s=1f42;i=16;b=4b65;m=4f35eb44;t=660f075935a2e;x=71ef"


def entry(**fields: object) -> bytes:
    return json.dumps({"__CURSOR": CURSOR, **fields}).encode()


# --------------------------------------------------------------------------- parse_entry


def test_string_message_and_timestamp() -> None:
    line = entry(MESSAGE="hello", __REALTIME_TIMESTAMP="1700000000123456")
    assert parse_entry(line) == LogLine(cursor=CURSOR, message="hello", timestamp=1700000000.123456)


def test_real_journalctl_line() -> None:
    line = (
        b'{"MESSAGE":"line-3","__MONOTONIC_TIMESTAMP":"1328933700",'
        b'"__REALTIME_TIMESTAMP":"1795435741272622","_BOOT_ID":"4b65da9f86824812beea6e9a7ae46c81",'
        b'"__CURSOR":"s=1f42;i=19;b=4b65;m=4f35eb44;t=660f075935a2e;x=a253"}\n'
    )
    parsed = parse_entry(line)
    assert parsed == LogLine(
        cursor="s=1f42;i=19;b=4b65;m=4f35eb44;t=660f075935a2e;x=a253",
        message="line-3",
        timestamp=1795435741.272622,
    )


def test_byte_list_message_is_decoded_with_replacement() -> None:
    raw = list(b"bad-\xff-byte")
    parsed = parse_entry(entry(MESSAGE=raw))
    assert parsed is not None
    assert parsed.message == "bad-\ufffd-byte"


def test_byte_list_of_valid_utf8() -> None:
    parsed = parse_entry(entry(MESSAGE=list("héllo ✓".encode())))
    assert parsed is not None and parsed.message == "héllo ✓"


def test_repeated_field_values_are_joined() -> None:
    # A field set twice in one entry is printed as a list of its values.
    parsed = parse_entry(entry(MESSAGE=["first", list(b"sec\xffond")]))
    assert parsed is not None
    assert parsed.message == "first\nsec\ufffdond"


def test_byte_list_out_of_range_does_not_raise() -> None:
    parsed = parse_entry(entry(MESSAGE=[104, 300, 105]))
    assert parsed is not None
    assert parsed.message == ""


@pytest.mark.parametrize("fields", [{"MESSAGE": None}, {}])
def test_null_or_missing_message_keeps_the_entry(fields: dict[str, object]) -> None:
    # Kept so `-n N` means N entries and the last cursor is the last entry read.
    assert parse_entry(entry(**fields)) == LogLine(cursor=CURSOR, message="")


def test_odd_message_types_become_text() -> None:
    parsed = parse_entry(entry(MESSAGE=42))
    assert parsed is not None and parsed.message == "42"


def test_long_message_is_truncated() -> None:
    parsed = parse_entry(entry(MESSAGE="x" * (MAX_MESSAGE_CHARS + 10)))
    assert parsed is not None
    assert parsed.message == "x" * MAX_MESSAGE_CHARS + TRUNCATED_MARK


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1700000000000000", 1700000000.0),
        ("1", 0.000001),
        (1700000000500000, 1700000000.5),  # a number works too
        ("not-a-number", 0.0),
        (None, 0.0),
        (True, 0.0),
        ([1], 0.0),
    ],
)
def test_timestamp_conversion(value: object, expected: float) -> None:
    parsed = parse_entry(entry(MESSAGE="m", __REALTIME_TIMESTAMP=value))
    assert parsed is not None and parsed.timestamp == expected


def test_missing_timestamp_is_zero() -> None:
    parsed = parse_entry(entry(MESSAGE="m"))
    assert parsed is not None and parsed.timestamp == 0.0


@pytest.mark.parametrize(
    "line",
    [
        b"",
        b"   \n",
        b"{not json",
        b'{"MESSAGE": "x"',
        b"[1, 2, 3]",
        b"42",
        b'"just a string"',
        b'{"MESSAGE": "\xff\xfe"}',
        b'{"MESSAGE": "no cursor"}',
        b'{"__CURSOR": "", "MESSAGE": "empty cursor"}',
        b'{"__CURSOR": 12, "MESSAGE": "numeric cursor"}',
    ],
)
def test_blank_or_undecodable_lines_give_none(line: bytes) -> None:
    assert parse_entry(line) is None


@given(st.binary(max_size=200))
def test_parse_entry_never_raises(line: bytes) -> None:
    result = parse_entry(line)
    assert result is None or isinstance(result, LogLine)


@given(st.lists(st.integers(min_value=-5, max_value=300), max_size=20))
def test_any_int_list_message_never_raises(values: list[int]) -> None:
    parsed = parse_entry(entry(MESSAGE=values))
    assert parsed is not None and isinstance(parsed.message, str)


# --------------------------------------------------------------------------- fake journalctl


def json_lines(*messages: str) -> str:
    return "".join(
        json.dumps({"__CURSOR": f"c-{m}", "MESSAGE": m, "__REALTIME_TIMESTAMP": "1000000"}) + "\n"
        for m in messages
    )


class Fake:
    """A ``journalctl`` stand-in: records its arguments and PID, then runs ``body``."""

    def __init__(self, tmp_path: Path, body: str) -> None:
        self.dir = tmp_path
        self.args_file = tmp_path / "args"
        self.pid_file = tmp_path / "pid"
        self.path = tmp_path / "journalctl"
        self.path.write_text(
            "#!/bin/sh\n"
            f"printf '%s\\n' \"$@\" > {self.args_file}\n"
            f"echo $$ > {self.pid_file}\n"
            f"{body}\n"
        )
        self.path.chmod(self.path.stat().st_mode | stat.S_IXUSR)

    def data(self, name: str, text: str) -> Path:
        path = self.dir / name
        path.write_text(text)
        return path

    def reader(
        self, scope: Literal["system", "user"] = "user", journal_dir: str | None = "/j"
    ) -> JournalReader:
        return JournalReader(scope=scope, journal_dir=journal_dir, journalctl=str(self.path))

    def args(self) -> list[str]:
        return self.args_file.read_text().splitlines()

    async def pid(self) -> int:
        for _ in range(200):
            if self.pid_file.exists() and self.pid_file.read_text().strip():
                return int(self.pid_file.read_text())
            await asyncio.sleep(0.01)
        raise AssertionError("fake journalctl never started")


def alive(pid: int) -> bool:
    """Running and not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


async def wait_gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


def group_split(matches: list[str]) -> list[list[str]]:
    groups: list[list[str]] = [[]]
    for m in matches:
        if m == "+":
            groups.append([])
        else:
            groups[-1].append(m)
    return groups


async def test_tail_command_line_user_scope(tmp_path: Path) -> None:
    fake = Fake(tmp_path, "exit 0")
    assert await fake.reader().tail("web", 5, identifier="webtag") == []
    args = fake.args()
    sep = args.index("--")
    assert args[:sep] == [
        "--output=json",
        "--output-fields=MESSAGE",
        "--all",
        "--no-pager",
        "--quiet",
        "--directory=/j",
        "--lines=5",
    ]
    uid = f"_UID={os.getuid()}"
    assert group_split(args[sep + 1 :]) == [
        ["_SYSTEMD_USER_UNIT=web.service", uid],
        ["USER_UNIT=web.service", uid],
        ["COREDUMP_USER_UNIT=web.service", uid, "_UID=0"],
        ["OBJECT_SYSTEMD_USER_UNIT=web.service", uid, "_UID=0"],
        ["SYSLOG_IDENTIFIER=webtag", uid],
    ]


async def test_tail_command_line_system_scope_resume(tmp_path: Path) -> None:
    fake = Fake(tmp_path, "exit 0")
    await fake.reader("system", None).tail("work.slice", 3, after_cursor="-c=1;x")
    args = fake.args()
    sep = args.index("--")
    assert "--after-cursor=-c=1;x" in args[:sep]
    assert "--lines=10000" in args[:sep]  # with a cursor: everything after it, capped
    assert not any(a.startswith("--directory") for a in args)
    assert group_split(args[sep + 1 :]) == [
        ["_SYSTEMD_UNIT=work.slice"],
        ["MESSAGE_ID=fc2e22bc6ee647b6b90729ab34a250b1", "_UID=0", "COREDUMP_UNIT=work.slice"],
        ["_PID=1", "UNIT=work.slice"],
        ["_UID=0", "OBJECT_SYSTEMD_UNIT=work.slice"],
        ["_SYSTEMD_SLICE=work.slice"],
    ]


async def test_tail_lines_are_capped(tmp_path: Path) -> None:
    fake = Fake(tmp_path, "exit 0")
    await fake.reader().tail("web.service", 10**9)
    assert "--lines=10000" in fake.args()


async def test_tail_zero_lines_runs_nothing(tmp_path: Path) -> None:
    fake = Fake(tmp_path, "exit 0")
    assert await fake.reader().tail("web.service", 0) == []
    assert await fake.reader().tail("web.service", -3) == []
    assert not fake.args_file.exists()


async def test_tail_parses_output_and_skips_junk(tmp_path: Path) -> None:
    data = json_lines("a", "b") + "garbage\n\n" + json_lines("c")
    fake = Fake(tmp_path, f"cat {tmp_path}/out")
    fake.data("out", data)
    lines = await fake.reader().tail("web.service", 10)
    assert [(x.cursor, x.message, x.timestamp) for x in lines] == [
        ("c-a", "a", 1.0),
        ("c-b", "b", 1.0),
        ("c-c", "c", 1.0),
    ]


async def test_nonzero_exit_is_a_journal_error_with_stderr(tmp_path: Path) -> None:
    fake = Fake(tmp_path, "echo 'Failed to seek to cursor: Invalid argument' >&2; exit 1")
    with pytest.raises(JournalError, match="status 1: Failed to seek to cursor"):
        await fake.reader().tail("web.service", 5, after_cursor="bogus")
    with pytest.raises(JournalError, match="Failed to seek to cursor"):
        async for _ in fake.reader().follow("web.service", after_cursor="bogus"):
            pass


async def test_missing_journalctl_is_a_journal_error(tmp_path: Path) -> None:
    reader = JournalReader(scope="user", journalctl=str(tmp_path / "no-such-journalctl"))
    with pytest.raises(JournalError, match="not found"):
        await reader.tail("web.service", 5)
    with pytest.raises(JournalError, match="not found"):
        await anext(reader.follow("web.service"))


@pytest.mark.parametrize("unit", ["", "a b", "../etc", "x" * 300, "web\n", "web;rm", ".service"])
async def test_invalid_unit_names_are_refused(tmp_path: Path, unit: str) -> None:
    fake = Fake(tmp_path, "exit 0")
    with pytest.raises(JournalError, match="invalid unit name"):
        await fake.reader().tail(unit, 5)
    with pytest.raises(JournalError, match="invalid unit name"):
        fake.reader().follow(unit)  # checked before anything runs
    assert not fake.args_file.exists()


async def test_unit_names_are_mangled_like_journalctl(tmp_path: Path) -> None:
    fake = Fake(tmp_path, "exit 0")
    for given_name, matched in [
        ("web", "web.service"),
        ("web.timer", "web.timer"),
        ("app@1", "app@1.service"),
        ("v1.2", "v1.2.service"),
        ("-.slice", "-.slice"),  # real units may start with "-"; matches are FIELD=value
    ]:
        await fake.reader().tail(given_name, 1)
        assert f"_SYSTEMD_USER_UNIT={matched}" in fake.args()


def test_invalid_scope() -> None:
    with pytest.raises(ValueError, match="scope"):
        JournalReader(scope="machine")  # type: ignore[arg-type]


async def test_follow_command_line(tmp_path: Path) -> None:
    fake = Fake(tmp_path, "exit 0")
    reader = fake.reader()
    cases: list[tuple[dict[str, Any], str]] = [
        ({}, "--lines=10"),
        ({"lines": -4}, "--lines=0"),
        ({"lines": 10**6}, "--lines=10000"),
        # journalctl -f with a cursor prints only 10 of the backlog unless told "all"
        ({"after_cursor": "c-1", "lines": 3}, "--lines=all"),
    ]
    for kwargs, expected in cases:
        assert [b async for b in reader.follow("web.service", **kwargs)] == []
        args = fake.args()
        assert "--follow" in args and expected in args
        assert ("--after-cursor=c-1" in args) == ("after_cursor" in kwargs)


async def test_follow_batches_and_kill_on_close(tmp_path: Path) -> None:
    fake = Fake(tmp_path, f"cat {tmp_path}/one; sleep 0.5; cat {tmp_path}/two; exec sleep 60")
    fake.data("one", json_lines("a", "b", "c"))
    fake.data("two", json_lines("d", "e"))
    batches: list[list[str]] = []
    async with contextlib.aclosing(fake.reader().follow("web.service")) as stream:
        async with asyncio.timeout(10):
            async for batch in stream:
                batches.append([x.message for x in batch])
                if sum(map(len, batches)) >= 5:
                    break
        pid = await fake.pid()
        assert alive(pid)
    assert batches == [["a", "b", "c"], ["d", "e"]]
    assert await wait_gone(pid, timeout=0.5)  # killed by aclose, not by the sleep ending


async def test_follow_cuts_large_batches(tmp_path: Path) -> None:
    fake = Fake(tmp_path, f"cat {tmp_path}/many; exec sleep 60")
    count = journal.BATCH_MAX_LINES * 2 + 500
    fake.data("many", json_lines(*(str(i) for i in range(count))))
    sizes: list[int] = []
    received: list[str] = []
    async with contextlib.aclosing(fake.reader().follow("web.service")) as stream:
        async with asyncio.timeout(10):
            async for batch in stream:
                sizes.append(len(batch))
                received += [x.message for x in batch]
                if len(received) >= count:
                    break
    assert received == [str(i) for i in range(count)]
    assert max(sizes) == journal.BATCH_MAX_LINES


async def test_follow_skips_overlong_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(journal, "STREAM_LIMIT", 1024)
    fake = Fake(tmp_path, f"cat {tmp_path}/mixed; exec sleep 60")
    fake.data("mixed", json_lines("before", "y" * 5000, "after"))
    received: list[str] = []
    async with contextlib.aclosing(fake.reader().follow("web.service")) as stream:
        async with asyncio.timeout(10):
            async for batch in stream:
                received += [x.message for x in batch]
                if "after" in received:
                    break
    assert received == ["before", "after"]


async def test_follow_cancelled_kills_journalctl(tmp_path: Path) -> None:
    fake = Fake(tmp_path, f"cat {tmp_path}/one; exec sleep 60")
    fake.data("one", json_lines("a"))
    got_one = asyncio.Event()

    async def consume() -> None:
        async for _ in fake.reader().follow("web.service"):
            got_one.set()

    task = asyncio.create_task(consume())
    async with asyncio.timeout(10):
        await got_one.wait()
    pid = await fake.pid()
    assert alive(pid)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not alive(pid)  # killed and reaped before the cancellation finished


async def test_follow_dropped_by_consumer_kills_journalctl(tmp_path: Path) -> None:
    # CPython: the loop's async-generator finalizer closes a generator nobody holds.
    fake = Fake(tmp_path, f"cat {tmp_path}/one; exec sleep 60")
    fake.data("one", json_lines("a"))
    async with asyncio.timeout(10):
        async for _ in fake.reader().follow("web.service"):
            break
    pid = await fake.pid()
    gc.collect()
    assert await wait_gone(pid, timeout=5)


async def test_follow_reports_failure_after_lines(tmp_path: Path) -> None:
    fake = Fake(tmp_path, f"cat {tmp_path}/one; sleep 0.2; echo 'journal vanished' >&2; exit 3")
    fake.data("one", json_lines("a"))
    received: list[str] = []
    with pytest.raises(JournalError, match="status 3: journal vanished"):
        async with asyncio.timeout(10):
            async for batch in fake.reader().follow("web.service"):
                received += [x.message for x in batch]
    assert received == ["a"]


async def test_follow_ends_when_journalctl_exits_cleanly(tmp_path: Path) -> None:
    fake = Fake(tmp_path, f"cat {tmp_path}/one")
    fake.data("one", json_lines("a", "b"))
    async with asyncio.timeout(10):
        batches = [b async for b in fake.reader().follow("web.service")]
    assert [[x.message for x in b] for b in batches] == [["a", "b"]]
