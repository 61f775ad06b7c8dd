"""`moorctl --help` lists the exit codes scripts rely on."""

from __future__ import annotations

from click.testing import CliRunner

from moorctl.cli import EXIT_API, EXIT_TIMEOUT, EXIT_UNREACHABLE, cli


def test_help_lists_every_exit_code() -> None:
    out = CliRunner().invoke(cli, ["--help"]).output
    codes = out[out.index("Exit codes:") :].splitlines()[1:]
    listed = {line.split()[0] for line in codes if line.strip() and line.split()[0].isdigit()}
    assert listed == {"0", str(EXIT_API), "2", str(EXIT_UNREACHABLE), str(EXIT_TIMEOUT)}
    assert "no machine can take it" in " ".join(out.split())


def test_the_cli_imports_no_network_or_rendering_library_until_a_command_needs_it() -> None:
    """`moorctl --version` and `--help` start fast: aiohttp, rich, cryptography, uvloop and asyncio
    load only for commands that make requests or draw."""
    import subprocess
    import sys

    heavy = ("aiohttp", "rich", "cryptography", "uvloop", "asyncio")
    code = f"import sys, moorctl.cli; print(','.join(m for m in {heavy!r} if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == ""
