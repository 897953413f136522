"""Peak memory and time of the VAE decode with and without frame slicing (``StreamDecoder(frame_slice=...)``).

After each temporal upsampling the decoder's later (larger) stages can run one frame at a time instead of the whole
chunk of 2 or 4 frames; the causal cache makes the results the same (tests/test_vae.py checks them against
diffusers). This measures what that saves: each setting in a fresh process, real Wan 2.1 VAE config, random
weights. On a GPU: the CUDA allocator's peak; on the CPU: the process's peak RSS (Python, torch and the 0.5 GB of
weights included), with glibc's mmap threshold fixed as the `wan` command does.

    python benchmarks/vae_frame_slice.py --size 384x384 --latents 2
    python benchmarks/vae_frame_slice.py --device cuda --size 832x480 --latents 3
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def _child(device: str, width: int, height: int, latents: int, frame_slice: str) -> None:
    import torch

    from wan_cli.engine.memory import tune_host_allocator
    from wan_cli.engine.vae import WanVAE

    tune_host_allocator()
    torch.manual_seed(0)
    torch.set_grad_enabled(False)
    vae = WanVAE().eval().to(device)
    z = torch.randn(1, 16, latents, height // 8, width // 8, device=device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    frames = 0
    for chunk in vae.stream_decoder(frame_slice=None if frame_slice == "none" else int(frame_slice)).push(z):
        frames += chunk.shape[2]
        del chunk
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"frame_slice": frame_slice, "seconds": time.perf_counter() - t0, "frames": frames,
                      "peak_mib": peak}))  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--size", default="384x384", metavar="WxH")
    ap.add_argument("--latents", type=int, default=2, help="latent frames to decode (1 + 4(n-1) video frames)")
    ap.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    opts = ap.parse_args()
    if opts.child:
        dev, w, h, n, fs = opts.child
        _child(dev, int(w), int(h), int(n), fs)
        return
    w, h = (int(v) for v in opts.size.split("x"))
    print(f"VAE decode, {opts.latents} latent frames at {w}x{h}, {opts.device}")
    for fs in ("none", "1"):
        out = subprocess.run([sys.executable, __file__, "--child", opts.device, str(w), str(h), str(opts.latents), fs],
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
        r = json.loads(out)
        label = "whole chunk" if fs == "none" else f"slices of {fs} frame"
        print(f"  {label:<18} peak {r['peak_mib']:8.0f} MiB   {r['seconds']:7.2f} s   ({r['frames']} frames)")


if __name__ == "__main__":
    main()
