"""`make demo`: the default 1.3B video, downloading the weights first if they are not in the HF cache.
`make demo-tiny`: the same commands on tiny random-weight checkpoints (no download, seconds on a CPU).

Everything goes through the installed `wan` command, exactly as a user would type it.

    python benchmarks/demo.py            # wan download 1.3b-t2v (if absent) → wan t2v … -o demo.mp4
    python benchmarks/demo.py --tiny     # a tiny ComfyUI models/ tree → inspect, t2v, encode, decode
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPT = "A corgi runs along a sunny beach, waves rolling in behind it, golden evening light, slow motion"
# the `wan` of this interpreter's environment first (CI runs this from a plain venv), else the one on PATH
_OWN = Path(sys.executable).parent / "wan"
WAN = str(_OWN) if _OWN.exists() else shutil.which("wan") or "wan"


def wan(*args: str) -> str:
    """Run `wan ARGS`, show the command, pass stderr through, return stdout."""
    print("$ wan " + " ".join(args), file=sys.stderr, flush=True)
    out = subprocess.run([WAN, *args], stdout=subprocess.PIPE, text=True)
    if out.returncode != 0:
        sys.exit(out.returncode)
    print(out.stdout, end="", flush=True)
    return out.stdout.strip()


def real(output: Path) -> None:
    from wan_cli.hub import installed

    if not installed("1.3b-t2v"):
        wan("download", "1.3b-t2v")
    t0 = time.perf_counter()
    wan("t2v", PROMPT, "-m", "1.3b-t2v", "--seed", "42", "-o", str(output), "--force")
    print(f"made {output} in {time.perf_counter() - t0:.0f} s (settings in {output.with_suffix('.json')})")


def tiny(folder: Path) -> None:
    sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
    from builders import write_comfy_tree

    # A ComfyUI models/ tree under the published names; the tokenizer is the one embedded in the text encoder.
    models = folder / "ComfyUI" / "models"
    files = write_comfy_tree(models, "t2v", seed=0)
    wan("inspect", str(models))
    video = wan("t2v", PROMPT, "-m", str(files["dit"]), "--size", "256x128", "--frames", "17", "--steps", "4",
                "--seed", "42", "-o", str(folder / "demo.mp4"),
                "--save-latents", str(folder / "demo.safetensors"))  # fmt: skip
    wan("encode", video, "-o", str(folder / "reencoded.safetensors"), "--vae", str(files["vae"]))
    wan("decode", str(folder / "demo.safetensors"), "-o", str(folder / "decoded-24fps.mp4"), "--fps", "24",
        "--vae", str(files["vae"]))  # fmt: skip
    print(f"tiny random weights make noise, not a corgi: the point is the plumbing. Files in {folder}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="tiny random-weight checkpoints; no download")
    ap.add_argument("-o", "--output", type=Path, default=Path("demo.mp4"))
    args = ap.parse_args()
    if args.tiny:
        tiny(Path(tempfile.mkdtemp(prefix="wan-demo-")))
    else:
        real(args.output)


if __name__ == "__main__":
    main()
