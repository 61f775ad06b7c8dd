"""JournalReader against a real private journald and ``systemd --user`` (TESTING.md 1b).

Decisions these tests pin down:
* the manager's own lines about a unit ("Started logger.service.") are included, as with
  ``journalctl --user-unit`` and fleet's ``journal``;
* a unit nothing was logged for reads as an empty list;
* a journal directory that does not exist raises JournalError; one that exists but
  holds no journal files reads as empty;
* resuming with a cursor (tail or follow) returns exactly the entries after it.
"""

# The fixtures are imported so pytest registers them without a conftest; the test
# parameters then shadow those imports, which is how pytest fixtures work.
# ruff: noqa: F811

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import psutil
import pytest

from agent.journal import JournalError, JournalReader
from proto.messages import LogLine
from tests.harness.fixtures import user_systemd  # noqa: F401
from tests.harness.systemd import UserSystemd, pid_alive

pytestmark = pytest.mark.integration

LOGGER_UNIT = """\
[Service]
ExecStart=/bin/sh -c 'i=0; while [ $i -lt 5 ]; do echo line-$i; i=$((i+1)); done; sleep 300'
"""
TICK_UNIT = """\
[Service]
ExecStart=/bin/sh -c 'i=0; while true; do echo tick-$i; i=$((i+1)); sleep 0.2; done'
"""
BURST_UNIT = """\
[Service]
ExecStart=/bin/sh -c 'echo ready; while [ ! -e {go} ]; do sleep 0.05; done; \
i=0; while [ $i -lt 200 ]; do echo burst-$i; i=$((i+1)); done; sleep 300'
"""
ODD_UNIT = r"""[Service]
ExecStart=/bin/sh -c 'printf "bad-\\377-byte\\n"; printf "%%05000d\\n" 7; echo odd-done; sleep 300'
"""
TAGGED_UNIT = """\
[Service]
SyslogIdentifier=special-tag
ExecStart=/bin/sh -c 'echo tagged-line; sleep 300'
"""


def start_units(us: UserSystemd, **units: str) -> None:
    """Write ``name=body`` unit files (``_`` in a name stands for ``.``), reload, start."""
    names = []
    for key, body in units.items():
        name = key.replace("_", ".")
        (us.unit_dir / name).write_text(body)
        names.append(name)
    us.systemctl("daemon-reload", check=True)
    us.systemctl("start", *names, check=True)


def reader_for(us: UserSystemd) -> JournalReader:
    return JournalReader(scope="user", journal_dir=str(us.journal_dir))


async def wait_for_lines(
    reader: JournalReader,
    unit: str,
    done: Callable[[list[LogLine]], bool],
    *,
    timeout: float = 10.0,
    identifier: str | None = None,
) -> list[LogLine]:
    """Poll tail() until ``done(lines)``; returns the lines."""
    deadline = time.monotonic() + timeout
    while True:
        lines = await reader.tail(unit, 10_000, identifier=identifier)
        if done(lines):
            return lines
        if time.monotonic() > deadline:
            raise AssertionError(f"{unit}: condition not met after {timeout} s: {lines}")
        await asyncio.sleep(0.05)


def has(*texts: str) -> Callable[[list[LogLine]], bool]:
    """All of ``texts`` are lines. Tests wait for the manager's "Started" line too: journald
    may record it after the unit's first lines, and it must not arrive mid-assertion."""
    return lambda lines: set(texts) <= {line.message for line in lines}


async def collect(
    stream: AsyncIterator[list[LogLine]],
    enough: Callable[[list[LogLine]], bool],
    *,
    timeout: float = 10.0,
) -> tuple[list[LogLine], list[list[LogLine]]]:
    """Read batches until ``enough(lines)``; returns (all lines, batches)."""
    lines: list[LogLine] = []
    batches: list[list[LogLine]] = []
    async with asyncio.timeout(timeout):
        async for batch in stream:
            assert batch, "empty batches are never yielded"
            batches.append(batch)
            lines += batch
            if enough(lines):
                break
    return lines, batches


def ticks(lines: list[LogLine]) -> list[int]:
    return [int(line.message[5:]) for line in lines if line.message.startswith("tick-")]


def journalctl_children() -> list[int]:
    return [p.pid for p in psutil.Process().children() if p.name() == "journalctl"]


# --------------------------------------------------------------------------- tail


