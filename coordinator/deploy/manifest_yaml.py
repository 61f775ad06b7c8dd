"""Parsing an application manifest's YAML into a `Manifest` (`coordinator/deploy/manifest.py`
holds the form and what it means; docs/manifest.md the format).

Its own module so that PyYAML and this parser are imported with the first manifest to
parse, not at the coordinator's start (#22); `manifest.parse_manifest` is the entry.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Literal

import yaml

from coordinator import limits
from coordinator.deploy.manifest import (
    CLUSTER_GROUPS_ANNOTATION,
    CONTAINER_KEYS,
    DEPLOYABLE_TYPE,
    DRIFT_KEYS,
    ENV_KEYS,
    ENVELOPE_KEYS,
    LABEL_KEYS,
    LIFECYCLES,
    METADATA_KEYS,
    MOUNT_KEYS,
    ROLLOUT_KEYS,
    SPEC_KEYS,
    TOP_KEYS,
    UNIT_KEYS,
    Label,
    Manifest,
    ManifestError,
    ManifestUnit,
    Metadata,
    Rollout,
)
from coordinator.fleet.validation import UnitInvalid, validate_name, validate_unit
from proto.container import ContainerOptionError, join_words, parse_container, split_words
from proto.units import CONTAINER_SUFFIX, UnitFileError, UnitOption, parse_unit_file

_PERCENT = re.compile(r"^([1-9][0-9]?|100)%$")


def parse(text: str) -> Manifest:
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
    if not isinstance(root, yaml.MappingNode):
        raise ManifestError("manifest must be a mapping", _line(root), "manifest")
    keys = {k.value for k, _ in root.value if isinstance(k, yaml.ScalarNode)}
    if keys & set(ENVELOPE_KEYS):
        return _envelope(root)
    top = _mapping(
        root,
        "manifest",
        TOP_KEYS,
        hint=" (or the GitOps envelope: version, type, metadata, spec)",
    )
    if "units" not in top:
        raise ManifestError("missing 'units'", _line(root), "units")
    units = _units(top["units"])
    rollout = _rollout(top["rollout"]) if "rollout" in top else Rollout()
    drift = _drift(top["drift"]) if "drift" in top else "report"
    return Manifest(units=units, rollout=rollout, drift_policy=drift)


def _envelope(root: yaml.MappingNode) -> Manifest:
    """`version / type / metadata / spec`: Moorage's keys live under `spec`."""
    top = _mapping(
        root,
        "manifest",
        ENVELOPE_KEYS,
        hint="; in the envelope form units, containers, rollout and drift go under 'spec'",
    )
    if "type" in top:
        kind = _text(top["type"], "type")
        if kind != DEPLOYABLE_TYPE:
            raise ManifestError(
                f"{kind!r} cannot be deployed: only type {DEPLOYABLE_TYPE} is"
                " (put containers under an Application's spec.containers)",
                _line(top["type"]),
                "type",
            )
    version = _text(top["version"], "version") if "version" in top else ""
    metadata = _metadata(top["metadata"]) if "metadata" in top else Metadata()
    if "spec" not in top:
        raise ManifestError(
            "missing 'spec' (the application: units and/or containers)", _line(root), "spec"
        )
    spec_node = top["spec"]
    spec = _mapping(
        spec_node,
        "spec",
        SPEC_KEYS,
        hints={
            "content": "files (spec.content) are not supported: keep them on the machine"
            " and mount them with spec.containers[].mounts",
        },
    )
    if "units" not in spec and "containers" not in spec:
        raise ManifestError("needs 'units' and/or 'containers'", _line(spec_node), "spec")
    units = _units(spec["units"], "spec.units") if "units" in spec else []
    if "containers" in spec:
        seen = {u.name: i for i, u in enumerate(units)}
        for unit, node, field in _containers(spec["containers"], "spec.containers"):
            if unit.name in seen:
                raise ManifestError(
                    f"unit {unit.name} appears twice (also spec.units[{seen[unit.name]}])",
                    _line(node),
                    f"{field}.name",
                )
            seen[unit.name] = -1
            units.append(unit)
    rollout = _rollout(spec["rollout"], "spec.rollout") if "rollout" in spec else Rollout()
    drift = _drift(spec["drift"], "spec.drift") if "drift" in spec else "report"
    return Manifest(
        units=units, rollout=rollout, drift_policy=drift, version=version, metadata=metadata
    )


