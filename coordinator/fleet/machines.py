"""Machines as the operator sees them: listing, metadata overrides, revocation, and a
cluster's health (what /api/v2/clusters shows), computed here from the hub's sessions
and what agents reported, so the API adapters never look at the hub or the store.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import msgspec

from coordinator.errors import NotFound
from coordinator.events import EventBus
from coordinator.fleet.units import UnitService
from coordinator.hub.sessions import Hub, Session
from coordinator.models import DEFAULT_TENANT, Machine
from coordinator.store.ports import Store as DeployStore
from coordinator.store.ports import Store as Storage


class Cluster(msgspec.Struct, frozen=True):
    """One machine with what the fleet manager shows about it."""

    machine: Machine
    connected: bool
    health: str
    health_reason: str
    drift: int
    """Drift entries the machine last reported."""
    deployments: dict[str, str]
    """deployment -> release its sticker says the machine runs."""


def cluster_health(
    state: str, connected: bool, drift: int, capabilities: Sequence[str]
) -> tuple[str, str]:
    """A machine's health and, unless healthy, why. A connected machine whose agent
    reaches neither systemd nor Docker can run nothing, so it is not healthy. Pure."""
    if state == "lost":
        return "offline", "the machine has been gone longer than the lost-after time"
    if not connected:
        return "unreachable", "the agent is not connected"
    if not set(capabilities) & {"systemd", "docker"}:
        return "unhealthy", "neither systemd nor Docker is reachable: it can run nothing"
    if drift:
        return "drifted", f"{drift} unit(s) differ from what the machine was told"
    return "healthy", ""


def clusters_of(
    machines: Iterable[Machine],
    connected: Iterable[str],
    drift: Mapping[str, int],
    stickers: Mapping[str, dict[str, str]],
) -> list[Cluster]:
    """Each machine with its health, from plain values. Pure."""
    online = set(connected)
    out = []
    for mach in machines:
        is_on = mach.id in online
        drifted = drift.get(mach.id, 0)
        health, reason = cluster_health(mach.state, is_on, drifted, mach.capabilities)
        out.append(Cluster(mach, is_on, health, reason, drifted, stickers.get(mach.id, {})))
    return out


def with_live_seen(machines: list[Machine], seen: Mapping[str, float]) -> list[Machine]:
    """The store keeps `last_seen` as of a machine's Hello and disconnect, not of every
    heartbeat (thousands of writes a second at 10,000 agents); the coordinator holding
    a machine's session knows when it last heard from it. Pure."""
    return [
        msgspec.structs.replace(mach, last_seen=seen[mach.id])
        if mach.id in seen and seen[mach.id] > mach.last_seen
        else mach
        for mach in machines
    ]


