"""The client side of Moorage's TLS, for every process that dials the coordinator.

moorctl, the coordinator's own tools and the tests all reach the API with the same
context; it lives in the contract package so a client needs neither the coordinator
nor its CA code to make one.
"""

from __future__ import annotations

import os
import ssl

PathArg = str | os.PathLike[str]


def client_ssl_context(
    ca_file: PathArg,
    cert_file: PathArg | None = None,
    key_file: PathArg | None = None,
) -> ssl.SSLContext:
    """Client context that trusts only the fleet CA and checks the server's name.

    `cert_file` may hold both certificate and key (the agent's identity.pem), in which
    case `key_file` stays None.
    """
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=os.fspath(ca_file))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    if cert_file is not None:
        ctx.load_cert_chain(
            os.fspath(cert_file), os.fspath(key_file) if key_file is not None else None
        )
    elif key_file is not None:
        from proto.crypto import PkiError  # not at import: it loads `cryptography`

        raise PkiError("key_file given without cert_file")
    return ctx
