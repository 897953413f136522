"""The options every generation command shares (declared once), and the command-line settings layer."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import ValidationError

from ..presets import Values
from .errors import UsageError

if TYPE_CHECKING:
    from ..engine import Tiling

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
    "seed": "Random seed (default, or -1: a random one, reported).",
    "negative_prompt": "What to avoid (default: the official negative prompt).",
    "prompts": "Batch: one prompt per line, or JSONL objects with per-item overrides (prompt, image, last_frame, "
    "seed, output, save_latents, size, frames, steps, guidance, shift, solver, negative_prompt, model, loras, cache, "
    "cache_threshold).",
    "save_latents": "Also save the final latents (safetensors; `wan decode` turns them into video). Batch: a folder "
    "or a template.",
    "text_encoder": "UMT5 weights, overriding the model's.",
    "vae": "VAE weights, overriding the model's.",
    "image_encoder": "CLIP vision weights (i2v; ComfyUI's clip_vision_h.safetensors), overriding the model's.",
    "tokenizer": "Tokenizer folder, overriding the model's.",
    "device": "Where to run. Env: WAN_DEVICE.",
    "dtype": "DiT compute dtype (auto: bf16 on GPUs, fp32 on CPU); fp8 stores the DiT's block weights in fp8 "
    "(half the memory of bf16) and computes in the auto dtype. Env: WAN_DTYPE.",
    "offload": "Memory mode: none (every model stays on the GPU), model (each model visits the GPU for its phase; "
    "the text encoder streams its blocks), blocks (the DiT streams its blocks too: least memory). auto: the fastest "
    "that fits the free GPU memory.",
    "vae_tile": "Run the VAE in spatial tiles of PX pixels (a multiple of 8, overlapping by a quarter, cross-faded): "
    "for frames too large for GPU memory. Default: whole frames.",
    "compile": "torch.compile the DiT blocks: a one-time ~20 s, then ~25% faster steps on a GPU.",
    "attention": "Attention kernel: sdpa (PyTorch's choice), cudnn, flash3 (FlashAttention 3), flash "
    "(FlashAttention 2), sage (SageAttention). auto: flash3 where it is installed, else sdpa.",
    "lora": "A LoRA for the DiT (diffusers/PEFT, ComfyUI/Kijai/lightx2v or musubi/kohya safetensors), at strength "
    "SCALE (default 1); repeat for several. Merged into float weights, applied beside fp8/GGUF/streamed ones.",
    "lora_strict": "on: LoRA keys that match no layer of the model are an error; off: apply the rest (reported).",
    "cache": "Step cache: reuse the DiT's block output on steps where it barely changes (TeaCache, MagCache, "
    "EasyCache; calibrations in docs/step-caches.md). Faster, at a small quality cost.",
    "cache_threshold": "How much change a cache may skip over (0: none, same output as --cache none). Default: the "
    "cache's published value.",
    "force": "Overwrite existing output files.",
    "json_out": "Print one JSON record per video (the sidecar's content).",
    "quiet": "Print only the output paths; no progress.",
    "verbose": "Show the engine's log on stderr: loads, releases, memory-mode decisions.",
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
    ("solver", str | None, ("--solver",), "unipc|dpm++|euler|lcm", None),
    ("seed", int | None, ("--seed",), None, None),
    ("negative_prompt", str | None, ("--negative-prompt",), "TEXT", None),
    ("prompts", str | None, ("--prompts",), "FILE|-", None),
    ("save_latents", str | None, ("--save-latents",), "PATH", None),
    ("text_encoder", Path | None, ("--text-encoder",), "PATH", None),
    ("vae", Path | None, ("--vae",), "PATH", None),
    ("image_encoder", Path | None, ("--image-encoder", "--clip-vision"), "PATH", None),
    ("tokenizer", Path | None, ("--tokenizer",), "PATH", None),
    ("device", str | None, ("--device",), "auto|cuda|cpu|mps", None),
    ("dtype", str | None, ("--dtype",), "auto|bf16|fp16|fp32|fp8", None),
    ("offload", str, ("--offload",), "auto|none|model|blocks", "auto"),
    ("vae_tile", int | None, ("--vae-tile",), "PX", None),
    ("compile", bool, ("--compile",), None, False),
    ("attention", str, ("--attention",), "auto|sdpa|cudnn|flash3|sage", "auto"),
    ("lora", list[str] | None, ("--lora",), "PATH[:SCALE]", None),
    ("lora_strict", str, ("--lora-strict",), "on|off", "on"),
    ("cache", str | None, ("--cache",), "none|teacache|magcache|easycache", None),
    ("cache_threshold", float | None, ("--cache-threshold",), "X", None),
    ("force", bool, ("--force",), None, False),
    ("json_out", bool, ("--json",), None, False),
    ("quiet", bool, ("-q", "--quiet"), None, False),
    ("verbose", bool, ("-v", "--verbose"), None, False),
]


def _option(name: str, kind: Any, decls: tuple[str, ...], metavar: str | None, extra: str = "") -> Any:
    return Annotated[kind, typer.Option(*decls, help=HELP[name] + extra, metavar=metavar, show_default=False)]


PRESET_SETTINGS = ("size", "frames", "fps", "steps", "guidance", "shift", "solver")  # what a model's preset sets


def preset_defaults(preset: str) -> dict[str, str]:
    """``--help``'s default for each setting a preset sets: the value of the command's default model's preset (every
    model has its own: the help names the preset and where to see the others). Empty if it cannot be read."""
    from ..presets import load_preset

    try:
        _, values = load_preset(preset)
    except Exception:  # a broken user override of a shipped preset must not break --help
        return {}
    shown = {}
    for key in PRESET_SETTINGS:
        value = getattr(values, key, None)
        if value is not None:
            text = "{}x{}".format(*value) if key == "size" else f"{value:g}" if isinstance(value, float) else value
            shown[key] = f" Default: {text} (preset {preset}; each model has its own: `wan presets show`)."
    return shown


# What people type out of habit from the official generate.py and diffusers' examples → the wan option that does it.
# Accepted (hidden) only to answer with that option, as a usage error; (where from, wan's option, takes a value).
PEER_OPTIONS: dict[str, tuple[str, str, bool]] = {
    "--ckpt_dir": ("generate.py", "-m/--model", True),
    "--sample_steps": ("generate.py", "--steps", True),
    "--frame_num": ("generate.py", "--frames", True),
    "--sample_guide_scale": ("generate.py", "--guidance", True),
    "--sample_shift": ("generate.py", "--shift", True),
    "--sample_solver": ("generate.py", "--solver", True),
    "--base_seed": ("generate.py", "--seed", True),
    "--t5_cpu": ("generate.py", "--offload model (the text encoder then streams through the GPU)", False),
    "--offload_model": ("generate.py", "--offload model", True),
    "--num_inference_steps": ("diffusers", "--steps", True),
    "--guidance_scale": ("diffusers", "--guidance", True),
    "--num_frames": ("diffusers", "--frames", True),
}
PEER_PARAMS = {f"peer_{flag.strip('-')}": flag for flag in PEER_OPTIONS}
_PEER_COMMON: list[tuple[str, Any, Any]] = [
    (param, Annotated[str | None if PEER_OPTIONS[flag][2] else bool, typer.Option(flag, hidden=True)],
     None if PEER_OPTIONS[flag][2] else False)
    for param, flag in PEER_PARAMS.items()
]  # fmt: skip


def refuse_peer_options(raw: dict[str, Any]) -> None:
    """Pop the peers' options from ``raw``; one that was given is a usage error naming wan's option."""
    given = [flag for param, flag in PEER_PARAMS.items() if raw.pop(param, None) not in (None, False)]
    if given:
        where, ours, _ = PEER_OPTIONS[given[0]]
        raise UsageError(f"{given[0]} is an option of {where}, not of wan", hint=f"wan's option for it: {ours}")


def with_common_options(preset: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Give ``fn(own args, **opts)`` a signature Typer can read: its own parameters, then the common options, whose
    help shows the defaults of ``preset`` (the command's default model's)."""
    defaults = preset_defaults(preset)

    def wrap(fn: Callable[..., None]) -> Callable[..., None]:
        own = [
            p
            for p in inspect.signature(fn, eval_str=True).parameters.values()
            if p.kind is not inspect.Parameter.VAR_KEYWORD
        ]
        common = [
            (name, _option(name, kind, decls, metavar, defaults.get(name, "")), default)
            for name, kind, decls, metavar, default in _COMMON
        ]
        params = [
            inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, annotation=a, default=d)
            for n, a, d in (*common, *_PEER_COMMON)
        ]
        fn.__signature__ = inspect.Signature([*own, *params])  # type: ignore[attr-defined]
        return fn

    return wrap


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
    vae_tile: int | None = None
    compile: bool = False
    attention: str = "auto"
    lora: list[str] | None = None
    lora_strict: str = "on"
    cache: str | None = None
    cache_threshold: float | None = None
    force: bool = False
    json_out: bool = False
    quiet: bool = False
    verbose: bool = False


