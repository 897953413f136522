"""`wan bench` and the FLOP count it reports: the formula against torch's own FLOP counter, and the command end to
end on CPU (a tiny architecture stands in for the 1.3B one so the test takes seconds)."""

from __future__ import annotations

import json

import pytest
import torch
from builders import random_dit, tiny_dit_config
from torch.utils.flop_counter import FlopCounterMode
from typer.testing import CliRunner

from wan_cli.cli.app import app
from wan_cli.engine import bench
from wan_cli.engine.transformer import DIT_CONFIGS
from wan_cli.engine.vae import WanVAEConfig

runner = CliRunner()


def _matmul_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **_: object) -> torch.Tensor:
    """Plain attention by matmuls, which FlopCounterMode counts (it does not count the CPU SDPA kernel)."""
    qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, L, Dh]
    w = torch.softmax(qh @ kh.transpose(-1, -2) / qh.shape[-1] ** 0.5, dim=-1)
    return (w @ vh).transpose(1, 2)


@pytest.mark.parametrize("task", ["t2v", "i2v", "flf2v"])
def test_dit_flops_equal_torchs_count(task: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("wan_cli.engine.transformer.attention", _matmul_attention)
    cfg = tiny_dit_config(task)
    model = random_dit(cfg)
    f, h, w = 2, 8, 12
    clip = bench.CLIP_TOKENS[task]
    args = (torch.randn(2, 16, f, h, w), torch.tensor([500, 500]), torch.randn(2, 30, cfg.text_dim),
            torch.randn(2, clip, 1280) if clip else None, torch.randn(2, 20, f, h, w) if clip else None)  # fmt: skip
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(*args)
    counts = counter.get_flop_counts()
    in_blocks = sum(sum(counts[f"WanModel.blocks.{i}"].values()) for i in range(cfg.num_layers))
    assert in_blocks == bench.dit_flops(cfg, f * h * w // 4, clip=clip)  # exact: every matmul in the blocks


def test_the_issues_floor() -> None:
    """T2V-1.3B 480p, 81 frames, 50 steps with CFG: 2.83e16 FLOP (the performance issue's anchor)."""
    per_step = bench.dit_flops(DIT_CONFIGS["t2v-1.3B"], 32760)
    assert 50 * per_step == pytest.approx(2.83e16, rel=2e-3)


def test_bench_command_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(DIT_CONFIGS, "t2v-1.3B", tiny_dit_config("t2v", text_dim=4096))
    monkeypatch.setattr(bench, "WanVAEConfig", lambda: WanVAEConfig(dim=8))
    result = runner.invoke(app, ["bench", "--device", "cpu", "--size", "64x32", "--frames", "5", "--steps", "1"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)  # stdout: the JSON record only
    assert record["model"] == "1.3b-t2v" and record["tokens"] == 2 * 4 * 8 // 4 and record["frames"] == 5
    assert record["step_s"] > 0 and record["matmul_tflops"] > 0 and 0 < record["peak_fraction"] < 1.5
    assert record["vae_fps"] > 0 and record["text_encode_s"] is None  # UMT5-XXL is skipped on a CPU by default
    assert record["projected_s"] == pytest.approx(50 * record["step_s"] + record["vae_decode_s"])
    assert "DiT step (cond + uncond)" in result.stderr and "not measured" in result.stderr


def test_bench_rejects_bad_options() -> None:
    assert runner.invoke(app, ["bench", "--steps", "0"]).exit_code == 2
    assert runner.invoke(app, ["bench", "--weights", "mine"]).exit_code == 2
    assert runner.invoke(app, ["bench", "--offload", "disk"]).exit_code == 2
    result = runner.invoke(app, ["bench", "-m", "1.4b-t2v"])
    assert result.exit_code == 2 and "1.3b-t2v" in result.stderr


@pytest.mark.parametrize("flags", [["--offload", "blocks", "--dtype", "fp8"], ["--offload", "model", "--fp8-matmul"]])
def test_bench_memory_modes_on_cpu(monkeypatch: pytest.MonkeyPatch, flags: list[str]) -> None:
    monkeypatch.setitem(DIT_CONFIGS, "t2v-1.3B", tiny_dit_config("t2v", text_dim=4096))
    args = ["bench", "--device", "cpu", "--size", "64x32", "--frames", "5", "--steps", "1", "--no-vae", *flags]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["offload"] == flags[1] and record["weights"] == ("fp8" if "fp8" in flags else "fp8 matmul")
    assert record["step_s"] > 0 and "memory mode" in result.stderr


def test_bench_auto_offload_on_cpu_keeps_everything(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(DIT_CONFIGS, "t2v-1.3B", tiny_dit_config("t2v", text_dim=4096))
    args = ["bench", "--device", "cpu", "--size", "64x32", "--frames", "5", "--steps", "1", "--no-vae", "--json"]
    record = json.loads(runner.invoke(app, args).stdout)
    assert record["offload"] == "none" and record["weights"] == "as stored"


@pytest.mark.slow
def test_bench_true_1_3b_shape_streamed_in_fp8_on_cpu() -> None:
    """The real T2V-1.3B architecture (random weights), blocks streamed and stored in fp8, on this CPU."""
    args = ["bench", "--device", "cpu", "--size", "32x32", "--frames", "1", "--steps", "1", "--no-vae",
            "--offload", "blocks", "--dtype", "fp8", "--json"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["tokens"] == 4 and record["flop_per_step"] == bench.dit_flops(DIT_CONFIGS["t2v-1.3B"], 4)
    assert record["step_s"] > 0 and record["offload"] == "blocks"
