"""`.container` units: their options, checked and turned into a container spec. No I/O.

A `.container` unit is the same fleet unit (name, options, hash) as a systemd one, but
the Docker backend runs it. Its options are in the spirit of Podman Quadlet and are
checked *here*, completely, when the unit is submitted (``coordinator.validation``):
an unknown key or a bad value is refused with a message naming the section and key,
and is never discovered later on a machine. The agent calls `parse_container` again
on its side to get the `ContainerSpec` it creates the container from.

Sections (anything else is refused):

* ``[Unit]``: ``Description=`` and ``Documentation=``, accepted and ignored. Other
  ``[Unit]`` keys (``After=``, ``Requires=``...) mean nothing for a container, so they
  are refused rather than silently ignored.
* ``[Container]``: see `_CONTAINER_KEYS`. List keys (``Environment=``,
  ``EnvironmentFile=``, ``PublishPort=``, ``Volume=``, ``Label=``) accumulate; an empty
  assignment empties the list so far (systemd's rule). For every other key the last
  assignment wins, as in systemd.
* ``[Service]``: only ``Restart=`` (see `RESTART_POLICIES`).
* ``[Install]`` (no meaning for containers) and ``[X-Fleet]`` (scheduling, checked by
  the coordinator) are ignored.

Value syntax follows systemd where systemd has one: ``Exec=``, ``Environment=`` and
``Label=`` are split into words like ``ExecStart=`` (whitespace separates words,
``'…'`` and ``"…"`` quote, C escapes such as ``\\n``, ``\\x41``, ``\\s`` are decoded;
no ``$VAR`` expansion), durations are systemd time spans (``30s``, ``1min 30s``,
``500ms``; a bare number is seconds) and sizes take ``K``/``M``/``G``/``T`` suffixes
(powers of 1024). Docker-only syntax (image references, ``PublishPort=``,
``Volume=``) follows the ``docker run`` flags of the same meaning.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Callable, Sequence
from typing import Final, Literal, TypeVar

import msgspec

from proto.units import CONTAINER_SUFFIX, XFLEET_SECTION, UnitOption

__all__ = [
    "CONTAINER_NAME_PREFIX",
    "LABEL_HASH",
    "LABEL_PREFIX",
    "LABEL_RESTART",
    "LABEL_UNIT",
    "MIN_MEMORY_BYTES",
    "RESTART_POLICIES",
    "ContainerOptionError",
    "ContainerSpec",
    "EnvironmentFile",
    "Healthcheck",
    "PortMapping",
    "RestartPolicy",
    "VolumeMount",
    "container_name",
    "join_words",
    "parse_container",
    "parse_duration_ns",
    "parse_size",
    "split_words",
]

LABEL_PREFIX: Final = "moorage."
"""Labels under this prefix are Moorage's own; a unit's ``Label=`` may not set them."""
LABEL_UNIT: Final = "moorage.unit"
"""The unit name: the agent touches only containers carrying it (its ownership mark)."""
LABEL_HASH: Final = "moorage.hash"
"""The fleet hash of the unit the container was created from: a change recreates it."""
LABEL_RESTART: Final = "moorage.restart"
"""The Docker restart policy of the unit (``name`` or ``on-failure:N``). The agent sets
the container's policy to ``no`` while it keeps the container stopped and restores this
one when it starts it again (see ``agent.backends.docker``)."""

CONTAINER_NAME_PREFIX: Final = "moorage-"

MIN_MEMORY_BYTES: Final = 6 * 1024 * 1024
"""Docker refuses a memory limit below 6 MiB (``linuxMinMemory``); refused here instead."""

RESTART_POLICIES: Final[dict[str, str]] = {
    "no": "no",
    "always": "unless-stopped",
    "unless-stopped": "unless-stopped",
    "on-failure": "on-failure",
}
"""``[Service] Restart=`` value -> Docker restart policy.

