"""Who may talk to the hub and the API, checked against a real coordinator over real TLS."""

from __future__ import annotations

import json
import ssl
from pathlib import Path

import aiohttp
import pytest

from coordinator.trust import pki
from proto import messages as m
from tests.integration.linkclient import RawLink, enrolled_identity
from tests.integration.test_enrolment import enrol_and_start, moorctl
from tests.procs import AgentProc, CoordinatorProc, wait_for

pytestmark = pytest.mark.integration


async def test_certificate_from_another_ca_is_refused(
    coordinator: CoordinatorProc, tmp_path: Path
) -> None:
    await enrolled_identity(coordinator, tmp_path, "victim")
    rogue_key, rogue_ca = pki.create_ca("Rogue CA")
    key = pki.generate_key()
    cert = pki.sign_csr(
        rogue_key,
        rogue_ca,
        pki.make_csr(key, "victim"),
        common_name="victim",
        role=pki.ROLE_AGENT,
        validity_s=3600,
    )
    ident = tmp_path / "rogue.pem"
    ident.write_bytes(pki.key_pem(key) + pki.cert_pem(cert))
    ctx = pki.client_ssl_context(coordinator.paths.ca_cert, ident)
    link = None
    with pytest.raises((aiohttp.ClientError, ssl.SSLError, ConnectionError, AssertionError)):
        # TLS 1.3 checks the client certificate after the handshake: the client may see a
        # refused handshake, a reset, or a connection closed before the Welcome.
        link = await RawLink.open(coordinator, None, ssl=ctx)
        await link.hello("victim")
    if link is not None:
        await link.close()
    assert "victim" not in coordinator.connected()


async def test_hello_for_another_machine_is_refused(
    coordinator: CoordinatorProc, tmp_path: Path
) -> None:
    identity = await enrolled_identity(coordinator, tmp_path, "honest")
    await enrolled_identity(coordinator, tmp_path, "other")
    link = await RawLink.open(coordinator, identity)
    try:
        reply = await link.hello("other")
        assert isinstance(reply, m.Error) and reply.code == "identity_mismatch"
        assert "honest" in reply.message and "other" in reply.message
        assert await link.closed() == 4003
    finally:
        await link.close()
    assert coordinator.connected() == set()
    assert (
        'moorage_hub_sessions_refused_total{reason="identity_mismatch"} 1.0'
        in coordinator.metrics()
    )


async def test_wrong_protocol_version_is_refused(
    coordinator: CoordinatorProc, tmp_path: Path
) -> None:
    identity = await enrolled_identity(coordinator, tmp_path, "old-agent")
    link = await RawLink.open(coordinator, identity)
    try:
        reply = await link.hello("old-agent", proto=99)
        assert isinstance(reply, m.Error) and reply.code == "proto_mismatch"
    finally:
        await link.close()


def test_revoked_machine_is_cut_off_and_refused(
    coordinator: CoordinatorProc, agents: list[AgentProc], tmp_path: Path
) -> None:
    agent = enrol_and_start(coordinator, tmp_path, agents, "doomed")
    keeper = enrol_and_start(coordinator, tmp_path, agents, "keeper")
    wait_for(lambda: coordinator.connected() == {"doomed", "keeper"}, what="both connected")

    out = moorctl(coordinator, "machine", "revoke", "doomed")
    assert out.returncode == 0, out.stderr
    wait_for(lambda: coordinator.connected() == {"keeper"}, what="revoked session closed")
    assert agent.proc is not None
    wait_for(lambda: "refused this agent" in agent.proc.log(), what="agent sees the refusal")
    assert 'moorage_hub_sessions_refused_total{reason="revoked"}' in coordinator.metrics()
    assert agent.proc.alive()  # a refused agent backs off; it never crash-loops
    assert "keeper" in coordinator.connected()

    missing = moorctl(coordinator, "machine", "revoke", "nobody")
    assert missing.returncode == 1 and "does not exist" in missing.stderr
    listed = json.loads(coordinator.raw("GET", "/fleet/v1/machines")[1])["machines"]
    assert [m["id"] for m in listed] == ["keeper"]
    assert keeper.proc is not None and keeper.proc.alive()


async def test_revoked_certificate_is_refused_at_upgrade(
    coordinator: CoordinatorProc, tmp_path: Path
) -> None:
    identity = await enrolled_identity(coordinator, tmp_path, "cut")
    link = await RawLink.open(coordinator, identity)
    assert isinstance(await link.hello("cut"), m.Welcome)
    coordinator.api("POST", "/moorage/v1/machines/cut/revoke")
    assert await link.closed() == 4001
    await link.close()
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await RawLink.open(coordinator, identity)
    assert err.value.status == 403


def test_api_requires_credentials(coordinator: CoordinatorProc, tmp_path: Path) -> None:
    status, body = coordinator.raw("GET", "/fleet/v1/machines", cert=False)
    assert status == 401
    assert json.loads(body)["error"]["code"] == 401
    assert coordinator.raw("GET", "/healthz", cert=False)[0] == 200
    assert coordinator.raw("GET", "/metrics", cert=False)[0] == 401
    bad = {"Authorization": "Bearer mat.0123456789abcdef.00"}
    assert coordinator.raw("GET", "/fleet/v1/machines", cert=False, headers=bad)[0] == 401
    assert (
        coordinator.raw(
            "GET", "/fleet/v1/machines", cert=False, headers={"Authorization": "Basic x"}
        )[0]
        == 401
    )

    created = coordinator.api("POST", "/moorage/v1/api-tokens", {"name": "ci"})
    good = {"Authorization": f"Bearer {created['token']}"}
    assert coordinator.raw("GET", "/fleet/v1/machines", cert=False, headers=good)[0] == 200
    assert (
        coordinator.raw(
            "GET", "/fleet/v1/machines", cert=False, headers={"api-key": created["token"]}
        )[0]
        == 200
    )
    coordinator.api("DELETE", f"/moorage/v1/api-tokens/{created['id']}")
    assert coordinator.raw("GET", "/fleet/v1/machines", cert=False, headers=good)[0] == 401


async def test_agent_certificate_cannot_use_the_api(
    coordinator: CoordinatorProc, tmp_path: Path
) -> None:
    identity = await enrolled_identity(coordinator, tmp_path, "sneaky")
    async with (
        aiohttp.ClientSession() as http,
        http.get(coordinator.endpoint + "/fleet/v1/machines", ssl=identity.ssl_context()) as resp,
    ):
        assert resp.status == 403
        assert "may not use the API" in (await resp.json())["error"]["message"]
