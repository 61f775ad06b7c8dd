"""Agent side of enrolment: pin the coordinator's CA, send a CSR with the join token.

The join token carries a prefix of the CA's SHA-256, so the agent fetches the CA
over an unverified connection, checks it against the pin, and only then sends the
token over a connection verified with that CA. A coordinator impostor never sees
the token.
"""

from __future__ import annotations

import asyncio
import ssl
import urllib.error
import urllib.request

import msgspec

from agent.identity import Identity, LinkInfo
from proto import crypto
from proto.enrolment import CA_PATH, ENROLL_PATH, EnrollRequest, EnrollResponse, hub_urls_of
from proto.tokens import JOIN_KIND, PIN_CHARS, TokenFormatError, parse_token

#: Seconds for each of the two calls; enrolment is a one-off command, not the link.
TIMEOUT_S = 30.0
#: Neither answer is anywhere near this; a coordinator impostor cannot make us buffer more.
MAX_ANSWER_BYTES = 1024 * 1024


class EnrolError(Exception):
    pass


def _call(url: str, ctx: ssl.SSLContext, body: bytes | None = None) -> tuple[int, bytes]:
    """One HTTPS request with the standard library (the agent ships without an async
    HTTP client: this runs once per machine, in a thread)."""
    headers = {"Content-Type": "application/json"} if body is not None else {}
    request = urllib.request.Request(url, data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S, context=ctx) as resp:
            return int(resp.status), resp.read(MAX_ANSWER_BYTES)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(MAX_ANSWER_BYTES)
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise EnrolError(f"cannot reach the coordinator at {url}: {reason}") from None


def fetch_pinned_ca(base_url: str, pin: str) -> bytes:
    """The coordinator's CA, fetched unverified and accepted only if it matches the pin."""
    unverified = ssl.create_default_context()
    unverified.check_hostname = False
    unverified.verify_mode = ssl.CERT_NONE
    status, ca_pem = _call(base_url + CA_PATH, unverified)
    if status != 200:
        raise EnrolError(f"coordinator answered {status} for its CA certificate")
    try:
        actual = crypto.ca_pin(crypto.load_cert(ca_pem))
    except crypto.PkiError as exc:
        raise EnrolError(f"coordinator sent an unusable CA certificate: {exc}") from None
    if actual[:PIN_CHARS] != pin:
        raise EnrolError(
            "the coordinator's CA does not match the join token: wrong coordinator URL, "
            "or something is intercepting the connection"
        )
    return ca_pem


async def enrol(
    *,
    coordinator_url: str,
    token: str,
    machine_id: str,
    identity: Identity,
    ca_pem: bytes | None = None,
) -> LinkInfo:
    return await asyncio.to_thread(
        enrol_blocking,
        coordinator_url=coordinator_url,
        token=token,
        machine_id=machine_id,
        identity=identity,
        ca_pem=ca_pem,
    )


def enrol_blocking(
    *,
    coordinator_url: str,
    token: str,
    machine_id: str,
    identity: Identity,
    ca_pem: bytes | None = None,
) -> LinkInfo:
    try:
        parsed = parse_token(token, JOIN_KIND)
    except TokenFormatError as exc:
        raise EnrolError(str(exc)) from None
    base = coordinator_url.rstrip("/")
    key = crypto.generate_key()
    csr = crypto.make_csr(key, machine_id)
    if ca_pem is None:
        ca_pem = fetch_pinned_ca(base, parsed.pin)
    ctx = ssl.create_default_context(cadata=ca_pem.decode())
    body = EnrollRequest(token=token, machine_id=machine_id, csr_pem=csr.decode())
    status, raw = _call(base + ENROLL_PATH, ctx, msgspec.json.encode(body))
    if status != 200:
        raise EnrolError(f"enrolment refused ({status}): {_message(raw)}")
    try:
        result = msgspec.json.decode(raw, type=EnrollResponse)
    except msgspec.DecodeError as exc:
        raise EnrolError(f"coordinator sent an unusable enrolment answer: {exc}") from None
    link = LinkInfo(
        machine_id=result.machine_id,
        hub_url=result.hub_url,
        coordinator_url=base,
        hub_urls=hub_urls_of(result),
    )
    identity.save(
        key_pem=crypto.key_pem(key), cert_pem=result.cert_pem.encode(), ca_pem=ca_pem, link=link
    )
    return link


def _message(raw: bytes) -> str:
    try:
        return str(msgspec.json.decode(raw)["error"]["message"])
    except (msgspec.DecodeError, KeyError, TypeError):
        return raw.decode(errors="replace")[:200]
