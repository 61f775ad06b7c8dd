"""The architecture's import rules (#16), checked over the repository and on small trees.

tools/import_rules.py is the repository's copy of ../shared/tools/import-rules.py;
`./run test` runs it too. Imports that still break a rule until #16 lands are listed
as "pending" in tools/import-rules.json: the list may only shrink.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tools.import_rules import Rules, check, under

ROOT = Path(__file__).resolve().parents[3]
RULES_FILE = ROOT / "tools" / "import-rules.json"
SHARED = ROOT.parent / "shared"


def repo_rules() -> Rules:
    return Rules.from_json(json.loads(RULES_FILE.read_text()))


def test_the_repository_keeps_its_import_rules() -> None:
    report = check(ROOT, repo_rules())
    assert not report.broken, "imports break the rules:\n" + "\n".join(map(str, report.broken))
    assert not report.stale, f"pending entries no longer needed, remove them: {report.stale}"
    assert report.files > 50, "the walk found the code"


def test_only_coordinator_imports_are_pending_and_each_names_its_issue() -> None:
    """The agent, the contract and the client keep every rule today, with no allowance."""
    for src, dst, note in repo_rules().pending:
        assert not any(under(src, p) for p in ("agent", "proto", "moorctl")), (src, dst)
        assert under(src, "coordinator.api"), (src, dst)
        assert note.startswith("#16"), note


def test_only_the_store_imports_sqlite() -> None:
    (entry,) = [o for o in repo_rules().only if o[0] == "sqlite3"]
    assert set(entry[1]) == {"coordinator.store"}


@pytest.mark.skipif(not (SHARED / "import-rules.json").exists(), reason="no ../shared beside")
def test_the_repository_copy_has_every_shared_rule() -> None:
    shared = Rules.from_json(json.loads((SHARED / "import-rules.json").read_text()))
    ours = repo_rules()
    assert set(shared.never) <= set(ours.never)
    assert ours.allowed <= shared.allowed, "no exceptions beyond the shared ones"


@pytest.mark.skipif(not (SHARED / "tools" / "import-rules.py").exists(), reason="no ../shared")
def test_the_repository_checker_finds_what_the_shared_one_finds() -> None:
    rules_json = SHARED / "import-rules.json"
    out = subprocess.run(
        [sys.executable, str(SHARED / "tools" / "import-rules.py"), str(rules_json)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    theirs = {line for line in out.splitlines() if " -> " in line}
    report = check(ROOT, Rules.from_json(json.loads(rules_json.read_text())))
    assert {str(b) for b in report.broken} == theirs


def write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


RULES = Rules.from_json(
    {
        "never": [
            ["agent", "coordinator", "alone"],
            ["coordinator.api", "coordinator.hub", "services"],
        ],
        "only": [["sqlite3", ["coordinator.store"], "store"]],
    }
)


def test_a_broken_rule_is_found_with_its_file_and_line(tmp_path: Path) -> None:
    write(tmp_path, "agent/__init__.py", "")
    write(tmp_path, "agent/link.py", "import os\nfrom coordinator import pki\n")
    write(tmp_path, "coordinator/api/native.py", "from ..hub import Hub\n")
    write(tmp_path, "coordinator/units.py", "import sqlite3\n")
    write(tmp_path, "coordinator/store/sqlite/units.py", "import sqlite3\n")
    write(tmp_path, "coordinator/hub.py", "from coordinator.store import x\n")
    write(tmp_path, "tests/test_x.py", "import agent\nimport coordinator.hub\nimport sqlite3\n")
    report = check(tmp_path, RULES)
    found = {(b.path, b.line, b.target) for b in report.broken}
    assert found == {
        ("agent/link.py", 2, "coordinator"),
        ("agent/link.py", 2, "coordinator.pki"),
        ("coordinator/api/native.py", 1, "coordinator.hub"),
        ("coordinator/api/native.py", 1, "coordinator.hub.Hub"),
        ("coordinator/units.py", 1, "sqlite3"),
    }
    assert not report.ok


def test_pending_imports_pass_but_a_stale_entry_fails(tmp_path: Path) -> None:
    write(tmp_path, "coordinator/api/native.py", "from coordinator.hub import Hub\n")
    pending = Rules(
        RULES.never,
        RULES.allowed,
        RULES.only,
        [("coordinator.api.native", "coordinator.hub", "#16")],
    )
    report = check(tmp_path, pending)
    assert report.ok and not report.broken and len(report.pending) == 2
    (tmp_path / "coordinator/api/native.py").write_text("from coordinator.services import x\n")
    report = check(tmp_path, pending)
    assert not report.ok and report.stale == [("coordinator.api.native", "coordinator.hub", "#16")]


def test_the_command_exits_1_on_a_broken_rule_and_0_once_fixed(tmp_path: Path) -> None:
    write(tmp_path, "rules.json", json.dumps({"never": [["agent", "coordinator", "alone"]]}))
    write(tmp_path, "agent/link.py", "import coordinator.pki\n")
    argv = [sys.executable, str(ROOT / "tools" / "import_rules.py"), "rules.json"]
    run = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    assert (
        "agent/link.py:1 agent.link -> coordinator.pki  (never agent -> coordinator" in run.stdout
    )
    (tmp_path / "agent/link.py").write_text("import proto\n")
    run = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0
    assert run.stdout.startswith("all 1 import rules hold over 1 files"), run.stdout
