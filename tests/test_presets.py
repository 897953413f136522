"""Presets: the shipped values against the reference (wan21-architecture.md §1.6, as the issue lists them), the
merge order, validation messages, and `wan presets` / `wan env`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from wan_cli.cli.app import app
from wan_cli.engine.errors import InputError
from wan_cli.presets import DEFAULTS, Values, env_values, list_presets, load_preset, resolve

ROOT = Path(__file__).parents[1]
runner = CliRunner()

# (model, task, size, steps, guidance, shift): the values the reference gives for each model
EXPECTED = {
    "t2v-1.3b-480p": ("1.3b-t2v", "t2v", (832, 480), 50, 6.0, 8.0),
    "t2v-14b-480p": ("14b-t2v", "t2v", (832, 480), 50, 5.0, 5.0),
    "t2v-14b-720p": ("14b-t2v", "t2v", (1280, 720), 50, 5.0, 5.0),
    "i2v-14b-480p": ("14b-i2v-480p", "i2v", (832, 480), 40, 5.0, 3.0),
    "i2v-14b-720p": ("14b-i2v-720p", "i2v", (1280, 720), 40, 5.0, 5.0),
    "flf2v-14b-720p": ("14b-flf2v-720p", "flf2v", (1280, 720), 50, 5.0, 16.0),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shipped_presets_carry_the_reference_values(name: str) -> None:
    _, values = load_preset(name)
    model, task, size, steps, guidance, shift = EXPECTED[name]
    got = (values.model, values.task, values.size, values.steps, values.guidance, values.shift)
    assert got == (model, task, size, steps, guidance, shift)
    assert (values.frames, values.fps, values.solver) == (81, 16, "unipc")


def test_every_shipped_file_is_listed() -> None:
    assert sorted(list_presets()) == sorted(p.stem for p in (ROOT / "presets").glob("*.yaml")) == sorted(EXPECTED)


def test_merge_order() -> None:
    preset = Values(steps=40, guidance=5.0, shift=3.0, size=(832, 480))
    env = env_values({"WAN_DEVICE": "cpu", "WAN_MODEL": "14b-t2v"})
    flags = Values(steps=12, model="1.3b-t2v")
    item = Values(steps=7)
    s = resolve(preset, env, flags, item, preset="p")
    assert s.steps == 7 and s.model == "1.3b-t2v" and s.device == "cpu" and s.shift == 3.0
    assert s.fps == DEFAULTS.fps == 16 and s.frames == 81 and s.preset == "p"
    assert resolve(preset, env).model == "14b-t2v"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("steps: 0\n", "bad value for 'steps'"),
        ("size: 830x480\n", "multiples of 16"),
        ("frames: 80\n", "4n+1"),
        ("solver: ddim\n", "'solver'"),
        ("guidance: lots\n", "'guidance'"),
        ("sampler: unipc\n", "unknown key 'sampler'"),
        ("- steps\n", "must be a mapping"),
        ("steps: [\n", "not valid YAML (line 2"),
    ],
)
def test_bad_preset_files_name_the_field_and_file(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    with pytest.raises(InputError) as info:
        load_preset(str(path))
    assert message in info.value.message and str(path) in info.value.message


def test_bad_environment_names_the_variable() -> None:
    with pytest.raises(InputError, match="WAN_DEVICE='tpu'"):
        env_values({"WAN_DEVICE": "tpu"})


def test_user_presets_add_and_shadow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    (home / "presets").mkdir(parents=True)
    (home / "presets" / "fast.yaml").write_text("description: quick look\nsteps: 12\n")
    (home / "presets" / "t2v-1.3b-480p.yaml").write_text("steps: 20\n")
    monkeypatch.setenv("WAN_CLI_HOME", str(home))
    assert "fast" in list_presets()
    assert load_preset("t2v-1.3b-480p")[1].steps == 20
    result = runner.invoke(app, ["presets", "list"])
    assert result.exit_code == 0 and "fast" in result.stdout and "quick look" in result.stdout


def test_presets_show_prints_the_merged_values() -> None:
    result = runner.invoke(app, ["presets", "show", "i2v-14b-720p", "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    raw = yaml.safe_load((ROOT / "presets" / "i2v-14b-720p.yaml").read_text())  # read independently
    for key in ("steps", "guidance", "shift", "frames", "fps", "solver", "model", "task"):
        assert shown["values"][key] == raw[key], key
    assert shown["values"]["size"] == raw["size"] and shown["values"]["device"] == "auto"
    text = runner.invoke(app, ["presets", "show", "t2v-1.3b-480p"]).stdout
    assert "guidance: 6.0" in text and "shift: 8.0" in text and "device: auto  # default" in text


def test_presets_show_unknown_suggests() -> None:
    result = runner.invoke(app, ["presets", "show", "t2v-1.3b-408p"])
    assert result.exit_code == 1 and "did you mean t2v-1.3b-480p" in result.stderr and result.stdout == ""


def test_env_report(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value")
    monkeypatch.setenv("WAN_DEVICE", "cpu")
    result = runner.invoke(app, ["env", "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["env"]["HF_TOKEN"] == "(set)" and "hf_secret_value" not in result.stdout
    assert info["env"]["WAN_DEVICE"] == "cpu"
    assert info["packages"]["torch"] and info["ffmpeg"]["version"]
    assert any(d["device"] == "cpu" for d in info["torch"]["devices"])
    assert info["paths"]["hf_cache"].endswith("hub")
    human = runner.invoke(app, ["env"])
    assert human.exit_code == 0 and "HF cache:" in human.stdout and "hf_secret_value" not in human.stdout
