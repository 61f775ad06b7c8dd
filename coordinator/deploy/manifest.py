"""Application manifests: the YAML a GitOps repository keeps for one application version.

Two forms are accepted. The bare form is Moorage's own (`units`, `rollout`, `drift` at
the top). The envelope form is what GitOps repositories keep (`version`, `type:
Application`, `metadata`, `spec`), with Moorage's keys under `spec` and, besides
`spec.units`, a `ContainerDefinition`-style `spec.containers[]` that is turned into
`.container` units here, so a container application needs no unit syntax.

The text is stored byte for byte (comments kept) and parsed only to validate and to
plan. Validation names the line and the field path; the normalised form (and its
hash) decides whether a new text is a new version at all. Pure: no I/O. The format is
documented in docs/manifest.md.
"""

from __future__ import annotations

import hashlib
from typing import Literal

import msgspec

from proto.units import UnitOption

TOP_KEYS = ("units", "rollout", "drift")
"""The bare form's keys."""
ENVELOPE_KEYS = ("version", "type", "metadata", "spec")
SPEC_KEYS = ("units", "containers", "rollout", "drift")
METADATA_KEYS = (
    "name",
    "description",
    "clusterGroups",
    "clusterGroup",
    "labels",
    "annotations",
    "lifecycle",
)
CONTAINER_KEYS = (
    "name",
    "image",
    "ports",
    "mounts",
    "env",
    "command",
    "args",
    "restart",
    "network",
)
MOUNT_KEYS = ("hostPath", "mountPath", "readOnly")
ENV_KEYS = ("name", "value")
LABEL_KEYS = ("key", "value")
LIFECYCLES = ("draft", "testonly", "production", "undeploy")
DEPLOYABLE_TYPE = "Application"
CLUSTER_GROUPS_ANNOTATION = "fleet.scalecomputing.com/cluster-groups"
UNIT_KEYS = ("name", "contents")
ROLLOUT_KEYS = (
    "batch_size",
    "max_unavailable",
    "rollback_on_failure",
    "min_healthy_s",
    "timeout_s",
)
DRIFT_KEYS = ("policy",)


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


class Label(msgspec.Struct, frozen=True):
    """One label; a label given as a bare word (`labels: [demo]`) has an empty value."""

    key: str
    value: str = ""


class Metadata(msgspec.Struct, frozen=True, kw_only=True):
    """The envelope's `metadata`, normalised: kept and shown, never used to schedule."""

    name: str = ""
    description: str = ""
    cluster_groups: list[str] = []
    """`clusterGroups`, `clusterGroup` and the cluster-groups annotation, in that order."""
    labels: list[Label] = []
    annotations: dict[str, str] = {}
    lifecycle: str = ""
    """draft | testonly | production | undeploy, or "" when not given."""


class _Core(msgspec.Struct, frozen=True):
    """The bare form's normalised content: its digest is the one stored since the bare
    form existed, so upgrading never turns an unchanged manifest into a new version."""

    units: list[ManifestUnit]
    rollout: Rollout
    drift_policy: Literal["report", "repair"]


class Manifest(msgspec.Struct, frozen=True):
    units: list[ManifestUnit]
    rollout: Rollout = Rollout()
    drift_policy: Literal["report", "repair"] = "report"
    version: str = ""
    """The envelope's `version` (clients deploy it as the application version)."""
    metadata: Metadata | None = None
    """None for the bare form."""

    def digest(self) -> str:
        """SHA-256 of the normalised manifest: equal digests mean the same version
        (comments, key order and whitespace do not count; metadata does)."""
        if self.metadata is None and not self.version:
            core = _Core(self.units, self.rollout, self.drift_policy)
            return hashlib.sha256(msgspec.json.encode(core)).hexdigest()
        return hashlib.sha256(b"envelope:" + msgspec.json.encode(self)).hexdigest()


def parse_manifest(text: str) -> Manifest:
    """Validate a manifest's text; ManifestError names the line and the field.

    Pure Python and seconds long for a large manifest: callers on the event loop run
    it in a thread. Size and nesting are capped (`coordinator/limits.py`). The parser
    and PyYAML load with the first manifest: a coordinator that never sees one (fleet
    units only) does not keep them (#22)."""
    from coordinator.deploy import manifest_yaml

    return manifest_yaml.parse(text)
