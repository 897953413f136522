"""CPU speed against diffusers, same weights, one run: the DiT forward (fp32 and bf16) and the VAE decode.

    python benchmarks/compare_diffusers.py [--repeats 3] [--json out.json]

Shapes from the performance issue: the DiT at the 1.3B width (1536, FFN 8960, 12 heads), 2 blocks, 2,560 video
tokens (latent 5×32×64), 512 text tokens, batch 1; the VAE at the real config decoding 17 frames of 128×128.
Each side runs on the same random weights (ours → diffusers through the rename table); timings interleave ours and
theirs and report the median, next to the machine's measured matmul rate for the dtype.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))

from builders import init_random_, random_vae, to_diffusers_dit, to_diffusers_vae

from wan_cli.engine.bench import dit_flops, matmul_peak
from wan_cli.engine.transformer import WanDiTConfig, build_transformer
from wan_cli.engine.vae import WanVAEConfig

CPU = torch.device("cpu")


def race(ours: Callable[[], object], theirs: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median seconds of each, alternating calls after one warm-up each."""
    ours(), theirs()
    a, b = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        ours()
        a.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        theirs()
        b.append(time.perf_counter() - t0)
    return statistics.median(a), statistics.median(b)


def dit(dtype: torch.dtype, repeats: int) -> dict[str, float]:
    cfg = WanDiTConfig("t2v", dim=1536, ffn_dim=8960, num_heads=12, num_layers=2)
    ours = init_random_(build_transformer(cfg), seed=0, dtype=dtype).eval()
    ref = to_diffusers_dit(init_random_(build_transformer(cfg), seed=0)).to(dtype)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 16, 5, 32, 64, generator=g)
    t = torch.tensor([700])
    ctx = torch.randn(1, 512, 4096, generator=g) * 0.1
    with torch.inference_mode():
        mine, theirs = race(lambda: ours(x, t, ctx),
                            lambda: ref(hidden_states=x.to(dtype), timestep=t, encoder_hidden_states=ctx.to(dtype),
                                        return_dict=False), repeats)  # fmt: skip
    flops = dit_flops(cfg, 5 * 32 * 64 // 4, batch=1)
    return {"ours_s": mine, "diffusers_s": theirs, "ratio": mine / theirs, "ours_gflops": flops / mine / 1e9,
            "diffusers_gflops": flops / theirs / 1e9}  # fmt: skip


def vae(repeats: int) -> dict[str, float]:
    ours = random_vae(WanVAEConfig(), seed=0)
    ref = to_diffusers_vae(ours)
    mean = torch.tensor(ref.config.latents_mean).view(1, 16, 1, 1, 1)
    std = torch.tensor(ref.config.latents_std).view(1, 16, 1, 1, 1)
    z = torch.randn(1, 16, 5, 16, 16, generator=torch.Generator().manual_seed(2)) * 0.5  # 17 frames of 128×128
    with torch.inference_mode():
        mine, theirs = race(lambda: ours.decode(z), lambda: ref.decode(z * std + mean), repeats)
    return {"ours_s": mine, "diffusers_s": theirs, "ratio": mine / theirs}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--vae-repeats", type=int, default=1)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--only", choices=("dit_fp32", "dit_bf16", "vae"), action="append", help="run only these parts")
    args = ap.parse_args()
    report: dict[str, object] = {"threads": torch.get_num_threads(), "torch": torch.__version__,
                                 "date": time.strftime("%Y-%m-%d")}  # fmt: skip
    report["matmul_gflops"] = {"fp32": matmul_peak(CPU, torch.float32) / 1e9,
                               "bf16": matmul_peak(CPU, torch.bfloat16) / 1e9}  # fmt: skip
    print("matmul rate:", {k: round(v) for k, v in report["matmul_gflops"].items()}, "GFLOP/s", flush=True)  # type: ignore[attr-defined]
    parts = set(args.only or ("dit_fp32", "dit_bf16", "vae"))
    for name, dtype in (("dit_fp32", torch.float32), ("dit_bf16", torch.bfloat16)):
        if name not in parts:
            continue
        report[name] = dit(dtype, args.repeats)
        print(name, {k: round(v, 3) for k, v in report[name].items()}, flush=True)  # type: ignore[attr-defined]
    if "vae" in parts:
        report["vae_decode_fp32"] = vae(args.vae_repeats)
        print("vae_decode_fp32", {k: round(v, 3) for k, v in report["vae_decode_fp32"].items()}, flush=True)  # type: ignore[attr-defined]
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
