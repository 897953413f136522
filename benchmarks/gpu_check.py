"""One-call GPU check (H100/H200): CUDA parity with diffusers, DiT step times at the true shapes, and the engine
end to end on CUDA at 1.3B 480p. Random weights throughout (no download); prints a table and writes JSON.

    python benchmarks/gpu_check.py --out results.json

1. Parity: the DiT at the 1.3B width (2 blocks) on CUDA, ours vs diffusers' WanTransformer3DModel, both in fp32
   and in bf16, each against our fp32 CPU output.
2. DiT step time (cond + uncond batched, bf16, SDPA): T2V-1.3B 480p, T2V-14B 720p, I2V-14B 480p; achieved TFLOP/s
   from the FLOP count in docs/performance.md (matmuls + attention, 2 FLOP per multiply-add).
3. End to end through ``Pipeline.generate`` on CUDA: the real 1.3B DiT and real VAE configs with random weights,
   a text encoder of the real output width (4096) but 1 layer (the real UMT5-XXL is 5.7B parameters of random
   numbers: its time is not what this measures), 832x480, 81 frames, a few steps; then the streaming decode.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))

from builders import init_random_

from wan_cli.engine.bench import CLIP_TOKENS, PeakMemory, dit_flops, random_dit, timed
from wan_cli.engine.transformer import DIT_CONFIGS, WanDiTConfig, build_transformer

DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # cpu: a smoke run (--smoke) before a GPU call


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float().cpu() - b.float().cpu()).norm() / b.float().cpu().norm())


def parity() -> dict[str, float]:
    from builders import to_diffusers_dit

    cfg = WanDiTConfig("t2v", dim=1536, ffn_dim=8960, num_heads=12, num_layers=2)
    ours = init_random_(build_transformer(cfg), seed=0).eval()
    g = torch.Generator("cpu").manual_seed(1)
    x = torch.randn(1, 16, 5, 30, 52, generator=g)
    t = torch.tensor([700])
    ctx = torch.randn(1, 40, 4096, generator=g) * 0.1
    with torch.no_grad():
        want = ours(x, t, ctx)  # fp32 on the CPU
        ref = to_diffusers_dit(ours)
        out: dict[str, float] = {}
        for dtype, tag in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
            m = init_random_(build_transformer(cfg), seed=0, dtype=dtype).eval().to(DEV)
            out[f"ours_cuda_{tag}"] = rel(m(x.to(DEV), t.to(DEV), ctx.to(DEV)), want)
            r = ref.to(DEV, dtype)
            padded = torch.nn.functional.pad(ctx, (0, 0, 0, 512 - ctx.shape[1]))  # official/ours pad text to 512
            got = r(hidden_states=x.to(DEV).to(dtype), timestep=t.to(DEV), encoder_hidden_states=padded.to(DEV, dtype),
                    return_dict=False)[0]  # fmt: skip
            out[f"diffusers_cuda_{tag}"] = rel(got, want)
            del m
        del ref
    return out


def step_time(name: str, cfg: WanDiTConfig, lat: tuple[int, int, int], repeats: int = 2) -> dict[str, Any]:
    """One DiT step (cond + uncond batched) through `wan bench`'s helpers."""
    f, h, w = lat
    clip_tokens = CLIP_TOKENS[cfg.model_type]
    with PeakMemory(DEV) as mem:
        model = random_dit(cfg, DEV, torch.bfloat16)
        x = torch.randn(2, 16, f, h, w, device=DEV)
        t = torch.tensor([900, 900], device=DEV)
        ctx = torch.randn(2, 512, 4096, device=DEV) * 0.1
        clip = torch.randn(2, clip_tokens, 1280, device=DEV) if clip_tokens else None
        y = torch.randn(2, 20, f, h, w, device=DEV) if clip_tokens else None
        with torch.inference_mode():
            dt = timed(functools.partial(model, x, t, ctx, clip, y), DEV, repeats)
        del model, x, ctx, clip, y
    tokens = f * h * w // 4
    flops = dit_flops(cfg, tokens, clip=clip_tokens)
    if DEV.type == "cuda":
        torch.cuda.empty_cache()
    return {"case": name, "tokens": tokens, "step_s": round(dt, 3), "tflops": round(flops / dt / 1e12, 1),
            "flop_per_step": flops, "peak_gib": round(mem.gib, 1)}  # fmt: skip


