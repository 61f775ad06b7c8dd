"""schemathesis over the whole OpenAPI document against a real coordinator, bounded so
it fits CI (docs/security.md has the longer run for release checks)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.procs import ROOT, CoordinatorProc

pytestmark = pytest.mark.integration

CHECKS = ",".join(
    (
        "not_a_server_error",  # ST101
        "status_code_conformance",  # ST103
        "positive_data_acceptance",  # ST202
        "unsupported_method",  # ST204
        "allow_header_conformance",
    )
)
MAX_TIME_S = int(os.environ.get("MOORAGE_SCHEMATHESIS_SECONDS", "60"))


def test_schemathesis_finds_nothing(coordinator: CoordinatorProc, tmp_path: Path) -> None:
    st = shutil.which("st", path=str(Path(sys.executable).parent))
    if st is None:
        pytest.skip("schemathesis is not installed (pip install -e '.[test]')")
    p = coordinator.paths
    # The admin certificate, not a token: the stateful phase deletes API tokens it finds.
    result = subprocess.run(
        [
            st,
            "--config-file",
            str(ROOT / "tests" / "schemathesis.toml"),
            "run",
            f"{coordinator.endpoint}/openapi.json",
            "--tls-verify",
            p.ca_cert,
            "--request-cert",
            p.admin_cert,
            "--request-cert-key",
            p.admin_key,
            "--generation-with-security-parameters",
            "false",
            "--checks",
            CHECKS,
            "--max-examples",
            "10",
            "--max-time",
            str(MAX_TIME_S),
            "--seed",
            "14",
            "--workers",
            "1",
            "--generation-database",
            "none",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=MAX_TIME_S + 120,
        cwd=tmp_path,
    )
    report = result.stdout + result.stderr
    assert result.returncode == 0, report[-20000:]
    assert "Tested: " in report
