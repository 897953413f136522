"""`wan bench`: what this machine does with a model before any download (random weights at the true shapes).

On a CPU the options not given default to a small workload (:data:`CPU_WORKLOAD`: about a minute on 2 cores) instead
of the preset's 832x480 × 81 frames, which takes a quarter of an hour and 12 GB there; stderr says so.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from .errors import UsageError, run_guarded
from .output import emit_json, stderr

# The CPU default: the true 1.3B architecture at a small shape (120 tokens). On a 2-core VM without a GPU
# (2026-12-02), `wan bench` took 33-81 s in all (shared with other jobs): 5.7 GB of random fp32 weights, two DiT steps
# (warm-up + 1) of ~0.9 TFLOP each, the VAE decode. 256x160 (320 tokens) took twice that.
CPU_WORKLOAD: dict[str, Any] = {"size": (160, 96), "frames": 5, "steps": 1}


# Long only by its signature: Typer reads the options from it (the body is four lines; the docstring is --help).
def bench(
    model: Annotated[
        str, typer.Option("-m", "--model", metavar="NAME", help="Which architecture (`wan models`).")
    ] = "1.3b-t2v",
    size: Annotated[
        str | None,
        typer.Option(
            "--size",
            metavar="WxH",
            show_default=False,
            help="Frame size (default: the model's preset; 160x96 on a CPU).",
        ),
    ] = None,
    frames: Annotated[
        int | None,
        typer.Option("--frames", show_default=False, help="Frames, 4n+1 (default: the preset's 81; 5 on a CPU)."),
    ] = None,
    steps: Annotated[
        int | None,
        typer.Option(
            "--steps", show_default=False, help="DiT steps to time, after one warm-up (default: 2; 1 on a CPU)."
        ),
    ] = None,
    weights: Annotated[
        str,
        typer.Option(
            "--weights", metavar="random|installed", help="Random weights (no download) or the installed model's DiT."
        ),
    ] = "random",
    device: Annotated[str, typer.Option("--device", metavar="auto|cuda|cpu|mps")] = "auto",
    dtype: Annotated[
        str,
        typer.Option(
            "--dtype",
            metavar="auto|bf16|fp16|fp32|fp8",
            help="DiT compute dtype (auto: bf16 on GPUs, fp32 on CPU); fp8: block weights stored in fp8.",
        ),
    ] = "auto",
    fp8_matmul: Annotated[
        bool, typer.Option("--fp8-matmul", help="With fp8 weights, multiply in fp8 too (torch._scaled_mm; Hopper).")
    ] = False,
    offload: Annotated[
        str,
        typer.Option(
            "--offload",
            metavar="auto|none|model|blocks",
            help="Memory mode, as in `wan t2v` (auto: the fastest that fits the free GPU memory).",
        ),
    ] = "auto",
    attention: Annotated[
        str,
        typer.Option(
            "--attention",
            metavar="auto|sdpa|cudnn|flash3|sage",
            help="Attention kernel, as in `wan t2v` (auto: flash3 where installed, else sdpa).",
        ),
    ] = "auto",
    text_encoder: Annotated[
        bool | None,
        typer.Option(
            "--text-encoder/--no-text-encoder",
            show_default=False,
            help="Time UMT5-XXL too (default: on GPUs; it is 23 GB in fp32 on a CPU).",
        ),
    ] = None,
    vae: Annotated[bool, typer.Option("--vae/--no-vae", help="Time the VAE decode too.")] = True,
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile the DiT blocks first.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Only the JSON record (no table on stderr).")] = False,
) -> None:
    """Time the DiT step, text encoder and VAE decode; report FLOP/s against the measured matmul peak, peak memory
    per phase and the projected time of a whole video. The JSON record goes to stdout, the table to stderr.
    Without a GPU, the options not given default to a small CPU workload (160x96, 5 frames, 1 step): about a
    minute on 2 cores.

    Examples:

      wan bench                                    # 1.3B at 832x480, 81 frames, on the GPU

      wan bench -m 14b-t2v --size 1280x720 --steps 1

      wan bench -m 14b-t2v --size 1280x720 --dtype fp8 --offload blocks   # the least GPU memory

      wan bench --device cpu --size 256x256 --frames 9 --steps 1 --no-vae
    """
    from ..engine import tune_host_allocator

    tune_host_allocator()  # as the other computing commands: RSS is what is really held (engine/memory.py)
    record = run_guarded(lambda: _bench(model, size, frames, steps, weights, device, dtype, attention,
                                        text_encoder, vae, compile, json_out, offload, fp8_matmul), stderr)  # fmt: skip
    emit_json(record)


def _bench(model: str, size: str | None, frames: int | None, steps: int | None, weights: str, device: str, dtype: str,
           attention: str, text_encoder: bool | None, vae: bool, compile: bool,
           json_out: bool, offload: str = "auto", fp8_matmul: bool = False) -> dict[str, object]:  # fmt: skip
    """Options → BenchRequest (the CPU workload picked where options are not given) → run_bench → the table."""
    from ..engine import BenchRequest, resolve_device, resolve_dtype, run_bench
    from ..presets import Values, load_preset

    spec = _check_options(model, steps, weights, attention, offload)
    _, preset = load_preset(spec.preset)
    try:
        layer = Values.model_validate({k: v for k, v in (("size", size), ("frames", frames), ("device", device),
                                                         ("dtype", dtype)) if v is not None})  # fmt: skip
    except Exception as exc:
        raise UsageError(f"invalid option value: {exc}", hint="see `wan bench --help`") from None
    dev = resolve_device(layer.device or "auto")
    notes: list[str] = []
    if dev == "cpu":
        layer, steps = _cpu_workload(layer, {"size": size, "frames": frames, "steps": steps}, steps, preset, notes)
    w, h = layer.size or preset.size or (832, 480)
    dt = resolve_dtype(None if layer.dtype == "fp8" else layer.dtype, dev)  # fp8: stored so, computed in auto
    fp8 = layer.dtype == "fp8" or fp8_matmul
    dit = None
    if weights == "installed":
        from ..hub import resolve_model

        files = resolve_model(spec.name)
        dit = str(files.dit or files.root or "")
    why_not = {"vae": "--no-vae"}
    if text_encoder is None and dev == "cpu":
        why_not["text_encoder"] = "off by default on a CPU, where UMT5-XXL takes 23 GB; --text-encoder times it"
    elif text_encoder is False:
        why_not["text_encoder"] = "--no-text-encoder"
    req = BenchRequest(model=spec.name, width=w, height=h, frames=layer.frames or preset.frames or 81,
                       steps=steps or 2, why_not=why_not, notes=notes, full_steps=preset.steps or 50, device=dev,
                       dtype=dt, vae=vae, dit=dit, compile=compile, attention=attention, fp8=fp8,
                       text_encoder=text_encoder if text_encoder is not None else dev != "cpu",
                       offload=None if offload == "auto" else offload, fp8_matmul=fp8_matmul)  # type: ignore[arg-type]  # fmt: skip
    log = (lambda _: None) if json_out else (lambda m: stderr.print(f"[dim]{m}…[/]"))
    result = run_bench(req, log)
    if not json_out:
        _table(result.to_dict(), shown=notes)
    return result.to_dict()


def _check_options(model: str, steps: int | None, weights: str, attention: str, offload: str) -> Any:
    """The options no settings layer checks, as usage errors (exit 2) → the model's registry spec."""
    from ..engine import ATTENTION_BACKENDS, BENCH_MODELS, OFFLOAD_MODES, InputError
    from ..registry import get

    try:
        spec = get(model)
    except InputError as exc:  # an unknown name on the command line is a usage error, as in `wan download`
        raise UsageError(exc.message, hint=exc.hint) from None
    if spec.name not in BENCH_MODELS:
        raise UsageError(f"no benchmark for {spec.name}", hint=f"use one of {', '.join(BENCH_MODELS)}")
    if steps is not None and steps < 1:
        raise UsageError(f"invalid value for --steps: {steps}", hint="at least 1")
    if weights not in ("random", "installed"):
        raise UsageError(f"invalid value for --weights: {weights!r}", hint="random or installed")
    if attention not in ATTENTION_BACKENDS:
        raise UsageError(f"invalid value for --attention: {attention!r}",
                         hint=f"use one of {', '.join(ATTENTION_BACKENDS)}")  # fmt: skip
    if offload != "auto" and offload not in OFFLOAD_MODES:
        raise UsageError(f"invalid value for --offload: {offload!r}", hint="use auto, none, model or blocks")
    return spec


