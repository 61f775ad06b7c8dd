"""The agent's identity on disk: its key, certificate, the fleet CA and the hub URL.

The key and its certificate share one file (`identity.pem`, mode 0600) so renewal
replaces both with one atomic rename: no crash can leave a key beside a certificate
that is not its own. The key is generated here and never leaves the machine.
"""

from __future__ import annotations

import ssl
import time
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from proto.enrolment import unique_urls
from proto.files import write_private, write_public

if TYPE_CHECKING:
    from proto.crypto import CertInfo


class LinkInfo(msgspec.Struct, frozen=True):
    machine_id: str
    hub_url: str
    coordinator_url: str = ""
    hub_urls: list[str] = []
    """Every coordinator's hub from enrolment (#23); empty in a link.json written before
    the list, or from a coordinator older than it: then `hub_url` alone."""

    def urls(self) -> list[str]:
        """The hubs to try, in order."""
        return unique_urls(self.hub_urls or [self.hub_url])


class LinkStatus(msgspec.Struct, frozen=True):
    """What the running agent's link is doing, for `moorage-agent status` (another process)."""

    hub_urls: list[str]
    connected: str = ""
    """The hub of the live session, or "" between sessions."""
    since: float = 0.0
    """Wall time the session began, or the link was lost (0: never connected)."""


class Identity:
    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir
        self.identity_file = state_dir / "identity.pem"
        self.ca_file = state_dir / "ca.pem"
        self.link_file = state_dir / "link.json"
        self.status_file = state_dir / "link-status.json"

    def enrolled(self) -> bool:
        return all(p.exists() for p in (self.identity_file, self.ca_file, self.link_file))

    def link(self) -> LinkInfo:
        return msgspec.json.decode(self.link_file.read_bytes(), type=LinkInfo)

    def save(self, *, key_pem: bytes, cert_pem: bytes, ca_pem: bytes, link: LinkInfo) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_public(self.ca_file, ca_pem)
        self.install(key_pem, cert_pem)
        write_public(self.link_file, msgspec.json.encode(link))

    def save_status(self, status: LinkStatus) -> None:
        write_public(self.status_file, msgspec.json.encode(status))

    def status(self) -> LinkStatus | None:
        """The last status the link wrote, if any (it may be stale: the agent may be gone)."""
        try:
            return msgspec.json.decode(self.status_file.read_bytes(), type=LinkStatus)
        except (OSError, msgspec.DecodeError):
            return None

    def install(self, key_pem: bytes, cert_pem: bytes) -> None:
        write_private(self.identity_file, key_pem + cert_pem)

    def cert_info(self) -> CertInfo:
        from proto import crypto  # the crypto stack is loaded only when needed

        return crypto.inspect_cert(_cert_block(self.identity_file.read_bytes()))

    def needs_renewal(
        self, fraction: float, window: tuple[float, float] | None = None, now: float | None = None
    ) -> bool:
        """`window` (not_before, not_after) as the hub saw the certificate spares parsing
        it here; without it the file is read."""
        if window is None or not window[1]:
            info = self.cert_info()
            window = (info.not_before, info.not_after)
        now = time.time() if now is None else now
        not_before, not_after = window
        return not_after - now < (not_after - not_before) * fraction

    def ssl_context(self) -> ssl.SSLContext:
        """Verify the coordinator with the fleet CA; present our identity (TLS 1.2+)."""
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca_file))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(self.identity_file))
        return ctx


def _cert_block(pem: bytes) -> bytes:
    start = pem.index(b"-----BEGIN CERTIFICATE-----")
    return pem[start:]
