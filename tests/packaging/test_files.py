"""Static checks of packaging/: shipped configs, units and scripts agree with the code.

Fast and unprivileged; the packages themselves are built and installed in test_deb.py.
"""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import msgspec
import pytest

from agent.config import DEFAULT_STATE_DIR as AGENT_STATE_DIR
from agent.config import AgentConfig
from coordinator.config import DEFAULT_STATE_DIR as COORDINATOR_STATE_DIR
from coordinator.config import CoordinatorConfig

PACKAGING = Path(__file__).resolve().parents[2] / "packaging"
CONFIGS: list[tuple[str, type[msgspec.Struct]]] = [
    ("coordinator/coordinator.toml", CoordinatorConfig),
    ("agent/agent.toml", AgentConfig),
]
# A commented-out setting ("#key = value") or table header ("#[table]"); prose
# comments start with "# ".
_SETTING = re.compile(r"^#(?=[A-Za-z_\[])(.*)$")


def _uncommented(text: str) -> str:
    return "\n".join(m.group(1) for line in text.splitlines() if (m := _SETTING.match(line)))


@pytest.mark.parametrize(("path", "struct"), CONFIGS, ids=[p for p, _ in CONFIGS])
def test_config_file_documents_every_key_with_its_default(
    path: str, struct: type[msgspec.Struct]
) -> None:
    text = (PACKAGING / path).read_text()
    assert tomllib.loads(text) == {}, "as shipped, every setting is commented out"
    documented = tomllib.loads(_uncommented(text))
    # Unknown keys or wrong types would make the daemon refuse the file once uncommented.
    msgspec.convert(documented, struct)
    defaults = msgspec.to_builtins(struct())
    fields = set(struct.__struct_fields__)
    assert set(documented) == fields, (
        f"{path} must show exactly the config keys: missing {sorted(fields - set(documented))}, "
        f"unknown {sorted(set(documented) - fields)}"
    )
    for key, value in documented.items():
        if isinstance(value, dict):
            continue  # a table's lines are an example, not its (empty) default
        default = defaults[key]
        if isinstance(default, float):
            assert value == pytest.approx(default), key
        else:
            assert value == default, key


def _unit(name: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string((PACKAGING / name).read_text())
    return parser


def _commands(pkg: str) -> list[str]:
    return (PACKAGING / pkg / "commands").read_text().split()


def test_units_match_the_code_defaults_and_shipped_commands() -> None:
    coordinator = _unit("coordinator/moorage-coordinator.service")["Service"]
    assert coordinator["User"] == "moorage"
    assert Path("/var/lib", coordinator["StateDirectory"]) == COORDINATOR_STATE_DIR
    for key in ("ExecStartPre", "ExecStart"):
        binary, *args = coordinator[key].split()
        assert Path(binary).name in _commands("coordinator")
        assert args[-2:] == ["--config", "/etc/moorage/coordinator.toml"]
    assert coordinator["CapabilityBoundingSet"] == ""

    agent_unit = _unit("agent/moorage-agent.service")
    agent = agent_unit["Service"]
    assert Path("/var/lib", agent["StateDirectory"].split()[0]) == AGENT_STATE_DIR
    assert agent_unit["Unit"]["ConditionPathExists"] == f"{AGENT_STATE_DIR}/identity.pem"
    binary, *args = agent["ExecStart"].split()
    assert Path(binary).name in _commands("agent")
    assert args == ["--config", "/etc/moorage/agent.toml"]
    # Units the agent runs are systemd's, not its children; only its own cgroup goes.
    assert agent["KillMode"] == "control-group"
    assert "/etc/systemd/system" in agent["ReadWritePaths"].split()


def test_maintainer_scripts_never_stop_a_service_on_upgrade() -> None:
    """Stops only in prerm (on removal) or in postrm's purge branch (the package and
    its state are going for good): never on an upgrade."""
    for pkg in ("agent", "coordinator"):
        for script in ("preinst", "prerm", "postinst", "postrm"):
            path = PACKAGING / pkg / script
            if not path.exists():
                continue
            branch = ""
            for line in path.read_text().splitlines():
                case = re.match(r"\s*([a-z|-]+)\)\s*$", line)
                if case:
                    branch = case.group(1)
                elif line.strip() == ";;":
                    branch = ""
                if re.search(r"deb-systemd-invoke\s+(stop|\$)", line):
                    purging = script == "postrm" and branch == "purge"
                    assert script == "prerm" or purging, f"{path}: {line.strip()}"
            if script == "prerm":
                text = path.read_text()
                assert '[ "$1" = remove ]' in text, "prerm stops only on removal"


def _shell_scripts() -> list[Path]:
    scripts = [PACKAGING / "build.sh", PACKAGING / "lock.sh"]
    for pkg in ("agent", "coordinator"):
        scripts += [PACKAGING / pkg / s for s in ("postinst", "prerm", "postrm")]
    return scripts


def test_shell_scripts_pass_shellcheck() -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed (apt-get install shellcheck)")
    result: Any = subprocess.run(
        ["shellcheck", "--severity=style", *map(str, _shell_scripts())],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_shell_scripts_are_strict() -> None:
    for script in _shell_scripts():
        lines = script.read_text().splitlines()
        strict = "set -euo pipefail" if lines[0].endswith("bash") else "set -e"
        assert strict in lines, f"{script} lacks {strict!r}"


# Import names of the distributions the agent may depend on (module -> distribution).
_AGENT_DISTRIBUTIONS = {
    "wsproto": "wsproto",
    "msgspec": "msgspec",
    "cryptography": "cryptography",
    "psutil": "psutil",
    "dbus_fast": "dbus-fast",
    "docker": "docker",
    "requests": "docker",  # the Docker SDK's own transport
    "prometheus_client": "prometheus-client",
}


def test_agent_distribution_declares_what_agent_and_proto_import() -> None:
    """The agent's .deb is built from packaging/agent/pyproject.toml: every third-party
    module agent/ and proto/ import must come from a distribution it declares (uvloop is
    optional, imported only where installed)."""
    import ast
    import sys

    root = PACKAGING.parent
    project = tomllib.loads((PACKAGING / "agent" / "pyproject.toml").read_text())["project"]
    declared = {re.split(r"[<>=!~; ]", d, maxsplit=1)[0] for d in project["dependencies"]}
    imported: set[str] = set()
    for package in ("agent", "proto"):
        for path in (root / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    imported |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"agent", "proto", "uvloop"}
    assert "coordinator" not in third_party, "the agent imports only proto"
    unknown = third_party - set(_AGENT_DISTRIBUTIONS)
    assert not unknown, f"agent/proto import modules of unknown distributions: {unknown}"
    missing = {_AGENT_DISTRIBUTIONS[m] for m in third_party} - declared
    assert not missing, f"packaging/agent/pyproject.toml lacks {missing}"