def _cpu_workload(layer: Any, given: dict[str, Any], steps: int | None, preset: Any,
                  notes: list[str]) -> tuple[Any, int | None]:  # fmt: skip
    """On a CPU, the options not given default to a small workload (CPU_WORKLOAD), said in a note on stderr."""
    picked = {k: v for k, v in CPU_WORKLOAD.items() if given[k] is None}
    if not picked:
        return layer, steps
    layer = layer.model_copy(update={k: v for k, v in picked.items() if k != "steps"})
    steps = picked.get("steps", steps)
    words = {"size": "{}x{}".format(*picked.get("size", (0, 0))), "frames": f"{picked.get('frames')} frames",
             "steps": f"{picked.get('steps')} step" + "s" * (picked.get("steps") != 1)}  # fmt: skip
    what = ", ".join(words[k] for k in picked)
    why = "on a CPU" if layer.device == "cpu" else "no GPU found (torch sees no CUDA or MPS device)"
    pw, ph = preset.size or (832, 480)
    notes.append(f"{why}: a small workload ({what}) instead of the preset's {pw}x{ph} and {preset.frames} "
                 "frames (a quarter of an hour or more on a CPU); --size, --frames and --steps choose "
                 "another")  # fmt: skip
    stderr.print(f"note: {notes[-1]}", markup=False, highlight=False)
    return layer, steps


