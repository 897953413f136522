"""Planning the items of a `wan t2v` / `wan i2v` run, all before anything is loaded: settings layers, model files
(and a ComfyUI tree's siblings), seed, output names checked (no clobbering, inputs never outputs, one writer per
file), text checked, a size that cannot fit refused, the request validated, images opened. What items share is read
once (``Run.memo``)."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ..engine import InputError, Interrupted, WanError
from ..presets import Settings, Values, is_preset_file, list_presets, load_preset, resolve
from .errors import debug_enabled, report
from .items import Item
from .options import Options, vae_tiling
from .output import stderr
from .outputs import batch_folder, check_not_inputs, check_writable, inside, target

if TYPE_CHECKING:
    from ..engine import Component, GenerationRequest, Pipeline
    from ..hub import ModelFiles
    from ..registry import ModelSpec

T = TypeVar("T")
# The model each command uses when neither -m, WAN_MODEL nor a preset names one.
DEFAULT_MODEL = {"t2v": "1.3b-t2v", "i2v": "14b-i2v-480p", "flf2v": "14b-flf2v-720p"}


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
    lora_sets: int = 1  # distinct LoRA sets among the planned items
    pipelines: dict[tuple[str, str, bool], Pipeline] = field(default_factory=dict)
    _memo: dict[tuple[Any, ...], Any] = field(default_factory=dict)

    def memo(self, key: tuple[Any, ...], fn: Callable[[], T]) -> T:
        """``fn()`` once per key for the whole run (its result, or the error it raised): planning 10,000 items must
        not re-read the same headers, presets and images 10,000 times."""
        if key not in self._memo:
            try:
                self._memo[key] = (True, fn())
            except WanError as exc:
                self._memo[key] = (False, exc)
        ok, value = self._memo[key]
        if not ok:
            raise value
        return value


@dataclass
class Job:
    item: Item
    settings: Settings
    files: ModelFiles
    request: GenerationRequest
    output: Path
    sidecar: Path
    latents: Path | None
    notes: list[str] = field(default_factory=list)  # warnings for stderr (human mode)


def slugify(text: str, limit: int = 48) -> str:
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    words = re.sub(r"[^a-z0-9]+", " ", ascii_text.lower()).split()
    slug = ""
    for w in words:
        if len(slug) + len(w) + 1 > limit:
            break
        slug = f"{slug}-{w}" if slug else w
    return slug or (words[0][:limit] if words else "video")


def _variant_name(spec: str) -> str | None:
    from ..registry import find

    found = find(spec)
    return found.name if found is not None else None


OWN_PRESET = re.compile(r"^(t2v|i2v|flf2v)-[0-9.]+b-[0-9]+p$")


def auto_preset(spec: str, task: str, size: tuple[int, int] | None) -> tuple[str, Values] | None:
    """The preset for a model: a registry name's own, or for a local checkpoint the one for its task and width;
    among a model's presets (14B t2v: 480p and 720p) the one nearest the requested size."""
    local = Path(spec).expanduser().exists()
    name = _local_variant(spec, task) if local else _variant_name(spec)
    if name is None:
        return None
    loaded = [load_preset(p) for p in list_presets()]
    # a model's own presets are named task-size-resolution; the others (t2v-14b-480p-lightx2v) are asked for by name
    mine = [(n, v) for n, v in loaded if v.model == name and v.task in (task, None) and OWN_PRESET.match(n)]
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
    from ..engine import peek_transformer_config

    try:
        cfg = peek_transformer_config(spec)
    except WanError:
        return None  # split files without a DiT here, or not a checkpoint: the pipeline will say
    if cfg.model_type == "t2v":
        return "1.3b-t2v" if cfg.dim <= 1536 else "14b-t2v"
    return DEFAULT_MODEL.get(cfg.model_type)


def _beside_in_comfy_tree(files: ModelFiles, task: str, opts: Options) -> tuple[ModelFiles, list[str]]:
    """A diffusion model in a ComfyUI models/ tree (or the tree itself): the components no flag gives, from its
    sibling folders, each when exactly one file fits (else an error listing them)."""
    from ..engine import find_components

    path = files.dit or files.root
    assert path is not None
    wanted: tuple[Component, ...] = ("vae", "text_encoder") + (("image_encoder",) if task != "t2v" else ())
    found = find_components(path, task, tuple(c for c in wanted if getattr(opts, c) is None))
    if not found.paths:
        return files, []
    parts = {c: found.paths.get(c, getattr(files, c)) for c in ("dit", "vae", "text_encoder", "image_encoder")}
    return replace(files, root=None, **parts), found.notes


