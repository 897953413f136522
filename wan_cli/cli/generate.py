"""`wan t2v` and `wan i2v`: one video, or a batch (``--prompts FILE|-``) with every model loaded once.

Thin over the engine: options → settings layers (``presets.py``: defaults < preset < env < flags < item) → a plan
per item (model files found, seed drawn, output named and checked, request validated — nothing is loaded for a bad
item) → ``Pipeline.generate`` → the streaming MP4 writer, the optional latents file and the JSON sidecar.
stdout gets one line per finished video: its path, or the settings record with ``--json``.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import sys
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import ValidationError

from .. import __version__
from ..engine.errors import InputError, WanError
from ..presets import Settings, Values, env_values, list_presets, load_preset, resolve, values_from
from .errors import UsageError, debug_enabled, report, run_guarded
from .output import Progress, emit_json, emit_line, stderr

if TYPE_CHECKING:
    from ..engine.pipeline import GenerationRequest, GenerationResult, Pipeline
    from ..hub import ModelFiles

# The model each command uses when neither -m, WAN_MODEL nor a preset names one.
DEFAULT_MODEL = {"t2v": "1.3b-t2v", "i2v": "14b-i2v-480p", "flf2v": "14b-flf2v-720p"}
OFFLOAD = ("auto", "none", "model")

# --------------------------------------------------------------------------------------------------------------------
# Options shared by every generation command (declared once; `with_common_options` appends them to a signature)
# --------------------------------------------------------------------------------------------------------------------


HELP = {
    "output": "Output .mp4 (default: <prompt-slug>-<seed>.mp4 here). In a batch: a folder, or a template using "
    "{index} {seed} {slug} {task}.",
    "model": "A model name (`wan models`) or a local checkpoint file/folder in any layout. Env: WAN_MODEL.",
    "preset": "Preset name (`wan presets list`) or a YAML file. Default: the model's own preset.",
    "size": "Frame size, e.g. 832x480 (i2v/flf2v: the pixel area; the aspect follows the image).",
    "frames": "Number of frames, 4n+1 (81 = 5 s at 16 fps).",
    "fps": "Frame rate of the MP4 (the models are trained at 16).",
    "steps": "Sampling steps.",
    "guidance": "Classifier-free guidance scale.",
    "shift": "Flow shift of the noise schedule.",
    "solver": "Sampler.",
    "seed": "Random seed (default: a random one, reported).",
    "negative_prompt": "What to avoid (default: the official negative prompt).",
    "prompts": "Batch: one prompt per line, or JSONL objects with per-item overrides (prompt, image, last_frame, "
    "seed, output, save_latents, size, frames, steps, guidance, shift, solver, negative_prompt, model).",
    "save_latents": "Also save the final latents (safetensors; `wan decode` turns them into video). Batch: a folder "
    "or a template.",
    "text_encoder": "UMT5 weights, overriding the model's.",
    "vae": "VAE weights, overriding the model's.",
    "image_encoder": "CLIP weights (i2v), overriding the model's.",
    "tokenizer": "Tokenizer folder, overriding the model's.",
    "device": "Where to run. Env: WAN_DEVICE.",
    "dtype": "DiT compute dtype (auto: bf16 on GPUs, fp32 on CPU). Env: WAN_DTYPE.",
    "offload": "Between phases keep models on the GPU (none) or move them to CPU RAM (model).",
    "force": "Overwrite existing output files.",
    "json_out": "Print one JSON record per video (the sidecar's content).",
    "quiet": "Print only the output paths; no progress.",
}

# name, type, option names, metavar (None: Typer's), default; declared once for every generation command
_COMMON: list[tuple[str, Any, tuple[str, ...], str | None, Any]] = [
    ("output", str | None, ("-o", "--output"), "PATH", None),
    ("model", str | None, ("-m", "--model"), "NAME|PATH", None),
    ("preset", str | None, ("-p", "--preset"), "NAME|FILE", None),
    ("size", str | None, ("--size",), "WxH", None),
    ("frames", int | None, ("--frames",), None, None),
    ("fps", float | None, ("--fps",), None, None),
    ("steps", int | None, ("--steps",), None, None),
    ("guidance", float | None, ("--guidance",), None, None),
    ("shift", float | None, ("--shift",), None, None),
    ("solver", str | None, ("--solver",), "unipc|dpm++|euler", None),
    ("seed", int | None, ("--seed",), None, None),
    ("negative_prompt", str | None, ("--negative-prompt",), "TEXT", None),
    ("prompts", str | None, ("--prompts",), "FILE|-", None),
    ("save_latents", str | None, ("--save-latents",), "PATH", None),
    ("text_encoder", Path | None, ("--text-encoder",), "PATH", None),
    ("vae", Path | None, ("--vae",), "PATH", None),
    ("image_encoder", Path | None, ("--image-encoder",), "PATH", None),
    ("tokenizer", Path | None, ("--tokenizer",), "PATH", None),
    ("device", str | None, ("--device",), "auto|cuda|cpu|mps", None),
    ("dtype", str | None, ("--dtype",), "auto|bf16|fp16|fp32", None),
    ("offload", str, ("--offload",), "auto|none|model", "auto"),
    ("force", bool, ("--force",), None, False),
    ("json_out", bool, ("--json",), None, False),
    ("quiet", bool, ("-q", "--quiet"), None, False),
]
COMMON_OPTIONS: list[tuple[str, Any, Any]] = [
    (name, Annotated[kind, typer.Option(*decls, help=HELP[name], metavar=metavar, show_default=False)], default)
    for name, kind, decls, metavar, default in _COMMON
]


def with_common_options(fn: Callable[..., None]) -> Callable[..., None]:
    """Give ``fn(own args, **opts)`` a signature Typer can read: its own parameters, then COMMON_OPTIONS."""
    own = [
        p
        for p in inspect.signature(fn, eval_str=True).parameters.values()
        if p.kind is not inspect.Parameter.VAR_KEYWORD
    ]
    common = [
        inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, annotation=a, default=d) for n, a, d in COMMON_OPTIONS
    ]
    fn.__signature__ = inspect.Signature([*own, *common])  # type: ignore[attr-defined]
    return fn


@dataclass
class Options:
    output: str | None = None
    model: str | None = None
    preset: str | None = None
    size: str | None = None
    frames: int | None = None
    fps: float | None = None
    steps: int | None = None
    guidance: float | None = None
    shift: float | None = None
    solver: str | None = None
    seed: int | None = None
    negative_prompt: str | None = None
    prompts: str | None = None
    save_latents: str | None = None
    text_encoder: Path | None = None
    vae: Path | None = None
    image_encoder: Path | None = None
    tokenizer: Path | None = None
    device: str | None = None
    dtype: str | None = None
    offload: str = "auto"
    force: bool = False
    json_out: bool = False
    quiet: bool = False


SETTING_FLAGS = ("model", "size", "frames", "fps", "steps", "guidance", "shift", "solver", "seed", "negative_prompt",
                 "device", "dtype")  # fmt: skip


def flag_values(opts: Options) -> Values:
    """The command-line layer; a bad value is a usage error naming the flag."""
    data = {k: getattr(opts, k) for k in SETTING_FLAGS if getattr(opts, k) is not None}
    try:
        return Values.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        flag = "--" + str(err["loc"][0]).replace("_", "-")
        msg = str(err["msg"]).removeprefix("Value error, ")
        raise UsageError(f"invalid value for {flag}: {msg}", hint=f"see `wan t2v --help` for {flag}") from None


# --------------------------------------------------------------------------------------------------------------------
# Items: the single prompt, or the lines of a --prompts file
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class Item:
    index: int
    where: str  # "" for a single run; "prompts.jsonl line 3" in a batch
    prompt: str
    image: str | None = None
    last_frame: str | None = None
    output: str | None = None
    save_latents: str | None = None
    values: Values = field(default_factory=Values)
    error: WanError | None = None  # a line that could not be parsed: reported in order, counted as a failure


_ITEM_FILES = ("image", "last_frame", "output", "save_latents")
_NOT_PER_ITEM = ("device", "dtype", "task", "description")


def item_from_json(obj: object, index: int, where: str) -> Item:
    if not isinstance(obj, dict):
        raise InputError(f"{where}: a JSONL line must be an object", hint='e.g. {"prompt": "a cat", "seed": 1}')
    data = dict(obj)
    if "last_image" in data:
        data["last_frame"] = data.pop("last_image")
    prompt = data.pop("prompt", None)
    if not isinstance(prompt, str):
        raise InputError(f'{where}: no "prompt" string', hint='each object needs "prompt": "…"')
    files: dict[str, str | None] = {}
    for key in _ITEM_FILES:
        value = data.pop(key, None)
        if value is not None and not isinstance(value, str):
            raise InputError(f"{where}: {key!r} must be a string path", hint=f'e.g. "{key}": "path"')
        files[key] = value
    for key in _NOT_PER_ITEM:
        if key in data:
            raise InputError(f"{where}: {key!r} cannot change per item", hint="pass it once on the command line")
    return Item(index, where, prompt, files["image"], files["last_frame"], files["output"], files["save_latents"],
                values=values_from(data, where))  # fmt: skip


def parse_prompts(text: str, source: str) -> list[Item]:
    items: list[Item] = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        index, where = len(items) + 1, f"{source} line {n}"
        if not line.startswith("{"):
            items.append(Item(index, where, line))
            continue
        try:
            items.append(item_from_json(json.loads(line), index, where))
        except json.JSONDecodeError as exc:
            error = InputError(f"{where} is not valid JSON: {exc.msg} (column {exc.colno})",
                               hint='one object per line, e.g. {"prompt": "a cat", "seed": 1}')  # fmt: skip
            items.append(Item(index, where, "", error=error))
        except WanError as exc:
            items.append(Item(index, where, "", error=exc))
    if not items:
        raise InputError(f"{source} holds no prompts", hint="one prompt per line, or one JSON object per line")
    return items


def read_prompts_file(spec: str) -> list[Item]:
    if spec == "-":
        return parse_prompts(sys.stdin.read(), "stdin")
    path = Path(spec).expanduser()
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise InputError(f"prompts file {path} {what}", hint="pass a text or JSONL file, or - for stdin")
    try:
        return parse_prompts(path.read_text(encoding="utf-8"), path.name)
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read prompts file {path}: {exc}", hint="pass a UTF-8 text or JSONL file") from None


def stdin_prompt(example: str) -> str:
    """A prompt piped on stdin (`echo "a cat" | wan t2v`); with a terminal on stdin, a usage error, not a hang."""
    if sys.stdin is None or sys.stdin.isatty():
        raise UsageError("no prompt given", hint=f"e.g. {example}")
    return sys.stdin.read().strip()


# --------------------------------------------------------------------------------------------------------------------
# Planning one item: settings, model files, seed, output paths, request — all before anything is loaded
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class Run:
    """What the whole command shares: options, settings layers, and models kept across items."""

    command: str  # "t2v" or "i2v"
    opts: Options
    flags: Values
    env: Values
    preset: tuple[str, Values] | None  # explicit -p
    image: str | None = None
    last_frame: str | None = None
    batch: bool = False
    pipelines: dict[tuple[str, str, str], Pipeline] = field(default_factory=dict)


@dataclass
class Job:
    item: Item
    settings: Settings
    files: ModelFiles
    request: GenerationRequest
    output: Path
    sidecar: Path
    latents: Path | None


def slugify(text: str, limit: int = 48) -> str:
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    words = re.sub(r"[^a-z0-9]+", " ", ascii_text.lower()).split()
    slug = ""
    for w in words:
        if len(slug) + len(w) + 1 > limit:
            break
        slug = f"{slug}-{w}" if slug else w
    return slug or (words[0][:limit] if words else "video")


def _target(template: str | None, default_name: str, fields: dict[str, object], suffix: str, flag: str) -> Path:
    if template is None:
        return Path(default_name)
    text = template
    if "{" in template:
        try:
            text = template.format(**fields)
        except (KeyError, IndexError, ValueError) as exc:
            raise UsageError(f"bad placeholder in {flag} {template!r} ({exc})",
                             hint="use {index}, {seed}, {slug} or {task}") from None  # fmt: skip
    path = Path(text).expanduser()
    if path.is_dir() or text.endswith(("/", os.sep)):
        return path / default_name
    if path.suffix == "":
        return path.with_suffix(suffix)
    if path.suffix.lower() != suffix:
        raise UsageError(f"{flag} {template!r} must end in {suffix}", hint=f"e.g. {path.with_suffix(suffix).name}")
    return path


def check_writable(paths: list[Path], force: bool) -> None:
    """Refuse to clobber (without --force) and fail early on a folder that cannot hold the files."""
    for path in paths:
        if path.exists() and not force:
            raise InputError(f"{path} already exists", hint="pass --force to overwrite it, or choose another -o")
        if path.is_dir():
            raise InputError(f"{path} is a folder", hint="give a file name")
        parent = path.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"cannot create the folder {parent}: {exc.strerror}",
                             hint="choose an output path in a writable folder") from None  # fmt: skip
        if not os.access(parent, os.W_OK):
            raise InputError(f"the folder {parent} is not writable", hint="choose an output path in a writable folder")


def _variant_name(spec: str) -> str | None:
    from ..registry import find

    found = find(spec)
    return found.name if found is not None else None


def auto_preset(spec: str, task: str, size: tuple[int, int] | None) -> tuple[str, Values] | None:
    """The preset for a model: a registry name's own, or for a local checkpoint the one for its task and width;
    among a model's presets (14B t2v: 480p and 720p) the one nearest the requested size."""
    local = Path(spec).expanduser().exists()
    name = _local_variant(spec, task) if local else _variant_name(spec)
    if name is None:
        return None
    loaded = [load_preset(p) for p in list_presets()]
    mine = [(n, v) for n, v in loaded if v.model == name and v.task in (task, None)]
    if not mine:
        return None
    if size is None:
        from ..registry import get

        own = get(name).preset
        return next(((n, v) for n, v in mine if n == own), mine[0])
    area = size[0] * size[1]
    return min(mine, key=lambda nv: abs((nv[1].size or (0, 0))[0] * (nv[1].size or (0, 0))[1] - area))