async def test_tail_returns_the_last_lines_in_order(user_systemd: UserSystemd) -> None:
    start_units(user_systemd, logger_service=LOGGER_UNIT)
    reader = reader_for(user_systemd)
    full = await wait_for_lines(reader, "logger.service", has("line-4", "Started logger.service."))
    messages = [line.message for line in full]
    assert [m for m in messages if m.startswith("line-")] == [f"line-{i}" for i in range(5)]
    # The manager's lines about the unit are included, like `journalctl --user-unit`.
    assert "Started logger.service." in messages
    assert len({line.cursor for line in full}) == len(full)

    # tail(n) is exactly the journal's last n entries of the unit, oldest first.
    for n in range(1, len(full) + 2):
        assert await reader.tail("logger.service", n) == full[-n:]
    # Where journald puts "Started" among the unit's own lines varies (after line-4 in
    # about one run in three), so the last 3 line-* lines are the last 3 entries only
    # when it came first; count the manager's lines among the tail instead of assuming.
    since_line2 = full[messages.index("line-2") :]
    last = await reader.tail("logger.service", len(since_line2))
    assert [x.message for x in last if x.message.startswith("line-")] == [
        "line-2",
        "line-3",
        "line-4",
    ]
    if messages.index("Started logger.service.") < messages.index("line-2"):
        assert [x.message for x in await reader.tail("logger.service", 3)] == [
            "line-2",
            "line-3",
            "line-4",
        ]
    now = time.time()
    assert all(abs(line.timestamp - now) < 600 for line in last)
    assert all(a.timestamp <= b.timestamp for a, b in itertools.pairwise(full))
    assert await reader.tail("logger", 3) == full[-3:]  # "logger" = logger.service, like -u


async def test_matches_are_those_of_journalctl_user_unit(user_systemd: UserSystemd) -> None:
    start_units(user_systemd, logger_service=LOGGER_UNIT)
    reader = reader_for(user_systemd)
    ours = await wait_for_lines(reader, "logger.service", has("line-4", "Started logger.service."))
    result = await asyncio.to_thread(
        subprocess.run,
        [
            "journalctl",
            f"--directory={user_systemd.journal_dir}",
            "--user-unit=logger.service",
            "--output=json",
            "--no-pager",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    theirs = [json.loads(line)["__CURSOR"] for line in result.stdout.splitlines() if line]
    assert [line.cursor for line in ours] == theirs


async def test_tail_of_a_unit_without_lines_is_empty(user_systemd: UserSystemd) -> None:
    start_units(user_systemd, logger_service=LOGGER_UNIT)
    reader = reader_for(user_systemd)
    await wait_for_lines(reader, "logger.service", has("line-4", "Started logger.service."))
    assert await reader.tail("never-started.service", 10) == []
    assert await reader.tail("logger.service", 0) == []


async def test_tail_after_cursor_resumes_exactly(user_systemd: UserSystemd) -> None:
    start_units(user_systemd, logger_service=LOGGER_UNIT)
    reader = reader_for(user_systemd)
    full = await wait_for_lines(reader, "logger.service", has("line-4", "Started logger.service."))
    for i in range(len(full)):
        # `lines` does not limit a resume: everything after the cursor comes back.
        assert await reader.tail("logger.service", 1, after_cursor=full[i].cursor) == full[i + 1 :]


async def test_binary_and_long_messages(user_systemd: UserSystemd) -> None:
    start_units(user_systemd, odd_service=ODD_UNIT)
    reader = reader_for(user_systemd)
    lines = await wait_for_lines(reader, "odd.service", has("odd-done", "Started odd.service."))
    messages = [line.message for line in lines]
    assert "bad-\ufffd-byte" in messages  # journalctl prints it as a list of byte values
    assert "0" * 4999 + "7" in messages  # > 4 KiB: journalctl prints null without --all


async def test_identifier_is_ored_with_the_unit(user_systemd: UserSystemd) -> None:
    start_units(user_systemd, logger_service=LOGGER_UNIT, tagged_service=TAGGED_UNIT)
    reader = reader_for(user_systemd)
    await wait_for_lines(reader, "logger.service", has("line-4", "Started logger.service."))
    await wait_for_lines(reader, "tagged.service", has("tagged-line", "Started tagged.service."))

    both = await reader.tail("logger.service", 100, identifier="special-tag")
    messages = [line.message for line in both]
    assert "tagged-line" in messages and "line-4" in messages
    stamps = [line.timestamp for line in both]
    assert stamps == sorted(stamps)  # one interleaved stream, not two lists glued together
    # Matched by identifier alone (no unit attribution needed), not AND-ed with the unit.
    only_tag = await reader.tail("never-started.service", 100, identifier="special-tag")
    assert [line.message for line in only_tag] == ["tagged-line"]


# --------------------------------------------------------------------------- errors


async def test_missing_journal_directory_raises(user_systemd: UserSystemd, tmp_path: Path) -> None:
    reader = JournalReader(scope="user", journal_dir=str(tmp_path / "no-such-dir"))
    with pytest.raises(JournalError, match="No such file or directory"):
        await reader.tail("logger.service", 3)
    with pytest.raises(JournalError, match="No such file or directory"):
        async with asyncio.timeout(10):
            await anext(reader.follow("logger.service"))
    assert journalctl_children() == []


@pytest.mark.skipif(shutil.which("journalctl") is None, reason="journalctl missing")
async def test_directory_without_journal_files_is_empty(tmp_path: Path) -> None:
    reader = JournalReader(scope="user", journal_dir=str(tmp_path))
    assert await reader.tail("logger.service", 3) == []


async def test_bogus_cursor_raises(user_systemd: UserSystemd) -> None:
    reader = reader_for(user_systemd)
    with pytest.raises(JournalError, match="cursor"):
        await reader.tail("logger.service", 3, after_cursor="not-a-cursor")
    with pytest.raises(JournalError, match="cursor"):
        async with asyncio.timeout(10):
            await anext(reader.follow("logger.service", after_cursor="not-a-cursor"))


# --------------------------------------------------------------------------- follow


async def test_follow_starts_with_the_last_lines(user_systemd: UserSystemd) -> None:
    start_units(user_systemd, logger_service=LOGGER_UNIT)
    reader = reader_for(user_systemd)
    await wait_for_lines(reader, "logger.service", has("line-4", "Started logger.service."))
    expected = await reader.tail("logger.service", 3)
    async with contextlib.aclosing(reader.follow("logger.service", lines=3)) as stream:
        got, _ = await collect(stream, lambda lines: len(lines) >= 3)
    assert got == expected


async def test_follow_yields_new_lines(user_systemd: UserSystemd) -> None:
    start_units(user_systemd, tick_service=TICK_UNIT)
    reader = reader_for(user_systemd)
    await wait_for_lines(reader, "tick.service", has("tick-1", "Started tick.service."))
    async with contextlib.aclosing(reader.follow("tick.service", lines=0)) as stream:
        got, batches = await collect(stream, lambda lines: len(ticks(lines)) >= 4)
    numbers = ticks(got)
    assert numbers[0] >= 2  # lines=0: nothing from before following began
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))
    assert len(batches) >= 2  # lines 0.2 s apart are not held back for one another


