"""Where the coordinator is and how to reach it: the `client.json` contract.

`moorage dev` (coordinator side) writes `client.json` into its state directory and
moorctl reads it when given no flags, like `nomad agent -dev` does for `nomad`. The
struct and the file's place are shared here so neither side imports the other.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import msgspec

from proto.tls import client_ssl_context


class ClientConfig(msgspec.Struct, frozen=True, kw_only=True):
    endpoint: str
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    token: str = ""
    token_file: str = ""

    def bearer(self) -> str:
        if self.token:
            return self.token
        if self.token_file:
            return Path(self.token_file).read_text().strip()
        return ""

    def ssl_context(self) -> ssl.SSLContext:
        if self.ca_file:
            ctx = client_ssl_context(self.ca_file, self.cert_file or None, self.key_file or None)
        else:
            ctx = ssl.create_default_context()
            if self.cert_file:
                ctx.load_cert_chain(self.cert_file, self.key_file or None)
        return ctx


def default_dev_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "moorage" / "dev"


def dev_client_file(state_dir: Path) -> Path:
    return state_dir / "client.json"
