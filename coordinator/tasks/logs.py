"""Log arithmetic for task runs, as pure functions: which part of a resent chunk is new,
and the opaque `last_seen` cursor the Flotilla UI polls with.

The stored log of a run is contiguous from byte 0; a cursor names a byte offset in it.
Rules (from the UI's polling, spec/task-notes.md):
- a call returns the text after the cursor and the cursor of the end of what it returns;
- nothing new: the same cursor comes back;
- the cursor is never empty (so a finished run's never is);
- a cursor never splits a UTF-8 character while the run may still write its tail.
"""

from __future__ import annotations

import base64
import binascii

import msgspec

TOKEN_PREFIX = "m1."


class CursorError(ValueError):
    pass


def new_piece(stored: int, offset: int, data: bytes) -> bytes | None:
    """The part of a chunk at `offset` that extends a log of `stored` bytes: None when
    the chunk leaves a gap (it starts after the end: not kept, the agent resends from
    the acknowledged offset), b"" when every byte of it is stored already."""
    if offset > stored:
        return None
    end = offset + len(data)
    if end <= stored:
        return b""
    return data[stored - offset :]


def encode_cursor(offset: int) -> str:
    raw = offset.to_bytes(8, "big")
    return TOKEN_PREFIX + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(token: str) -> int:
    """The byte offset a `last_seen` token names ("" is the start)."""
    if token == "":
        return 0
    if not token.startswith(TOKEN_PREFIX) or len(token) > 32:
        raise CursorError(f"last_seen {token[:40]!r} is not a token this server issued")
    body = token[len(TOKEN_PREFIX) :]
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except (binascii.Error, ValueError):
        raise CursorError(f"last_seen {token!r} is not a token this server issued") from None
    if len(raw) != 8:
        raise CursorError(f"last_seen {token!r} is not a token this server issued")
    return int.from_bytes(raw, "big")


def complete_utf8(data: bytes) -> int:
    """How many leading bytes of `data` end on a UTF-8 character boundary (an
    incomplete multi-byte sequence at the end is left for the next call)."""
    n = len(data)
    # Walk back over at most 3 continuation bytes to the lead byte of the last char.
    i = n - 1
    back = 0
    while i >= 0 and back < 3 and data[i] & 0xC0 == 0x80:
        i -= 1
        back += 1
    if i < 0:
        return n
    lead = data[i]
    if lead < 0x80:
        return n
    need = (
        2 if lead & 0xE0 == 0xC0 else 3 if lead & 0xF0 == 0xE0 else 4 if lead & 0xF8 == 0xF0 else 1
    )
    have = n - i
    return n if have >= need else i


class LogSlice(msgspec.Struct, frozen=True):
    """What one logs call answers: the text and the cursor after it."""

    log: str
    last_seen: str


def slice_log(start: int, data: bytes, *, finished: bool) -> LogSlice:
    """`data` is the stored log from byte `start` on (perhaps capped): the text to
    return and the next cursor. While the run may still write, a trailing incomplete
    UTF-8 character waits for the next call; a finished run's bytes are all returned."""
    usable = len(data) if finished else complete_utf8(data)
    text = data[:usable].decode("utf-8", errors="replace")
    return LogSlice(text, encode_cursor(start + usable))