def _local_variant(spec: str, task: str) -> str | None:
    """A local checkpoint's registry twin, judged by its DiT's type and width (headers only)."""
    from ..engine.checkpoints import peek_transformer_config

    try:
        cfg = peek_transformer_config(spec)
    except WanError:
        return None  # split files without a DiT here, or not a checkpoint: the pipeline will say
    if cfg.model_type == "t2v":
        return "1.3b-t2v" if cfg.dim <= 1536 else "14b-t2v"
    return DEFAULT_MODEL.get(cfg.model_type)


def pick_device(name: str) -> str:
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if torch.backends.mps.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError(
            "CUDA was asked for, but torch sees no CUDA device",
            hint="use --device cpu, or install a CUDA build of torch (`make install TORCH=torch`)",
        )
    if name == "mps" and not torch.backends.mps.is_available():
        raise InputError("MPS was asked for, but torch sees no Apple GPU", hint="use --device cpu")
    return name


def plan(item: Item, run: Run) -> Job:
    from ..engine.pipeline import GenerationRequest, load_image, resolve_seed, validate
    from ..hub import resolve_model

    if item.error is not None:
        raise item.error
    opts = run.opts
    image = item.image or run.image
    last = item.last_frame or run.last_frame
    if run.command == "t2v" and (image or last):
        raise InputError(f"{item.where or 't2v'}: t2v takes no image", hint="use `wan i2v IMAGE --prompt …`")
    task = "t2v" if run.command == "t2v" else ("flf2v" if last else "i2v")
    if task != "t2v" and not image:
        raise InputError("no input image", hint='give IMAGE, or an "image" key on each JSONL line')

    spec = item.values.model or run.flags.model or run.env.model
    if run.preset is not None:
        preset_name: str | None
        preset_name, preset_values = run.preset
    else:
        size = item.values.size or run.flags.size
        found = auto_preset(spec or DEFAULT_MODEL[task], task, size)
        preset_name, preset_values = found if found is not None else (None, Values())
    if preset_values.task not in (None, task):
        raise InputError(f"preset {preset_name} is for {preset_values.task}, not {task}",
                         hint="pick a preset made for this command (`wan presets list`)")  # fmt: skip
    preset_values = preset_values.model_copy(update={"task": task})
    settings = resolve(preset_values, run.env, run.flags, item.values, preset=preset_name)
    spec = settings.model or DEFAULT_MODEL[task]
    settings = settings.model_copy(update={"model": spec})

    from ..engine.transformer import a_model
    from ..registry import find

    variant = find(spec) if not Path(spec).expanduser().exists() else None
    if variant is not None:
        variant_task = variant.task
        if variant_task != task:
            cmd = "t2v" if variant_task == "t2v" else "i2v"
            extra = " --last-frame LAST" if variant_task == "flf2v" else ""
            raise InputError(f"{variant.name} is {a_model(variant_task)}; this run is {task}",
                             hint=f"use `wan {cmd} …{extra}` with it, or -m {DEFAULT_MODEL[task]}")  # fmt: skip
    files = resolve_model(spec)

    seed = resolve_seed(settings.seed)
    slug = slugify(item.prompt)
    fields: dict[str, object] = {"index": item.index, "seed": seed, "slug": slug, "task": task}
    output = _target(item.output or opts.output, f"{slug}-{seed}.mp4", fields, ".mp4", "-o")
    latents_spec = item.save_latents or opts.save_latents
    latents = (_target(latents_spec, f"{slug}-{seed}.safetensors", fields, ".safetensors", "--save-latents")
               if latents_spec else None)  # fmt: skip
    sidecar = output.with_suffix(".json")

    import torch

    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    request = GenerationRequest(
        prompt=item.prompt, model=str(files.root or ""), task=task,  # type: ignore[arg-type]
        negative_prompt=settings.negative_prompt, image=image, last_image=last,
        width=settings.width, height=settings.height, frames=settings.frames, steps=settings.steps,
        guidance=settings.guidance, shift=settings.shift, solver=settings.solver, seed=seed,
        dit=files.dit, vae=opts.vae or files.vae, text_encoder=opts.text_encoder or files.text_encoder,
        tokenizer=opts.tokenizer or files.tokenizer, image_encoder=opts.image_encoder or files.image_encoder,
        device=pick_device(settings.device), dtype=dtypes.get(settings.dtype),
    )  # fmt: skip
    validate(request)
    if files.root is None:  # split files (ComfyUI): every component needs its own path
        needed = ("vae", "text_encoder") + (("image_encoder",) if task != "t2v" else ())
        missing = ["--" + c.replace("_", "-") for c in needed if getattr(request, c) is None]
        if missing:
            flags = " and ".join(m + " PATH" for m in missing)
            raise InputError(f"{spec} holds only the diffusion model; no {', '.join(missing)} given",
                             hint=f"pass {flags}, or a whole model folder")  # fmt: skip
    for img in (image, last):
        if img is not None:
            load_image(img)  # a missing, unreadable or animated image fails here, before any model is loaded
    check_writable([p for p in (output, sidecar, latents) if p is not None], opts.force)
    return Job(item, settings, files, request, output, sidecar, latents)


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


