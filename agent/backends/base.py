"""What every backend reports about a unit, in fleet's vocabulary."""

from __future__ import annotations

import msgspec


class UnitRuntime(msgspec.Struct, frozen=True, omit_defaults=True):
    """One unit as the machine sees it right now (systemd's Load/Active/Sub states)."""

    name: str
    load_state: str = "not-found"
    active_state: str = "inactive"
    sub_state: str = "dead"
    main_pid: int = 0
    result: str = ""
    image_digest: str = ""
    message: str = ""


class BackendUnavailable(Exception):
    """The backend cannot run units here; the message says why (shown to operators)."""