def _rate(tflops: float) -> str:
    return f"{tflops:.1f} TFLOP/s" if tflops >= 10 else f"{tflops:.2f} TFLOP/s"  # a CPU does ~0.1


def _table(r: dict[str, Any], shown: tuple[str, ...] | list[str] = ()) -> None:
    """The human summary on stderr; a phase not measured says why, and the projection names what it adds up."""
    skipped: dict[str, str] = r["skipped"]
    text = (
        f"{r['text_encode_s']:.2f} s" if r["text_encode_s"] is not None else f"not measured ({skipped['text_encoder']})"
    )
    vae = (f"{r['vae_decode_s']:.2f} s ({r['vae_fps']:.1f} frames/s)" if r["vae_decode_s"] is not None
           else f"not measured ({skipped['vae']})")  # fmt: skip
    parts = [f"{r['full_steps']} steps"] + ["text encode"] * (r["text_encode_s"] is not None)
    parts += ["VAE decode"] * (r["vae_decode_s"] is not None)
    rows = [
        ("device", f"{r['device_name']} ({r['device']}, {r['dtype']})"),
        ("memory mode", f"offload {r['offload']}, DiT weights {r['weights']}"),
        ("shape", f"{r['model']} · {r['size']} · {r['frames']} frames · {r['tokens']} tokens"),
        ("matmul peak", _rate(r["matmul_tflops"])),
        ("DiT step (cond + uncond)", f"{r['step_s']:.3f} s" + (" (compiled)" if r["compiled"] else "")),
        ("first step", f"{r['first_step_s']:.1f} s"),
        ("achieved", f"{_rate(r['achieved_tflops'])} ({100 * r['peak_fraction']:.0f}% of peak)"),
        ("DiT peak memory", f"{r['dit_peak_gib']:.1f} GiB"),
        ("text encode (UMT5-XXL)", text),
        ("VAE decode", vae),
    ]
    if r["vae_peak_gib"] is not None:
        rows.append(("VAE peak memory", f"{r['vae_peak_gib']:.1f} GiB"))
    rows.append((f"projected ({' + '.join(parts)})", f"{r['projected_s']:.0f} s"))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        stderr.print(f"{k:<{width}}  {v}", markup=False, highlight=False)
    for note in r["notes"]:
        if note not in shown:
            stderr.print(f"note: {note}", markup=False, highlight=False)