def check_text(text: str, where: str) -> None:
    """Text that cannot be written as UTF-8 (a lone surrogate from a JSON escape) fails now, not after generation."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(f"{where + ': ' if where else ''}the prompt has a character that is not valid text "
                         f"({text[exc.start]!a} at position {exc.start}, a lone surrogate)",
                         hint="fix the text (in JSON, \\ud800-\\udfff escapes come in pairs)") from None  # fmt: skip


def plan(item: Item, run: Run) -> Job:
    """One item → its Job: settings merged, model files resolved, seed drawn, outputs named, and everything that can
    fail checked (request rules, memory fit, images, text, files), all before any model is loaded."""
    from ..engine import resolve_seed
    from ..hub import resolve_model

    if item.error is not None:
        raise item.error
    opts = run.opts
    task, image, last = _task(item, run)
    settings = _settings(item, run, task)
    spec = settings.model or DEFAULT_MODEL[task]
    variant = _variant(spec, task)
    files = run.memo(("model", spec), lambda: resolve_model(spec))
    notes: list[str] = []
    if files.source == "local":
        local = files
        files, found = run.memo(("beside", spec, task), lambda: _beside_in_comfy_tree(local, task, opts))
        notes = list(found)
    seed = resolve_seed(settings.seed)
    output, sidecar, latents = _outputs(item, opts, seed, task)
    request = _request(item, run, settings, files, task, seed, image, last)
    _check(item, run, settings, request, files, spec)
    writes = [p for p in (output, sidecar, latents) if p is not None]
    check_writable(writes, opts.force)
    check_not_inputs(writes, [image, last, opts.prompts, *files.components.values(), request.vae,
                              request.text_encoder, request.image_encoder])  # fmt: skip
    if variant is not None and (settings.width, settings.height) not in variant.sizes:
        trained = ", ".join(f"{w}x{h}" for w, h in variant.sizes)
        what = "size" if task == "t2v" else "area"
        notes.append(f"note: {variant.name} was trained at {trained}; other {what}s work but may look worse")
    return Job(item, settings, files, request, output, sidecar, latents, notes)


def _task(item: Item, run: Run) -> tuple[str, str | None, str | None]:
    """(task, first image, last image): t2v takes none, i2v one, flf2v two."""
    image = item.image or run.image
    last = item.last_frame or run.last_frame
    if run.command == "t2v" and (image or last):
        raise InputError(f"{item.where or 't2v'}: t2v takes no image", hint="use `wan i2v IMAGE --prompt …`")
    task = "t2v" if run.command == "t2v" else ("flf2v" if last else "i2v")
    if task != "t2v" and not image:
        raise InputError("no input image", hint='give IMAGE, or an "image" key on each JSONL line')
    return task, image, last


def _settings(item: Item, run: Run, task: str) -> Settings:
    """The layers merged: defaults < the preset (named, or the model's own) < user file < env < flags < item."""
    user = run.preset if run.opts.preset and is_preset_file(run.opts.preset) else None  # -p FILE: over the model's
    spec = item.values.model or run.flags.model or run.env.model or (user[1].model if user else None)
    preset_name: str | None
    if run.preset is not None and user is None:
        preset_name, preset_values = run.preset
    else:
        size = item.values.size or run.flags.size or (user[1].size if user else None)
        found = run.memo(("preset", spec, task, size), lambda: auto_preset(spec or DEFAULT_MODEL[task], task, size))
        preset_name, preset_values = found if found is not None else (None, Values())
    if preset_values.task not in (None, task):
        raise InputError(f"preset {preset_name} is for {preset_values.task}, not {task}",
                         hint="pick a preset made for this command (`wan presets list`)")  # fmt: skip
    preset_values = preset_values.model_copy(update={"task": task})
    settings = resolve(preset_values, run.env, run.flags, item.values, preset=preset_name, user=user)
    return settings.model_copy(update={"model": settings.model or DEFAULT_MODEL[task]})


def _variant(spec: str, task: str) -> ModelSpec | None:
    """The registry variant ``spec`` names (None for a local path), refused if it is for another task."""
    from ..engine import a_model
    from ..registry import find

    variant = find(spec) if not Path(spec).expanduser().exists() else None
    if variant is not None and variant.task != task:
        cmd = "t2v" if variant.task == "t2v" else "i2v"
        extra = " --last-frame LAST" if variant.task == "flf2v" else ""
        raise InputError(f"{variant.name} is {a_model(variant.task)}; this run is {task}",
                         hint=f"use `wan {cmd} …{extra}` with it, or -m {DEFAULT_MODEL[task]}")  # fmt: skip
    return variant


def _outputs(item: Item, opts: Options, seed: int, task: str) -> tuple[Path, Path, Path | None]:
    """(video, sidecar, latents file or None): `-o` as a file, folder or template; a JSONL `output` inside it."""
    slug = slugify(item.prompt)
    fields: dict[str, object] = {"index": item.index, "seed": seed, "slug": slug, "task": task}
    own = inside(batch_folder(opts.output), item.output, item.where) if item.output else None
    output = target(own or opts.output, f"{slug}-{seed}.mp4", fields, ".mp4", "-o")
    latents_spec = (inside(batch_folder(opts.save_latents), item.save_latents, item.where) if item.save_latents
                    else opts.save_latents)  # fmt: skip
    latents = (target(latents_spec, f"{slug}-{seed}.safetensors", fields, ".safetensors", "--save-latents")
               if latents_spec else None)  # fmt: skip
    return output, output.with_suffix(".json"), latents


def _request(item: Item, run: Run, settings: Settings, files: ModelFiles, task: str, seed: int,
             image: str | None, last: str | None) -> GenerationRequest:  # fmt: skip
    """The engine's request, validated by the engine's rules (engine/request.py)."""
    from ..engine import GenerationRequest, parse_lora, resolve_device, resolve_dtype, validate

    opts = run.opts
    device = run.memo(("device", settings.device), lambda: resolve_device(settings.device))
    compute = None if settings.dtype == "fp8" else settings.dtype  # fp8: stored in fp8, computed in the auto dtype
    request = GenerationRequest(
        prompt=item.prompt, model=str(files.root or ""), task=task,  # type: ignore[arg-type]
        negative_prompt=settings.negative_prompt, image=image, last_image=last,
        width=settings.width, height=settings.height, frames=settings.frames, steps=settings.steps,
        guidance=settings.guidance, shift=settings.shift, solver=settings.solver, seed=seed,
        dit=files.dit, vae=opts.vae or files.vae, text_encoder=opts.text_encoder or files.text_encoder,
        tokenizer=opts.tokenizer or files.tokenizer, image_encoder=opts.image_encoder or files.image_encoder,
        device=device, dtype=resolve_dtype(compute, device), tiling=vae_tiling(opts.vae_tile),
        loras=tuple(parse_lora(text) for text in settings.loras), lora_strict=opts.lora_strict == "on",
        cache=settings.cache, cache_threshold=settings.cache_threshold,
    )  # fmt: skip
    validate(request)
    return request


def _check(item: Item, run: Run, settings: Settings, request: GenerationRequest, files: ModelFiles,
           spec: str) -> None:  # fmt: skip
    """What can fail later, checked now: every component given, the size fits the device's memory (headers only),
    the images open, the text is valid UTF-8."""
    from ..engine import check_fits, load_image, peek_transformer_config

    if files.root is None:  # split files (ComfyUI): every component needs its own path
        needed = ("vae", "text_encoder") + (("image_encoder",) if request.task != "t2v" else ())
        missing = ["--" + c.replace("_", "-") for c in needed if getattr(request, c) is None]
        if missing:
            flags = " and ".join(m + " PATH" for m in missing)
            raise InputError(f"{spec} holds only the diffusion model; no {', '.join(missing)} given",
                             hint=f"pass {flags}, or a whole model folder")  # fmt: skip
    dit_path = files.dit or files.root
    if dit_path is not None:  # a size that cannot fit whatever the memory mode is refused now (headers only)
        cfg = run.memo(("dit", str(dit_path)), lambda: peek_transformer_config(dit_path))
        check_fits(settings.width, settings.height, settings.frames, request.device, dim=cfg.dim,
                   ffn_dim=cfg.ffn_dim, tile=run.opts.vae_tile, what=f"{item.where or 'this video'}")  # fmt: skip
    for img in (request.image, request.last_image):
        if img is not None:  # a missing, unreadable or animated image fails here, before any model is loaded
            run.memo(("image", str(img)), lambda img=img: load_image(img).shape)  # type: ignore[misc]
    for text in (item.prompt, settings.negative_prompt or ""):
        check_text(text, item.where)


def plan_all(run: Run, items: list[Item]) -> tuple[list[Job], int]:
    """Plan every item before any generation: a bad item is reported (with its line) and skipped; two items that
    would write the same file are refused. → (jobs, number of items refused)."""
    jobs: list[Job] = []
    claimed: dict[Path, str] = {}  # a file some item writes → that item
    failures = 0
    for item in items:
        try:
            job = plan(item, run)
            writes = [p.resolve() for p in (job.output, job.sidecar, job.latents) if p is not None]
            clash = next((p for p in writes if p in claimed), None)
            if clash is not None:
                raise InputError(f"{item.where}: writes {clash}, as {claimed[clash]} does",
                                 hint="give each line its own output (or use {index} in -o)")  # fmt: skip
            claimed.update(dict.fromkeys(writes, item.where or "another item"))
        except (KeyboardInterrupt, Interrupted):
            raise
        except Exception as exc:
            if not run.batch or debug_enabled():
                raise
            failures += 1
            report(exc, stderr, prefix=f"{item.where}: " if not str(exc).startswith(item.where) else "")
            continue
        jobs.append(job)
    run.lora_sets = len({job.request.loras for job in jobs}) or 1
    return jobs, failures