def pipeline_for(run: Run, request: GenerationRequest) -> Pipeline:
    from ..engine.pipeline import Pipeline

    device = str(request.device)
    policy = {"none": "keep", "model": "offload"}.get(run.opts.offload)
    if policy is None and run.batch:
        policy = "keep" if device == "cpu" else "offload"  # a batch never reloads weights from disk
    key = (device, str(request.dtype), policy or "default")
    if key not in run.pipelines:
        run.pipelines[key] = Pipeline(device=device, dtype=request.dtype, policy=policy)  # type: ignore[arg-type]
    return run.pipelines[key]


def produce(job: Job, run: Run, ui: Progress) -> dict[str, Any]:
    from ..engine.video import VideoWriter

    t_start = time.perf_counter()
    ui.phase("load + encode")
    result = run_pipeline(job, run, ui)
    req = result.request
    timings = dict(result.timings)
    record = settings_record(job, result, timings)
    if job.latents is not None:
        from ..engine.latents import save_latents

        save_latents(job.latents, result.latents, fps=job.settings.fps, source=req.task, model=str(job.settings.model),
                     record=record, force=run.opts.force)  # fmt: skip
    ui.phase("decode + write", total=req.frames)
    t0 = time.perf_counter()
    with VideoWriter(job.output, req.width, req.height, job.settings.fps, force=run.opts.force,
                     metadata=record) as writer:  # fmt: skip
        for chunk in result.frames():
            writer.write(chunk)
            ui.update("decode + write", writer.frames_written, req.frames)
        timings["decode_write_s"] = time.perf_counter() - t0
        timings["total_s"] = time.perf_counter() - t_start
        record = settings_record(job, result, timings)
        writer.set_metadata(record)
    write_json_atomic(job.sidecar, record)
    return record