class MachineService:
    def __init__(
        self,
        storage: Storage,
        deploystore: DeployStore,
        hub: Hub,
        units: UnitService,
        events: EventBus | None = None,
    ) -> None:
        self.storage = storage
        self.deploystore = deploystore
        self.hub = hub
        self.units = units
        self.events = events if events is not None else EventBus()
        # The hub's own seam tells this service; the domain hears it on the bus.
        hub.on_connect.append(self._on_connect)
        hub.on_disconnect.append(self._on_disconnect)
        hub.on_state_change.append(self._on_state_change)

    async def _on_connect(self, session: Session) -> None:
        hostname = session.hello.hostname if session.hello is not None else ""
        self.events.emit("machine.up", subject=session.machine_id, hostname=hostname)

    def _on_disconnect(self, session: Session) -> None:
        self.events.emit("machine.down", subject=session.machine_id)

    async def _on_state_change(self, machine_id: str, state: str) -> None:
        if state == "lost":
            self.events.emit("machine.lost", subject=machine_id)

    def list_machines(
        self, *, include_revoked: bool = False, tenant: str = DEFAULT_TENANT
    ) -> list[Machine]:
        """The tenant's machines ordered by id; revoked ones only when asked."""
        return with_live_seen(
            self.storage.list_machines(include_revoked=include_revoked, tenant=tenant),
            self._seen_here(),
        )

    def find(self, machine_id: str, *, tenant: str = DEFAULT_TENANT) -> Machine | None:
        """A machine of `tenant` (another tenant's is None, like one that does not exist)."""
        machine = self.storage.get_machine(machine_id)
        if machine is None or machine.tenant != tenant:
            return None
        return with_live_seen([machine], self._seen_here([machine_id]))[0]

    def _seen_here(self, machine_ids: Iterable[str] | None = None) -> dict[str, float]:
        """When this coordinator last heard from these machines (default: every one
        with a session here); `find` asks for one, not a map of every session."""
        ids = self.hub.sessions if machine_ids is None else machine_ids
        return {
            mid: s.last_seen
            for mid in ids
            if (s := self.hub.sessions.get(mid)) is not None and s.ready
        }

    def get(self, machine_id: str, *, tenant: str = DEFAULT_TENANT) -> Machine:
        machine = self.find(machine_id, tenant=tenant)
        if machine is None:
            raise NotFound(f"machine {machine_id!r} does not exist")
        return machine

    def unknown(self, machine_ids: Iterable[str], *, tenant: str = DEFAULT_TENANT) -> list[str]:
        """Those of these ids no machine of `tenant` has (revoked machines are known)."""
        return [mid for mid in machine_ids if self.find(mid, tenant=tenant) is None]

    def connected_count(self, *, tenant: str = DEFAULT_TENANT) -> int:
        """Connected machines of `tenant`."""
        online = self.hub.connected_ids()
        return sum(1 for mach in self.list_machines(tenant=tenant) if mach.id in online)

    def names(self, *, tenant: str = DEFAULT_TENANT) -> dict[str, str]:
        """Machine id -> the name to show (hostname, else the id)."""
        return {mach.id: mach.hostname or mach.id for mach in self.list_machines(tenant=tenant)}

    async def revoke(self, machine_id: str, *, tenant: str = DEFAULT_TENANT) -> None:
        """Refuse the machine's certificates from now on and end its live session."""
        self.get(machine_id, tenant=tenant)
        if not await self.hub.revoke(machine_id):
            raise NotFound(f"machine {machine_id!r} does not exist")

    def patch_metadata(
        self, patches: Mapping[str, dict[str, str | None]], *, tenant: str = DEFAULT_TENANT
    ) -> None:
        """Operator overrides of the tenant's machines' metadata (None removes a key);
        placements that depend on metadata are recomputed soon after."""
        for machine_id in patches:
            self.get(machine_id, tenant=tenant)
        for machine_id, patch in patches.items():
            self.storage.patch_metadata(machine_id, patch)
        self.units.reschedule_soon()

    # --- clusters (the fleet manager's view) -----------------------------------------------

    def clusters(self, *, tenant: str = DEFAULT_TENANT) -> list[Cluster]:
        """Every machine of the tenant not revoked, with its health."""
        drift, stickers = self._reported(None, tenant)
        online = self.hub.connected_ids()
        return clusters_of(self.list_machines(tenant=tenant), online, drift, stickers)

    def cluster(self, machine_id: str, *, tenant: str = DEFAULT_TENANT) -> Cluster:
        mach = self.find(machine_id, tenant=tenant)
        if mach is None or mach.revoked:
            raise NotFound(f"cluster {machine_id!r} does not exist")
        drift, stickers = self._reported(mach.id, tenant)
        return clusters_of([mach], self.hub.connected_ids(), drift, stickers)[0]

    def _reported(
        self, machine_id: str | None, tenant: str
    ) -> tuple[dict[str, int], dict[str, dict[str, str]]]:
        """Drift entries per machine, and the release each machine's stickers name."""
        drift = {
            d.machine_id: len(d.entries) for d in self.deploystore.drift(machine_id, tenant=tenant)
        }
        stickers: dict[str, dict[str, str]] = {}
        for s in self.deploystore.stickers(machine_id, tenant=tenant):
            stickers.setdefault(s.machine_id, {})[s.sticker.deployment] = s.sticker.release
        return drift, stickers
