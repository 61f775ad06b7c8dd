"""A network namespace joined to the test's own by a veth pair (TESTING.md section 3).

The host end gets 10.231.N.1/30, the namespace end 10.231.N.2/30; a process started
through `wrap` runs in the namespace (an agent there reaches a hub listening on the
host end's address). Three ways to partition it, each silent (no RST, no FIN, packets
vanish): `cut` takes the host end of the link down, `blackhole` keeps the link up and
drops what is routed either way, `drop_one_way` drops only what the namespace sends
(the hub's packets still arrive, its answers' acknowledgements do not); `heal` undoes
whichever was done. Each test picks its own N, so
addresses never clash; `close` deletes the namespace and with it both veth ends.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from types import TracebackType
from typing import Self

from tests.procs import AgentProc, Proc


def netns_available() -> str | None:
    """None if namespaces can be made here, else why not (a skip reason)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 (ip) is not installed"
    return None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20, check=check)


def _mac(args: list[str]) -> str:
    words = _ip(*args).stdout.split()
    return words[words.index("link/ether") + 1]


class NetNs:
    def __init__(self, subnet: int) -> None:
        if not 0 < subnet < 255:
            raise ValueError("subnet is the third octet of 10.231.N.0/30")
        tag = f"{subnet}p{os.getpid() % 100000}"
        self.name = f"mgd-{tag}"
        self.host_if = f"vh{tag}"[:15]
        self.ns_if = f"vn{tag}"[:15]
        self.host_ip = f"10.231.{subnet}.1"
        self.ns_ip = f"10.231.{subnet}.2"
        self._made = False

    def start(self) -> Self:
        _ip("netns", "add", self.name)
        self._made = True
        _ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
        _ip("link", "set", self.ns_if, "netns", self.name)
        _ip("addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
        _ip("-n", self.name, "addr", "add", f"{self.ns_ip}/30", "dev", self.ns_if)
        _ip("link", "set", self.host_if, "up")
        _ip("-n", self.name, "link", "set", "lo", "up")
        _ip("-n", self.name, "link", "set", self.ns_if, "up")
        # Static neighbours: with the link cut, packets are sent and vanish, rather than
        # failing fast on an ARP lookup nobody answers ("no route to host").
        host_mac = _mac(["link", "show", self.host_if])
        ns_mac = _mac(["-n", self.name, "link", "show", self.ns_if])
        _ip("-n", self.name, "neigh", "replace", self.host_ip, "lladdr", host_mac,
            "dev", self.ns_if, "nud", "permanent")  # fmt: skip
        _ip("neigh", "replace", self.ns_ip, "lladdr", ns_mac, "dev", self.host_if,
            "nud", "permanent")  # fmt: skip
        return self

    def wrap(self, argv: list[str]) -> list[str]:
        """`argv` run inside the namespace (`ip netns exec` execs it: same PID)."""
        return ["ip", "netns", "exec", self.name, *argv]

    def cut(self) -> None:
        """Black-hole the link: the host end goes down, so the namespace's packets go
        into a veth without a peer and vanish (connects time out, nothing is refused)."""
        _ip("link", "set", self.host_if, "down")

    def blackhole(self) -> None:
        """The link stays up; a blackhole route on each side swallows the other's
        packets (a firewall dropping everything, a broken route upstream)."""
        _ip("route", "replace", "blackhole", f"{self.ns_ip}/32")
        _ip("-n", self.name, "route", "replace", "blackhole", f"{self.host_ip}/32")

    def drop_one_way(self) -> None:
        """Only the namespace's packets vanish (an asymmetric fault): the host's still
        arrive, but nothing it sends is acknowledged or answered."""
        _ip("-n", self.name, "route", "replace", "blackhole", f"{self.host_ip}/32")

    def heal(self) -> None:
        """Undo `cut`, `blackhole` and `drop_one_way`, whichever was done."""
        _ip("route", "del", "blackhole", f"{self.ns_ip}/32", check=False)
        if self._made:
            _ip("-n", self.name, "route", "del", "blackhole", f"{self.host_ip}/32", check=False)
        _ip("link", "set", self.host_if, "up")

    def close(self) -> None:
        if self._made:
            _ip("netns", "del", self.name, check=False)  # takes both veth ends with it
            self._made = False
        _ip("link", "del", self.host_if, check=False)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def agent_in(ns: NetNs, agent: AgentProc) -> AgentProc:
    """Make `agent` start inside `ns` (it enrols from here, over loopback)."""

    def start() -> AgentProc:
        agent.runs += 1
        agent.proc = Proc(
            ns.wrap(agent.base_args()),
            agent.state_dir.parent / f"agent-{agent.machine_id}-{agent.runs}.log",
            agent.env,
        )
        return agent

    agent.start = start  # type: ignore[method-assign]
    return agent