def _metadata(node: yaml.Node) -> Metadata:
    fields = _mapping(node, "metadata", METADATA_KEYS)
    values: dict[str, Any] = {}
    for key in ("name", "description", "lifecycle"):
        if key in fields:
            values[key] = _text(fields[key], f"metadata.{key}")
    lifecycle = values.get("lifecycle", "")
    if lifecycle and lifecycle not in LIFECYCLES:
        raise ManifestError(
            f"must be one of {', '.join(LIFECYCLES)}, got {lifecycle!r}",
            _line(fields["lifecycle"]),
            "metadata.lifecycle",
        )
    annotations: dict[str, str] = {}
    if "annotations" in fields:
        for key, value in _pairs(fields["annotations"], "metadata.annotations"):
            annotations[key] = _text(value, f"metadata.annotations.{key}")
    groups: list[str] = []
    if "clusterGroups" in fields:
        groups += _words(fields["clusterGroups"], "metadata.clusterGroups")
    if "clusterGroup" in fields:
        groups += _words(fields["clusterGroup"], "metadata.clusterGroup")
    if CLUSTER_GROUPS_ANNOTATION in annotations:
        groups += [g.strip() for g in annotations[CLUSTER_GROUPS_ANNOTATION].split(",")]
    labels = _labels(fields["labels"]) if "labels" in fields else []
    return Metadata(
        **values,
        cluster_groups=list(dict.fromkeys(g for g in groups if g)),
        labels=labels,
        annotations=dict(sorted(annotations.items())),
    )


def _labels(node: yaml.Node) -> list[Label]:
    """A list of words (`[demo, nginx]`) or of `{key, value}`, or a mapping `{k: v}`."""
    if isinstance(node, yaml.MappingNode):
        pairs = _pairs(node, "metadata.labels")
        out = [Label(k, _text(v, f"metadata.labels.{k}")) for k, v in pairs]
        return sorted(out, key=lambda label: label.key)
    if not isinstance(node, yaml.SequenceNode):
        raise ManifestError("must be a list or a mapping of labels", _line(node), "metadata.labels")
    labels: list[Label] = []
    for i, item in enumerate(node.value):
        field = f"metadata.labels[{i}]"
        if isinstance(item, yaml.MappingNode):
            pair = _mapping(item, field, LABEL_KEYS, required=("key",))
            value = _text(pair["value"], f"{field}.value") if "value" in pair else ""
            labels.append(Label(_text(pair["key"], f"{field}.key"), value))
        else:
            labels.append(Label(_text(item, field)))
    return labels


def _pairs(node: yaml.Node, what: str) -> list[tuple[str, yaml.Node]]:
    """A mapping with free keys (labels, annotations, env): string keys, each once."""
    if not isinstance(node, yaml.MappingNode):
        raise ManifestError("must be a mapping", _line(node), what)
    out: dict[str, yaml.Node] = {}
    for key_node, value in node.value:
        key = _text(key_node, what)
        if not key:
            raise ManifestError("keys must not be empty", _line(key_node), what)
        if key in out:
            raise ManifestError(f"{key!r} appears twice", _line(key_node), what)
        out[key] = value
    return list(out.items())


def _words(node: yaml.Node, field: str) -> list[str]:
    """A list of names, or one string of comma-separated names."""
    if isinstance(node, yaml.SequenceNode):
        return [_text(item, f"{field}[{i}]") for i, item in enumerate(node.value)]
    return [w.strip() for w in _text(node, field).split(",")]


def _text(node: yaml.Node, field: str) -> str:
    """A scalar as the text the author wrote: YAML 1.1 would read `22:22` as 1342 and
    `0755` as 493, which is never what a port or a value in a manifest means."""
    value = _scalar(node, field)
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return str(node.value)


def _containers(node: yaml.Node, path: str) -> list[tuple[ManifestUnit, yaml.Node, str]]:
    """`ContainerDefinition`-style containers as `.container` units, each with its node
    and field path (for duplicate checks)."""
    if not isinstance(node, yaml.SequenceNode) or not node.value:
        raise ManifestError("must be a non-empty list of containers", _line(node), path)
    if len(node.value) > limits.MANIFEST_MAX_UNITS:
        raise ManifestError(
            f"{len(node.value)} containers; at most {limits.MANIFEST_MAX_UNITS} are accepted",
            _line(node),
            path,
        )
    out: list[tuple[ManifestUnit, yaml.Node, str]] = []
    seen: set[str] = set()
    for i, item in enumerate(node.value):
        field = f"{path}[{i}]"
        unit = _container(item, field)
        if unit.name in seen:
            raise ManifestError(f"unit {unit.name} appears twice", _line(item), f"{field}.name")
        seen.add(unit.name)
        out.append((unit, item, field))
    return out


