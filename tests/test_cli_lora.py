"""`--lora`, `--lora-strict`, `loras` in JSONL items and `--cache` from the command line, on tiny random models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from builders import random_dit, tiny_dit_config, write_diffusers_pipeline
from safetensors.torch import load_file, save_file
from test_cli_generate import TINY, invoke
from test_lora import random_lora


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_diffusers_pipeline(tmp_path_factory.mktemp("lora") / "t2v", "t2v", seed=1)


@pytest.fixture(scope="module")
def lora(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("loras") / "style.safetensors"
    save_file(random_lora(random_dit(tiny_dit_config(), seed=1), seed=3), str(path))  # the folder's DiT shapes
    return path


def test_lora_flag_is_applied_and_recorded(folder: Path, lora: Path, tmp: Path) -> None:
    runs = {}
    for name, extra in (("plain", []), ("lora", ["--lora", f"{lora}:0.5"])):
        out = tmp / f"{name}.mp4"
        result = invoke(["t2v", "a fox", "-m", str(folder), *TINY, "--seed", "3", "-o", str(out), "--json",
                         "--save-latents", str(tmp / f"{name}.safetensors"), *extra])  # fmt: skip
        assert result.exit_code == 0, result.output
        runs[name] = json.loads(result.stdout)
    assert runs["plain"]["loras"] == []
    (rec,) = runs["lora"]["loras"]
    assert rec["path"] == str(lora) and rec["strength"] == 0.5 and rec["format"] == "comfyui"
    assert rec["applied"] == "merged" and rec["unmatched_keys"] == 0
    a, b = (load_file(str(tmp / f"{n}.safetensors"))["latents"] for n in ("plain", "lora"))
    assert not torch.equal(a, b)


def test_batch_items_with_different_loras_run_at_run_time(folder: Path, lora: Path, tmp: Path) -> None:
    prompts = tmp / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "a", "loras": [f"{lora}:0.8"]}) + "\n" + '{"prompt": "b"}\n')
    result = invoke(["t2v", "--prompts", str(prompts), "-m", str(folder), *TINY, "--seed", "1", "-o",
                     str(tmp / "{index}.mp4"), "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    first, second = (json.loads(line) for line in result.stdout.splitlines())
    assert first["loras"][0]["applied"] == "runtime" and first["loras"][0]["strength"] == 0.8
    assert second["loras"] == []


def test_a_missing_lora_fails_before_loading(folder: Path, tmp: Path) -> None:
    out = tmp / "x.mp4"
    result = invoke(["t2v", "a fox", "-m", str(folder), *TINY, "-o", str(out), "--lora", str(tmp / "nope.safetensors")])
    assert result.exit_code == 1
    assert "LoRA file not found" in result.stderr and "hint:" in result.stderr
    assert not out.exists() and "Traceback" not in result.output


@pytest.mark.parametrize(("flags", "message"), [
    (["--lora-strict", "maybe"], "--lora-strict"),
    (["--cache", "fastest"], "--cache"),
    (["--cache-threshold", "-1"], "--cache-threshold"),
])  # fmt: skip
def test_bad_lora_and_cache_flags_are_usage_errors(folder: Path, tmp: Path, flags: list[str], message: str) -> None:
    result = invoke(["t2v", "a fox", "-m", str(folder), *TINY, "-o", str(tmp / "x.mp4"), *flags])
    assert result.exit_code == 2, result.output
    assert message in result.stderr


def test_cache_is_recorded_and_an_uncalibrated_model_is_refused_before_loading(folder: Path, tmp: Path) -> None:
    out = tmp / "c.mp4"
    result = invoke(["t2v", "a fox", "-m", str(folder), *TINY, "-o", str(out), "--json", "--cache", "easycache",
                     "--cache-threshold", "0"])  # fmt: skip
    assert result.exit_code == 0, result.output
    cache = json.loads(result.stdout)["cache"]
    assert cache["kind"] == "easycache" and cache["skipped_steps"] == []
    assert cache["forwards"] == cache["forwards_without_cache"] == 2 * 2  # 2 steps × (cond, uncond)
    bad = invoke(["t2v", "a fox", "-m", str(folder), *TINY, "-o", str(tmp / "t.mp4"), "--cache", "teacache"])
    assert bad.exit_code == 1 and "no calibration" in bad.stderr and "easycache" in bad.stderr
    assert not (tmp / "t.mp4").exists()
