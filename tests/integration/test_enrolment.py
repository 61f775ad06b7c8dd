"""Real coordinator and agent processes: enrolment, listing, tokens, renewal."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from tests.harness.databases import dump_database
from tests.procs import AgentProc, CoordinatorProc, wait_for

pytestmark = pytest.mark.integration


def moorctl(coordinator: CoordinatorProc, *args: str) -> subprocess.CompletedProcess[str]:
    return coordinator.moorctl(*args, timeout=60)


def enrol_and_start(
    coordinator: CoordinatorProc,
    tmp_path: Path,
    agents: list[AgentProc],
    machine_id: str,
    **kw: object,
) -> AgentProc:
    agent = AgentProc(tmp_path, machine_id, coordinator, **kw)  # type: ignore[arg-type]
    agents.append(agent)
    result = agent.enroll(coordinator.join_token())
    assert result.returncode == 0, result.stderr
    return agent.start()


def test_three_agents_enrol_and_are_listed(
    coordinator: CoordinatorProc, agents: list[AgentProc], tmp_path: Path
) -> None:
    ids = ["0a1b2c3d4e5f60718293a4b5c6d7e8f9", "machine-two", "machine-three"]
    for mid in ids:
        enrol_and_start(coordinator, tmp_path, agents, mid, extra=["--metadata", f"role={mid[:4]}"])
    wait_for(lambda: coordinator.connected() == set(ids), what="three connected agents")

    status, raw = coordinator.raw("GET", "/fleet/v1/machines?alt=json")
    assert status == 200
    listed = json.loads(raw)["machines"]
    assert sorted(m["id"] for m in listed) == sorted(ids)
    for machine in listed:
        assert set(machine) == {"id", "primaryIP", "metadata"}
        assert machine["primaryIP"] == "127.0.0.1"
        assert machine["metadata"] == {"role": machine["id"][:4]}
    assert "nextPageToken" not in json.loads(raw)

    table = moorctl(coordinator, "list-machines")
    assert table.returncode == 0, table.stderr
    assert "MACHINE" in table.stdout and "STATE" in table.stdout
    assert "0a1b2c3d " in table.stdout  # fleetctl-style short id
    assert table.stdout.count("connected") == 3

    as_json = moorctl(coordinator, "--json", "list-machines")
    assert as_json.returncode == 0, as_json.stderr
    rows = json.loads(as_json.stdout)
    assert sorted(r["id"] for r in rows) == sorted(ids)
    assert {r["state"] for r in rows} == {"connected"}


def test_reused_and_expired_join_tokens_are_refused(
    coordinator: CoordinatorProc, tmp_path: Path
) -> None:
    token = coordinator.join_token()
    first = AgentProc(tmp_path, "first", coordinator)
    assert first.enroll(token).returncode == 0
    second = AgentProc(tmp_path, "second", coordinator).enroll(token)
    assert second.returncode != 0
    assert "already used" in second.stderr

    short = coordinator.join_token(ttl_s=1)
    time.sleep(1.2)
    late = AgentProc(tmp_path, "late", coordinator).enroll(short)
    assert late.returncode != 0
    assert "expired" in late.stderr

    forged = token.rsplit(".", 3)
    forged[2] = "0" * len(forged[2])
    bad = AgentProc(tmp_path, "forged", coordinator).enroll(".".join(forged))
    assert bad.returncode != 0 and "join token" in bad.stderr
    assert not (tmp_path / "agent-second" / "identity.pem").exists()
    assert {m["id"] for m in coordinator.machines()} == {"first"}
    assert 'moorage_enrolments_total{result="refused"} 3.0' in coordinator.metrics()


def test_wrong_ca_pin_is_refused_before_the_token_is_sent(
    coordinator: CoordinatorProc, tmp_path: Path
) -> None:
    token = coordinator.join_token().split(".")
    token[3] = "f" * 32
    result = AgentProc(tmp_path, "pinned", coordinator).enroll(".".join(token))
    assert result.returncode != 0
    assert "does not match the join token" in result.stderr
    # the token was never presented, so it still works
    token[3] = coordinator.join_token().split(".")[3]
    assert AgentProc(tmp_path, "pinned2", coordinator).enroll(".".join(token)).returncode == 0


def test_join_token_is_stored_hashed(coordinator: CoordinatorProc) -> None:
    token = coordinator.join_token()
    secret = token.split(".")[2]
    dump = dump_database(coordinator.database_url or str(coordinator.state_dir / "moorage.db"))
    assert token.split(".")[1] in dump
    assert secret not in dump


def test_token_create_cli(coordinator: CoordinatorProc, tmp_path: Path) -> None:
    out = moorctl(coordinator, "token", "create", "--ttl", "30m")
    assert out.returncode == 0, out.stderr
    token = out.stdout.strip()
    assert token.startswith("mjt.")
    assert "moorage-agent enroll" in out.stderr
    assert AgentProc(tmp_path, "via-cli", coordinator).enroll(token).returncode == 0
    bad = moorctl(coordinator, "token", "create", "--ttl", "soon")
    assert bad.returncode == 2 and "duration" in bad.stderr


def test_agent_renews_its_certificate_over_the_link(
    tmp_path: Path, agents: list[AgentProc]
) -> None:
    coordinator = CoordinatorProc(tmp_path / "coordinator", **{"agent-cert-ttl": 45}).start()
    try:
        agent = enrol_and_start(coordinator, tmp_path, agents, "renewer")
        first = agent.cert_serial()
        wait_for(lambda: agent.cert_serial() != first, timeout=30, what="renewed certificate")
        renewed = agent.cert_serial()
        record = next(m for m in coordinator.machines() if m["id"] == "renewer")
        assert record["cert_serial"] == renewed
        agent.stop()
        wait_for(lambda: "renewer" not in coordinator.connected(), what="agent gone")
        agent.start()
        wait_for(
            lambda: "renewer" in coordinator.connected(), what="reconnect with renewed certificate"
        )
    finally:
        coordinator.stop()
