"""Peak RSS of the VAE, streaming (ours) vs whole-video (diffusers), at two video lengths.

Real Wan 2.1 VAE config, random weights, 128×128 frames, 33 vs 257 frames. Each measurement runs in a fresh
process and reports that process's peak RSS (``ru_maxrss``), so the numbers include the Python runtime, torch and the
127M-parameter model (≈0.5 GB) — the part that must *not* grow with the length is everything else.

Ours streams: frames are produced chunk by chunk and fed to ``stream_encoder`` (latents dropped as they come), and
latent frames are fed one by one to ``stream_decoder`` (pixels dropped as they come) — what `wan encode`/`decode`
do with ffmpeg on either side. Diffusers gets the whole tensor, as its API requires.

By default every process first fixes glibc's mmap threshold (``tune_host_allocator``, as the `wan` command does);
``--malloc default`` leaves glibc alone, whose dynamic threshold adds several percent of run-to-run RSS noise.

    python benchmarks/vae_memory.py               # both implementations, 33 and 257 frames (~30 min on 2 cores)
    python benchmarks/vae_memory.py --frames 17 65 --impl ours --malloc default
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import resource
import subprocess
import sys
import time

SIZE = 128


def _child(impl: str, op: str, frames: int, malloc: str) -> None:
    import torch

    if malloc == "tuned":
        from wan_cli.engine.memory import tune_host_allocator

        assert tune_host_allocator()

    torch.manual_seed(0)
    torch.set_grad_enabled(False)
    n_lat = (frames - 1) // 4 + 1
    if impl == "ours":
        from wan_cli.engine.vae import WanVAE

        vae = WanVAE().eval()
        if op == "decode":
            dec = vae.stream_decoder()
            for _ in range(n_lat):
                for px in dec.push(torch.randn(1, 16, 1, SIZE // 8, SIZE // 8)):
                    del px
        else:
            enc = vae.stream_encoder()
            sizes = [1] + [4] * (n_lat - 1)
            for t in sizes:
                for lat in enc.push(torch.rand(1, 3, t, SIZE, SIZE) * 2 - 1):
                    del lat
            enc.close()
    else:
        from diffusers import AutoencoderKLWan

        vae = AutoencoderKLWan().eval()
        if op == "decode":
            out = vae.decode(torch.randn(1, 16, n_lat, SIZE // 8, SIZE // 8)).sample
        else:
            out = vae.encode(torch.rand(1, 3, frames, SIZE, SIZE) * 2 - 1).latent_dist.mode()
        del out
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"peak_rss_mb": peak_kib / 1024}))


def measure(impl: str, op: str, frames: int, malloc: str) -> dict[str, float]:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, __file__, "--child", impl, op, str(frames), malloc], check=True,
                         capture_output=True, text=True).stdout  # fmt: skip
    res = json.loads(out.strip().splitlines()[-1])
    res["seconds"] = time.perf_counter() - t0
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, nargs=2, default=[33, 257], metavar=("SHORT", "LONG"))
    ap.add_argument("--impl", choices=["ours", "diffusers", "both"], default="both")
    ap.add_argument("--malloc", choices=["tuned", "default"], default="tuned")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        impl, op, frames, malloc = args.child
        _child(impl, op, int(frames), malloc)
        return
    import torch

    impls = ["ours", "diffusers"] if args.impl == "both" else [args.impl]
    short, long = args.frames
    print(f"# {dt.date.today()} · {platform.processor() or platform.machine()} · {torch.get_num_threads()} threads · "
          f"torch {torch.__version__} · {SIZE}x{SIZE}, real VAE config, random weights · malloc {args.malloc}",
          flush=True)  # fmt: skip
    print(f"| path | {short} frames peak RSS | {long} frames peak RSS | ratio | time {short} / {long} |")
    print("|---|---|---|---|---|", flush=True)
    for impl in impls:
        for op in ("decode", "encode"):
            a, b = measure(impl, op, short, args.malloc), measure(impl, op, long, args.malloc)
            label = f"{impl} {op}" + (" (streaming)" if impl == "ours" else " (whole video)")
            print(f"| {label} | {a['peak_rss_mb']:.0f} MB | {b['peak_rss_mb']:.0f} MB | "
                  f"{b['peak_rss_mb'] / a['peak_rss_mb']:.3f} | {a['seconds']:.0f} s / {b['seconds']:.0f} s |",
                  flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
