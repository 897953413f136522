"""`wan bench` and the FLOP count it reports: the formula against torch's own FLOP counter, and the command end to
end on CPU (a tiny architecture stands in for the 1.3B one so the test takes seconds)."""

from __future__ import annotations

import json
from pathlib import Path

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


# -- no GPU: a small workload, said on stderr; a table without contradictions -----------------------------------------


def _captured(monkeypatch: pytest.MonkeyPatch, args: list[str]) -> tuple[bench.BenchRequest, object]:
    """Run `wan bench ARGS` up to the request it would time (run_bench replaced by a stub)."""
    seen: list[bench.BenchRequest] = []

    def stub(req: bench.BenchRequest, log: object = None) -> bench.BenchResult:
        seen.append(req)
        return bench.BenchResult(model=req.model, device=req.device, device_name="stub", dtype="float32",
                                 size=f"{req.width}x{req.height}", frames=req.frames, tokens=1, matmul_tflops=1.0,
                                 step_s=1.0, flop_per_step=1.0, achieved_tflops=1.0, peak_fraction=1.0,
                                 dit_peak_gib=1.0, notes=list(req.notes))  # fmt: skip

    monkeypatch.setattr(bench, "run_bench", stub)
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return seen[0], result


def test_without_a_gpu_bench_picks_a_small_cpu_workload_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    req, result = _captured(monkeypatch, ["bench"])
    assert (req.device, req.width, req.height, req.frames, req.steps) == ("cpu", 160, 96, 5, 1)
    assert not req.text_encoder and req.vae
    assert "no GPU found" in result.stderr and "160x96, 5 frames, 1 step" in result.stderr  # type: ignore[attr-defined]
    assert "no GPU found" in json.loads(result.stdout)["notes"][0]  # type: ignore[attr-defined]


def test_on_a_cpu_only_the_options_not_given_are_picked(monkeypatch: pytest.MonkeyPatch) -> None:
    req, result = _captured(monkeypatch, ["bench", "--device", "cpu", "--size", "64x32", "--steps", "3"])
    assert (req.width, req.height, req.frames, req.steps) == (64, 32, 5, 3)
    assert "on a CPU: a small workload (5 frames)" in result.stderr  # type: ignore[attr-defined]
    req, result = _captured(
        monkeypatch, ["bench", "--device", "cpu", "--size", "64x32", "--frames", "9", "--steps", "1"]
    )
    assert (req.frames, req.steps, req.notes) == (9, 1, []) and "small workload" not in result.stderr  # type: ignore[attr-defined]


def test_a_gpu_keeps_the_presets_workload(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("wan_cli.engine.devices.resolve_device", lambda name: "mps")  # any device that is not the CPU
    req, result = _captured(monkeypatch, ["bench"])
    assert (req.width, req.height, req.frames, req.steps) == (832, 480, 81, 2) and req.notes == []
    assert "small workload" not in result.stderr  # type: ignore[attr-defined]


def _tiny_bench(monkeypatch: pytest.MonkeyPatch, *extra: str, peak: float = 1e15) -> tuple[dict[str, object], str]:
    """The tiny architecture through `wan bench` on the CPU; ``peak``: what the matmul probe says (FLOP/s)."""
    monkeypatch.setitem(DIT_CONFIGS, "t2v-1.3B", tiny_dit_config("t2v", text_dim=4096))
    monkeypatch.setattr(bench, "matmul_peak", lambda device, dtype: peak)
    monkeypatch.setattr(bench, "WanVAEConfig", lambda: WanVAEConfig(dim=8))
    result = runner.invoke(app, ["bench", "--device", "cpu", "--size", "64x32", "--frames", "5", "--steps", "1",
                                 *extra])  # fmt: skip
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout), result.stderr


def test_the_table_says_why_a_phase_was_not_measured_and_names_no_flag_not_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    record, err = _tiny_bench(monkeypatch, "--no-vae")
    assert "not measured (not measured)" not in err
    assert "--no-text-encoder" not in err  # not given: the text encoder is off by default on a CPU
    assert "text encode (UMT5-XXL)" in err and "not measured (off by default on a CPU" in err
    assert "not measured (--no-vae)" in err and "VAE peak memory" not in err
    assert "projected (50 steps)" in err  # the projection names what it adds up: here the DiT steps alone
    assert record["skipped"] == {"vae": "--no-vae", "text_encoder": record["skipped"]["text_encoder"]}  # type: ignore[index]
    record, err = _tiny_bench(monkeypatch, "--no-text-encoder")
    assert "not measured (--no-text-encoder)" in err and "projected (50 steps + VAE decode)" in err


