"""Time GGUF dequantisation of one 14B-sized matmul weight (5120×5120) per quant type: wan's torch kernels (what
each layer runs per call) against gguf-py's numpy reference, on this machine's CPU (or --device cuda).

    python benchmarks/gguf_dequant.py [--device cuda] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import gguf
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
from gguf_builders import random_blocks

from wan_cli.engine.quant import QuantizedTensor

TYPES = ("Q8_0", "Q6_K", "Q5_K", "Q5_0", "Q4_K", "Q4_0", "Q3_K", "Q2_K")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    shape, rows = (5120, 5120), []
    rng = np.random.default_rng(0)
    for qtype in TYPES:
        raw = random_blocks(qtype, shape, rng)
        qt = QuantizedTensor(torch.from_numpy(raw.reshape(-1).copy()), qtype, shape).to(args.device)
        qt.dequantize(torch.bfloat16)  # warm-up
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            qt.dequantize(torch.bfloat16)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[qtype])
        ref = time.perf_counter() - t0
        rows.append({"qtype": qtype, "torch_ms": round(1e3 * sorted(times)[len(times) // 2], 1),
                     "numpy_ms": round(1e3 * ref, 1), "bytes": qt.nbytes})  # fmt: skip
        print(f"{qtype:5} torch {rows[-1]['torch_ms']:8.1f} ms   numpy {rows[-1]['numpy_ms']:8.1f} ms   "
              f"{qt.nbytes / 2**20:6.1f} MiB", file=sys.stderr)  # fmt: skip
    print(json.dumps({"device": args.device, "machine": platform.processor() or platform.machine(),
                      "threads": torch.get_num_threads(), "shape": shape, "rows": rows}))  # fmt: skip


if __name__ == "__main__":
    main()