def _container(node: yaml.Node, field: str) -> ManifestUnit:
    fields = _mapping(node, field, CONTAINER_KEYS, required=("name", "image"))
    name = _text(fields["name"], f"{field}.name")
    unit_name = name if name.endswith(CONTAINER_SUFFIX) else name + CONTAINER_SUFFIX
    image = UnitOption("Container", "Image", _text(fields["image"], f"{field}.image"))
    _check_container([image], fields["image"], f"{field}.image")
    options = [image]

    def add(opt: UnitOption, at: yaml.Node, where: str) -> None:
        _check_container([image, opt], at, where)
        options.append(opt)

    if "command" in fields or "args" in fields:
        words: list[str] = []
        for key in ("command", "args"):
            if key in fields:
                words += _command(fields[key], f"{field}.{key}")
        if not words:
            raise ManifestError("must not be empty", _line(node), f"{field}.command")
        at = fields.get("command") or fields["args"]
        add(
            UnitOption("Container", "Exec", _joined(words, at, f"{field}.command")),
            at,
            f"{field}.command",
        )
    for key, item, where in _env(fields["env"], f"{field}.env") if "env" in fields else []:
        value = _joined([f"{key}={item[1]}"], item[0], where)
        add(UnitOption("Container", "Environment", value), item[0], where)
    for i, port in enumerate(_list(fields["ports"], f"{field}.ports") if "ports" in fields else []):
        where = f"{field}.ports[{i}]"
        add(UnitOption("Container", "PublishPort", _text(port, where)), port, where)
    for i, mount in enumerate(
        _list(fields["mounts"], f"{field}.mounts") if "mounts" in fields else []
    ):
        where = f"{field}.mounts[{i}]"
        add(UnitOption("Container", "Volume", _mount(mount, where)), mount, where)
    if "network" in fields:
        where = f"{field}.network"
        add(
            UnitOption("Container", "Network", _text(fields["network"], where)),
            fields["network"],
            where,
        )
    if "restart" in fields:
        where = f"{field}.restart"
        add(
            UnitOption("Service", "Restart", _text(fields["restart"], where)),
            fields["restart"],
            where,
        )
    try:
        validate_name(unit_name)
    except UnitInvalid as exc:
        raise ManifestError(str(exc), _line(fields["name"]), f"{field}.name") from None
    try:
        validate_unit(unit_name, options)  # what only the fields together can break
    except UnitInvalid as exc:
        raise ManifestError(str(exc), _line(node), field) from None
    return ManifestUnit(unit_name, options)


def _check_container(options: list[UnitOption], node: yaml.Node, where: str) -> None:
    """Check one converted field with the same rules a `.container` unit gets, and
    blame the manifest's field for a problem (not the `[Container]` key it became)."""
    try:
        parse_container(options)
    except ContainerOptionError as exc:
        raise ManifestError(exc.problem, _line(node), where) from None


def _list(node: yaml.Node, field: str) -> list[yaml.Node]:
    if not isinstance(node, yaml.SequenceNode):
        raise ManifestError("must be a list", _line(node), field)
    return list(node.value)


def _command(node: yaml.Node, field: str) -> list[str]:
    """A list of words, or one string split like a unit's `ExecStart=`."""
    if isinstance(node, yaml.SequenceNode):
        return [_text(item, f"{field}[{i}]") for i, item in enumerate(node.value)]
    text = _text(node, field)
    try:
        return split_words(text)
    except ValueError as exc:
        raise ManifestError(str(exc), _line(node), field) from None


def _joined(words: list[str], node: yaml.Node, field: str) -> str:
    try:
        return join_words(words)
    except ValueError as exc:
        raise ManifestError(str(exc), _line(node), field) from None


def _env(node: yaml.Node, field: str) -> list[tuple[str, tuple[yaml.Node, str], str]]:
    """`[{name, value}]` in order, or a mapping `{NAME: value}` sorted by name."""
    if isinstance(node, yaml.MappingNode):
        pairs = sorted(_pairs(node, field), key=lambda p: p[0])
        return [(k, (v, _text(v, f"{field}.{k}")), f"{field}.{k}") for k, v in pairs]
    out = []
    for i, item in enumerate(_list(node, field)):
        where = f"{field}[{i}]"
        pair = _mapping(item, where, ENV_KEYS, required=("name",))
        name = _text(pair["name"], f"{where}.name")
        value = _text(pair["value"], f"{where}.value") if "value" in pair else ""
        out.append((name, (item, value), where))
    return out


