"""The fleet unit model: names, options, the unit file text and its hash. No I/O.

A unit is a name plus an ordered list of ``{section, name, value}`` options, exactly as
fleet v1 keeps it. Everything here mirrors fleet v1.0.0 (``api/units.go``,
``unit/unit.go``) and the go-systemd ``unit`` package fleet vendored, because
``fleetctl`` computes unit hashes and parses unit files client-side: if Moorage
serialised or parsed differently, ``fleetctl list-unit-files`` would show a different
HASH than the agent reports and ``fleetctl`` would wait forever for a state that never
matches. Where Moorage is stricter than fleet, the function says so.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Literal

import msgspec

__all__ = [
    "CONTAINER_SUFFIX",
    "DESIRED_STATES",
    "FLEETCTL_RECOGNIZED_SUFFIXES",
    "LINE_MAX",
    "STOP_WHEN_ISOLATED",
    "SYSTEMD_SUFFIXES",
    "TEMPLATE_SUFFIXES",
    "UNIT_NAME_MAX",
    "XFLEET_SECTION",
    "UnitFileError",
    "UnitNameError",
    "UnitOption",
    "backend_for",
    "file_options",
    "instance_of",
    "is_template",
    "parse_unit_file",
    "render_unit_file",
    "serialize",
    "stops_when_isolated",
    "template_of",
    "unit_hash",
    "unit_suffix",
    "validate_unit_name",
    "xfleet_options",
]


class UnitOption(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    """One ``Name=Value`` line of a unit, with its section (fleet's ``schema.UnitOption``).

    Frozen so option lists can be hashed, compared and shared between the coordinator's
    state and outgoing messages without defensive copies.
    """

    section: str
    name: str
    value: str


DESIRED_STATES: tuple[str, ...] = ("inactive", "loaded", "launched")
"""fleet's job states, used for both ``desiredState`` and ``currentState``."""

SYSTEMD_SUFFIXES: tuple[str, ...] = (
    "service",
    "socket",
    "busname",
    "target",
    "snapshot",
    "device",
    "mount",
    "automount",
    "swap",
    "timer",
    "path",
    "slice",
    "scope",
)
"""Unit types fleet v1.0.0's API accepts in a unit name (``validUnitTypes`` in
``api/units.go``), without the dot. ``busname`` and ``snapshot`` are gone from current
systemd but fleet accepted them, so names using them are still valid here (the machine's
systemd then refuses to load them). Do not confuse with
:data:`FLEETCTL_RECOGNIZED_SUFFIXES`."""

FLEETCTL_RECOGNIZED_SUFFIXES: tuple[str, ...] = (
    "service",
    "socket",
    "timer",
    "path",
    "device",
    "mount",
    "automount",
)
"""fleet's ``unit.RecognizedUnitType`` list: ``fleetctl`` appends ``.service`` to a name
whose suffix is not one of these (``unit.DefaultUnitType``). Client-side only; the
server validates against :data:`SYSTEMD_SUFFIXES`."""

CONTAINER_SUFFIX = ".container"
"""Moorage's own unit type, run by the Docker backend instead of systemd."""

TEMPLATE_SUFFIXES: tuple[str, ...] = ("path", "service", "socket", "target", "timer")
"""Unit types that may be templates (``x@.service``) or instances (``x@i.service``):
systemd's ``unit_type_may_template``. fleet itself did not check this; Moorage does so
that such names fail at submit time rather than on the machine."""

UNIT_NAME_MAX = 256
"""Longest unit name in bytes (systemd's ``UNIT_NAME_MAX``, fleet's ``unitNameMax``)."""

LINE_MAX = 2048
"""A physical unit-file line of this many bytes or more is refused (go-systemd's
``SYSTEMD_LINE_MAX``): systemd would silently truncate it."""

XFLEET_SECTION = "X-Fleet"
"""Section holding scheduling options; never written to a machine."""

_NAME_CHARS = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ:-_.\\@")

# Go's unicode.IsSpace set. go-systemd trims with strings.TrimSpace and skips runes with
# unicode.IsSpace; Python's str.strip() would also strip U+001C..U+001F, which Go keeps.
_GO_SPACE = (
    "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007"
    "\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)


class UnitNameError(ValueError):
    """A unit name fleet (or Moorage) would refuse; the message says why."""


class UnitFileError(ValueError):
    """Unit-file text that cannot be parsed; names the 1-based line and the problem."""

    def __init__(self, line: int, problem: str) -> None:
        super().__init__(f"line {line}: {problem}")
        self.line = line
        self.problem = problem


# --------------------------------------------------------------------------- names


def validate_unit_name(name: str) -> None:
    """Raise :class:`UnitNameError` unless ``name`` may be submitted.

    fleet's ``api.ValidateName`` rules, checked in its order (empty, length, suffix,
    characters, leading ``@``), plus two Moorage rules: the part before the suffix must
    not be empty (fleet accepted ``.service``; systemd does not), and ``@`` (template or
    instance) is allowed only for :data:`TEMPLATE_SUFFIXES`. ``.container`` is a valid
    suffix but cannot be templated.
    """
    if not name:
        raise UnitNameError("unit name cannot be empty")
    if len(name.encode("utf-8")) > UNIT_NAME_MAX:
        raise UnitNameError(f"unit name exceeds maximum length ({UNIT_NAME_MAX})")
    dot = name.rfind(".")
    if dot == -1:
        raise UnitNameError(f'unit name {name!r} must contain "." followed by a unit type')
    if dot == len(name) - 1:
        raise UnitNameError(f'unit name {name!r} cannot end in "."')
    suffix = name[dot + 1 :]
    if suffix not in SYSTEMD_SUFFIXES and "." + suffix != CONTAINER_SUFFIX:
        known = ", ".join((*SYSTEMD_SUFFIXES, CONTAINER_SUFFIX[1:]))
        raise UnitNameError(f"invalid unit type {suffix!r} (known: {known})")
    stem = name[:dot]
    if not stem:
        raise UnitNameError(f"unit name {name!r} has nothing before its type suffix")
    for char in stem:
        if char not in _NAME_CHARS:
            raise UnitNameError(
                f"invalid character {char!r} in unit name {name!r}"
                " (allowed: A-Z a-z 0-9 and : - _ . \\ @)"
            )
    if name.startswith("@"):
        raise UnitNameError(f'unit name {name!r} cannot start with "@"')
    if "@" in stem and suffix not in TEMPLATE_SUFFIXES:
        raise UnitNameError(
            f"unit type {suffix!r} cannot be a template or instance"
            f" ({'/'.join(TEMPLATE_SUFFIXES)} can)"
        )


def _split(name: str) -> tuple[str, str, str] | None:
    """``(prefix, instance, suffix-with-dot)`` for a name containing ``@``, else None.

    Mirrors fleet's ``unit.NewUnitNameInfo``: the suffix starts at the last ``.``, the
    instance is everything after the first ``@`` before it.
    """
    dot = name.rfind(".")
    if dot == -1:
        return None
    stem, suffix = name[:dot], name[dot:]
    at = stem.find("@")
    if at == -1:
        return None
    return stem[:at], stem[at + 1 :], suffix


def is_template(name: str) -> bool:
    """True for a template such as ``foo@.service`` (fleet refuses to activate those)."""
    parts = _split(name)
    return parts is not None and parts[1] == ""


def template_of(name: str) -> str | None:
    """The template an instance comes from (``foo@1.service`` -> ``foo@.service``).

    None for plain units and for templates themselves.
    """
    parts = _split(name)
    if parts is None or parts[1] == "":
        return None
    return f"{parts[0]}@{parts[2]}"


def instance_of(name: str) -> str | None:
    """The instance string of an instance unit (``foo@1.service`` -> ``1``), else None."""
    parts = _split(name)
    if parts is None or parts[1] == "":
        return None
    return parts[1]


def unit_suffix(name: str) -> str:
    """The unit type without the dot (``web.service`` -> ``service``); ``""`` if none."""
    dot = name.rfind(".")
    return "" if dot == -1 else name[dot + 1 :]


def backend_for(name: str) -> Literal["systemd", "docker"]:
    """Which agent backend runs the unit: the suffix decides (DESIGN.md section 3).

    Raises :class:`UnitNameError` for a suffix neither backend knows, so a bad name
    cannot silently land on systemd.
    """
    suffix = unit_suffix(name)
    if "." + suffix == CONTAINER_SUFFIX:
        return "docker"
    if suffix in SYSTEMD_SUFFIXES:
        return "systemd"
    raise UnitNameError(f"no backend for unit {name!r} (unit type {suffix!r})")


# ------------------------------------------------------------------------ options


def serialize(options: Sequence[UnitOption]) -> str:
    """Unit-file text exactly as go-systemd's ``unit.Serialize`` writes it.

    Sections appear in order of first appearance; a section's options keep their given
    order and are all grouped under that first appearance. Each section is ``[S]\\n``
    then ``Name=Value\\n`` per option; sections are separated by one blank line, with
    none at the end; no options gives ``""``. Nothing is escaped or checked: a value
    containing a newline is written as is (so it hashes like fleet, but does not parse
    back to the same options).
    """
    grouped: dict[str, list[UnitOption]] = {}
    for opt in options:
        grouped.setdefault(opt.section, []).append(opt)
    blocks = []
    for section, opts in grouped.items():
        lines = [f"[{section}]\n"]
        lines.extend(f"{opt.name}={opt.value}\n" for opt in opts)
        blocks.append("".join(lines))
    return "\n".join(blocks)


def unit_hash(options: Sequence[UnitOption]) -> str:
    """fleet's unit hash: SHA-1 hex of :func:`serialize` over *all* options.

    ``[X-Fleet]`` options are included, as in fleet's ``UnitFile.Hash``; this is the
    HASH column of ``fleetctl list-unit-files`` and the ``hash`` a machine reports.
    """
    return hashlib.sha1(serialize(options).encode("utf-8")).hexdigest()


def xfleet_options(options: Iterable[UnitOption]) -> list[UnitOption]:
    """The ``[X-Fleet]`` scheduling options, in order (section name is case-sensitive)."""
    return [opt for opt in options if opt.section == XFLEET_SECTION]


STOP_WHEN_ISOLATED = "StopWhenIsolated"
"""``[X-Fleet] StopWhenIsolated=true``: a singleton's opt-in. An agent cut off from the
coordinator for `lost_after` stops the unit itself, and the coordinator places it
elsewhere only after that (lost_after plus a margin), so two copies never run."""

_TRUE = frozenset({"1", "t", "T", "true", "TRUE", "True", "yes", "on"})
_FALSE = frozenset({"0", "f", "F", "false", "FALSE", "False", "no", "off", ""})


def xfleet_bool(value: str, name: str) -> bool:
    """One reading of an ``[X-Fleet]`` boolean for every caller (fleet's words; empty is
    false); ValueError names a value that is not a boolean."""
    text = value.strip()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"[X-Fleet] {name}={value!r} is not a boolean")


def _last_bool(options: Iterable[UnitOption], name: str) -> bool:
    """The last ``[X-Fleet] name=`` value as a boolean (as systemd reads settings)."""
    value = False
    for opt in options:
        if opt.section == XFLEET_SECTION and opt.name == name:
            value = xfleet_bool(opt.value, name)
    return value


def stops_when_isolated(options: Iterable[UnitOption]) -> bool:
    """Whether the unit opted in; ValueError names a value that is not a boolean. Read
    by the scheduler (which validates it at submit) and by the agent (which acts on it)."""
    return _last_bool(options, STOP_WHEN_ISOLATED)


def is_global(options: Iterable[UnitOption]) -> bool:
    """``[X-Fleet] Global=true``: the unit runs on every matching machine; ValueError
    names a value that is not a boolean. The scheduler and clients (moorctl's
    list-unit-files, which must not import the scheduler) read it here."""
    return _last_bool(options, "Global")


def file_options(options: Iterable[UnitOption]) -> list[UnitOption]:
    """Everything but ``[X-Fleet]``: what belongs in the file on the machine."""
    return [opt for opt in options if opt.section != XFLEET_SECTION]


def render_unit_file(options: Sequence[UnitOption]) -> str:
    """The exact text the agent writes to disk: ``serialize(file_options(options))``.

    No extra trailing newline is added (serialize already ends every option line with
    one), so the on-disk bytes are fleet's serialisation minus ``[X-Fleet]``. A unit
    with only ``[X-Fleet]`` options renders as ``""``. Note the hash is of the *full*
    option list (:func:`unit_hash`), not of this text.
    """
    return serialize(file_options(options))


def unit_file_text(options: Sequence[UnitOption]) -> str:
    """The bytes the agent writes for a unit: :func:`render_unit_file`, newline-terminated.
    Also the text a release's and a sticker's SHA-256 are taken over (container units too)."""
    text = render_unit_file(options)
    return text if text.endswith("\n") or not text else text + "\n"


def unit_file_sha256(options: Sequence[UnitOption]) -> str:
    return hashlib.sha256(unit_file_text(options).encode()).hexdigest()


# ------------------------------------------------------------------------ parsing


def parse_unit_file(text: str) -> list[UnitOption]:
    """Parse unit-file text the way go-systemd's ``unit.Deserialize`` (as vendored by
    fleet v1.0.0) does, so options match what ``fleetctl submit`` would send.

    - ``[Section]`` starts a section; leading whitespace is skipped, the name is taken
      verbatim, and only whitespace may follow ``]`` on that line.
    - Blank lines are skipped. A line whose first non-blank character is ``#`` or ``;``
      is a comment; if it ends with ``\\`` (ignoring one trailing space) the next line
      belongs to the comment too.
    - ``Name=Value``: split at the first ``=``, both sides trimmed of whitespace.
    - Continuation: while the value's raw line ends in ``\\``, the backslash is replaced
      by one space and the next line is appended verbatim (a comment or ``[X]`` line
      included); a blank line or the end of the text stops it. The joined value is
      trimmed. ``\\`` followed by anything, even spaces, is not a continuation.
    - Lines are split on ``\\n`` only (a ``\\r`` before it stays, as in go-systemd, and is
      then trimmed from values).

    Stricter than go-systemd, each raising :class:`UnitFileError` naming the line: text
    before the first section other than blank lines and comments (go-systemd silently
    skipped it), a section header with no ``]`` on its line, and any line of
    :data:`LINE_MAX` bytes or more (go-systemd's check, applied to every line). Also an
    error as in go-systemd: a line without ``=``, and garbage after a section header.
    A leading byte-order mark is ignored.
    """
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = text.split("\n")
    for number, line in enumerate(lines, start=1):
        if len(line.encode("utf-8")) >= LINE_MAX:
            raise UnitFileError(number, f"line too long (max {LINE_MAX - 1} bytes)")

    options: list[UnitOption] = []
    section: str | None = None
    i = 0
    while i < len(lines):
        number = i + 1
        line = lines[i]
        i += 1
        body = line.lstrip(_GO_SPACE)
        if not body:
            continue
        if body[0] in "#;":
            # go-systemd ignores the whole comment, following its own continuations.
            while line.removesuffix(" ").endswith("\\") and i < len(lines):
                line = lines[i]
                i += 1
            continue
        if body[0] == "[":
            end = body.find("]")
            if end == -1:
                raise UnitFileError(number, 'section header has no closing "]"')
            garbage = body[end + 1 :].strip(_GO_SPACE)
            if garbage:
                raise UnitFileError(
                    number, f"unexpected text {garbage!r} after section header [{body[1:end]}]"
                )
            section = body[1:end]
            continue
        if section is None:
            raise UnitFileError(
                number, f"option outside of any section: {body!r} (add a [Section] header first)"
            )
        eq = body.find("=")
        if eq == -1:
            raise UnitFileError(
                number, f'expected "Name=Value" in section [{section}], got {body!r}'
            )
        raw_name = body[:eq]
        if "\r" in raw_name:
            raise UnitFileError(number, "unexpected carriage return in option name")
        name = raw_name.strip(_GO_SPACE)
        chunk = body[eq + 1 :]
        parts: list[str] = []
        while chunk.endswith("\\"):
            parts.append(chunk[:-1])
            parts.append(" ")
            if i >= len(lines):
                chunk = ""
                break
            chunk = lines[i]
            i += 1
        parts.append(chunk)
        value = "".join(parts).strip(_GO_SPACE)
        options.append(UnitOption(section, name, value))
    return options
