"""`moorage-agent identity`: what scripts and `moorage dev` read instead of importing
the agent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.cli import main


def test_identity_of_an_unenrolled_machine(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["--state-dir", str(tmp_path), "--machine-id", "m-one", "identity"])
    out = json.loads(capsys.readouterr().out)
    assert out == {
        "machine_id": "m-one",
        "enrolled": False,
        "hub_url": "",
        "state_dir": str(tmp_path),
    }


def test_identity_of_an_enrolled_machine(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("identity.pem", "ca.pem"):
        (tmp_path / name).write_text("x")
    (tmp_path / "link.json").write_text(
        json.dumps(
            {
                "machine_id": "m-two",
                "hub_url": "wss://h:7443/agent/v1",
                "coordinator_url": "https://h:7440",
            }
        )
    )
    main(["--state-dir", str(tmp_path), "identity"])
    out = json.loads(capsys.readouterr().out)
    assert out["enrolled"] is True and out["machine_id"] == "m-two"
    assert out["hub_url"] == "wss://h:7443/agent/v1"