def test_achieved_is_never_above_the_peak(monkeypatch: pytest.MonkeyPatch) -> None:
    record, err = _tiny_bench(monkeypatch, "--no-vae", peak=1.0)  # a probe that under-measures: 1 FLOP/s
    assert record["peak_fraction"] == 1.0 and record["matmul_tflops"] == record["achieved_tflops"]
    assert "(100% of peak)" in err and "above the 0.00 TFLOP/s of the square-matmul probe" in err


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="per-phase CPU peaks need Linux")
def test_cpu_peak_memory_is_per_phase() -> None:
    cpu = torch.device("cpu")
    with bench.PeakMemory(cpu) as big:
        x = torch.ones(2**27)  # 512 MiB, touched
        del x
    with bench.PeakMemory(cpu) as small:
        pass
    assert not big.lifetime and big.gib - small.gib > 0.4  # the second phase does not inherit the first one's peak


def test_random_dit_on_a_cpu_copies_the_first_blocks_draw() -> None:
    model = bench.random_dit(tiny_dit_config("t2v", num_layers=3), torch.device("cpu"), torch.float32)
    a, b = model.blocks[0].ffn[0].weight, model.blocks[2].ffn[0].weight
    assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()  # same values, own memory (as real weights take)
    q, k = model.blocks[0].self_attn.q.weight, model.blocks[0].self_attn.k.weight
    assert a.std().item() == pytest.approx(0.02, rel=0.2) and not torch.equal(q, k)  # within a block: own draws


def test_bench_times_the_generation_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The DiT is prepared by Pipeline.prepare_dit and stepped by sampling.denoise, the frames decoded by
    sampling.decode_frames: the code `wan t2v` runs, so a speed change shows in both or neither."""
    from wan_cli.engine import pipeline, sampling

    calls: list[str] = []
    for owner, name in ((pipeline.Pipeline, "prepare_dit"), (sampling, "predict_velocity"),
                        (sampling, "decode_frames")):  # fmt: skip
        real = getattr(owner, name)

        def spy(*a: object, _real: object = real, _name: str = name, **k: object) -> object:
            calls.append(_name)
            return _real(*a, **k)  # type: ignore[operator]

        monkeypatch.setattr(owner, name, spy)
    monkeypatch.setattr(bench, "decode_frames", sampling.decode_frames)
    record, _ = _tiny_bench(monkeypatch, "--steps", "2")
    assert calls.count("prepare_dit") == 1 and calls.count("decode_frames") == 1
    assert calls.count("predict_velocity") == 1 + 2  # the warm-up step, then the timed ones
    assert record["offload"] == "none"


def test_times_and_projection_on_a_known_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """A clock that moves only when the DiT runs (1 s a forward) or the VAE yields a chunk (0.5 s): the step, the
    decode and the projection must come out as those facts say, whatever the bench's own arithmetic."""
    import types

    from wan_cli.engine import sampling
    from wan_cli.engine.transformer import WanModel

    now = [0.0]
    monkeypatch.setattr(bench, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))
    forward = WanModel.forward

    def timed_forward(self: WanModel, *a: object, **k: object) -> torch.Tensor:
        now[0] += 1.0
        return forward(self, *a, **k)  # type: ignore[arg-type]

    def timed_decode(*a: object, **k: object) -> object:
        for chunk in sampling.decode_frames(*a, **k):  # type: ignore[arg-type]
            now[0] += 0.5
            yield chunk

    monkeypatch.setattr(WanModel, "forward", timed_forward)
    monkeypatch.setattr(bench, "decode_frames", timed_decode)
    record, err = _tiny_bench(monkeypatch, "--steps", "3")  # CPU: cond + uncond in one batched forward
    assert record["step_s"] == 1.0 and record["first_step_s"] == 1.0
    assert record["vae_decode_s"] == 1.0 and record["vae_fps"] == 5.0  # 5 frames = 2 latent frames = 2 chunks
    assert record["projected_s"] == 50 * 1.0 + 1.0 and "projected (50 steps + VAE decode)" in err
