"""The performance issue's GPU targets in one call: each row is a `wan bench --json` run (random weights, true
shapes) in its own process, so one row's memory never counts in the next. Prints a table and writes JSON.

    python benchmarks/gpu_targets.py --out benchmarks/results/gpu-targets-<card>-<date>.json
    python benchmarks/gpu_targets.py --only 1.3b-model 14b-720p-fp8-blocks
    python benchmarks/gpu_targets.py --smoke      # the 1.3B at a tiny size on the CPU: checks the script and flags

Targets (the performance issue, for one H100): T2V-1.3B 480p end to end ≤ 60 s; T2V-14B 720p ≤ 1000 s in bf16;
I2V-14B 480p ≤ 5.0 s per step; peak memory 1.3B 480p ≤ 6 GB with ``--offload model``, 14B 720p ≤ 16 GB with
``--dtype fp8 --offload blocks``. "Projected" = text encode + 50 × step + VAE decode, each phase measured.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

GB = 10**9 / 2**30  # GiB per GB: the targets are in GB, `wan bench` reports GiB

# name, `wan bench` arguments, what the row is checked against
ROWS: list[tuple[str, list[str], str]] = [
    ("1.3b-compiled", ["-m", "1.3b-t2v", "--steps", "3", "--compile", "--offload", "none"], "projected ≤ 60 s"),
    ("1.3b-model", ["-m", "1.3b-t2v", "--steps", "2", "--offload", "model"], "peak ≤ 6 GB"),
    (
        "i2v-480p-compiled",
        ["-m", "14b-i2v-480p", "--steps", "2", "--compile", "--no-text-encoder", "--no-vae", "--offload", "none"],
        "step ≤ 5.0 s",
    ),
    (
        "14b-720p-compiled",
        ["-m", "14b-t2v", "--size", "1280x720", "--steps", "1", "--compile", "--offload", "none"],
        "projected ≤ 1000 s",
    ),
    (
        "14b-720p-fp8-blocks",
        ["-m", "14b-t2v", "--size", "1280x720", "--steps", "1", "--dtype", "fp8", "--offload", "blocks"],
        "peak ≤ 16 GB",
    ),
    (
        "14b-720p-fp8-matmul",
        [
            "-m",
            "14b-t2v",
            "--size",
            "1280x720",
            "--steps",
            "1",
            "--fp8-matmul",
            "--compile",
            "--no-text-encoder",
            "--no-vae",
            "--offload",
            "none",
        ],
        "step vs bf16",
    ),
]
SMOKE = ["--device", "cpu", "--size", "32x32", "--frames", "1", "--steps", "1", "--no-text-encoder", "--no-vae"]


def run_row(args: list[str], smoke: bool, timeout: int) -> dict[str, Any]:
    if smoke:  # the 1.3B at a tiny size, no compile, no encoders: the point is that every flag combination runs
        keep, skip = ["-m", "1.3b-t2v"], {"--size", "--steps", "-m"}
        it = iter(args)
        for a in it:
            if a in skip:
                next(it)
            elif a not in ("--compile", "--no-text-encoder", "--no-vae"):
                keep.append(a)
        args = keep + SMOKE
    cmd = [sys.executable, "-m", "wan_cli", "bench", *args, "--json"]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s", "command": " ".join(cmd[2:])}
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1:] or ["failed"], "command": " ".join(cmd[2:])}
    record: dict[str, Any] = json.loads(proc.stdout)
    record["command"] = " ".join(cmd[2:])
    record["wall_s"] = time.perf_counter() - t0
    return record


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("gpu_targets.json"))
    ap.add_argument("--only", nargs="*", metavar="ROW", help=f"rows: {', '.join(r[0] for r in ROWS)}")
    ap.add_argument("--timeout", type=int, default=400, help="seconds per row")
    ap.add_argument("--smoke", action="store_true")
    opts = ap.parse_args()

    results: dict[str, Any] = {}
    for name, args, target in ROWS:
        if opts.only and name not in opts.only:
            continue
        r = run_row(args, opts.smoke, opts.timeout)
        r["target"] = target
        results[name] = r
        opts.out.write_text(json.dumps(results, indent=2))  # after every row: a cut-off run keeps what it measured
        if "error" in r:
            print(f"{name:<22} ERROR {r['error']}", flush=True)
            continue
        peaks = "/".join(f"{(r[k] or 0) / GB:.1f}" for k in ("text_peak_gib", "dit_peak_gib", "vae_peak_gib"))
        print(f"{name:<22} step {r['step_s']:7.3f} s  ({r['achieved_tflops']:5.0f} TFLOP/s)  "
              f"projected {r['projected_s']:7.0f} s  peaks text/dit/vae {peaks} GB  [{target}]  {r['device_name']}",
              flush=True)  # fmt: skip
    print(f"wrote {opts.out}")


if __name__ == "__main__":
    main()
