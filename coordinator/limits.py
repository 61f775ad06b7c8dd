"""Generic limits on what clients and agents may send, as pure functions and numbers.

Every door of the coordinator (HTTP bodies, YAML manifests, unit definitions, agent
frames) has a size, a nesting depth or a rate beyond which the input is refused with
a clear message instead of costing memory, a stack or the event loop. The numbers
live here so the API, the domain services and the hub agree on them; the I/O that
enforces them is in `coordinator/guard.py` (HTTP) and `coordinator/hub/sessions.py` (frames).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import msgspec

from proto import messages as m
from proto.bucket import TokenBucket
from proto.units import UnitOption

if TYPE_CHECKING:
    import yaml

# --- HTTP bodies -------------------------------------------------------------------------

DEFAULT_BODY_MAX = 1 << 20
"""Largest request body of a route not listed in ROUTE_BODY_MAX."""

ROUTE_BODY_MAX: Mapping[tuple[str, str], int] = {
    # Anonymous: a join token, a machine id and a CSR are a few KiB.
    ("POST", "/agent/v1/enroll"): 64 << 10,
    # Anonymous: a username, a password (at most 1024 characters) and a few options.
    ("POST", "/api/v1/auth/token/"): 16 << 10,
    # Many units in one transaction (bench, bulk tools): admins only.
    ("PUT", "/moorage/v1/units"): 256 << 20,
    # Manifests: MANIFEST_MAX_BYTES of YAML, JSON-escaped.
    ("POST", "/api/v2/deployment-applications"): 20 << 20,
    ("PUT", "/api/v2/deployment-applications/{id}"): 20 << 20,
    # One unit: UNIT_MAX_BYTES of options, JSON-encoded.
    ("PUT", "/moorage/v1/units/{name}"): 4 << 20,
    ("PUT", "/fleet/v1/units/{name}"): 4 << 20,
}


def body_limit(method: str, route: str) -> int:
    """Largest body (bytes) the route `route` (canonical path) accepts for `method`."""
    return ROUTE_BODY_MAX.get((method.upper(), route), DEFAULT_BODY_MAX)


DEFAULT_IDLE_TIMEOUT_S = 30.0
"""A connection with no request under way (idle after TLS, between keep-alive requests,
or still sending its headers) is closed after this long."""
DEFAULT_TLS_HANDSHAKE_TIMEOUT_S = 30.0
MAX_TLS_HANDSHAKES = 64
"""TLS handshakes in progress per listener; other connections wait in the listen
backlog (`coordinator.guard.Listener`): enough to keep a core busy, few enough that
each finishes quickly when thousands of agents reconnect at once."""
"""A connection that has not finished its TLS handshake by then is dropped. Generous:
after a coordinator restart thousands of agents handshake at once on one loop."""
DEFAULT_BODY_TIMEOUT_S = 60.0
"""The whole request body must have arrived by then (408 otherwise)."""

GIL_SWITCH_INTERVAL_S = 0.001
"""How long a worker thread may hold the interpreter while the event loop waits."""

# --- nesting -----------------------------------------------------------------------------

MAX_YAML_DEPTH = 32
"""Manifests are three levels deep; nothing legitimate comes near this."""

NESTING_MESSAGE = "nested too deeply"


class TooDeep(ValueError):
    """Input nested beyond what its decoder may recurse into."""


def decode_json(raw: bytes, kind: type[Any]) -> Any:
    """msgspec's decode with RecursionError (input nested thousands deep) turned into
    TooDeep, which callers answer as a 400 like any other malformed body."""
    try:
        return msgspec.json.decode(raw, type=kind)
    except RecursionError:
        raise TooDeep(f"request body is {NESTING_MESSAGE}") from None


@functools.cache
def _depth_limited_loader() -> type[yaml.SafeLoader]:
    """The loader class, made with the first YAML to compose: PyYAML is imported then,
    not with this module (a coordinator that never parses a manifest never loads it, #22)."""
    import yaml

    class _DepthLimitedLoader(yaml.SafeLoader):
        """PyYAML's scanner and parser are iterative; only composing nodes recurses, so
        counting there bounds the recursion of everything after it."""

        max_depth = MAX_YAML_DEPTH

        def __init__(self, stream: str) -> None:
            super().__init__(stream)
            self._depth = 0

        def check_printable(self, data: str) -> None:
            """PyYAML's check, in slices: one regex search over megabytes holds the
            interpreter lock (so the event loop) for tens of milliseconds."""
            step = 1 << 16
            for start in range(0, len(data), step):
                match = self.NON_PRINTABLE.search(data, start, start + step)
                if match:
                    position = self.index + (len(self.buffer) - self.pointer) + match.start()
                    raise yaml.reader.ReaderError(
                        self.name,
                        position,
                        ord(match.group()),
                        "unicode",
                        "special characters are not allowed",
                    )

        def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
            self._depth += 1
            try:
                if self._depth > self.max_depth:
                    mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                    raise yaml.composer.ComposerError(
                        None,
                        None,
                        f"{NESTING_MESSAGE} (more than {self.max_depth} levels)",
                        mark,
                    )
                return super().compose_node(parent, index)
            finally:
                self._depth -= 1

    return _DepthLimitedLoader


def compose_yaml(text: str) -> yaml.Node | None:
    """`yaml.compose` with SafeLoader, refusing documents nested deeper than
    MAX_YAML_DEPTH with a YAMLError that carries the line (never a RecursionError)."""
    loader = _depth_limited_loader()(text)
    try:
        return loader.get_single_node()
    finally:
        loader.dispose()


# --- manifests and units -----------------------------------------------------------------

MANIFEST_MAX_BYTES = 8 << 20
"""Largest manifest text (UTF-8)."""
MANIFEST_MAX_UNITS = 1000
"""Most units one application version may hold."""

UNIT_MAX_OPTIONS = 2000
"""Most options in one unit: systemd units have tens; this is far beyond any real one."""
UNIT_MAX_BYTES = 256 << 10
"""Largest unit (names and values of its options). A Desired frame to an agent is at
most `proto.messages.MAX_FRAME` (4 MiB); a unit must fit one with room for others."""


def manifest_size_problem(text: str) -> str:
    """Why a manifest text is too large to consider ("" if it is not)."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MANIFEST_MAX_BYTES:
        return f"the manifest is {size} bytes; at most {MANIFEST_MAX_BYTES} are accepted"
    return ""


def unit_size_problem(options: list[UnitOption] | tuple[UnitOption, ...]) -> str:
    """Why a unit could never reach an agent ("" if it can)."""
    if len(options) > UNIT_MAX_OPTIONS:
        return f"the unit has {len(options)} options; at most {UNIT_MAX_OPTIONS} are accepted"
    size = sum(len(o.section) + len(o.name) + len(o.value) for o in options)
    if size > UNIT_MAX_BYTES:
        return (
            f"the unit is {size} bytes; at most {UNIT_MAX_BYTES} are accepted"
            " (it must fit the agent link's frame)"
        )
    return ""


# --- agent messages ----------------------------------------------------------------------


__all__ = ["TokenBucket"]
"""The hub's limit on agent requests that each cost a full push or a signature."""

EXPENSIVE_RATE_PER_S = 0.5
EXPENSIVE_BURST = 5.0

MAX_REVISION = 2**53
"""Revisions and sequence numbers count up from 0; beyond 2**53 a float (JSON) would
lose them, and no honest agent gets near it."""
MAX_LIST = 100_000
"""Most entries in one list of an agent message (units reported, drift entries...)."""
MAX_PID = 2**31


def message_problem(message: m.Message) -> str:
    """Why a decoded agent message carries values the hub must not store or act on
    ("" if none): negative or absurd revisions, pids, list lengths."""
    ints: list[tuple[str, int, int]] = []
    lists: list[tuple[str, int]] = []
    if isinstance(message, m.Hello):
        ints += [("applied_revision", message.applied_revision, MAX_REVISION)]
        ints += [("snapshot[].main_pid", s.main_pid, MAX_PID) for s in message.snapshot]
        lists += [("snapshot", len(message.snapshot)), ("stickers", len(message.stickers))]
        lists += [("capabilities", len(message.capabilities))]
        lists += [("metadata", len(message.metadata))]
    elif isinstance(message, m.Applied):
        ints.append(("revision", message.revision, MAX_REVISION))
    elif isinstance(message, m.Heartbeat):
        ints.append(("seq", message.seq, MAX_REVISION))
    elif isinstance(message, m.StateReport):
        ints += [("changes[].main_pid", s.main_pid, MAX_PID) for s in message.changes]
        lists += [("changes", len(message.changes)), ("removed", len(message.removed))]
    elif isinstance(message, m.DriftReport):
        lists.append(("entries", len(message.entries)))
    elif isinstance(message, m.Stickers):
        lists.append(("stickers", len(message.stickers)))
    elif isinstance(message, m.Facts):
        lists.append(("capabilities", len(message.capabilities)))
    elif isinstance(message, m.LogChunk):
        lists.append(("lines", len(message.lines)))
    elif isinstance(message, m.TaskOutput):
        ints.append(("offset", message.offset, MAX_REVISION))
    elif isinstance(message, m.TaskUpdate):
        ints.append(("log_bytes", message.log_bytes, MAX_REVISION))
    for field, value, high in ints:
        if not 0 <= value <= high:
            return f"{field} {value} is out of range (0..{high})"
    for field, count in lists:
        if count > MAX_LIST:
            return f"{field} has {count} entries; at most {MAX_LIST} are accepted"
    return ""


def is_expensive(message: m.Message) -> bool:
    """Agent requests that each cost the hub real work (a full desired-state push, a
    certificate signature): rate-limited per session."""
    if isinstance(message, m.Error):
        return message.code == "resync"
    return isinstance(message, m.CertRenew)
