"""A unit's journal for `LogRequest`s: the last N lines, and follow with resumable cursors.

Everything goes through a ``journalctl -o json`` subprocess (asyncio, so the event loop
never blocks): there is no Python binding to load, the parsing of journal files stays out
of the agent's memory, and ``journalctl`` is present wherever systemd is.

What is matched, and why it is spelled out instead of passing ``-u``/``--user-unit``:
``journalctl`` ANDs its own filters (``-u``, ``-t``) with positional matches, and a ``+``
after ``-u`` is rejected ("can only be used between terms"). To OR a unit with a
``SYSLOG_IDENTIFIER`` (a process that exits within milliseconds may lose its unit
attribution) the reader passes the expansion of ``-u``/``--user-unit`` (systemd's
``add_matches_for_unit``/``add_matches_for_user_unit``) as positional matches, OR-groups
separated by ``+``, and appends the identifier as one more group. So, like
``journalctl -u``, the result *includes the manager's own lines about the unit*
("Started x.service.", "x.service: Main process exited, …"), as fleet's ``journal`` does.

Cursors: every `LogLine` carries the entry's ``__CURSOR``. Resuming with
``after_cursor`` returns exactly the entries after it, provided the request has the same
unit and identifier: ``journalctl --after-cursor`` skips one entry past the cursor, so a
cursor whose entry does not match the filter (another unit's, or one vacuumed away)
silently loses the first matching line after it (journalctl 252, checked).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import AsyncGenerator
from typing import Any, Literal

import msgspec

from agent.backends.base import BackendError
from proto.messages import LogLine

log = logging.getLogger(__name__)

MAX_LINES = 10_000
"""Hard cap on the entries one `tail` returns (and on a follow's initial ``lines``)."""

BATCH_WINDOW_S = 0.05
"""`follow` gathers what arrives within this long of a batch's first line into one batch."""

BATCH_MAX_LINES = 1_000
BATCH_MAX_BYTES = 1024 * 1024
"""A batch is cut at this many lines or message bytes, so a `LogChunk` fits a frame."""

MAX_MESSAGE_CHARS = 64 * 1024
"""Longer messages are cut (and marked): one log line must not fill a 4 MiB frame."""

TRUNCATED_MARK = "…[truncated]"

STREAM_LIMIT = 16 * 1024 * 1024
"""Longest JSON line read from ``journalctl``; longer ones are skipped with a warning."""

_STDERR_KEEP = 16 * 1024

_UNIT_TYPES = frozenset(
    {
        "service",
        "socket",
        "device",
        "mount",
        "automount",
        "swap",
        "target",
        "path",
        "timer",
        "slice",
        "scope",
    }
)
_UNIT_NAME = re.compile(r"[A-Za-z0-9:_.\\@-]{1,255}")
_COREDUMP_MESSAGE_ID = "fc2e22bc6ee647b6b90729ab34a250b1"


class JournalError(BackendError):
    """The journal cannot be read: journalctl missing, bad directory/cursor/unit, or it failed."""


class _Entry(msgspec.Struct):
    """The three fields we use; every other field of the entry is skipped while decoding."""

    cursor: Any = msgspec.field(default=None, name="__CURSOR")
    message: Any = msgspec.field(default=None, name="MESSAGE")
    realtime: Any = msgspec.field(default=None, name="__REALTIME_TIMESTAMP")


_decoder = msgspec.json.Decoder(_Entry)


# --------------------------------------------------------------------------- parsing


def parse_entry(line: bytes) -> LogLine | None:
    """One line of ``journalctl -o json`` as a `LogLine`; None if blank or undecodable.

    An entry without a usable ``__CURSOR`` is undecodable (it could not be resumed from).
    An entry without ``MESSAGE`` (or with ``null``) is kept with an empty message, so
    ``-n N`` still means N lines and the last cursor seen is the last entry read.
    """
    if not line.strip():
        return None
    try:
        entry = _decoder.decode(line)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None
    if not isinstance(entry.cursor, str) or not entry.cursor:
        return None
    message = _decode_message(entry.message)
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[:MAX_MESSAGE_CHARS] + TRUNCATED_MARK
    return LogLine(cursor=entry.cursor, message=message, timestamp=_timestamp(entry.realtime))


def _decode_value(value: object) -> str | None:
    """A JSON field value: a string, or a list of byte values (journald's non-UTF-8 form)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(b, int) for b in value):
        try:
            return bytes(value).decode("utf-8", "replace")
        except ValueError:  # a "byte" outside 0..255
            return None
    return None


def _decode_message(value: object) -> str:
    """MESSAGE as text, whatever form journalctl printed it in."""
    if value is None:  # absent, or too large for journalctl to print without --all
        return ""
    decoded = _decode_value(value)
    if decoded is not None:
        return decoded
    if isinstance(value, list):
        # A field set more than once in one entry comes as a list of values.
        return "\n".join(p for p in map(_decode_value, value) if p is not None)
    return str(value)


def _timestamp(value: object) -> float:
    """``__REALTIME_TIMESTAMP`` (µs since the epoch, as a string) in seconds; 0.0 if absent."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        return 0.0
    try:
        return int(value) / 1_000_000
    except ValueError:
        return 0.0


# --------------------------------------------------------------------------- reader


class JournalReader:
    """Reads units' journals with ``journalctl``; one instance serves any number of requests.

    ``scope="system"`` matches like ``journalctl -u UNIT`` (a real host: the system
    journal); ``scope="user"`` like ``journalctl --user-unit UNIT`` for the user manager
    of the agent's own UID. ``journal_dir`` is passed as ``--directory`` (tests: the
    private journald's directory); a directory that does not exist raises `JournalError`,
    one that exists but holds no journal files reads as empty.
    """

    def __init__(
        self,
        *,
        scope: Literal["system", "user"],
        journal_dir: str | None = None,
        journalctl: str = "journalctl",
    ) -> None:
        if scope not in ("system", "user"):
            raise ValueError(f"scope must be 'system' or 'user', not {scope!r}")
        self.scope = scope
        self.journal_dir = journal_dir
        self.journalctl = journalctl
        self._uid = os.getuid()

    async def tail(
        self,
        unit: str,
        lines: int,
        *,
        after_cursor: str = "",
        identifier: str | None = None,
    ) -> list[LogLine]:
        """The unit's last ``lines`` lines, oldest first (``lines <= 0``: none).

        With ``after_cursor`` (resume), ``lines`` is ignored: every line after that
        cursor, oldest first, but at most `MAX_LINES` (the *first* ones after the cursor,
        so resuming again from the last one returned continues without a gap).
        """
        if not after_cursor and lines <= 0:
            _unit_name(unit)  # still refuse a bad name
            return []
        count = MAX_LINES if after_cursor else min(lines, MAX_LINES)
        args = self._args(unit, identifier, after_cursor, [f"--lines={count}"])
        proc = await self._spawn(args)
        try:
            out, err = await proc.communicate()
        finally:
            await _stop(proc)
        if proc.returncode != 0:
            raise JournalError(_failure(self.journalctl, proc.returncode, err))
        return [e for e in map(parse_entry, out.splitlines()) if e is not None]

    def follow(
        self,
        unit: str,
        *,
        after_cursor: str = "",
        lines: int = 10,
        identifier: str | None = None,
    ) -> AsyncGenerator[list[LogLine], None]:
        """Batches of lines as they arrive: the last ``lines`` first, or all after the cursor.

        Arguments are checked now (`JournalError`); journalctl starts on the first
        ``__anext__``, which raises `JournalError` if it fails (bad directory or cursor).
        Lines arriving within `BATCH_WINDOW_S` of a batch's first line share the batch.
        The journalctl process is killed when the iterator is closed (``aclose()``, or
        ``contextlib.aclosing``), when the consuming task is cancelled, and, on CPython,
        soon after the consumer drops it (the loop's async-generator finalizer).
        """
        # ``--lines=all`` with a cursor: with -f, journalctl 252 otherwise prints only 10
        # of the backlog and the rest when the next new entry arrives.
        extra = ["--follow", "--lines=all" if after_cursor else f"--lines={_clamp(lines)}"]
        args = self._args(unit, identifier, after_cursor, extra)
        return self._follow(args)

    # -- internals

    def _args(
        self, unit: str, identifier: str | None, after_cursor: str, extra: list[str]
    ) -> list[str]:
        """The whole journalctl command line; raises `JournalError` for unusable input."""
        args = [
            self.journalctl,
            "--output=json",
            "--output-fields=MESSAGE",  # __CURSOR and __REALTIME_TIMESTAMP always come
            "--all",  # else fields over 4 KiB are printed as null
            "--no-pager",
            "--quiet",
        ]
        if self.journal_dir is not None:
            args.append(f"--directory={self.journal_dir}")
        if after_cursor:
            if "\0" in after_cursor:
                raise JournalError("invalid cursor")
            args.append(f"--after-cursor={after_cursor}")
        args += extra
        args.append("--")
        args += self._matches(_unit_name(unit), identifier or None)
        return args

    def _matches(self, unit: str, identifier: str | None) -> list[str]:
        """``-u``/``--user-unit``'s expansion (systemd 252 logs-show.c), OR the identifier."""
        if identifier is not None and ("\0" in identifier or "\n" in identifier):
            raise JournalError(f"invalid syslog identifier {identifier!r}")
        groups: list[list[str]]
        if self.scope == "system":
            groups = [
                [f"_SYSTEMD_UNIT={unit}"],
                [f"MESSAGE_ID={_COREDUMP_MESSAGE_ID}", "_UID=0", f"COREDUMP_UNIT={unit}"],
                ["_PID=1", f"UNIT={unit}"],
                ["_UID=0", f"OBJECT_SYSTEMD_UNIT={unit}"],
            ]
            if unit.endswith(".slice"):
                groups.append([f"_SYSTEMD_SLICE={unit}"])
            if identifier is not None:
                groups.append([f"SYSLOG_IDENTIFIER={identifier}"])
        else:
            uid = f"_UID={self._uid}"
            groups = [
                [f"_SYSTEMD_USER_UNIT={unit}", uid],
                [f"USER_UNIT={unit}", uid],
                [f"COREDUMP_USER_UNIT={unit}", uid, "_UID=0"],  # same field twice: OR
                [f"OBJECT_SYSTEMD_USER_UNIT={unit}", uid, "_UID=0"],
            ]
            if unit.endswith(".slice"):
                groups.append([f"_SYSTEMD_USER_SLICE={unit}", uid])
            if identifier is not None:
                groups.append([f"SYSLOG_IDENTIFIER={identifier}", uid])
        matches: list[str] = []
        for group in groups:
            if matches:
                matches.append("+")
            matches += group
        return matches

    async def _spawn(self, args: list[str]) -> asyncio.subprocess.Process:
        """Start journalctl; a missing or unusable binary is a `JournalError`."""
        try:
            return await asyncio.create_subprocess_exec(
                *args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                limit=STREAM_LIMIT,
            )
        except FileNotFoundError as exc:
            raise JournalError(f"{self.journalctl} not found") from exc
        except OSError as exc:
            raise JournalError(f"cannot run {self.journalctl}: {exc}") from exc

    async def _follow(self, args: list[str]) -> AsyncGenerator[list[LogLine], None]:
        """The generator behind `follow`; its ``finally`` is what kills journalctl."""
        proc = await self._spawn(args)
        assert proc.stdout is not None and proc.stderr is not None
        stderr = asyncio.create_task(_drain(proc.stderr))
        try:
            while (batch := await _next_batch(proc.stdout)) is not None:
                if batch:
                    yield batch
            returncode = await proc.wait()
            if returncode != 0:
                raise JournalError(_failure(self.journalctl, returncode, await stderr))
        finally:
            await _stop(proc)
            stderr.cancel()  # normally done already: the pipe closed with the process
            await asyncio.wait([stderr])  # unlike `await stderr`, never eats our own cancel


async def _next_batch(stdout: asyncio.StreamReader) -> list[LogLine] | None:
    """Wait for a line, then take what follows within the window; None at end of output."""
    first = await _readline(stdout)
    if not first:
        return None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + BATCH_WINDOW_S
    batch: list[LogLine] = []
    size = 0
    line = first
    while True:
        entry = parse_entry(line)
        if entry is not None:
            batch.append(entry)
            size += len(entry.message) + len(entry.cursor)
        if len(batch) >= BATCH_MAX_LINES or size >= BATCH_MAX_BYTES:
            return batch
        remaining = deadline - loop.time()
        if remaining <= 0:
            return batch
        try:
            # Cancelling readline mid-line is safe: StreamReader keeps the partial line.
            async with asyncio.timeout(remaining):
                line = await _readline(stdout)
        except TimeoutError:
            return batch
        if not line:  # end of output; the next call reports it
            return batch


async def _readline(stream: asyncio.StreamReader) -> bytes:
    """The next line (b"" at EOF), skipping lines longer than `STREAM_LIMIT`."""
    while True:
        try:
            return await stream.readline()
        except ValueError:
            # asyncio dropped the over-long line (or its head; the tail then fails to parse).
            log.warning("skipped a journal entry longer than %d bytes", STREAM_LIMIT)


async def _drain(stream: asyncio.StreamReader) -> bytes:
    """Read stderr to its end, keeping the tail, so journalctl never blocks writing it."""
    kept = b""
    while chunk := await stream.read(4096):
        kept = (kept + chunk)[-_STDERR_KEEP:]
    return kept


async def _stop(proc: asyncio.subprocess.Process) -> None:
    """Kill journalctl by its PID if it still runs, and reap it."""
    if proc.returncode is None:
        try:
            proc.kill()
        except ProcessLookupError:
            pass
    await proc.wait()


def _failure(journalctl: str, returncode: int | None, stderr: bytes) -> str:
    text = stderr.decode("utf-8", "replace").strip() or "(no output on stderr)"
    return f"{journalctl} exited with status {returncode}: {text}"


def _clamp(lines: int) -> int:
    return max(0, min(lines, MAX_LINES))


def _unit_name(unit: str) -> str:
    """Check a unit name (it may come from the network) and add ``.service`` like ``-u``."""
    if not _UNIT_NAME.fullmatch(unit) or unit.startswith("."):
        raise JournalError(f"invalid unit name {unit!r}")
    _stem, dot, suffix = unit.rpartition(".")
    if not dot or suffix not in _UNIT_TYPES:
        unit += ".service"
        if len(unit) > 255:
            raise JournalError(f"invalid unit name {unit!r}")
    return unit
