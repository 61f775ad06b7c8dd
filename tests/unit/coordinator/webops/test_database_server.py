"""Where WebOps databases are made (#21): a configured server, or PostgreSQL run as a
Moorage unit, found where that unit is reported active (pure `server_address`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.config import ConfigError, PostgresServer, load_config
from coordinator.errors import Unavailable
from coordinator.models import Machine, UnitState
from coordinator.webops.databases import server_address

UNIT = "webops-postgresql.service"


def state(machine: str, active: str) -> UnitState:
    return UnitState(name=UNIT, machine_id=machine, active_state=active)


def machines(**ips: str) -> dict[str, Machine | None]:
    return {mid: Machine(id=mid, primary_ip=ip) for mid, ip in ips.items()}


def test_a_configured_server_is_its_host() -> None:
    assert server_address(PostgresServer(host="10.0.0.5"), [], {}) == "10.0.0.5"


def test_a_server_run_as_a_unit_is_where_the_unit_is_active() -> None:
    server = PostgresServer(unit=UNIT, host="ignored")
    found = server_address(
        server,
        [state("m1", "inactive"), state("m2", "active")],
        machines(m1="10.0.0.1", m2="10.0.0.2"),
    )
    assert found == "10.0.0.2"


def test_why_a_unit_server_cannot_be_reached_is_said() -> None:
    server = PostgresServer(unit=UNIT)
    with pytest.raises(Unavailable, match=f"{UNIT} is not running on any machine.*MachineID="):
        server_address(server, [], {})
    with pytest.raises(Unavailable, match=rf"{UNIT} is not running \(m1 failed, m2 activating\)"):
        server_address(server, [state("m2", "activating"), state("m1", "failed")], machines())
    with pytest.raises(Unavailable, match=r"runs on 2 machines \(m1, m2\): pin it"):
        server_address(server, [state("m1", "active"), state("m2", "active")], machines())
    with pytest.raises(Unavailable, match=r"machine m1, where .* runs, has reported no address"):
        server_address(server, [state("m1", "active")], machines(m1=""))
    with pytest.raises(Unavailable, match="machine m1"):
        server_address(server, [state("m1", "active")], {"m1": None})


def test_the_unit_name_is_checked_when_the_config_is_read(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text(f'[postgres]\nunit = "{UNIT}"\n')
    config = load_config(good)
    assert config.postgres is not None and config.postgres.unit == UNIT
    bad = tmp_path / "bad.toml"
    bad.write_text('[postgres]\nunit = "../postgresql"\n')
    with pytest.raises(ConfigError, match=r"postgres\.unit: "):
        load_config(bad)
