"""`moorage-agent identity`: what scripts and `moorage dev` read instead of importing
the agent."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from agent.cli import configure, main, parser, status_lines
from agent.config import AgentConfig
from agent.identity import Identity, LinkStatus
from agent.statelock import lock_holder, lock_state_dir


def test_identity_of_an_unenrolled_machine(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["--state-dir", str(tmp_path), "--machine-id", "m-one", "identity"])
    out = json.loads(capsys.readouterr().out)
    assert out == {
        "machine_id": "m-one",
        "enrolled": False,
        "hub_url": "",
        "hub_urls": [],
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
    # a link.json from before the list of hubs: its one hub is the list
    assert out["hub_urls"] == ["wss://h:7443/agent/v1"]


A = "wss://a:7443/agent/v1"
B = "wss://b:7443/agent/v1"


def _enrolled(state: Path, hub_urls: list[str]) -> None:
    for name in ("identity.pem", "ca.pem"):
        (state / name).write_text("x")
    link = {"machine_id": "m3", "hub_url": hub_urls[0], "hub_urls": hub_urls}
    (state / "link.json").write_text(json.dumps(link))


def test_status_of_a_stopped_agent_lists_the_hubs_none_connected(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _enrolled(tmp_path, [A, B])
    # a stale status from an agent that is gone is not believed
    Identity(tmp_path).save_status(LinkStatus([A, B], connected=B, since=1.0))
    main(["--state-dir", str(tmp_path), "status"])
    assert capsys.readouterr().out.splitlines() == [
        "machine m3: agent not running",
        "hubs:",
        f"    {A}",
        f"    {B}",
    ]
    # hubs on the command line replace the enrolment's (as the agent would use them)
    main(["--state-dir", str(tmp_path), "--hub-url", B, "--hub-url", A, "status"])
    assert capsys.readouterr().out.splitlines()[2:] == [f"    {B}", f"    {A}"]


def test_status_of_a_running_agent_marks_the_connected_hub(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _enrolled(tmp_path, [A, B])
    Identity(tmp_path).save_status(LinkStatus([A, B], connected=B, since=time.time() - 5))
    fd = lock_state_dir(tmp_path)  # this process plays the running agent
    try:
        assert lock_holder(tmp_path) == os.getpid()
        main(["--state-dir", str(tmp_path), "status"])
    finally:
        os.close(fd)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"machine m3: agent running (pid {os.getpid()}), connected for")
    assert lines[1:] == ["hubs:", f"    {A}", f"  * {B}"]
    assert lock_holder(tmp_path) is None


def test_status_lines_between_sessions() -> None:
    lines = status_lines("m", 7, LinkStatus([A], since=100.0), now=130.0)
    assert lines == ["machine m: agent running (pid 7), disconnected for 30 s", "hubs:", f"    {A}"]
    assert status_lines("m", 7, LinkStatus([A]), now=1.0)[0].endswith("not connected yet")


def test_hub_urls_from_the_command_line_and_the_file(tmp_path: Path) -> None:
    toml = tmp_path / "agent.toml"
    toml.write_text(f'hub_url = "{A}"\nhub_urls = ["{B}", "{A}"]\n')
    config = configure(parser().parse_args(["--config", str(toml)]))
    assert config.configured_hub_urls() == [A, B], "hub_url first, no repeats"
    config = configure(parser().parse_args(["--config", str(toml), "--hub-url", B]))
    assert config.configured_hub_urls() == [B], "the command line's list replaces the file's"
    assert AgentConfig().configured_hub_urls() == [], "none: the enrolment's"
