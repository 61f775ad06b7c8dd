"""Agent side of enrolment: pin the coordinator's CA, send a CSR with the join token.

The join token carries a prefix of the CA's SHA-256, so the agent fetches the CA
over an unverified connection, checks it against the pin, and only then sends the
token over a connection verified with that CA. A coordinator impostor never sees
the token.
"""

from __future__ import annotations

import ssl

import aiohttp
import msgspec

from agent.identity import Identity, LinkInfo
from proto import crypto
from proto.enrolment import CA_PATH, ENROLL_PATH, EnrollRequest, EnrollResponse
from proto.tokens import JOIN_KIND, PIN_CHARS, TokenFormatError, parse_token


class EnrolError(Exception):
    pass


async def fetch_pinned_ca(session: aiohttp.ClientSession, base_url: str, pin: str) -> bytes:
    async with session.get(base_url + CA_PATH, ssl=False) as resp:
        if resp.status != 200:
            raise EnrolError(f"coordinator answered {resp.status} for its CA certificate")
        ca_pem = await resp.read()
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
    try:
        parsed = parse_token(token, JOIN_KIND)
    except TokenFormatError as exc:
        raise EnrolError(str(exc)) from None
    base = coordinator_url.rstrip("/")
    key = crypto.generate_key()
    csr = crypto.make_csr(key, machine_id)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        if ca_pem is None:
            ca_pem = await fetch_pinned_ca(session, base, parsed.pin)
        ctx = ssl.create_default_context(cadata=ca_pem.decode())
        body = EnrollRequest(token=token, machine_id=machine_id, csr_pem=csr.decode())
        try:
            async with session.post(
                base + ENROLL_PATH,
                data=msgspec.json.encode(body),
                headers={"Content-Type": "application/json"},
                ssl=ctx,
            ) as resp:
                raw = await resp.read()
                if resp.status != 200:
                    raise EnrolError(f"enrolment refused ({resp.status}): {_message(raw)}")
        except aiohttp.ClientError as exc:
            raise EnrolError(f"cannot reach the coordinator at {base}: {exc}") from None
    result = msgspec.json.decode(raw, type=EnrollResponse)
    link = LinkInfo(machine_id=result.machine_id, hub_url=result.hub_url, coordinator_url=base)
    identity.save(
        key_pem=crypto.key_pem(key), cert_pem=result.cert_pem.encode(), ca_pem=ca_pem, link=link
    )
    return link


def _message(raw: bytes) -> str:
    try:
        return str(msgspec.json.decode(raw)["error"]["message"])
    except (msgspec.DecodeError, KeyError, TypeError):
        return raw.decode(errors="replace")[:200]