SETTING_FLAGS = ("model", "size", "frames", "fps", "steps", "guidance", "shift", "solver", "seed", "negative_prompt",
                 "device", "dtype", "cache", "cache_threshold")  # fmt: skip


def vae_tiling(px: int | None) -> Tiling | None:
    """``--vae-tile PX`` → tiles of PX pixels overlapping by a quarter (rounded to 8); a bad value is a usage error."""
    if px is None or px == 0:
        return None
    if px < 16 or px % 8:
        raise UsageError(f"invalid value for --vae-tile: {px}", hint="a multiple of 8 of at least 16, e.g. 256")
    from ..engine import Tiling

    return Tiling(tile=px, overlap=px // 4 // 8 * 8)


def flag_values(opts: Options) -> Values:
    """The command-line layer; a bad value is a usage error naming the flag."""
    data = {k: getattr(opts, k) for k in SETTING_FLAGS if getattr(opts, k) is not None}
    if opts.lora:
        data["loras"] = opts.lora
    if opts.lora_strict not in ("on", "off"):
        raise UsageError(f"invalid value for --lora-strict: {opts.lora_strict!r}", hint="on or off")
    try:
        return Values.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        flag = "--" + str(err["loc"][0]).replace("_", "-")
        msg = str(err["msg"]).removeprefix("Value error, ")
        raise UsageError(f"invalid value for {flag}: {msg}", hint=f"see `wan t2v --help` for {flag}") from None