systemd's ``always`` restarts on any exit but not after an explicit stop: that is
Docker's ``unless-stopped`` (Docker's ``always`` would also bring back, on the next
dockerd start, a container the agent stopped). ``unless-stopped`` is accepted under
its Docker name too. systemd's ``on-success``, ``on-abnormal``, ``on-abort`` and
``on-watchdog`` have no Docker equivalent and are refused. No ``Restart=`` means
``no``, as in systemd."""

_UNIT_KEYS: Final = frozenset({"Description", "Documentation"})
_SERVICE_KEYS: Final = frozenset({"Restart"})
_IGNORED_SECTIONS: Final = frozenset({"Install", XFLEET_SECTION})
_LIST_KEYS: Final = frozenset({"Environment", "EnvironmentFile", "PublishPort", "Volume", "Label"})

_WHITESPACE: Final = " \t\n\r"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_LABEL_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]*")
_VOLUME_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+")
_NETWORK_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")
_USER_PART = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.-]*")
_DOCKER_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")

# Docker's reference grammar (distribution/reference, regexp.go).
_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]*)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_REFERENCE = re.compile(
    rf"(?P<name>(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*)"
    rf"(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?"
)
_NAME_TOTAL_MAX: Final = 255

_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*(?:([KMGT])(?:i?B)?|(B))?", re.IGNORECASE)
_SIZE_UNITS: Final[dict[str, int]] = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}

_NS: Final[dict[str, int]] = {
    **dict.fromkeys(("ns", "nsec"), 1),
    **dict.fromkeys(("us", "usec", "µs", "μs"), 1_000),
    **dict.fromkeys(("ms", "msec"), 1_000_000),
    **dict.fromkeys(("s", "sec", "second", "seconds"), 1_000_000_000),
    **dict.fromkeys(("m", "min", "minute", "minutes"), 60_000_000_000),
    **dict.fromkeys(("h", "hr", "hour", "hours"), 3_600_000_000_000),
    **dict.fromkeys(("d", "day", "days"), 86_400_000_000_000),
    **dict.fromkeys(("w", "week", "weeks"), 604_800_000_000_000),
}
_SPAN_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([a-zµμ]*)")

_T = TypeVar("_T")

_TRUE: Final = frozenset({"1", "yes", "y", "true", "t", "on"})
_FALSE: Final = frozenset({"0", "no", "n", "false", "f", "off"})


class ContainerOptionError(ValueError):
    """An option of a `.container` unit that cannot be accepted.

    ``key`` is the option name (``PublishPort``), ``section`` its section; the message
    names both, so it can go to the client as it is.
    """

    def __init__(self, section: str, key: str, problem: str) -> None:
        where = f"[{section}] {key}" if key else f"[{section}]"
        super().__init__(f"{where}: {problem}")
        self.section = section
        self.key = key
        self.problem = problem


class PortMapping(msgspec.Struct, frozen=True):
    """One ``PublishPort=``: ``host_port`` 0 lets Docker choose; ``host_ip`` "" is all."""

    container_port: int
    protocol: Literal["tcp", "udp", "sctp"] = "tcp"
    host_port: int = 0
    host_ip: str = ""


class VolumeMount(msgspec.Struct, frozen=True):
    """One ``Volume=``: ``source`` is a host path, a named volume, or "" (anonymous)."""

    target: str
    source: str = ""
    read_only: bool = False


class EnvironmentFile(msgspec.Struct, frozen=True):
    """One ``EnvironmentFile=`` on the machine; ``optional`` came from a leading ``-``."""

    path: str
    optional: bool = False


class Healthcheck(msgspec.Struct, frozen=True):
    """Docker's healthcheck; 0 means "inherit from the image" (Docker's rule)."""

    test: list[str] = []
    interval_ns: int = 0
    timeout_ns: int = 0
    start_period_ns: int = 0
    retries: int = 0


class RestartPolicy(msgspec.Struct, frozen=True):
    """A Docker restart policy (``HostConfig.RestartPolicy``)."""

    name: Literal["no", "always", "unless-stopped", "on-failure"] = "no"
    maximum_retry_count: int = 0

    def label(self) -> str:
        """The policy as stored in the `LABEL_RESTART` label."""
        if self.name == "on-failure" and self.maximum_retry_count:
            return f"on-failure:{self.maximum_retry_count}"
        return self.name

    @classmethod
    def from_label(cls, text: str) -> RestartPolicy:
        """Inverse of `label`; anything unreadable is ``no`` (never restart by surprise)."""
        name, _, count = text.partition(":")
        if name not in ("no", "always", "unless-stopped", "on-failure"):
            return cls()
        retries = int(count) if count.isdigit() and name == "on-failure" else 0
        return cls(name, retries)  # type: ignore[arg-type]


class ContainerSpec(msgspec.Struct, frozen=True, kw_only=True):
    """Everything the agent needs to create the container of a `.container` unit.

    ``command`` None keeps the image's CMD. ``environment`` is in assignment order
    (a later ``Environment=`` of the same name wins, as in systemd); the agent applies
    ``environment_files`` over it, as systemd's ``EnvironmentFile=`` overrides
    ``Environment=``. ``network`` "" is Docker's default network. ``stop_timeout_s``
    None is Docker's default (10 s).
    """

    image: str
    command: list[str] | None = None
    environment: dict[str, str] = {}
    environment_files: list[EnvironmentFile] = []
    ports: list[PortMapping] = []
    volumes: list[VolumeMount] = []
    labels: dict[str, str] = {}
    network: str = ""
    user: str = ""
    working_dir: str = ""
    memory_bytes: int = 0
    healthcheck: Healthcheck | None = None
    restart: RestartPolicy = RestartPolicy()
    init: bool = False
    stop_timeout_s: int | None = None


# --------------------------------------------------------------------------- names


def container_name(unit: str) -> str:
    """The Docker container name of a unit: ``moorage-`` + the name without ``.container``.

    Docker allows ``[a-zA-Z0-9_.-]`` in names; unit names may also hold ``:`` and ``\\``
    (``@`` is refused for `.container` units). A stem made only of Docker's characters
    is used as it is (``web.container`` -> ``moorage-web``); otherwise each other
    character becomes ``_`` and ``-`` plus the first 8 hex digits of the SHA-1 of the
    unit name are appended (``a:b.container`` -> ``moorage-a_b-<8 hex>``), so two units
    differing only in such characters still get different names. Deterministic, so the
    agent finds its container again after any restart. The name is only a name: the
    agent checks the `LABEL_UNIT` label before touching a container.
    """
    stem = unit.removesuffix(CONTAINER_SUFFIX)
    if all(c in _DOCKER_NAME_CHARS for c in stem):
        return CONTAINER_NAME_PREFIX + stem
    safe = "".join(c if c in _DOCKER_NAME_CHARS else "_" for c in stem)
    digest = hashlib.sha1(unit.encode("utf-8")).hexdigest()[:8]
    return f"{CONTAINER_NAME_PREFIX}{safe}-{digest}"


# --------------------------------------------------------------------------- words


def _unescape(text: str, i: int) -> tuple[str, int]:
    """Decode the C escape starting at ``text[i] == "\\"``; returns (char, next index).

    systemd's ``cunescape_one``: ``\\a \\b \\f \\n \\r \\t \\v \\\\ \\" \\' \\s``, ``\\xHH``,
    ``\\NNN`` (octal), ``\\uXXXX``, ``\\UXXXXXXXX``. A NUL is refused, like systemd does.
    """
    if i + 1 >= len(text):
        raise ValueError("trailing backslash")
    c = text[i + 1]
    simple = {
        "a": "\a",
        "b": "\b",
        "f": "\f",
        "n": "\n",
        "r": "\r",
        "t": "\t",
        "v": "\v",
        "\\": "\\",
        '"': '"',
        "'": "'",
        "s": " ",
    }
    if c in simple:
        return simple[c], i + 2
    digits: tuple[int, int] | None = {"x": (2, 16), "u": (4, 16), "U": (8, 16)}.get(c)
    start = i + 2
    if digits is None and c in "01234567":
        digits, start = (3, 8), i + 1
    if digits is None:
        raise ValueError(f"invalid escape sequence '\\{c}'")
    count, base = digits
    chunk = text[start : start + count]
    try:
        if len(chunk) != count:
            raise ValueError
        code = int(chunk, base)
    except ValueError:
        raise ValueError(f"invalid escape sequence '\\{text[i + 1 : start + count]}'") from None
    if code == 0:
        raise ValueError("NUL characters are not allowed")
    if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
        raise ValueError(f"invalid code point in escape sequence '\\{text[i + 1 : start + count]}'")
    return chr(code), start + count


def split_words(value: str) -> list[str]:
    """Split a value into words the way systemd splits ``ExecStart=``/``Environment=``.

    Whitespace separates words; single and double quotes group (also in the middle of
    a word: ``a"b c"d`` is one word ``ab cd``); C escapes are decoded inside and outside
    quotes. Raises ValueError for an unterminated quote or a bad escape.
    """
    words: list[str] = []
    i, n = 0, len(value)
    while True:
        while i < n and value[i] in _WHITESPACE:
            i += 1
        if i >= n:
            return words
        word: list[str] = []
        quote = ""
        while i < n:
            c = value[i]
            if c == "\\":
                char, i = _unescape(value, i)
                word.append(char)
            elif quote:
                if c == quote:
                    quote = ""
                else:
                    word.append(c)
                i += 1
            elif c in _WHITESPACE:
                break
            elif c in "'\"":
                quote = c
                i += 1
            else:
                word.append(c)
                i += 1
        if quote:
            raise ValueError(f"unterminated {quote} quote")
        words.append("".join(word))


def join_words(words: Sequence[str]) -> str:
    """The inverse of `split_words`: quote each word so it splits back unchanged.

    Words that need nothing are left bare; others are double-quoted with ``\\``, ``"``
    and control characters escaped. Raises ValueError for a word containing NUL.
    """
    out = []
    for word in words:
        if "\0" in word:
            raise ValueError("NUL characters are not allowed")
        # Any whitespace (U+00A0 too) is quoted: a unit file trims it off a bare value.
        if word and not any(c.isspace() or c in "'\"\\" or ord(c) < 32 for c in word):
            out.append(word)
            continue
        escaped = []
        for c in word:
            if c in '\\"':
                escaped.append("\\" + c)
            elif ord(c) < 32 or ord(c) == 127:
                escaped.append(f"\\x{ord(c):02x}")
            else:
                escaped.append(c)
        out.append('"' + "".join(escaped) + '"')
    return " ".join(out)


# --------------------------------------------------------------------------- values


def parse_duration_ns(value: str) -> int:
    """A systemd time span (``30s``, ``1min 30s``, ``1m30s``, ``500ms``, ``2``) in ns.

    A bare number is seconds. Units: ns, us, ms, s, m/min, h, d, w (and systemd's long
    spellings). Raises ValueError otherwise (also for ``infinity`` and negatives).
    """
    text = value.strip()
    if not text:
        raise ValueError("empty time span")
    total = 0
    pos = 0
    while pos < len(text):
        match = _SPAN_PART.match(text, pos)
        if match is None or match.end() == pos:
            raise ValueError(f"invalid time span {value!r} (e.g. 30s, 1min 30s, 500ms)")
        number, unit = match.group(1), match.group(2)
        if unit and unit not in _NS:
            raise ValueError(f"unknown time unit {unit!r} in {value!r}")
        scale = _NS[unit] if unit else _NS["s"]
        whole, _, frac = number.partition(".")
        total += int(whole or "0") * scale
        if frac:
            total += int(frac) * scale // (10 ** len(frac))
        pos = match.end()
        while pos < len(text) and text[pos] in _WHITESPACE:
            pos += 1
    return total


def parse_size(value: str) -> int:
    """A size in bytes: ``536870912``, ``512M``, ``512m``, ``1G``, ``1.5GiB``, ``64K``.

    Suffixes K, M, G, T (either case, optionally followed by ``B`` or ``iB``) are powers
    of 1024, as in systemd's ``MemoryMax=`` and Docker's ``--memory``; ``B`` is bytes.
    """
    match = _SIZE.fullmatch(value.strip())
    if match is None:
        raise ValueError(f"invalid size {value!r} (e.g. 512M, 1G)")
    number, unit = match.group(1), match.group(2)
    scale = _SIZE_UNITS[unit.upper()] if unit else 1
    whole, _, frac = number.partition(".")
    size = int(whole) * scale
    if frac:
        size += int(frac) * scale // (10 ** len(frac))
    return size


def _parse_bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"expected a boolean (yes/no, true/false, 1/0), got {value!r}")


def _check_image(value: str) -> str:
    """A Docker image reference (``[registry/]path[:tag][@digest]``), or an image ID."""
    if not value:
        raise ValueError("an image is required")
    if value != value.strip() or any(c in _WHITESPACE for c in value):
        raise ValueError(f"invalid image reference {value!r}: contains whitespace")
    match = _REFERENCE.fullmatch(value)
    if match is None:
        hint = " (repository names must be lowercase)" if value.lower() != value else ""
        raise ValueError(f"invalid image reference {value!r}{hint}")
    if len(match.group("name")) > _NAME_TOTAL_MAX:
        raise ValueError(f"image name longer than {_NAME_TOTAL_MAX} characters")
    return value


def _port_number(text: str, what: str, value: str) -> int:
    if "-" in text:
        raise ValueError(f"port ranges are not supported: {value!r}")
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f"invalid {what} port {text!r} in {value!r} (1-65535)")
    return int(text)


def _parse_port(value: str) -> PortMapping:
    """``[[ip:][host_port]:]container_port[/tcp|udp|sctp]``; IPv6 addresses in brackets."""
    rest, slash, protocol = value.rpartition("/")
    if not slash:
        rest, protocol = value, "tcp"
    if protocol not in ("tcp", "udp", "sctp"):
        raise ValueError(f"invalid protocol {protocol!r} in {value!r} (tcp, udp or sctp)")
    host_ip = ""
    if rest.startswith("["):
        end = rest.find("]")
        if end == -1 or rest[end + 1 : end + 2] != ":":
            raise ValueError(f"invalid address in {value!r} (use [IPv6]:HOST:CONTAINER)")
        host_ip, rest = rest[1:end], rest[end + 2 :]
        parts = rest.split(":")
        if len(parts) != 2:
            raise ValueError(f"expected [IP]:HOST_PORT:CONTAINER_PORT, got {value!r}")
        parts = [host_ip, *parts]
    else:
        parts = rest.split(":")
    if len(parts) == 1:
        host_port_text, container_text = "", parts[0]
    elif len(parts) == 2:
        host_port_text, container_text = parts
    elif len(parts) == 3:
        host_ip, host_port_text, container_text = parts
    else:
        raise ValueError(f"expected [[IP:][HOST_PORT]:]CONTAINER_PORT[/PROTOCOL], got {value!r}")
    if host_ip:
        try:
            ipaddress.ip_address(host_ip)
        except ValueError:
            raise ValueError(f"invalid IP address {host_ip!r} in {value!r}") from None
    container_port = _port_number(container_text, "container", value)
    host_port = _port_number(host_port_text, "host", value) if host_port_text else 0
    return PortMapping(container_port, protocol, host_port, host_ip)  # type: ignore[arg-type]


def _check_abs_path(path: str, what: str) -> str:
    if not path.startswith("/"):
        raise ValueError(f"{what} {path!r} must be an absolute path")
    if "\0" in path:
        raise ValueError(f"{what} contains a NUL character")
    return path


def _parse_volume(value: str) -> VolumeMount:
    """``[SOURCE:]TARGET[:ro|rw]``: SOURCE is an absolute host path or a volume name."""
    parts = value.split(":")
    if len(parts) == 1:
        source, target, mode = "", parts[0], ""
    elif len(parts) == 2:
        source, target, mode = parts[0], parts[1], ""
    elif len(parts) == 3:
        source, target, mode = parts
    else:
        raise ValueError(f"expected [SOURCE:]TARGET[:ro|rw], got {value!r}")
    if len(parts) > 1 and not source:
        raise ValueError(f"empty source in {value!r}")
    if source and not source.startswith("/") and not _VOLUME_NAME.fullmatch(source):
        raise ValueError(
            f"source {source!r} in {value!r} must be an absolute host path or a volume name"
            " ([a-zA-Z0-9][a-zA-Z0-9_.-]+)"
        )
    _check_abs_path(target, "target")
    if target == "/":
        raise ValueError(f"cannot mount over / in {value!r}")
    if mode not in ("", "ro", "rw"):
        raise ValueError(f"invalid mode {mode!r} in {value!r} (ro or rw)")
    return VolumeMount(target, source, mode == "ro")


def _parse_assignments(value: str, what: str, key_ok: Callable[[str], str | None]) -> list[str]:
    """``Environment=``/``Label=`` words, each ``KEY=VALUE``; ``key_ok`` returns a problem."""
    words = split_words(value)
    for word in words:
        key, eq, _ = word.partition("=")
        if not eq:
            raise ValueError(f"expected {what}=VALUE, got {word!r}")
        problem = key_ok(key)
        if problem:
            raise ValueError(problem)
    return words


def _env_key_problem(key: str) -> str | None:
    if not _ENV_NAME.fullmatch(key):
        return f"invalid variable name {key!r} (letters, digits and _, not starting with a digit)"
    return None


def _label_key_problem(key: str) -> str | None:
    if not _LABEL_KEY.fullmatch(key):
        return f"invalid label key {key!r} (letters, digits and . _ / -)"
    if key.startswith(LABEL_PREFIX):
        return f"label keys starting with {LABEL_PREFIX!r} are reserved for Moorage: {key!r}"
    return None


def _check_user(value: str) -> str:
    user, colon, group = value.partition(":")
    if not _USER_PART.fullmatch(user) or (colon and not _USER_PART.fullmatch(group)):
        raise ValueError(f"expected USER[:GROUP] (names or numeric ids), got {value!r}")
    return value


def _check_network(value: str) -> str:
    if ":" in value:
        raise ValueError(f"network mode {value!r} is not supported (use none, host or a name)")
    if not _NETWORK_NAME.fullmatch(value):
        raise ValueError(f"invalid network name {value!r}")
    return value


def _parse_environment_file(value: str) -> EnvironmentFile:
    optional = value.startswith("-")
    path = value[1:] if optional else value
    return EnvironmentFile(_check_abs_path(path, "environment file"), optional)


def _nonnegative_int(value: str) -> int:
    if not value.isdigit():
        raise ValueError(f"expected a whole number, got {value!r}")
    return int(value)


_CONTAINER_KEYS: Final = frozenset(
    {
        "Image",
        "Exec",
        "Environment",
        "EnvironmentFile",
        "PublishPort",
        "Volume",
        "Label",
        "Network",
        "User",
        "WorkingDir",
        "Memory",
        "HealthCmd",
        "HealthInterval",
        "HealthTimeout",
        "HealthStartPeriod",
        "HealthRetries",
        "RunInit",
        "StopTimeout",
    }
)


# --------------------------------------------------------------------------- parse


def parse_container(options: Sequence[UnitOption]) -> ContainerSpec:
    """Check every option of a `.container` unit and build its `ContainerSpec`.

    Raises `ContainerOptionError` for the first problem, naming its section and key.
    """
    values: dict[str, str] = {}
    lists: dict[str, list[str]] = {k: [] for k in _LIST_KEYS}
    restart = "no"
    for opt in options:
        section, key, value = opt.section, opt.name, opt.value
        if section in _IGNORED_SECTIONS:
            continue
        if section == "Unit":
            if key not in _UNIT_KEYS:
                raise ContainerOptionError(
                    section,
                    key,
                    "not supported for a .container unit"
                    f" (accepted: {', '.join(sorted(_UNIT_KEYS))})",
                )
            continue
        if section == "Service":
            if key not in _SERVICE_KEYS:
                raise ContainerOptionError(
                    section,
                    key,
                    "not supported for a .container unit (only Restart= is;"
                    " container settings go in [Container])",
                )
            if value not in RESTART_POLICIES:
                raise ContainerOptionError(
                    section,
                    key,
                    f"{value!r} has no Docker restart policy"
                    f" (accepted: {', '.join(RESTART_POLICIES)})",
                )
            restart = value
            continue
        if section != "Container":
            raise ContainerOptionError(
                section,
                "",
                "section not allowed in a .container unit"
                " (allowed: Unit, Container, Service, Install, X-Fleet)",
            )
        if key not in _CONTAINER_KEYS:
            raise ContainerOptionError(
                section, key, f"unknown key (known: {', '.join(sorted(_CONTAINER_KEYS))})"
            )
        if key in _LIST_KEYS:
            if value:
                lists[key].append(value)
            else:
                lists[key].clear()
        else:
            values[key] = value
    try:
        return _build(values, lists, restart)
    except _KeyError as exc:
        raise ContainerOptionError(exc.section, exc.key, exc.problem) from None


class _KeyError(Exception):
    def __init__(self, section: str, key: str, problem: str) -> None:
        self.section, self.key, self.problem = section, key, problem


def _checked(key: str, fn: Callable[[str], _T], value: str) -> _T:
    """Run one value check; a ValueError becomes a problem of ``[Container] key``."""
    try:
        return fn(value)
    except ValueError as exc:
        raise _KeyError("Container", key, str(exc)) from None


def _build(values: dict[str, str], lists: dict[str, list[str]], restart: str) -> ContainerSpec:
    if "Image" not in values:
        raise _KeyError("Container", "Image", "required (the image to run)")
    image = _checked("Image", _check_image, values["Image"])

    command: list[str] | None = None
    if values.get("Exec"):
        command = _checked("Exec", split_words, values["Exec"])

    environment: dict[str, str] = {}
    for value in lists["Environment"]:
        for word in _checked(
            "Environment", lambda v: _parse_assignments(v, "NAME", _env_key_problem), value
        ):
            name, _, val = word.partition("=")
            environment.pop(name, None)  # keep the order of the last assignment
            environment[name] = val
    env_files = [
        _checked("EnvironmentFile", _parse_environment_file, v) for v in lists["EnvironmentFile"]
    ]

    labels: dict[str, str] = {}
    for value in lists["Label"]:
        for word in _checked(
            "Label", lambda v: _parse_assignments(v, "KEY", _label_key_problem), value
        ):
            name, _, val = word.partition("=")
            labels[name] = val

    network = _checked("Network", _check_network, values["Network"]) if "Network" in values else ""
    ports = [_checked("PublishPort", _parse_port, v) for v in lists["PublishPort"]]
    if ports and network in ("none", "host"):
        raise _KeyError(
            "Container",
            "PublishPort",
            f"ports cannot be published with Network={network} (Docker ignores them)",
        )
    volumes = [_checked("Volume", _parse_volume, v) for v in lists["Volume"]]
    targets = [v.target for v in volumes]
    if len(set(targets)) != len(targets):
        dup = next(t for t in targets if targets.count(t) > 1)
        raise _KeyError("Container", "Volume", f"{dup!r} is mounted twice")

    user = _checked("User", _check_user, values["User"]) if values.get("User") else ""
    working_dir = (
        _checked(
            "WorkingDir", lambda v: _check_abs_path(v, "working directory"), values["WorkingDir"]
        )
        if values.get("WorkingDir")
        else ""
    )
    memory = 0
    if values.get("Memory"):
        memory = _checked("Memory", parse_size, values["Memory"])
        if memory < MIN_MEMORY_BYTES:
            raise _KeyError(
                "Container", "Memory", f"{values['Memory']!r} is below Docker's minimum of 6M"
            )

    healthcheck = _healthcheck(values)
    init = _checked("RunInit", _parse_bool, values["RunInit"]) if values.get("RunInit") else False
    stop_timeout: int | None = None
    if values.get("StopTimeout"):
        ns = _checked("StopTimeout", parse_duration_ns, values["StopTimeout"])
        stop_timeout = -(-ns // 1_000_000_000)  # whole seconds, rounded up
    policy = RESTART_POLICIES[restart]
    return ContainerSpec(
        image=image,
        command=command,
        environment=environment,
        environment_files=env_files,
        ports=ports,
        volumes=volumes,
        labels=labels,
        network=network,
        user=user,
        working_dir=working_dir,
        memory_bytes=memory,
        healthcheck=healthcheck,
        restart=RestartPolicy(policy),  # type: ignore[arg-type]
        init=init,
        stop_timeout_s=stop_timeout,
    )


def _healthcheck(values: dict[str, str]) -> Healthcheck | None:
    """``HealthCmd=`` (a shell command, or ``none`` to disable the image's) and timings."""
    keys = ("HealthCmd", "HealthInterval", "HealthTimeout", "HealthStartPeriod", "HealthRetries")
    if not any(values.get(k) for k in keys):
        return None
    test: list[str] = []
    cmd = values.get("HealthCmd", "")
    if cmd.strip().lower() == "none":
        others = [k for k in keys[1:] if values.get(k)]
        if others:
            raise _KeyError("Container", others[0], "makes no sense with HealthCmd=none")
        return Healthcheck(test=["NONE"])
    if cmd:
        test = ["CMD-SHELL", cmd]
    timings: dict[str, int] = {}
    for key, field in (
        ("HealthInterval", "interval_ns"),
        ("HealthTimeout", "timeout_ns"),
        ("HealthStartPeriod", "start_period_ns"),
    ):
        if values.get(key):
            ns = _checked(key, parse_duration_ns, values[key])
            if ns < 1_000_000:
                raise _KeyError("Container", key, "must be at least 1ms")
            timings[field] = ns
    retries = (
        _checked("HealthRetries", _nonnegative_int, values["HealthRetries"])
        if values.get("HealthRetries")
        else 0
    )
    return Healthcheck(test=test, retries=retries, **timings)
