"""Version stickers: what this machine runs of each deployment, on disk, for anyone.

One JSON file per deployment, `<sticker dir>/<deployment>.json` (a `Sticker`),
written atomically (temp file, fsync, rename: `proto.files.write_public`) so a
reader sees the old sticker or the new one, never half of either. It is written once
every unit of the deployment's release is applied at its hash and up (launched units
active, pinned images matching), and rewritten only when the release or its units
change; until a new release is complete the previous sticker stays (it names the
last release this machine fully applied). A deployment that leaves the machine
takes its sticker with it. Stickers survive agent restarts: they are loaded at
start-up and sent in Hello.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import msgspec

from agent.backends.base import Observed, unit_kind
from agent.store import AppliedUnit
from proto.files import write_public
from proto.messages import (
    LABEL_DEPLOYMENT,
    LABEL_RELEASE,
    LABEL_VERSION,
    DesiredUnit,
    Sticker,
    StickerUnit,
)
from proto.units import unit_file_sha256

log = logging.getLogger(__name__)

_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_decoder = msgspec.json.Decoder(Sticker)
_encoder = msgspec.json.Encoder()


# --------------------------------------------------------------------------- pure parts


def by_deployment(desired: Mapping[str, DesiredUnit]) -> dict[str, list[DesiredUnit]]:
    """The wanted (not inactive) units of each deployment, by deployment name."""
    out: dict[str, list[DesiredUnit]] = {}
    for name in sorted(desired):
        unit = desired[name]
        deployment = unit.labels.get(LABEL_DEPLOYMENT, "")
        if deployment and unit.desired_state != "inactive":
            out.setdefault(deployment, []).append(unit)
    return out


def _systemd_up(unit: DesiredUnit, seen: Observed, digests: dict[str, str]) -> bool:
    rt = seen.runtime
    if seen.file_sha256 != unit_file_sha256(unit.options):
        return False
    if unit.desired_state == "launched" and rt.active_state not in ("active", "reloading"):
        return False
    return not (unit.desired_state == "loaded" and rt.load_state != "loaded")


def _container_up(unit: DesiredUnit, seen: Observed, digests: dict[str, str]) -> bool:
    """Also notes the container's image digest in ``digests``."""
    rt = seen.runtime
    if seen.container_hash != unit.hash:
        return False
    if unit.image_digest and rt.image_digest != unit.image_digest:
        return False
    if unit.desired_state == "launched" and rt.active_state != "active":
        return False
    digests[unit.name] = unit.image_digest or rt.image_digest
    return True


_UP: dict[str, Callable[[DesiredUnit, Observed, dict[str, str]], bool]] = {
    "systemd": _systemd_up,
    "docker": _container_up,
}
"""Backend kind -> whether one unit runs as its release says."""


def expected_units(units: Sequence[DesiredUnit]) -> dict[str, StickerUnit]:
    return {u.name: StickerUnit(u.hash, unit_file_sha256(u.options)) for u in units}


def is_current(sticker: Sticker, units: Sequence[DesiredUnit]) -> bool:
    """Whether ``sticker`` already names this release of these units (no rewrite)."""
    if not units:
        return False
    first = units[0].labels
    return (
        sticker.release == first.get(LABEL_RELEASE, "")
        and sticker.version == first.get(LABEL_VERSION, "")
        and sticker.units == expected_units(units)
        and all(
            sticker.image_digests.get(u.name) == u.image_digest for u in units if u.image_digest
        )
    )


def sticker_for(
    deployment: str,
    units: Sequence[DesiredUnit],
    applied: Mapping[str, AppliedUnit],
    observed: Mapping[str, Observed],
    now: float,
) -> Sticker | None:
    """The sticker of ``deployment`` if every unit of its release is applied and up.

    None while any unit is not applied at its desired hash and state, its file is not
    the one written, a launched unit is not active, a container is not of the unit's
    hash, or its image is not the pinned digest; also if the units name different
    releases (a release is delivered whole, so that is a change still arriving).
    """
    if not units:
        return None
    release = units[0].labels.get(LABEL_RELEASE, "")
    version = units[0].labels.get(LABEL_VERSION, "")
    digests: dict[str, str] = {}
    for unit in units:
        if (unit.labels.get(LABEL_RELEASE, ""), unit.labels.get(LABEL_VERSION, "")) != (
            release,
            version,
        ):
            return None
        done = applied.get(unit.name)
        if done is None or done.hash != unit.hash or done.state != unit.desired_state:
            return None
        seen = observed.get(unit.name)
        if seen is None:
            return None
        if not _UP[unit_kind(unit.name)](unit, seen, digests):
            return None
    return Sticker(
        deployment=deployment,
        release=release,
        version=version,
        units=expected_units(units),
        image_digests=digests,
        applied_at=now,
    )


def file_name(deployment: str) -> str:
    """``<deployment>.json``; a name that is not a plain file name (``/``, a leading
    dot, odd characters) gets ``_`` for those and 8 hex of its SHA-1, like containers."""
    if _SAFE_NAME.fullmatch(deployment) and not deployment.endswith(".tmp"):
        return deployment + ".json"
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", deployment)[:100].lstrip(".") or "_"
    return f"{safe}-{hashlib.sha1(deployment.encode()).hexdigest()[:8]}.json"


# --------------------------------------------------------------------------- on disk


class StickerStore:
    """The sticker directory. Only files that decode as stickers are ever deleted."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def load(self) -> dict[str, Sticker]:
        """Every readable sticker, by deployment (unreadable files are left, logged)."""
        out: dict[str, Sticker] = {}
        try:
            paths = sorted(self.directory.glob("*.json"))
        except OSError as exc:
            log.warning("cannot list stickers in %s: %s", self.directory, exc)
            return out
        for path in paths:
            if path.name.startswith("."):
                continue  # a writer's temp file
            try:
                sticker = _decoder.decode(path.read_bytes())
            except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
                log.warning("ignoring unreadable sticker %s: %s", path, exc)
                continue
            if path.name != file_name(sticker.deployment):
                log.warning("ignoring %s: it is the sticker of %r", path, sticker.deployment)
                continue
            out[sticker.deployment] = sticker
        return out

    def write(self, sticker: Sticker) -> None:
        """Atomically (temp file, fsync, rename, fsync of the directory)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        text = msgspec.json.format(_encoder.encode(sticker), indent=2) + b"\n"
        write_public(self.directory / file_name(sticker.deployment), text)

    def delete(self, deployment: str) -> None:
        (self.directory / file_name(deployment)).unlink(missing_ok=True)
