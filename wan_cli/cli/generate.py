"""`wan t2v` and `wan i2v`: one video, or a batch (``--prompts FILE|-``) with every model loaded once.

Thin over the engine: options → settings layers (``presets.py``: defaults < preset < env < flags < item) → a plan
for every item before any runs (``plan.py``: model files found, seed drawn, outputs named and checked, request
validated — nothing is loaded for a bad item) → ``Pipeline.generate`` → the MP4, the optional latents file and the
JSON sidecar, written together or not at all (``outputs.py``).
stdout gets one line per finished video: its path, or the settings record with ``--json``.
"""

from __future__ import annotations

import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .. import __version__
from ..engine import ATTENTION_BACKENDS, Interrupted, WanError
from ..presets import env_values, load_preset
from .errors import UsageError, debug_enabled, report, run_guarded
from .items import Item, read_prompts_file, stdin_prompt
from .options import Options, flag_values, refuse_peer_options, vae_tiling, with_common_options
from .output import Progress, emit_json, emit_line, show_engine_log, stderr
from .outputs import Outputs, batch_folder, check_writable
from .plan import Job, Run, plan_all

if TYPE_CHECKING:
    from ..engine import GenerationResult, Pipeline

OFFLOAD = ("auto", "none", "model", "blocks")


# --------------------------------------------------------------------------------------------------------------------
# Producing one video
# --------------------------------------------------------------------------------------------------------------------


def settings_record(job: Job, result: GenerationResult, timings: dict[str, float]) -> dict[str, Any]:
    """The settings record: the sidecar, the MP4 comment and the --json line."""
    req, files = result.request, job.files
    components = {k: str(v) for k, v in (("root", files.root), ("dit", files.dit), ("vae", req.vae),
                  ("text_encoder", req.text_encoder), ("tokenizer", req.tokenizer),
                  ("image_encoder", req.image_encoder)) if v}  # fmt: skip
    return {
        "output": str(job.output),
        "sidecar": str(job.sidecar),
        "latents": str(job.latents) if job.latents else None,
        "task": req.task,
        "prompt": req.prompt,
        "negative_prompt": req.negative_prompt,
        "image": str(req.image) if req.image is not None else None,
        "last_frame": str(req.last_image) if req.last_image is not None else None,
        "seed": req.seed,
        "steps": req.steps,
        "guidance": req.guidance,
        "shift": req.shift,
        "solver": req.solver,
        "size": f"{req.width}x{req.height}",
        "width": req.width,
        "height": req.height,
        "frames": req.frames,
        "fps": job.settings.fps,
        "preset": job.settings.preset,
        "model": {
            "name": files.name,
            "source": files.source,
            "precision": files.precision,
            "repo": files.repo,
            "revision": files.revision,
            "files": components,
        },
        "device": req.device,
        "dtype": str(req.dtype).removeprefix("torch.") if req.dtype is not None else None,
        "weights": result.weights,
        "offload": result.offload,
        "attention": result.attention,
        "loras": result.loras,
        "cache": result.cache,
        "wan_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "timings": {k: round(v, 3) for k, v in timings.items()},
    }


