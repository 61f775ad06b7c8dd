"""`moorctl user`: passwords come from stdin or a hidden prompt, never from argv."""

from __future__ import annotations

import io

import click
import pytest
from click.testing import CliRunner

from moorctl.cli import cli, read_password


@pytest.mark.parametrize("command", ["create", "passwd"])
def test_no_password_option_on_the_command_line(command: str) -> None:
    out = CliRunner().invoke(cli, ["user", command, "--help"]).output
    assert "--password-stdin" in out
    assert "--password " not in out and "--password=" not in out


def test_password_from_stdin_is_the_first_line_without_its_newline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("s3cret pass\nnext line\n"))
    assert read_password(True) == "s3cret pass"
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    with pytest.raises(click.UsageError, match="no password on stdin"):
        read_password(True)


def test_the_prompt_asks_twice() -> None:
    @click.command()
    def probe() -> None:
        click.echo(f"got {read_password(False)!r}")

    out = CliRunner().invoke(probe, input="first pass\nfirst pass\n")
    assert "got 'first pass'" in out.output
    mismatch = CliRunner().invoke(probe, input="one pass\nother pass\n")
    assert "do not match" in mismatch.output and "got" not in mismatch.output
