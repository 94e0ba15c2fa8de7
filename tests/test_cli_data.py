"""The `matmtl data` commands, as a user runs them."""

import json
import subprocess
import sys

from typer.testing import CliRunner

from matmtl.cli import app

runner = CliRunner()


def test_help_lists_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and "data" in result.output


def test_data_list_and_show():
    result = runner.invoke(app, ["data", "list"])
    assert result.exit_code == 0
    for name in ("mp", "mp_gap", "expt_gap", "mp_cgcnn"):
        assert name in result.output
    shown = runner.invoke(app, ["data", "show", "expt_gap", "--json"])
    assert shown.exit_code == 0
    summary = json.loads(shown.output)
    assert summary["rows"] == 4604 and summary["targets"]["gap_expt"]["unit"] == "eV"


def test_unknown_dataset_is_one_clear_line():
    proc = subprocess.run(
        [sys.executable, "-m", "matmtl.cli", "data", "show", "nosuch"], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "error: unknown dataset 'nosuch'" in proc.stderr and "Traceback" not in proc.stderr


def test_extension_module_is_importable():
    import matmtl._core as core

    assert isinstance(core.__version__, str)