async def test_follow_resume_has_no_gap_and_no_repeat(user_systemd: UserSystemd) -> None:
    start_units(user_systemd, tick_service=TICK_UNIT)
    reader = reader_for(user_systemd)
    await wait_for_lines(reader, "tick.service", has("tick-1", "Started tick.service."))

    async with contextlib.aclosing(reader.follow("tick.service", lines=2)) as stream:
        first, _ = await collect(stream, lambda lines: len(ticks(lines)) >= 5)
    last = first[-1]

    await asyncio.sleep(1.0)  # ~5 more lines are written while nobody follows

    async with contextlib.aclosing(reader.follow("tick.service", after_cursor=last.cursor)) as s:
        resumed, _ = await collect(s, lambda lines: len(lines) >= 10)

    numbers = ticks([last, *resumed])
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))  # no gap, no repeat
    assert len(numbers) == len(resumed) + 1
    # Cursor-exact: what came is exactly what the journal holds after the cursor.
    full = await reader.tail("tick.service", 10_000)
    cursors = [line.cursor for line in full]
    start = cursors.index(last.cursor) + 1
    assert resumed == full[start : start + len(resumed)]
    stop = cursors.index(first[0].cursor)
    assert first == full[stop : stop + len(first)]
    # tail() resumes from the same cursor the same way.
    again = await reader.tail("tick.service", 0, after_cursor=last.cursor)
    assert again[: len(resumed)] == resumed


async def test_follow_batches_a_burst(user_systemd: UserSystemd, tmp_path: Path) -> None:
    go = tmp_path / "go"
    start_units(user_systemd, burst_service=BURST_UNIT.format(go=go))
    reader = reader_for(user_systemd)
    await wait_for_lines(reader, "burst.service", has("ready", "Started burst.service."))
    async with contextlib.aclosing(reader.follow("burst.service", lines=1)) as stream:
        # The first batch (the last line so far) proves journalctl follows before the burst.
        first, _ = await collect(stream, lambda lines: len(lines) >= 1)
        assert len(first) == 1
        go.touch()
        got, batches = await collect(
            stream, lambda lines: any(x.message == "burst-199" for x in lines)
        )
    messages = [x.message for x in got if x.message.startswith("burst-")]
    assert messages == [f"burst-{i}" for i in range(200)]
    assert len(batches) < 20, [len(b) for b in batches]


async def test_closing_follow_kills_journalctl(user_systemd: UserSystemd) -> None:
    start_units(user_systemd, tick_service=TICK_UNIT)
    reader = reader_for(user_systemd)
    async with contextlib.aclosing(reader.follow("tick.service", lines=1)) as stream:
        await collect(stream, lambda lines: len(lines) >= 1)
        pids = journalctl_children()
        assert len(pids) == 1 and pid_alive(pids[0])
    assert not pid_alive(pids[0])
    assert journalctl_children() == []


async def test_cancelling_the_consumer_kills_journalctl(user_systemd: UserSystemd) -> None:
    start_units(user_systemd, tick_service=TICK_UNIT)
    reader = reader_for(user_systemd)
    got_one = asyncio.Event()

    async def consume() -> None:
        async for _ in reader.follow("tick.service", lines=1):
            got_one.set()

    task = asyncio.create_task(consume())
    async with asyncio.timeout(10):
        await got_one.wait()
    pids = journalctl_children()
    assert len(pids) == 1 and pid_alive(pids[0])
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not pid_alive(pids[0])
    assert journalctl_children() == []
