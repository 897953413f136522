"""`wan t2v` / `wan i2v` end to end on tiny random checkpoints in every layout: real MP4s checked with ffprobe,
the sidecar and the MP4 comment, settings precedence, batches from files and stdin, and parity with the engine."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from builders import write_comfy_model, write_diffusers_pipeline, write_official_model
from ffprobe import probe
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

from wan_cli.cli.app import app

runner = CliRunner()
TINY = ["--size", "64x32", "--frames", "5", "--steps", "2"]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("models")
    return {
        "diffusers-t2v": write_diffusers_pipeline(root / "diffusers-t2v", "t2v", seed=1),
        "official-t2v": write_official_model(root / "official-t2v", "t2v", seed=2),
        "comfy-t2v": write_comfy_model(root / "comfy-t2v", "t2v", seed=3),
        "comfy-i2v": write_comfy_model(root / "comfy-i2v", "i2v", seed=4),
        "official-flf2v": write_official_model(root / "official-flf2v", "flf2v", seed=5),
    }


def model_args(models: dict[str, object], name: str) -> list[str]:
    """-m for a folder; -m DIT plus the component overrides for ComfyUI split files."""
    spec = models[name]
    if isinstance(spec, Path):
        return ["-m", str(spec)]
    assert isinstance(spec, dict)
    args = ["-m", str(spec["dit"]), "--vae", str(spec["vae"]), "--text-encoder", str(spec["text_encoder"])]
    if "image_encoder" in spec:
        args += ["--image-encoder", str(spec["image_encoder"])]
    return args


def invoke(args: list[str], **kw: object):  # type: ignore[no-untyped-def]
    result = runner.invoke(app, args, **kw)  # type: ignore[arg-type]
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def image(path: Path, w: int, h: int, color: tuple[int, int, int]) -> Path:
    Image.new("RGB", (w, h), color).save(path)
    return path


@pytest.mark.parametrize("layout", ["diffusers-t2v", "official-t2v", "comfy-t2v"])
def test_t2v_writes_a_browser_mp4_with_its_settings(models: dict[str, object], tmp: Path, layout: str) -> None:
    out = tmp / "dog.mp4"
    result = invoke(["t2v", "a dog in a park", *model_args(models, layout), *TINY, "--seed", "7", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{out}\n"  # results only on stdout
    info = probe(out)
    assert (info["codec_name"], info["pix_fmt"], info["width"], info["height"]) == ("h264", "yuv420p", 64, 32)
    assert info["frames"] == 5 and info["fps"] == pytest.approx(16.0)
    assert info["faststart"]
    sidecar = json.loads(out.with_suffix(".json").read_text())
    comment = json.loads(info["comment"])  # written when the MP4 opened: everything but the decode's timings
    late = ("timings", "created")
    assert {k: v for k, v in comment.items() if k not in late} == {k: v for k, v in sidecar.items() if k not in late}
    for phase in ("text_encode_s", "denoise_s"):
        assert comment["timings"][phase] == sidecar["timings"][phase]
    assert sidecar["seed"] == 7 and sidecar["steps"] == 2 and sidecar["prompt"] == "a dog in a park"
    assert sidecar["size"] == "64x32" and sidecar["frames"] == 5 and sidecar["fps"] == 16
    assert sidecar["negative_prompt"].startswith("色调艳丽")  # the official default, recorded as used
    assert set(sidecar["timings"]) >= {"text_encode_s", "denoise_s", "decode_write_s", "total_s"}
    assert "seed 7" in result.stderr


def test_cli_latents_equal_the_engine_with_the_preset_values(models: dict[str, object], tmp: Path) -> None:
    """The command passes every setting through: its latents equal a direct engine call with the preset's guidance
    and shift (t2v-1.3b-480p: 6 and 8) and the flags' size/frames/steps/seed."""
    from wan_cli.engine import GenerationRequest, generate

    folder = models["diffusers-t2v"]
    lat = tmp / "lat.safetensors"
    result = invoke(["t2v", "a red fox", "-m", str(folder), *TINY, "--seed", "11", "-o", str(tmp / "fox.mp4"),
                     "--save-latents", str(lat)])  # fmt: skip
    assert result.exit_code == 0, result.output
    want = generate(GenerationRequest(prompt="a red fox", model=str(folder), width=64, height=32, frames=5, steps=2,
                                      guidance=6.0, shift=8.0, seed=11)).latents  # fmt: skip
    got = load_file(str(lat))["latents"]
    assert got.shape == want.shape == (16, 2, 4, 8)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_i2v_from_comfy_split_files_follows_the_image_aspect(models: dict[str, object], tmp: Path) -> None:
    first = image(tmp / "tall.png", 40, 80, (200, 30, 30))
    out = tmp / "i2v.mp4"
    result = invoke(["i2v", str(first), "--prompt", "a red wall", *model_args(models, "comfy-i2v"),
                     "--size", "32x64", "--frames", "5", "--steps", "2", "-o", str(out), "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    info = probe(out)
    # official rule for a 1:2 image at area 32·64: height 64, width 32 (multiples of 16)
    assert (info["width"], info["height"], info["frames"]) == (32, 64, 5)
    assert record["task"] == "i2v" and record["image"] == str(first) and record["size"] == "32x64"
    assert record == json.loads(out.with_suffix(".json").read_text())
    assert record["preset"] == "i2v-14b-480p" and record["shift"] == 3.0 and record["steps"] == 2


def test_flf2v_with_last_frame_from_an_official_folder(models: dict[str, object], tmp: Path) -> None:
    first = image(tmp / "a.png", 64, 32, (0, 0, 255))
    last = image(tmp / "b.png", 64, 32, (255, 255, 0))
    out = tmp / "flf.mp4"
    result = invoke(["i2v", str(first), "--last-frame", str(last), "--prompt", "blue turns yellow",
                     *model_args(models, "official-flf2v"), *TINY, "-o", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["task"] == "flf2v" and record["last_frame"] == str(last) and record["preset"] == "flf2v-14b-720p"
    assert probe(out)["frames"] == 5


def test_default_output_name_is_slug_and_seed(models: dict[str, object], tmp: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp)
    result = invoke(["t2v", "A Dog, in the Park!", "-m", str(models["diffusers-t2v"]), *TINY, "--seed", "5", "-q"])
    assert result.exit_code == 0, result.output
    assert result.stdout == "a-dog-in-the-park-5.mp4\n" and result.stderr == ""  # -q: nothing on stderr
    assert (tmp / "a-dog-in-the-park-5.mp4").is_file() and (tmp / "a-dog-in-the-park-5.json").is_file()


def test_random_seed_is_drawn_reported_and_recorded(models: dict[str, object], tmp: Path) -> None:
    out = tmp / "r.mp4"
    result = invoke(["t2v", "rain", "-m", str(models["diffusers-t2v"]), *TINY, "-o", str(out)])
    assert result.exit_code == 0, result.output
    seed = json.loads(out.with_suffix(".json").read_text())["seed"]
    assert isinstance(seed, int) and f"seed {seed}" in result.stderr


def test_precedence_defaults_preset_env_flag(models: dict[str, object], tmp: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    preset = tmp / "mine.yaml"
    preset.write_text("steps: 3\nguidance: 2.5\nshift: 4\nsize: 64x32\nframes: 5\nsolver: euler\n")
    monkeypatch.setenv("WAN_MODEL", str(models["diffusers-t2v"]))  # env names the model
    monkeypatch.setenv("WAN_DTYPE", "fp32")
    result = invoke(["t2v", "snow", "-p", str(preset), "--steps", "2", "--seed", "1", "-o", str(tmp / "a.mp4"),
                     "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    rec = json.loads(result.stdout)
    assert rec["steps"] == 2  # flag over preset
    assert (rec["guidance"], rec["shift"], rec["solver"]) == (2.5, 4.0, "euler")  # preset over defaults
    assert rec["fps"] == 16 and rec["model"]["files"]["root"] == str(models["diffusers-t2v"])  # default; env
    assert rec["preset"] == "mine" and rec["dtype"] == "float32"
    # a flag beats the environment
    monkeypatch.setenv("WAN_MODEL", str(tmp / "nowhere"))
    result = invoke(["t2v", "snow", "-p", str(preset), "-m", str(models["diffusers-t2v"]), "--seed", "1",
                     "-o", str(tmp / "b.mp4"), "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["steps"] == 3  # preset value when no flag


def test_batch_from_a_file_loads_once_and_reports_bad_lines(models: dict[str, object], tmp: Path) -> None:
    prompts = tmp / "prompts.jsonl"
    prompts.write_text(
        '{"prompt": "a cat on a sofa"}\n'
        "# a comment, skipped\n"
        '{"prompt": "a boat", "seed": 3, "output": "boat.mp4"}\n'
        "{not json\n"
        '{"prompt": "a fish", "frames": 9, "stepz": 2}\n'
        '{"prompt": "a bird", "seed": 4, "frames": 9}\n'
    )
    result = invoke(["t2v", "--prompts", str(prompts), "-m", str(models["diffusers-t2v"]), *TINY, "--seed", "1",
                     "-o", str(tmp / "out" / "{index}-{seed}.mp4")])  # fmt: skip
    assert result.exit_code == 1  # some lines failed
    paths = result.stdout.splitlines()
    assert paths == [str(tmp / "out" / "1-1.mp4"), str(tmp / "out" / "boat.mp4"), str(tmp / "out" / "5-4.mp4")]
    assert probe(Path(paths[2]))["frames"] == 9  # per-item override
    assert json.loads(Path(paths[1]).with_suffix(".json").read_text())["seed"] == 3
    assert "prompts.jsonl line 4 is not valid JSON" in result.stderr
    assert "prompts.jsonl line 5: unknown key 'stepz'" in result.stderr
    assert "2 of 5 items failed (3 written)" in result.stderr
    assert "Traceback" not in result.output


def test_batch_from_stdin_with_json_lines(models: dict[str, object], tmp: Path) -> None:
    result = invoke(["t2v", "--prompts", "-", "-m", str(models["diffusers-t2v"]), *TINY, "--seed", "2",
                     "-o", str(tmp) + "/", "--json"], input="a tree\na lake\n")  # fmt: skip
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["prompt"] for r in records] == ["a tree", "a lake"]
    assert [Path(r["output"]).name for r in records] == ["a-tree-2.mp4", "a-lake-2.mp4"]
    assert all(Path(r["output"]).is_file() for r in records)


def test_prompt_piped_on_stdin(models: dict[str, object], tmp: Path) -> None:
    out = tmp / "piped.mp4"
    result = invoke(["t2v", "-m", str(models["diffusers-t2v"]), *TINY, "-o", str(out)], input="a piped prompt\n")
    assert result.exit_code == 0, result.output
    assert json.loads(out.with_suffix(".json").read_text())["prompt"] == "a piped prompt"


def test_installed_wan_runs_t2v_and_a_stdin_batch(models: dict[str, object], tmp: Path) -> None:
    exe = shutil.which("wan") or str(Path(sys.executable).parent / "wan")
    env = {**os.environ, "WAN_MODEL": str(models["diffusers-t2v"])}
    proc = subprocess.run([exe, "t2v", "--prompts", "-", *TINY, "--seed", "9", "-o", str(tmp) + "/", "-q"],
                          input="one\ntwo\n", capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [str(tmp / "one-9.mp4"), str(tmp / "two-9.mp4")]
    for line in proc.stdout.splitlines():
        assert probe(Path(line))["codec_name"] == "h264"


def test_memory_modes_from_the_command_line(models: dict[str, object], tmp: Path) -> None:
    """--offload changes where weights live, not the video; --dtype fp8 stays within fp8 rounding. Both recorded."""
    runs = {}
    for name, extra in (("plain", ["--offload", "none"]), ("blocks", ["--offload", "blocks"]),
                        ("fp8", ["--dtype", "fp8", "--offload", "model"])):  # fmt: skip
        out = tmp / f"{name}.mp4"
        args = ["t2v", "a dog", *model_args(models, "comfy-t2v"), *TINY, "--seed", "3", "-o", str(out),
                "--save-latents", str(tmp / f"{name}.safetensors"), *extra]  # fmt: skip
        result = invoke(args)
        assert result.exit_code == 0, result.output
        runs[name] = (json.loads(out.with_suffix(".json").read_text()),
                      load_file(str(tmp / f"{name}.safetensors"))["latents"])  # fmt: skip
    assert (runs["plain"][0]["offload"], runs["plain"][0]["weights"]) == ("none", "as stored")
    assert (runs["blocks"][0]["offload"], runs["fp8"][0]["offload"]) == ("blocks", "model")
    assert runs["fp8"][0]["weights"] == "fp8" and runs["fp8"][0]["dtype"] == "float32"  # fp8 storage, fp32 compute
    blocks = (runs["blocks"][1] - runs["plain"][1]).norm() / runs["plain"][1].norm()
    assert blocks <= 1e-5  # the same maths; CFG runs as two passes instead of one batch of two
    diff = (runs["fp8"][1] - runs["plain"][1]).norm() / runs["plain"][1].norm()
    assert 0 < diff <= 3e-2