def _mount(node: yaml.Node, field: str) -> str:
    """`{hostPath, mountPath, readOnly}` as a `Volume=` value."""
    fields = _mapping(node, field, MOUNT_KEYS, required=("hostPath", "mountPath"))
    host = _text(fields["hostPath"], f"{field}.hostPath")
    target = _text(fields["mountPath"], f"{field}.mountPath")
    for key, value in (("hostPath", host), ("mountPath", target)):
        if ":" in value:
            raise ManifestError("must not contain ':'", _line(fields[key]), f"{field}.{key}")
    read_only = False
    if "readOnly" in fields:
        read_only = _scalar(fields["readOnly"], f"{field}.readOnly")
        if not isinstance(read_only, bool):
            raise ManifestError(
                "must be true or false", _line(fields["readOnly"]), f"{field}.readOnly"
            )
    return f"{host}:{target}" + (":ro" if read_only else "")


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


def _mapping(
    node: yaml.Node,
    what: str,
    allowed: Sequence[str],
    *,
    hint: str = "",
    hints: dict[str, str] | None = None,
    required: Sequence[str] = (),
) -> dict[str, yaml.Node]:
    """The mapping's keys, each allowed and once; every `required` key present."""
    if not isinstance(node, yaml.MappingNode):
        raise ManifestError(f"{what} must be a mapping", _line(node), what)
    out: dict[str, yaml.Node] = {}
    for key_node, value in node.value:
        key = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else ""
        if hints and key in hints:
            raise ManifestError(hints[key], _line(key_node), f"{what}.{key}")
        if key not in allowed:
            raise ManifestError(
                f"unknown key {key!r} (allowed: {', '.join(allowed)}){hint}",
                _line(key_node),
                what,
            )
        if key in out:
            raise ManifestError(f"{key!r} appears twice", _line(key_node), what)
        out[key] = value
    for key in required:
        if key not in out:
            raise ManifestError(f"missing {key!r}", _line(node), what)
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


def _units(node: yaml.Node, path: str = "units") -> list[ManifestUnit]:
    if not isinstance(node, yaml.SequenceNode) or not node.value:
        raise ManifestError("must be a non-empty list of units", _line(node), path)
    if len(node.value) > limits.MANIFEST_MAX_UNITS:
        raise ManifestError(
            f"{len(node.value)} units; at most {limits.MANIFEST_MAX_UNITS} are accepted",
            _line(node),
            path,
        )
    out: list[ManifestUnit] = []
    seen: set[str] = set()
    for i, item in enumerate(node.value):
        field = f"{path}[{i}]"
        fields = _mapping(item, field, UNIT_KEYS, required=UNIT_KEYS)
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


def _rollout(node: yaml.Node, path: str = "rollout") -> Rollout:
    fields = _mapping(node, path, ROLLOUT_KEYS)
    values: dict[str, Any] = {}
    if "batch_size" in fields:
        batch = _scalar(fields["batch_size"], f"{path}.batch_size")
        ok = (isinstance(batch, int) and not isinstance(batch, bool) and batch >= 1) or (
            isinstance(batch, str) and _PERCENT.match(batch)
        )
        if not ok:
            raise ManifestError(
                "must be a whole number >= 1 or a percentage like '25%'",
                _line(fields["batch_size"]),
                f"{path}.batch_size",
            )
        values["batch_size"] = batch
    if "max_unavailable" in fields:
        value = _scalar(fields["max_unavailable"], f"{path}.max_unavailable")
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ManifestError(
                "must be a whole number >= 1",
                _line(fields["max_unavailable"]),
                f"{path}.max_unavailable",
            )
        values["max_unavailable"] = value
    if "rollback_on_failure" in fields:
        value = _scalar(fields["rollback_on_failure"], f"{path}.rollback_on_failure")
        if not isinstance(value, bool):
            raise ManifestError(
                "must be true or false",
                _line(fields["rollback_on_failure"]),
                f"{path}.rollback_on_failure",
            )
        values["rollback_on_failure"] = value
    for key, low, high in (("min_healthy_s", 0.0, 3600.0), ("timeout_s", 1.0, 86400.0)):
        if key in fields:
            value = _scalar(fields[key], f"{path}.{key}")
            if (
                not isinstance(value, int | float)
                or isinstance(value, bool)
                or not low <= value <= high
            ):
                raise ManifestError(
                    f"must be a number of seconds from {low:g} to {high:g}",
                    _line(fields[key]),
                    f"{path}.{key}",
                )
            values[key] = float(value)
    return Rollout(**values)


def _drift(node: yaml.Node, path: str = "drift") -> Literal["report", "repair"]:
    fields = _mapping(node, path, DRIFT_KEYS)
    if "policy" not in fields:
        return "report"
    policy = _scalar(fields["policy"], f"{path}.policy")
    if policy not in ("report", "repair"):
        raise ManifestError(
            "must be 'report' or 'repair'", _line(fields["policy"]), f"{path}.policy"
        )
    return "repair" if policy == "repair" else "report"
