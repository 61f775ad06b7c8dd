"""moorctl's pure parts: global options anywhere, journal targets in CLI words, what
`app show` prints, and the health of a cluster in /api/v2."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from coordinator.api.fleet_manager import cluster_health
from moorctl.cli import (
    cli,
    describe_application,
    hoist_global_options,
    journal_target_problem,
    local_units,
)
from moorctl.client import ApiClientError


@pytest.mark.parametrize(
    ("argv", "hoisted"),
    [
        (["list-units", "--json"], ["--json", "list-units"]),
        (["--json", "list-units"], ["--json", "list-units"]),
        (
            ["app", "show", "web", "--full", "--endpoint", "https://h:1", "--json"],
            ["--full", "--endpoint", "https://h:1", "--json", "app", "show", "web"],
        ),
        (
            ["journal", "--token=abc", "-n", "5", "x.service"],
            ["--token=abc", "journal", "-n", "5", "x.service"],
        ),
        (["journal", "--", "--json"], ["journal", "--", "--json"]),
        (
            ["token", "create", "--description", "--json"],
            ["--json", "token", "create", "--description"],
        ),
        ([], []),
    ],
)
def test_global_options_are_hoisted_from_anywhere(argv: list[str], hoisted: list[str]) -> None:
    assert hoist_global_options(argv) == hoisted


def test_hoisted_json_reaches_the_group() -> None:
    """Through click for real: `list-units --json` is an error without the hoist."""
    runner = CliRunner()
    plain = runner.invoke(cli, ["list-units", "--json"])
    assert plain.exit_code == 2 and "No such option '--json'" in plain.output
    hoisted = runner.invoke(
        cli, hoist_global_options(["list-units", "--json", "--state-dir", "/nonexistent"])
    )
    assert hoisted.exit_code == 3 and "no 'moorage dev' state in /nonexistent" in hoisted.output


def test_journal_target_problem_in_cli_words() -> None:
    assert journal_target_problem("a.service", ["m1"], False) == ""
    none = journal_target_problem("hello.service", [], False)
    assert none.startswith("hello.service is not scheduled on any machine")
    assert "machine=" not in none
    many = journal_target_problem("g.service", ["0123456789ab", "m2"], False)
    assert many == "g.service runs on 2 machines (01234567, m2): choose one with --machine ID"


def test_local_units_parse_files_once_and_leave_the_rest_to_the_cluster(tmp_path: Path) -> None:
    (tmp_path / "a.service").write_text("[Service]\nExecStart=/bin/true\n")
    (tmp_path / "t@.service").write_text("[Service]\nExecStart=/bin/echo %i\n")
    files = [str(tmp_path / n) for n in ("a.service", "t@1.service", "a.service", "gone.service")]
    found, remote = local_units(files)
    assert [n for n, _ in found] == ["a.service", "t@1.service"]
    assert found[1][1][0].value == "/bin/echo %i"
    assert remote == [("gone.service", tmp_path)]
    with pytest.raises(ApiClientError, match="bad name"):
        local_units(["bad name.service"])


def test_describe_application_shows_the_envelope_metadata() -> None:
    app = {
        "name": "web",
        "version": "2",
        "versions": ["1", "2"],
        "type": "Application",
        "form": "envelope",
        "units": ["nginx.container"],
        "description": "",
        "metadata": {
            "name": "web",
            "description": "the web tier",
            "clusterGroups": ["edge-eu"],
            "labels": [{"key": "demo", "value": ""}, {"key": "tier", "value": "front"}],
            "annotations": {"a/b": "c"},
            "lifecycle": "production",
        },
    }
    text = "\n".join(describe_application(app))
    for needle in (
        "Application web (Application, envelope manifest)",
        "version:        2 (versions: 1, 2)",
        "units:          nginx.container",
        "description:    the web tier",
        "cluster groups: edge-eu",
        "labels:         demo, tier=front",
        "annotation:     a/b: c",
        "lifecycle:      production",
    ):
        assert needle in text


@pytest.mark.parametrize(
    ("state", "connected", "drift", "caps", "health"),
    [
        ("connected", True, 0, ["systemd"], "healthy"),
        ("connected", True, 0, ["docker"], "healthy"),
        ("connected", True, 2, ["systemd", "docker"], "drifted"),
        ("connected", True, 0, [], "unhealthy"),
        ("connected", True, 3, [], "unhealthy"),
        ("disconnected", False, 0, ["systemd"], "unreachable"),
        ("lost", False, 0, ["systemd"], "offline"),
    ],
)
def test_cluster_health(
    state: str, connected: bool, drift: int, caps: list[str], health: str
) -> None:
    got, reason = cluster_health(state, connected, drift, caps)
    assert got == health
    assert (reason == "") == (health == "healthy")
    if health == "unhealthy":
        assert "can run nothing" in reason
