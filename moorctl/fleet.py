"""What `fleetctl` does over the fleet v1 API, for `moorctl` (same requests, same waits).

Kept apart from the CLI so the waiting rules (poll currentState, then the unit's
systemd state for `start`) are plain async functions that tests can drive.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import msgspec

from moorctl.client import ApiClient, ApiClientError
from proto.units import UnitOption, parse_unit_file, template_of
from proto.units import is_global as xfleet_global

POLL_S = 0.25
ACTIVE_WINDOW_S = 10.0
UNSCHEDULABLE_GRACE_S = 2.0
"""How long the scheduler must have found no machine for a unit before a wait gives up:
long enough for a machine that is connecting, short enough to answer within seconds."""


class UnitNotFound(Exception):
    pass


class Unschedulable(Exception):
    """No machine can take the unit; the message names it and gives the scheduler's reason."""


def unit_path(name: str) -> str:
    return f"fleet/v1/units/{quote(name, safe='')}"


async def list_all(api: ApiClient, resource: str, field: str, query: str = "") -> list[Any]:
    """Every page of a fleet list, following nextPageToken like fleetctl does."""
    items: list[Any] = []
    token = ""
    while True:
        params = "&".join(p for p in (query, f"nextPageToken={token}" if token else "") if p)
        body = await api.call("GET", f"fleet/v1/{resource}" + (f"?{params}" if params else ""))
        items += body.get(field, []) if body else []
        token = (body or {}).get("nextPageToken", "")
        if not token:
            return items


async def get_unit(api: ApiClient, name: str) -> dict[str, Any] | None:
    try:
        return dict(await api.call("GET", unit_path(name)))
    except ApiClientError as exc:
        if exc.status == 404:
            return None
        raise


def options_from_file(path: Path, text: str | None = None) -> list[UnitOption]:
    """The unit file's options; `text` when the caller has read it already."""
    return parse_unit_file(path.read_text() if text is None else text)


def local_file(name: str, search: Path) -> Path | None:
    """The unit's file in `search`, else its template's file there (fleetctl's order)."""
    if (search / name).is_file():
        return search / name
    template = template_of(name)
    if template is not None and (search / template).is_file():
        return search / template
    return None


async def resolve_options(api: ApiClient, name: str, search: Path) -> list[UnitOption] | None:
    """The unit's file from disk, else its template's file, else the template unit already
    in the cluster (fleetctl's order); None when none exists."""
    local = search / name
    if local.is_file():
        return options_from_file(local)
    template = template_of(name)
    if template is None:
        return None
    if (search / template).is_file():
        return options_from_file(search / template)
    existing = await get_unit(api, template)
    if existing is None:
        return None
    return msgspec.convert(existing["options"], list[UnitOption])


async def submit(api: ApiClient, name: str, options: list[UnitOption]) -> bool:
    """PUT the unit if it is new; False if it already existed (left unchanged)."""
    if await get_unit(api, name) is not None:
        return False
    await api.call("PUT", unit_path(name), {"name": name, "options": plain_options(options)})
    return True


async def set_state(api: ApiClient, name: str, state: str) -> None:
    await api.call("PUT", unit_path(name), {"name": name, "desiredState": state})


async def wait_current(
    api: ApiClient,
    name: str,
    state: str,
    limit_s: float,
    grace_s: float = UNSCHEDULABLE_GRACE_S,
) -> dict[str, Any]:
    """Poll until currentState reaches `state` (fleetctl polls every 250 ms). Unlike
    fleetctl, give up with `Unschedulable` once the scheduler has said for `grace_s`
    why no machine can take the unit, instead of waiting out the whole limit."""
    deadline = time.monotonic() + limit_s
    unplaced_since: float | None = None
    while True:
        unit = await get_unit(api, name)
        if unit is None:
            raise UnitNotFound(name)
        if is_global(unit) or unit.get("currentState", "inactive") == state:
            return unit  # global units have no currentState: fleetctl does not wait
        reason = await unschedulable(api, name) if state != "inactive" else ""
        now = time.monotonic()
        if not reason:
            unplaced_since = None
        elif unplaced_since is None:
            unplaced_since = now
        elif now - unplaced_since >= grace_s:
            raise Unschedulable(f"unit {name} cannot be scheduled: {reason}")
        if now > deadline:
            raise TimeoutError(f"{name} did not reach {state} within {limit_s:.0f} s")
        await _sleep(POLL_S)


async def unschedulable(api: ApiClient, name: str) -> str:
    """The scheduler's reason the unit is on no machine ("" when it is placed)."""
    try:
        unit = await api.call("GET", f"moorage/v1/units/{quote(name, safe='')}")
    except ApiClientError as exc:
        if exc.status == 404:
            return ""
        raise
    return str(unit.get("unschedulable", ""))


async def wait_active(
    api: ApiClient, name: str, window: float = ACTIVE_WINDOW_S, expected: int = 1
) -> tuple[bool, list[dict[str, Any]]]:
    """After a start: wait until `expected` machines report the unit active (True), or
    one reports it failed or the window passes (False); returns the last states seen."""
    deadline = time.monotonic() + window
    states: list[dict[str, Any]] = []
    while True:
        states = await list_all(api, "state", "states", f"unitName={quote(name, safe='')}")
        # copies on unreachable machines are what they last said, not this start's outcome
        states = [s for s in states if not s.get("stale")]
        active = [s for s in states if s.get("systemdActiveState") == "active"]
        if states and len(active) == len(states) and len(active) >= expected:
            return True, states
        if any(s.get("systemdActiveState") == "failed" for s in states):
            return False, states
        if time.monotonic() > deadline:
            return False, states
        await _sleep(POLL_S)


def is_global(unit: dict[str, Any]) -> bool:
    """A fleet Unit (JSON) with [X-Fleet] Global=true, read as the scheduler reads it."""
    try:
        options = msgspec.convert(unit.get("options", []), list[UnitOption])
        return xfleet_global(options)
    except (msgspec.ValidationError, ValueError):
        return False


def plain_options(options: list[UnitOption]) -> list[dict[str, str]]:
    return [{"section": o.section, "name": o.name, "value": o.value} for o in options]


async def _sleep(seconds: float) -> None:
    import asyncio  # loaded by the command's event loop already; not at import

    await asyncio.sleep(seconds)
