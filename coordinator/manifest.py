"""Application manifests: the YAML a GitOps repository keeps for one application version.

The text is stored byte for byte (comments kept) and parsed only to validate and to
plan. Validation names the line and the field; the normalised form (and its hash)
decides whether a new text is a new version at all. Pure: no I/O. The format is
documented in docs/manifest.md.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Any, Literal

import msgspec
import yaml

from coordinator import limits
from coordinator.validation import UnitInvalid, validate_unit
from proto.units import UnitFileError, UnitOption, parse_unit_file

TOP_KEYS = ("units", "rollout", "drift")
UNIT_KEYS = ("name", "contents")
ROLLOUT_KEYS = (
    "batch_size",
    "max_unavailable",
    "rollback_on_failure",
    "min_healthy_s",
    "timeout_s",
)
DRIFT_KEYS = ("policy",)
_PERCENT = re.compile(r"^([1-9][0-9]?|100)%$")


class ManifestError(ValueError):
    """A manifest that cannot be accepted; `line` is 1-based (0 when unknown)."""

    def __init__(self, message: str, line: int = 0, field: str = "") -> None:
        where = f"line {line}: " if line else ""
        super().__init__(f"{where}{field + ': ' if field else ''}{message}")
        self.line = line
        self.field = field


class ManifestUnit(msgspec.Struct, frozen=True):
    name: str
    options: list[UnitOption]


class Rollout(msgspec.Struct, frozen=True):
    batch_size: int | str = 1
    """Machines per batch, or a percentage of the group such as "25%"."""
    max_unavailable: int | None = None
    """At most this many machines updating (so possibly down) at once: caps the batch."""
    rollback_on_failure: bool = False
    min_healthy_s: float = 5.0
    """A machine's units must stay active this long before its part counts as healthy."""
    timeout_s: float = 300.0
    """A machine not healthy this long after its batch started fails the batch."""


class Manifest(msgspec.Struct, frozen=True):
    units: list[ManifestUnit]
    rollout: Rollout = Rollout()
    drift_policy: Literal["report", "repair"] = "report"

    def digest(self) -> str:
        """SHA-256 of the normalised manifest: equal digests mean the same version
        (comments, key order and whitespace do not count)."""
        return hashlib.sha256(msgspec.json.encode(self)).hexdigest()


def parse_manifest(text: str) -> Manifest:
    """Validate a manifest's text; ManifestError names the line and the field.

    Pure Python and seconds long for a large manifest: callers on the event loop run
    it in a thread. Size and nesting are capped (`coordinator/limits.py`)."""
    too_big = limits.manifest_size_problem(text)
    if too_big:
        raise ManifestError(too_big)
    try:
        root = limits.compose_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 0
        problem = getattr(exc, "problem", None) or str(exc)
        raise ManifestError(f"not valid YAML: {problem}", line) from None
    if root is None:
        raise ManifestError("the manifest is empty; it needs a 'units' list")
    top = _mapping(root, "manifest", TOP_KEYS)
    if "units" not in top:
        raise ManifestError("missing 'units'", _line(root), "units")
    units = _units(top["units"])
    rollout = _rollout(top["rollout"]) if "rollout" in top else Rollout()
    drift = _drift(top["drift"]) if "drift" in top else "report"
    return Manifest(units=units, rollout=rollout, drift_policy=drift)


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


def _mapping(node: yaml.Node, what: str, allowed: Sequence[str]) -> dict[str, yaml.Node]:
    if not isinstance(node, yaml.MappingNode):
        raise ManifestError(f"{what} must be a mapping", _line(node), what)
    out: dict[str, yaml.Node] = {}
    for key_node, value in node.value:
        key = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else ""
        if key not in allowed:
            raise ManifestError(
                f"unknown key {key!r} (allowed: {', '.join(allowed)})", _line(key_node), what
            )
        if key in out:
            raise ManifestError(f"{key!r} appears twice", _line(key_node), what)
        out[key] = value
    return out


def _scalar(node: yaml.Node, field: str) -> Any:
    if not isinstance(node, yaml.ScalarNode):
        raise ManifestError("must be a single value", _line(node), field)
    return _construct(node)


def _construct(node: yaml.ScalarNode) -> Any:
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node, deep=True)
    finally:
        loader.dispose()


