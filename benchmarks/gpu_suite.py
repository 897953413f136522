"""One prepared call for a lent GPU (≤ 9 min on an H100/H200): the CUDA tests, then the speed and memory rows.

    python benchmarks/gpu_suite.py --out "$OUT"            # on the device machine
    python benchmarks/gpu_suite.py --smoke --out /tmp/s    # on a CPU: checks the script, its commands and flags

1. ``pytest -m gpu tests/test_gpu.py`` (attention kernels against SDPA with their relative errors printed, streamed
   == resident, fp8 against dequantised, run-time LoRA against merged, offload modes end to end, cache mechanics).
2. ``benchmarks/gpu_targets.py`` (each row a ``wan bench --json`` process: random weights at the true shapes).
3. Smaller cards emulated with ``torch.cuda.set_per_process_memory_fraction`` (24 / 16 / 12 / 8 GB): the 1.3B with
   ``--offload model`` and the I2V-14B with ``--dtype fp8 --offload blocks``, one step each; an out-of-memory exit
   means the mode does not fit that card. (``--offload auto`` reads the real free memory, not the fraction, so each
   mode is named explicitly here.)

Each part writes its own file under --out as soon as it ends, so a run stopped by the time limit keeps what it did.
Rows the suite cannot run yet (a step cache and a distill LoRA through ``wan bench``) are listed as not measured.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CARDS_GB = (24, 16, 12, 8)
NOT_YET = [
    "T2V-1.3B 480p with a step cache (wan bench has no --cache yet)",
    "I2V-14B 480p with a 4-step distill LoRA (wan bench has no --lora yet; real LoRA weights needed)",
]


def run(cmd: list[str], log: Path, timeout: int, env: dict[str, str] | None = None) -> dict[str, object]:
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
        rc, out = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc, out = 124, f"timed out after {timeout} s\n{exc.stdout or ''}{exc.stderr or ''}"
    log.write_text(out if isinstance(out, str) else out.decode())
    return {"cmd": " ".join(cmd), "rc": rc, "seconds": round(time.perf_counter() - t0, 1), "log": log.name}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--smoke", action="store_true", help="CPU: tiny sizes, every command once")
    ap.add_argument("--budget", type=int, default=520, help="seconds for the whole suite")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    left = lambda: max(10, int(args.budget - (time.perf_counter() - start)))  # noqa: E731
    py = sys.executable
    summary: dict[str, object] = {"not_measured": NOT_YET}

    summary["tests"] = run([py, "-m", "pytest", "-m", "gpu", "tests/test_gpu.py", "-q", "-rs", "-s"],
                           args.out / "test_gpu.log", min(150, left()))  # fmt: skip
    targets = [py, "benchmarks/gpu_targets.py", "--out", str(args.out / "gpu_targets.json"), "--timeout", "120"]
    summary["targets"] = run(targets + (["--smoke"] if args.smoke else []), args.out / "gpu_targets.log",
                             min(330, left()))  # fmt: skip
    cards: dict[str, object] = {}
    rows = {
        "1.3b-model": ["-m", "1.3b-t2v", "--offload", "model"],
        "i2v-fp8-blocks": ["-m", "14b-i2v-480p", "--dtype", "fp8", "--offload", "blocks", "--no-text-encoder"],
    }
    for gb in CARDS_GB:
        for name, row in rows.items():
            if left() < 30:
                cards[f"{gb}GB {name}"] = "not run: out of time"
                continue
            argv = ["bench", *row, "--steps", "1", "--json"]
            if args.smoke:
                argv = ["bench", "-m", "1.3b-t2v", "--device", "cpu", "--size", "32x32", "--frames", "1",
                        "--steps", "1", "--no-text-encoder", "--no-vae", "--json"]  # fmt: skip
            code = (f"import sys, runpy, torch\nif torch.cuda.is_available():\n"
                    f"    total = torch.cuda.get_device_properties(0).total_memory\n"
                    f"    torch.cuda.set_per_process_memory_fraction(min(1.0, {gb} * 1e9 / total))\n"
                    f"sys.argv = ['wan', *{argv!r}]\nrunpy.run_module('wan_cli', run_name='__main__')\n")  # fmt: skip
            cards[f"{gb}GB {name}"] = run([py, "-c", code], args.out / f"card-{gb}gb-{name}.log", min(90, left()))
    summary["cards"] = cards
    summary["seconds"] = round(time.perf_counter() - start, 1)
    (args.out / "gpu_suite.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