def write_json_atomic(path: Path, record: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    try:
        tmp.write_text(json.dumps(record, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def pipeline_for(run: Run, job: Job) -> Pipeline:
    """One pipeline per device, dtype and weight format, so a batch loads each model once."""
    from ..engine import Pipeline

    request = job.request
    device = str(request.device)
    offload = None if run.opts.offload == "auto" else run.opts.offload
    # A batch never reloads weights from disk: on the CPU keep them (the default there frees them after each
    # video); on a GPU the pipeline's own default already keeps (offload none) or offloads to RAM, never frees.
    policy = "keep" if run.batch and device == "cpu" else None
    fp8 = job.settings.dtype == "fp8"
    key = (device, str(request.dtype), fp8)
    # Items with different LoRA sets share the loaded DiT with the LoRAs at run time (merged ones cannot be taken
    # off exactly: another set would mean a reload from disk).
    lora_mode = "runtime" if run.lora_sets > 1 else "auto"
    if key not in run.pipelines:
        run.pipelines[key] = Pipeline(device=device, dtype=request.dtype, policy=policy, offload=offload,  # type: ignore[arg-type]
                                      fp8=fp8, compile=run.opts.compile, attention=run.opts.attention,
                                      lora_mode=lora_mode)  # fmt: skip
    return run.pipelines[key]


def produce(job: Job, run: Run, ui: Progress) -> dict[str, Any]:
    """Generate one video and write its files: all of them (MP4, sidecar, latents) or, on any failure or signal,
    none — and the folders made for them are removed again (``outputs.Outputs``)."""
    from ..engine import VideoWriter

    t_start = time.perf_counter()
    finals = [p for p in (job.output, job.sidecar, job.latents) if p is not None]
    with Outputs(finals, force=run.opts.force) as out:
        ui.phase("load + encode")
        result = pipeline_for(run, job).generate(job.request, progress=ui.update)
        req = result.request
        timings = dict(result.timings)
        record = settings_record(job, result, timings)
        if job.latents is not None:
            from ..engine import save_latents

            save_latents(out.staged(job.latents), result.latents, fps=job.settings.fps, source=req.task,
                         model=str(job.settings.model), record=record, force=True)  # fmt: skip
        ui.phase("decode + write", total=req.frames)
        t0, loaded = time.perf_counter(), timings["load_s"]
        with VideoWriter(out.staged(job.output), req.width, req.height, job.settings.fps, force=True,
                         metadata=record) as writer:  # fmt: skip
            for chunk in result.frames():
                writer.write(chunk)
                ui.update("decode + write", writer.frames_written, req.frames)
            timings["load_s"] = result.timings["load_s"]  # now with the VAE's, read for decoding
            timings["decode_write_s"] = time.perf_counter() - t0 - (timings["load_s"] - loaded)
            timings["total_s"] = time.perf_counter() - t_start
            record = settings_record(job, result, timings)  # with the decode time: the sidecar's
        write_json_atomic(out.staged(job.sidecar), record)
        out.commit()
    return record


def _describe(job: Job) -> str:
    s, r = job.settings, job.request
    size = f"{r.width}x{r.height}" + (" area" if r.task != "t2v" else "")
    return (f"{r.task} · {job.files.name or s.model} · {size} · {r.frames} frames · {r.steps} steps · "
            f"seed {r.seed} → {job.output}")  # fmt: skip


def run_items(run: Run, items: list[Item]) -> None:
    opts = run.opts
    human = not (opts.json_out or opts.quiet)
    jobs, failures = plan_all(run, items)
    written = 0
    with Progress(enabled=human and stderr.is_terminal) as ui:
        for job in jobs:
            item = job.item
            try:
                if human:
                    stderr.print(f"{item.where + ': ' if run.batch else ''}{_describe(job)}", markup=False)
                    for note in job.notes:
                        stderr.print(note, markup=False)
                record = produce(job, run, ui)
            except (KeyboardInterrupt, Interrupted):
                raise
            except Exception as exc:
                if not run.batch or debug_enabled():
                    raise
                ui.clear()
                failures += 1
                report(exc, stderr, prefix=f"{item.where}: " if not str(exc).startswith(item.where) else "")
                continue
            written += 1
            ui.clear()
            if opts.json_out:
                emit_json(record)
            else:
                emit_line(record["output"])
            if human:
                stderr.print(f"wrote {record['output']} in {record['timings']['total_s']:.1f} s", markup=False)
    if failures:
        raise WanError(f"{failures} of {len(items)} items failed ({written} written)",
                       hint="the messages above say why; fix those lines and run them again")  # fmt: skip


def start(command: str, prompt: str | None, image: str | None, last_frame: str | None, raw: dict[str, Any]) -> None:
    refuse_peer_options(raw)
    opts = Options(**raw)
    if opts.offload not in OFFLOAD:
        raise UsageError(f"invalid value for --offload: {opts.offload!r}", hint="use auto, none, model or blocks")
    if opts.attention not in ATTENTION_BACKENDS:
        raise UsageError(f"invalid value for --attention: {opts.attention!r}",
                         hint=f"use one of {', '.join(ATTENTION_BACKENDS)}")  # fmt: skip
    vae_tiling(opts.vae_tile)  # a bad --vae-tile is a usage error before anything runs
    if opts.json_out and opts.quiet:
        raise UsageError("--json and --quiet cannot be used together", hint="pick one")
    if opts.verbose:
        show_engine_log()
    flags = flag_values(opts)
    env = env_values()
    preset = load_preset(opts.preset) if opts.preset else None
    example = 'wan t2v "a corgi running on a beach"' if command == "t2v" else 'wan i2v cat.png --prompt "a cat yawns"'
    if opts.prompts is not None:
        if prompt is not None:
            what = "PROMPT" if command == "t2v" else "--prompt"
            raise UsageError(f"give either {what} or --prompts, not both", hint=f"e.g. {example}")
        items = read_prompts_file(opts.prompts)
    else:
        items = [Item(1, "", prompt if prompt is not None else stdin_prompt(example))]
    batch = opts.prompts is not None
    if batch and opts.output and "{" not in opts.output and not (opts.output.endswith(("/", os.sep))
                                                                 or Path(opts.output).is_dir()):  # fmt: skip
        raise UsageError(f"-o {opts.output!r} names one file, but a batch writes several",
                         hint="give a folder (-o out/) or a template (-o out/{index}-{seed}.mp4)")  # fmt: skip
    if batch:  # a problem shared by every item is reported once, before any item is planned
        for spec, suffix in ((opts.output, ".mp4"), (opts.save_latents, ".safetensors")):
            if spec is not None:
                check_writable([batch_folder(spec) / f"probe{suffix}"], force=True)
    run = Run(command, opts, flags, env, preset, image=image, last_frame=last_frame, batch=batch)
    from ..engine import tune_host_allocator

    tune_host_allocator()  # streaming loops keep a flat RSS (engine/memory.py)
    run_items(run, items)


# --------------------------------------------------------------------------------------------------------------------
# The commands
# --------------------------------------------------------------------------------------------------------------------


@with_common_options(preset="t2v-1.3b-480p")
def t2v(
    prompt: Annotated[
        str | None,
        typer.Argument(
            metavar="PROMPT",
            show_default=False,
            help="What the video shows. Read from stdin when omitted and stdin is a pipe.",
        ),
    ] = None,
    **opts: Any,
) -> None:
    """Text to video.

    Examples:

      wan t2v "a corgi running on a beach at sunset" -o corgi.mp4

      wan t2v "a red fox in the snow" -m 14b-t2v --size 1280x720 --seed 7

      wan t2v --prompts prompts.txt -o out/ --json

      cat prompts.jsonl | wan t2v --prompts - -q | while read -r f; do echo "done: $f"; done
    """
    run_guarded(lambda: start("t2v", prompt, None, None, opts), stderr)


@with_common_options(preset="i2v-14b-480p")
def i2v(
    image: Annotated[
        str | None,
        typer.Argument(
            metavar="IMAGE",
            show_default=False,
            help="The first frame (PNG, JPEG, WebP). In a batch: the default for lines without one.",
        ),
    ] = None,
    prompt: Annotated[
        str | None,
        typer.Option(
            "--prompt",
            metavar="TEXT",
            show_default=False,
            help="What happens. Read from stdin when omitted and stdin is a pipe.",
        ),
    ] = None,
    last_frame: Annotated[
        str | None,
        typer.Option(
            "--last-frame",
            metavar="IMAGE",
            show_default=False,
            help="The last frame: first-last-frame-to-video (the FLF2V model).",
        ),
    ] = None,
    **opts: Any,
) -> None:
    """Image to video (and first-last-frame to video with --last-frame).

    Examples:

      wan i2v cat.png --prompt "the cat yawns and stretches" -o cat.mp4

      wan i2v start.png --last-frame end.png --prompt "a flower blooms"

      wan i2v --prompts shots.jsonl -o out/{index}-{seed}.mp4   # {"image": "a.png", "prompt": "…"} per line
    """
    run_guarded(lambda: start("i2v", prompt, image, last_frame, opts), stderr)