def _units(node: yaml.Node) -> list[ManifestUnit]:
    if not isinstance(node, yaml.SequenceNode) or not node.value:
        raise ManifestError("must be a non-empty list of units", _line(node), "units")
    if len(node.value) > limits.MANIFEST_MAX_UNITS:
        raise ManifestError(
            f"{len(node.value)} units; at most {limits.MANIFEST_MAX_UNITS} are accepted",
            _line(node),
            "units",
        )
    out: list[ManifestUnit] = []
    seen: set[str] = set()
    for i, item in enumerate(node.value):
        field = f"units[{i}]"
        fields = _mapping(item, field, UNIT_KEYS)
        for key in UNIT_KEYS:
            if key not in fields:
                raise ManifestError(f"missing {key!r}", _line(item), field)
        name = _scalar(fields["name"], f"{field}.name")
        contents = _scalar(fields["contents"], f"{field}.contents")
        for key, value in (("name", name), ("contents", contents)):
            if not isinstance(value, str):
                raise ManifestError("must be a string", _line(fields[key]), f"{field}.{key}")
        if name in seen:
            raise ManifestError(
                f"unit {name} appears twice", _line(fields["name"]), f"{field}.name"
            )
        seen.add(name)
        content_node = fields["contents"]
        # A block scalar's text starts on the line after its indicator ("contents: |").
        style = getattr(content_node, "style", None)
        first_line = _line(content_node) + (1 if style in ("|", ">") else 0)
        try:
            options = parse_unit_file(contents)
        except UnitFileError as exc:
            raise ManifestError(
                exc.problem, first_line + max(exc.line - 1, 0), f"{field}.contents"
            ) from None
        try:
            validate_unit(name, options)
        except UnitInvalid as exc:
            raise ManifestError(str(exc), _line(fields["name"]), f"{field} ({name})") from None
        out.append(ManifestUnit(name, options))
    return out


def _rollout(node: yaml.Node) -> Rollout:
    fields = _mapping(node, "rollout", ROLLOUT_KEYS)
    values: dict[str, Any] = {}
    if "batch_size" in fields:
        batch = _scalar(fields["batch_size"], "rollout.batch_size")
        ok = (isinstance(batch, int) and not isinstance(batch, bool) and batch >= 1) or (
            isinstance(batch, str) and _PERCENT.match(batch)
        )
        if not ok:
            raise ManifestError(
                "must be a whole number >= 1 or a percentage like '25%'",
                _line(fields["batch_size"]),
                "rollout.batch_size",
            )
        values["batch_size"] = batch
    if "max_unavailable" in fields:
        value = _scalar(fields["max_unavailable"], "rollout.max_unavailable")
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ManifestError(
                "must be a whole number >= 1",
                _line(fields["max_unavailable"]),
                "rollout.max_unavailable",
            )
        values["max_unavailable"] = value
    if "rollback_on_failure" in fields:
        value = _scalar(fields["rollback_on_failure"], "rollout.rollback_on_failure")
        if not isinstance(value, bool):
            raise ManifestError(
                "must be true or false",
                _line(fields["rollback_on_failure"]),
                "rollout.rollback_on_failure",
            )
        values["rollback_on_failure"] = value
    for key, low, high in (("min_healthy_s", 0.0, 3600.0), ("timeout_s", 1.0, 86400.0)):
        if key in fields:
            value = _scalar(fields[key], f"rollout.{key}")
            if (
                not isinstance(value, int | float)
                or isinstance(value, bool)
                or not low <= value <= high
            ):
                raise ManifestError(
                    f"must be a number of seconds from {low:g} to {high:g}",
                    _line(fields[key]),
                    f"rollout.{key}",
                )
            values[key] = float(value)
    return Rollout(**values)


def _drift(node: yaml.Node) -> Literal["report", "repair"]:
    fields = _mapping(node, "drift", DRIFT_KEYS)
    if "policy" not in fields:
        return "report"
    policy = _scalar(fields["policy"], "drift.policy")
    if policy not in ("report", "repair"):
        raise ManifestError("must be 'report' or 'repair'", _line(fields["policy"]), "drift.policy")
    return "repair" if policy == "repair" else "report"
