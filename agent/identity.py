"""The agent's identity on disk: its key, certificate, the fleet CA and the hub URL.

The key and its certificate share one file (`identity.pem`, mode 0600) so renewal
replaces both with one atomic rename: no crash can leave a key beside a certificate
that is not its own. The key is generated here and never leaves the machine.
"""

from __future__ import annotations

import ssl
import time
from pathlib import Path

import msgspec

from coordinator import pki


class LinkInfo(msgspec.Struct, frozen=True):
    machine_id: str
    hub_url: str
    coordinator_url: str = ""


class Identity:
    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir
        self.identity_file = state_dir / "identity.pem"
        self.ca_file = state_dir / "ca.pem"
        self.link_file = state_dir / "link.json"

    def enrolled(self) -> bool:
        return all(p.exists() for p in (self.identity_file, self.ca_file, self.link_file))

    def link(self) -> LinkInfo:
        return msgspec.json.decode(self.link_file.read_bytes(), type=LinkInfo)

    def save(self, *, key_pem: bytes, cert_pem: bytes, ca_pem: bytes, link: LinkInfo) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        pki.write_public(self.ca_file, ca_pem)
        self.install(key_pem, cert_pem)
        pki.write_public(self.link_file, msgspec.json.encode(link))

    def install(self, key_pem: bytes, cert_pem: bytes) -> None:
        pki.write_private(self.identity_file, key_pem + cert_pem)

    def cert_info(self) -> pki.CertInfo:
        return pki.inspect_cert(_cert_block(self.identity_file.read_bytes()))

    def needs_renewal(self, fraction: float, now: float | None = None) -> bool:
        info = self.cert_info()
        now = time.time() if now is None else now
        lifetime = info.not_after - info.not_before
        return info.not_after - now < lifetime * fraction

    def ssl_context(self) -> ssl.SSLContext:
        return pki.client_ssl_context(self.ca_file, self.identity_file)


def _cert_block(pem: bytes) -> bytes:
    start = pem.index(b"-----BEGIN CERTIFICATE-----")
    return pem[start:]
