"""The CLI error path every tool shares: exit code, message and fix, never wrapped mid-path."""

import pytest
import typer
from mft_core.errors import InputError
from mft_core.ui import cli_errors
from typer.testing import CliRunner

pytestmark = pytest.mark.fast  # unit/contract tier: `make test-fast`


def test_errors_exit_with_their_code_and_are_never_wrapped():
    path = "/a/very/long/folder/name/that/goes/on/and/on/" * 4 + "samples.jsonl"

    @cli_errors
    def command():
        raise InputError(f"{path}: no such file", fix="pass a samples .jsonl (task_id + completion per line)")

    app = typer.Typer()
    app.command()(command)
    result = CliRunner().invoke(app, [])
    assert result.exit_code == 3
    assert f"error: {path}: no such file\n" in result.output
    assert "fix: pass a samples .jsonl (task_id + completion per line)\n" in result.output