def run_pipeline(job: Job, run: Run, ui: Progress) -> GenerationResult:
    return pipeline_for(run, job.request).generate(job.request, progress=ui.update)


def _describe(job: Job) -> str:
    s, r = job.settings, job.request
    size = f"{r.width}x{r.height}" + (" area" if r.task != "t2v" else "")
    return (f"{r.task} · {job.files.name or s.model} · {size} · {r.frames} frames · {r.steps} steps · "
            f"seed {r.seed} → {job.output}")  # fmt: skip


def run_items(run: Run, items: list[Item]) -> None:
    opts = run.opts
    human = not (opts.json_out or opts.quiet)
    failures = written = 0
    with Progress(enabled=human and stderr.is_terminal) as ui:
        for item in items:
            try:
                job = plan(item, run)
                if human:
                    stderr.print(f"{item.where + ': ' if run.batch else ''}{_describe(job)}", markup=False)
                record = produce(job, run, ui)
            except KeyboardInterrupt:
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
    opts = Options(**raw)
    if opts.offload not in OFFLOAD:
        raise UsageError(f"invalid value for --offload: {opts.offload!r}", hint="use auto, none or model")
    if opts.json_out and opts.quiet:
        raise UsageError("--json and --quiet cannot be used together", hint="pick one")
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
    run = Run(command, opts, flags, env, preset, image=image, last_frame=last_frame, batch=batch)
    run_items(run, [replace(i) for i in items])


# --------------------------------------------------------------------------------------------------------------------
# The commands
# --------------------------------------------------------------------------------------------------------------------


@with_common_options
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


@with_common_options
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