def end_to_end(steps: int, size: tuple[int, int, int] = (832, 480, 81)) -> dict[str, Any]:
    from builders import random_vae, tiny_spiece_model, write_comfy_dit, write_comfy_t5, write_comfy_vae
    from transformers import UMT5Config, UMT5EncoderModel

    from wan_cli.engine import GenerationRequest
    from wan_cli.engine.pipeline import Pipeline
    from wan_cli.engine.vae import WanVAEConfig

    tmp = Path(tempfile.mkdtemp(prefix="wan-gpu-"))
    dit = random_dit(DIT_CONFIGS["t2v-1.3B"], DEV, torch.bfloat16)
    dit_path = write_comfy_dit(dit.cpu(), tmp / "dit.safetensors", "bf16")
    del dit
    vae_path = write_comfy_vae(random_vae(WanVAEConfig(), seed=0), tmp / "vae.safetensors", torch.float32)
    t5 = UMT5EncoderModel(UMT5Config(vocab_size=64, d_model=4096, d_kv=64, d_ff=1024, num_heads=64, num_layers=1,
                                     feed_forward_proj="gated-gelu", dropout_rate=0.0)).eval()  # fmt: skip
    t5_path = write_comfy_t5(t5, tmp / "t5.safetensors", tiny_spiece_model(tmp / "spm"))
    req = GenerationRequest(prompt="a dog runs in the park", dit=dit_path, vae=vae_path, text_encoder=t5_path,
                            width=size[0], height=size[1], frames=size[2], steps=steps, guidance=6.0, shift=8.0,
                            seed=42, device=DEV)  # fmt: skip
    pipe = Pipeline(device=DEV)
    import warnings

    import wan_cli.engine.pipeline as pipeline_module

    plain_denoise = pipeline_module.denoise
    syncs: list[str] = []

    def watched_denoise(*args: Any, **kw: Any) -> torch.Tensor:
        """The step loop with CUDA's sync debug mode on: every host synchronisation inside it warns."""
        if DEV.type != "cuda":
            return plain_denoise(*args, **kw)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                return plain_denoise(*args, **kw)
            finally:
                torch.cuda.set_sync_debug_mode("default")
                syncs.extend(str(w.message).splitlines()[0] for w in caught)

    pipeline_module.denoise = watched_denoise  # type: ignore[assignment]
    with PeakMemory(DEV) as gen_mem:
        t0 = time.perf_counter()
        result = pipe.generate(req)
        t_gen = time.perf_counter() - t0
    pipeline_module.denoise = plain_denoise
    with PeakMemory(DEV) as dec_mem:
        t1 = time.perf_counter()
        frames = sum(chunk.shape[1] for chunk in result.frames())
        t_dec = time.perf_counter() - t1
    step = result.timings["denoise_s"] / steps
    return {
        "steps": steps, "frames": frames, "generate_s": round(t_gen, 2), "timings": result.timings,
        "step_s": round(step, 3), "decode_s": round(t_dec, 2), "decode_fps": round(frames / t_dec, 1),
        "peak_gib_generate": round(gen_mem.gib, 1), "peak_gib_decode": round(dec_mem.gib, 1),
        "projected_50_steps_s": round(50 * step + t_dec, 1),
        "finite": bool(torch.isfinite(result.latents).all()),
        "host_syncs_in_denoise": len(syncs), "sync_examples": syncs[:3],
    }  # fmt: skip


def memory_modes(smoke: bool) -> dict[str, Any]:
    """Streamed blocks and fp8 on the device: the streamed DiT must give the resident one's output bit for bit
    (same kernels; only where the weights come from changes), fp8 within fp8 rounding of bf16."""
    import copy

    from wan_cli.engine.offload import stream_blocks
    from wan_cli.engine.prepare import quantize_fp8_

    cfg = WanDiTConfig("t2v", dim=1536, ffn_dim=8960, num_heads=12, num_layers=5)
    dtype = torch.bfloat16
    if smoke:  # this CPU has no bf16 hardware
        cfg, dtype = WanDiTConfig("t2v", dim=256, ffn_dim=64, num_heads=2, num_layers=3), torch.float32
    model = random_dit(cfg, DEV, dtype)
    g = torch.Generator(DEV).manual_seed(3)
    x = torch.randn(1, 16, 5, 30, 52, device=DEV, generator=g)
    t = torch.tensor([800.0], device=DEV)
    ctx = torch.randn(1, 512, cfg.text_dim, device=DEV, generator=g) * 0.1
    out: dict[str, Any] = {}
    with torch.inference_mode():
        want = model(x, t, ctx)
        fp8 = quantize_fp8_(copy.deepcopy(model), dtype)
        got8 = fp8(x, t, ctx)
        streamed = copy.deepcopy(model).cpu()
        stream_blocks(streamed, streamed.blocks, DEV)
        got = [streamed(x, t, ctx) for _ in range(3)]  # three "steps": the slot ring wraps around
    out["streamed_equal"] = all(torch.equal(o, want) for o in got)
    out["streamed_max_abs_diff"] = max(float((o - want).abs().max()) for o in got)
    out["fp8_rel_err"] = rel(got8, want)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("gpu_check.json"))
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--skip-14b", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes: check this script on a CPU before a GPU call")
    args = ap.parse_args()
    name = torch.cuda.get_device_name(0) if DEV.type == "cuda" else "cpu (smoke)"
    report: dict[str, Any] = {"device": name, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}
    print(report, flush=True)

    def save() -> None:
        args.out.write_text(json.dumps(report, indent=2, default=str))

    report["parity"] = parity()
    print("parity (relative error vs fp32 CPU):", report["parity"], flush=True)
    save()
    report["memory_modes"] = memory_modes(args.smoke)
    print("memory modes:", report["memory_modes"], flush=True)
    save()
    cases = [("t2v-1.3B 480p 81f", DIT_CONFIGS["t2v-1.3B"], (21, 60, 104))]
    if args.smoke:
        tiny = WanDiTConfig("i2v", dim=256, ffn_dim=64, num_heads=2, num_layers=2, in_dim=36)
        cases = [("tiny i2v", tiny, (2, 4, 8))]
    elif not args.skip_14b:
        cases += [("i2v-14B 480p 81f", DIT_CONFIGS["i2v-14B"], (21, 60, 104)),
                  ("t2v-14B 720p 81f", DIT_CONFIGS["t2v-14B"], (21, 90, 160))]  # fmt: skip
    report["steps"] = []
    for name, cfg, lat in cases:
        report["steps"].append(step_time(name, cfg, lat))
        print(report["steps"][-1], flush=True)
        save()
    report["end_to_end_1.3B_480p"] = end_to_end(args.steps, (64, 32, 5) if args.smoke else (832, 480, 81))
    print(report["end_to_end_1.3B_480p"], flush=True)
    save()


if __name__ == "__main__":
    main()
