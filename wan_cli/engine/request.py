"""What one video asks for, and the one place its rules are checked.

Every command and layer that takes settings (the presets' pydantic models, ``wan bench``, ``wan encode`` and the
pipeline) checks them with the functions here, so a rule and its message exist once. The module imports no torch
at runtime: the CLI validates a batch before torch is loaded.

Facts: ``wan21-architecture.md`` §1.4 (negative prompts), §1.6 (defaults), §6 (solvers).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from .errors import InputError

if TYPE_CHECKING:
    import torch

    from .lora import LoraSpec
    from .vae import Tiling

Task = Literal["t2v", "i2v", "flf2v"]  # also the DiT's ``model_type``
TASKS: tuple[Task, ...] = ("t2v", "i2v", "flf2v")
Solver = Literal["unipc", "dpm++", "euler", "lcm"]
SOLVERS: tuple[Solver, ...] = ("unipc", "dpm++", "euler", "lcm")  # lcm: for step-distilled models (schedulers.py)
CACHES = ("none", "teacache", "magcache", "easycache")  # step caches (stepcache.py)
ATTENTION_BACKENDS = ("auto", "sdpa", "cudnn", "flash3", "flash", "sage")  # ops.attention; auto: ops.resolve_attention
TEMPORAL_STRIDE = 4  # the VAE's: 1 + 4k pixel frames ↔ 1 + k latent frames
SIZE_STEP = 16  # the VAE's ×8 and the DiT's 2×2 patches
SEED_MAX = 2**32  # random seeds are drawn below this (any non-negative int < 2**63 is accepted)

# wan21-architecture.md §1.4, verbatim: used when the negative prompt is empty.
_NEG_T2V = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，丑陋的，残缺的，"
    "多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)
DEFAULT_NEGATIVE_PROMPTS: dict[Task, str] = {
    "t2v": _NEG_T2V,
    "i2v": "镜头晃动，" + _NEG_T2V,
    "flf2v": "镜头切换，镜头晃动，" + _NEG_T2V,
}


@dataclass
class GenerationRequest:
    """Every setting of one video. ``width``×``height`` is the exact size for t2v and the pixel *area* for
    i2v/flf2v (whose aspect follows the input image, official rule). ``seed=None`` draws one."""

    prompt: str
    model: str | Path = ""  # a checkpoint folder (official or Diffusers) holding every component
    task: Task = "t2v"
    negative_prompt: str | None = None  # None or "" → the official default for the task
    image: str | Path | torch.Tensor | None = None  # i2v/flf2v first frame: a file, or [3, H, W] in [-1, 1]
    last_image: str | Path | torch.Tensor | None = None  # flf2v last frame
    width: int = 832
    height: int = 480
    frames: int = 81
    steps: int = 50
    guidance: float = 5.0
    shift: float = 5.0
    solver: Solver = "unipc"
    seed: int | None = None
    # component overrides (split single files, e.g. ComfyUI): default to `model`
    dit: str | Path | None = None
    vae: str | Path | None = None
    text_encoder: str | Path | None = None
    tokenizer: str | Path | None = None
    image_encoder: str | Path | None = None
    device: str = "cpu"
    dtype: torch.dtype | None = None  # None: bf16 on accelerators, fp32 on CPU
    cfg_batch: bool | None = None  # cond + uncond in one forward; None: when memory allows
    tiling: Tiling | None = None  # VAE spatial tiling
    loras: tuple[LoraSpec, ...] = ()  # DiT LoRAs in order (``lora.py``)
    lora_strict: bool = True  # LoRA keys that match nothing are an error (False: applied partially, reported)
    cache: str = "none"  # step cache (``stepcache.CACHE_KINDS``)
    cache_threshold: float | None = None  # None: the cache's published default


# --------------------------------------------------------------------------------------------------------------------
# The rules, one function each (InputError with a hint)
# --------------------------------------------------------------------------------------------------------------------


def check_frame_count(frames: int) -> None:
    """Raise a clear error unless ``frames`` is 1 + 4k (what the causal VAE and the DiT accept)."""
    if frames >= 1 and (frames - 1) % TEMPORAL_STRIDE == 0:
        return
    lo = max(1, 1 + (frames - 1) // TEMPORAL_STRIDE * TEMPORAL_STRIDE)
    hi = lo + TEMPORAL_STRIDE if lo <= frames else 1
    nearest = f"{lo} or {hi}" if lo != hi and lo < frames else f"{hi}"
    raise InputError(
        f"{frames} frames is not a valid length: Wan videos have 1 + 4k frames (frames must be 4n+1)",
        hint=f"use {nearest} frames (e.g. 17, 33, 49, 81)",
    )


def check_size(width: int, height: int) -> None:
    """Both sides positive multiples of 16, else the nearest valid size in the message."""
    if width >= SIZE_STEP and height >= SIZE_STEP and not (width % SIZE_STEP or height % SIZE_STEP):
        return
    near = "x".join(str(max(SIZE_STEP, round(v / SIZE_STEP) * SIZE_STEP)) for v in (width, height))
    raise InputError(
        f"width and height must be positive multiples of 16, got {width}x{height}", hint=f"use e.g. {near}"
    )


def check_seed(seed: int | None, *, random_ok: bool = False) -> None:
    """A seed is 0 … 2^63 − 1 (``random_ok``: -1 too, the official spelling of "draw one")."""
    if seed is None or 0 <= seed < 2**63 or (random_ok and seed == -1):
        return
    raise InputError(f"seed must be in [0, 2^63){', or -1 for a random one' if random_ok else ''}, got {seed}")


def check_steps(steps: int) -> None:
    if steps < 1:
        raise InputError(f"steps must be at least 1, got {steps}", hint="the models are tuned for 40-50 steps")


def check_guidance(guidance: float) -> None:
    if not (guidance >= 0 and math.isfinite(guidance)):
        raise InputError(f"guidance must be a number >= 0, got {guidance}", hint="the default is 5.0")


def check_shift(shift: float) -> None:
    if not (shift > 0 and math.isfinite(shift)):
        raise InputError(f"shift must be a number > 0, got {shift}", hint="typical values: 3 (480p) to 5 (720p)")


def check_choice(what: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise InputError(f"unknown {what} {value!r}", hint=f"use one of {', '.join(choices)}")


def check_cache(kind: str, threshold: float | None = None) -> None:
    """The user-facing rules: a known kind and a finite threshold ≥ 0 (0 never skips)."""
    if kind not in CACHES:
        raise InputError(f"unknown step cache {kind!r}", hint=f"use one of: {', '.join(CACHES)}")
    if threshold is not None and not (math.isfinite(threshold) and threshold >= 0):
        raise InputError(f"cache threshold must be a finite number >= 0, not {threshold}",
                         hint="0 never skips; the published defaults are 0.05–0.3 (docs/step-caches.md)")  # fmt: skip
    if threshold is not None and kind == "none":
        raise InputError("a cache threshold needs a step cache", hint="add --cache teacache|magcache|easycache")


def validate(req: GenerationRequest) -> None:
    """Reject bad settings before anything is loaded (InputError with a hint)."""
    check_choice("task", req.task, TASKS)
    if not req.prompt or not req.prompt.strip():
        raise InputError("the prompt is empty", hint='describe the video, e.g. "a corgi running on a beach"')
    check_size(req.width, req.height)
    check_frame_count(req.frames)
    check_steps(req.steps)
    check_guidance(req.guidance)
    check_shift(req.shift)
    check_choice("solver", req.solver, SOLVERS)
    check_seed(req.seed)
    check_cache(req.cache, req.cache_threshold)
    for spec in req.loras:
        if not Path(spec.path).is_file():
            raise InputError(f"LoRA file not found: {spec.path}", hint="give the path of a .safetensors LoRA file")
    if req.task in ("i2v", "flf2v") and req.image is None:
        raise InputError(f"{req.task} needs an input image", hint="pass the first frame")
    if req.task == "flf2v" and req.last_image is None:
        raise InputError("flf2v needs a last frame too", hint="pass the last frame")
    if req.task == "t2v" and (req.image is not None or req.last_image is not None):
        raise InputError("t2v takes no image", hint="use the i2v task (and an i2v model) for image-to-video")


def resolve_seed(seed: int | None) -> int:
    return random.randrange(SEED_MAX) if seed is None else seed


def latent_tokens(width: int, height: int, frames: int) -> int:
    """The DiT's sequence length: latent frames × (H/16) × (W/16) (VAE ×8, then 2×2 patches)."""
    return ((frames - 1) // TEMPORAL_STRIDE + 1) * (height // SIZE_STEP) * (width // SIZE_STEP)
