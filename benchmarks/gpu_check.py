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
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))

from wan_cli.engine.transformer import DIT_CONFIGS, WanDiTConfig, WanModel, build_transformer, init_random_

DEV = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: a smoke run of this script (--smoke) before a GPU call


def sync() -> None:
    if DEV == "cuda":
        torch.cuda.synchronize()


def reset_peak() -> None:
    if DEV == "cuda":
        torch.cuda.reset_peak_memory_stats()


def peak_gib() -> float:
    return round(torch.cuda.max_memory_allocated() / 2**30, 1) if DEV == "cuda" else 0.0


def dit_flops(cfg: WanDiTConfig, tokens: int, text: int = 512, clip: int = 0, batch: int = 2) -> float:
    """Forward FLOPs: per block the q/k/v/o projections, self-attention (QKᵀ and AV), cross-attention (q, o on the
    video tokens; k, v on the text/CLIP tokens; QKᵀ and AV) and the FFN; 2 FLOP per multiply-add."""
    d, f, n = cfg.dim, cfg.ffn_dim, tokens
    ctx = text + clip
    per_block = 2 * (4 * n * d * d) + 2 * (2 * n * n * d)  # self-attention
    per_block += 2 * (2 * n * d * d + 2 * ctx * d * d) + 2 * (2 * n * ctx * d)  # cross-attention
    per_block += 2 * (2 * n * d * f)  # FFN
    return batch * cfg.num_layers * per_block


def fast_random_(model: WanModel, device: str, dtype: torch.dtype) -> WanModel:
    """Random weights drawn on the GPU (the CPU init of 14B parameters would take minutes); for timing only."""
    state = {}
    for name, p in model.named_parameters():
        keep = torch.float32 if WanModel.keeps_fp32(name) else dtype
        t = torch.randn(p.shape, device=device, dtype=torch.float32) * (0.02 if p.ndim >= 2 else 0.1)
        if "norm" in name or name.endswith("modulation"):
            t = t + (1.0 if "norm" in name else 0.0)
        state[name] = t.to(keep)
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


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
    f, h, w = lat
    model = fast_random_(build_transformer(cfg), DEV, torch.bfloat16)
    model.to(DEV)
    b = 2
    x = torch.randn(b, 16, f, h, w, device=DEV)
    t = torch.tensor([900, 900], device=DEV)
    ctx = torch.randn(b, 512, 4096, device=DEV) * 0.1
    clip = y = None
    if cfg.model_type != "t2v":
        clip = torch.randn(b, 257, 1280, device=DEV)
        y = torch.randn(b, 20, f, h, w, device=DEV)
    reset_peak()
    with torch.inference_mode():
        model(x, t, ctx, clip, y)  # warm-up
        sync()
        t0 = time.perf_counter()
        for _ in range(repeats):
            model(x, t, ctx, clip, y)
        sync()
    dt = (time.perf_counter() - t0) / repeats
    tokens = f * h * w // 4
    flops = dit_flops(cfg, tokens, clip=257 if clip is not None else 0)
    out = {"case": name, "tokens": tokens, "step_s": round(dt, 3), "tflops": round(flops / dt / 1e12, 1),
           "flop_per_step": flops, "peak_gib": peak_gib()}  # fmt: skip
    del model, x, ctx, clip, y
    if DEV == "cuda":
        torch.cuda.empty_cache()
    return out


def end_to_end(steps: int, size: tuple[int, int, int] = (832, 480, 81)) -> dict[str, Any]:
    from builders import random_vae, tiny_spiece_model, write_comfy_dit, write_comfy_t5, write_comfy_vae
    from transformers import UMT5Config, UMT5EncoderModel

    from wan_cli.engine import GenerationRequest
    from wan_cli.engine.pipeline import Pipeline
    from wan_cli.engine.vae import WanVAEConfig

    tmp = Path(tempfile.mkdtemp(prefix="wan-gpu-"))
    dit = fast_random_(build_transformer(DIT_CONFIGS["t2v-1.3B"]), DEV, torch.bfloat16)
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
    reset_peak()
    t0 = time.perf_counter()
    result = pipe.generate(req)
    t_gen = time.perf_counter() - t0
    peak_denoise = peak_gib()
    reset_peak()
    t1 = time.perf_counter()
    frames = sum(chunk.shape[1] for chunk in result.frames())
    t_dec = time.perf_counter() - t1
    step = result.timings["denoise_s"] / steps
    return {
        "steps": steps, "frames": frames, "generate_s": round(t_gen, 2), "timings": result.timings,
        "step_s": round(step, 3), "decode_s": round(t_dec, 2), "decode_fps": round(frames / t_dec, 1),
        "peak_gib_generate": peak_denoise, "peak_gib_decode": peak_gib(),
        "projected_50_steps_s": round(50 * step + t_dec, 1),
        "finite": bool(torch.isfinite(result.latents).all()),
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("gpu_check.json"))
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--skip-14b", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes: check this script on a CPU before a GPU call")
    args = ap.parse_args()
    name = torch.cuda.get_device_name(0) if DEV == "cuda" else "cpu (smoke)"
    report: dict[str, Any] = {"device": name, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}
    print(report, flush=True)

    def save() -> None:
        args.out.write_text(json.dumps(report, indent=2, default=str))

    report["parity"] = parity()
    print("parity (relative error vs fp32 CPU):", report["parity"], flush=True)
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
