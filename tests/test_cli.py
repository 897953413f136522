"""The `wan` entry point: help, version, `wan inspect`, and the error contract (message + hint, exit code, no
traceback unless WAN_DEBUG=1, stdout for results only)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from builders import random_dit, tiny_dit_config, write_comfy_dit
from typer.testing import CliRunner

from wan_cli import __version__
from wan_cli.cli.app import app
from wan_cli.cli.docgen import render

runner = CliRunner()


def test_help_lists_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "inspect" in result.stdout and "Examples" in result.stdout


def test_no_arguments_shows_help_as_usage_error() -> None:
    result = runner.invoke(app, [])
    assert result.exit_code == 2 and "Usage" in result.output


def test_version_on_stdout() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == f"wan {__version__}"


def test_installed_entry_point() -> None:
    exe = shutil.which("wan") or str(Path(sys.executable).parent / "wan")
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True)
    assert "Usage: wan" in out.stdout
    out = subprocess.run([sys.executable, "-m", "wan_cli", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"wan {__version__}"


@pytest.fixture
def comfy_file(tmp: Path) -> Path:
    return write_comfy_dit(random_dit(tiny_dit_config("i2v")), tmp / "wan_i2v_fp8_scaled.safetensors", "fp8_scaled")


def test_inspect_summary(comfy_file: Path) -> None:
    result = runner.invoke(app, ["inspect", str(comfy_file)])
    assert result.exit_code == 0, result.output
    assert f"{comfy_file}: dit (comfyui)" in result.stdout
    assert "scaled_fp8" in result.stdout and result.stderr == ""


def test_inspect_json(comfy_file: Path) -> None:
    result = runner.invoke(app, ["inspect", str(comfy_file), "--json"])
    assert result.exit_code == 0
    record = json.loads(result.stdout)
    assert record["kind"] == "dit" and record["layout"] == "comfyui"
    assert record["config"]["model_type"] == "i2v" and record["quantization"] == "scaled_fp8"


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "does not exist"), (b"garbage", "not a readable safetensors file")],
)
def test_inspect_errors_are_clean(tmp: Path, content: bytes | None, message: str) -> None:
    path = tmp / "model.safetensors"
    if content is not None:
        path.write_bytes(content)
    result = runner.invoke(app, ["inspect", str(path)])
    assert result.exit_code == 1
    assert result.stdout == ""  # nothing but results on stdout
    assert "Error:" in result.stderr and message in result.stderr and "hint:" in result.stderr
    assert "Traceback" not in result.output


def test_wan_debug_shows_the_traceback(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WAN_DEBUG", "1")
    result = runner.invoke(app, ["inspect", str(tmp / "missing.safetensors")])
    assert result.exit_code == 1 and result.exception is not None  # re-raised, so a traceback is printed


def test_usage_errors_exit_2() -> None:
    assert runner.invoke(app, ["inspect"]).exit_code == 2
    assert runner.invoke(app, ["no-such-command"]).exit_code == 2
    assert runner.invoke(app, ["inspect", "x", "--no-such-flag"]).exit_code == 2


def test_cli_reference_is_current() -> None:
    """docs/cli.md is generated from --help (`make docs`); a stale copy fails here and in `make lint`."""
    doc = Path(__file__).parents[1] / "docs" / "cli.md"
    assert doc.read_text() == render()


def test_help_does_not_import_torch() -> None:
    """`wan --help` and usage errors stay instant: the engine (torch, transformers) is imported lazily."""
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from wan_cli.cli.app import app\n"
        "assert CliRunner().invoke(app, ['--help']).exit_code == 0\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
