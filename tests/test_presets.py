"""Presets: the shipped values against the reference (wan21-architecture.md §1.6, as the issue lists them), the
merge order, validation messages, and `wan presets` / `wan env`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from wan_cli.cli.app import app
from wan_cli.engine.errors import InputError
from wan_cli.presets import (
    DEFAULTS,
    Settings,
    Values,
    env_values,
    list_presets,
    load_preset,
    resolve,
    sources,
    values_from,
)

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


# The step-distilled LoRAs' presets: their authors' settings (docs/distill-facts.md §2, LightX2V configs/distill).
DISTILLED = {"t2v-14b-480p-lightx2v": ("14b-t2v", "t2v"), "i2v-14b-480p-lightx2v": ("14b-i2v-480p", "i2v")}


@pytest.mark.parametrize("name", sorted(DISTILLED))
def test_distill_presets_carry_their_authors_settings(name: str) -> None:
    _, values = load_preset(name)
    got = (values.model, values.task, values.steps, values.guidance, values.shift, values.solver)
    assert got == (*DISTILLED[name], 4, 1.0, 5.0, "lcm")


def test_every_shipped_file_is_listed() -> None:
    shipped = sorted(p.stem for p in (ROOT / "presets").glob("*.yaml"))
    assert sorted(list_presets()) == shipped == sorted([*EXPECTED, *DISTILLED])


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


# -- a user preset file layers over the model's own preset; -p NAME replaces it; seed -1 -------------------------


def test_a_user_file_layers_over_the_model_preset() -> None:
    _, model_preset = load_preset("t2v-1.3b-480p")
    s = resolve(model_preset, env_values({}), Values(seed=4), preset="t2v-1.3b-480p", user=("p", Values(steps=1)))
    assert (s.steps, s.guidance, s.shift) == (1, 6.0, 8.0)  # the file's steps; the model's guidance and shift
    assert s.seed == 4 and s.preset == "p"
    over = resolve(model_preset, Values(steps=9), user=("p", Values(steps=1, guidance=3.0)))
    assert (over.steps, over.guidance) == (9, 3.0)  # flags (and env, items) still beat the file


def test_a_user_file_for_another_task_is_refused() -> None:
    with pytest.raises(InputError, match="preset file mine is for i2v, not t2v"):
        resolve(Values(task="t2v"), user=("mine", Values(task="i2v")))


def test_sources_name_the_highest_layer() -> None:
    got = sources(("preset a", Values(steps=3, shift=2.0)), ("file b.yaml", Values(steps=1)))
    assert got["steps"] == "file b.yaml" and got["shift"] == "preset a" and got["guidance"] == "default"
    assert "preset" not in got and set(got) == set(Settings.model_fields) - {"preset"}


@pytest.mark.parametrize(("layers", "seed"), [((Values(seed=-1),), None), ((Values(seed=5), Values(seed=-1)), None),
                                               ((Values(seed=-1), Values(seed=5)), 5)])  # fmt: skip
def test_seed_minus_one_means_random(layers: tuple[Values, ...], seed: int | None) -> None:
    assert resolve(*layers).seed == seed  # -1 in a higher layer also overrides a lower layer's seed


@pytest.mark.parametrize("bad", [-2, 2**63])
def test_other_seeds_out_of_range_are_refused(bad: int) -> None:
    with pytest.raises(InputError, match="or -1 for a random one"):
        values_from({"seed": bad}, "p.yaml")


@pytest.fixture(scope="module")
def tiny_t2v(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from builders import write_official_model

    return write_official_model(tmp_path_factory.mktemp("m") / "t2v", "t2v")


def _planned(monkeypatch: pytest.MonkeyPatch, args: list[str]) -> Any:  # the settings `wan t2v` would run with
    from wan_cli.cli import generate

    seen: list[Any] = []

    def capture(job: Any, run: Any, ui: Any) -> dict[str, Any]:
        seen.append(job.settings)
        return {"output": "x.mp4", "timings": {"total_s": 0.0}}

    monkeypatch.setattr(generate, "produce", capture)
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return seen[0]


def test_t2v_with_a_user_file_keeps_the_model_presets_values(tiny_t2v: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """`printf 'steps: 1\\n' > p.yaml; wan t2v … -p p.yaml`: guidance 6 and shift 8 of t2v-1.3b-480p stay."""
    (tmp_path / "p.yaml").write_text("steps: 1\n")
    base = ["t2v", "a cat", "-m", str(tiny_t2v), "--size", "64x32", "--frames", "5", "-o", str(tmp_path) + "/"]
    s = _planned(monkeypatch, [*base, "-p", str(tmp_path / "p.yaml"), "--seed", "-1"])
    assert (s.steps, s.guidance, s.shift, s.preset, s.seed) == (1, 6.0, 8.0, "p", None)
    named = _planned(monkeypatch, [*base, "-p", "t2v-14b-480p"])  # a named preset replaces the model's
    assert (named.steps, named.guidance, named.shift, named.preset) == (50, 5.0, 5.0, "t2v-14b-480p")


def test_presets_show_tells_where_each_value_comes_from(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("steps: 1\nseed: -1\n")
    shown = json.loads(runner.invoke(app, ["presets", "show", str(path), "--json"]).stdout)
    raw = yaml.safe_load((ROOT / "presets" / "t2v-1.3b-480p.yaml").read_text())  # the default model's preset
    assert shown["values"]["steps"] == 1 and shown["sources"]["steps"] == f"file {path}"
    assert shown["values"]["guidance"] == raw["guidance"] == 6.0 and shown["values"]["shift"] == raw["shift"] == 8.0
    assert shown["sources"]["guidance"] == "preset t2v-1.3b-480p" and shown["sources"]["device"] == "default"
    assert shown["values"]["seed"] is None and shown["sources"]["seed"] == f"file {path}"
    assert shown["layers"] == ["preset t2v-1.3b-480p", f"file {path}"]
    text = runner.invoke(app, ["presets", "show", str(path)]).stdout.splitlines()
    assert f"steps: 1  # file {path}" in text and "shift: 8.0  # preset t2v-1.3b-480p" in text
    assert "seed: random  # file " + str(path) in text and "dtype: auto  # default" in text
    named = runner.invoke(app, ["presets", "show", "t2v-14b-720p"]).stdout.splitlines()
    assert "size: 1280x720  # preset t2v-14b-720p" in named and "device: auto  # default" in named


def test_presets_show_a_file_naming_a_model_uses_that_models_preset(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_text("model: 14b-t2v\nsize: 1280x720\nsteps: 30\n")
    shown = json.loads(runner.invoke(app, ["presets", "show", str(path), "--json"]).stdout)
    assert shown["layers"][0] == "preset t2v-14b-720p"  # the 14B preset nearest the file's size
    assert (shown["values"]["guidance"], shown["values"]["shift"], shown["values"]["steps"]) == (5.0, 5.0, 30)
