"""The agent's persisted desired state: what it was told, and what it did about it.

One file, `state.json` (0600: unit options may carry secrets), replaced atomically
(temp file, fsync, rename) after every change. It is what lets the agent restart,
or the machine reboot, with the coordinator away and still run every desired unit.
"""

from __future__ import annotations

import logging
from pathlib import Path

import msgspec

from proto.files import write_private
from proto.messages import DesiredState, DesiredUnit

log = logging.getLogger(__name__)


class AppliedUnit(msgspec.Struct, frozen=True):
    """A unit file the agent wrote (it owns only these) and the state it put the unit in.

    For a `.container` unit ``file_sha256`` is "": nothing is written to disk, the
    container is found by its name and owned through its ``moorage.unit`` label.
    """

    hash: str
    state: DesiredState
    file_sha256: str


class AgentState(msgspec.Struct, kw_only=True):
    revision: int = 0
    desired: dict[str, DesiredUnit] = {}
    applied: dict[str, AppliedUnit] = {}
    lost_after_s: float = 0.0
    """The coordinator's lost_after, from its last Welcome (see `agent.isolation`)."""
    isolated: bool = False
    """StopWhenIsolated units are held stopped (also across a restart of the agent)."""
    in_session: bool = False
    contact_at: float = 0.0
    """Wall time the coordinator was last heard, written when a session ends."""


class StateStore:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "state.json"

    def load(self) -> AgentState:
        try:
            return msgspec.json.decode(self.path.read_bytes(), type=AgentState)
        except FileNotFoundError:
            return AgentState()
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            # Never guess: keep the unreadable file for an operator, start empty-handed but
            # without touching anything (an empty state owns no files, so removes nothing).
            backup = self.path.with_suffix(".corrupt")
            self.path.replace(backup)
            log.error("state file unreadable (%s); moved to %s", exc, backup)
            return AgentState()

    def save(self, state: AgentState) -> None:
        write_private(self.path, msgspec.json.encode(state))
