"""Text-, image- and first-last-frame-to-video: the sampling pipeline as plain functions plus a model cache.

Facts: ``wan21-architecture.md`` §1.4 (negative prompts), §3 (I2V/FLF2V conditioning), §6 (solvers), §7 (CFG, noise).
Phases, in the order memory wants them: encoders (UMT5, CLIP, and for images the VAE encoder) → DiT → VAE decode.
A :class:`Pipeline` keeps loaded models according to its memory policy and caches prompt embeddings, so a batch
loads each model once and encodes each distinct prompt once.

    result = generate(GenerationRequest(model="Wan2.1-T2V-1.3B", prompt="a dog in a park", seed=42))
    for chunk in result.frames():   # [3, 1 or 4, H, W] in [-1, 1], one latent frame at a time
        writer.write(chunk)
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoints import gguf_dit_bytes, load_transformer, load_vae, peek_transformer_config
from .conditioning import ImageEncoder, TextEncoder, load_image_encoder, load_text_encoder
from .errors import InputError, WanError
from .images import load_image
from .memory import BlockStreamer, Offload, choose_offload, move_except, stream_blocks
from .prepare import compile_blocks, dit_weight_bytes, fuse_qkv_, set_fp8_matmul
from .schedulers import SOLVERS, Solver, make_schedule, new_state, step
from .transformer import WanModel, a_model
from .vae import SPATIAL_STRIDE, TEMPORAL_STRIDE, Tiling, WanVAE, check_frame_count

log = logging.getLogger(__name__)

Task = Literal["t2v", "i2v", "flf2v"]
MemoryPolicy = Literal["keep", "offload", "release"]
ProgressFn = Callable[[str, int, int], None]  # (phase, done, total)

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
SEED_MAX = 2**32  # random seeds are drawn below this (any non-negative int < 2**63 is accepted)


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


@dataclass
class GenerationResult:
    """The resolved settings, the final latents (normalised latent space) and a decoder for the frames."""

    request: GenerationRequest  # with seed, size and negative prompt resolved
    latents: torch.Tensor  # [16, F_lat, H/8, W/8] float32, CPU
    timings: dict[str, float] = field(default_factory=dict)
    offload: str = "none"  # the memory mode used
    weights: str = "as stored"  # the DiT's block weights: "as stored" (in the compute dtype) or "fp8"
    _decode: Callable[[], Iterator[torch.Tensor]] | None = None

    @property
    def seed(self) -> int:
        assert self.request.seed is not None
        return self.request.seed

    def frames(self) -> Iterator[torch.Tensor]:
        """Decoded video, one chunk per latent frame: [3, 1 (first) or 4, H, W] float32 in [-1, 1] on the CPU."""
        if self._decode is None:
            raise WanError("this result has no decoder attached")
        return self._decode()


# --------------------------------------------------------------------------------------------------------------------
# Validation, sizes, noise
# --------------------------------------------------------------------------------------------------------------------


def validate(req: GenerationRequest) -> None:
    """Reject bad settings before anything is loaded (InputError with a hint)."""
    if req.task not in ("t2v", "i2v", "flf2v"):
        raise InputError(f"unknown task {req.task!r}", hint="use t2v, i2v or flf2v")
    if not req.prompt or not req.prompt.strip():
        raise InputError("the prompt is empty", hint='describe the video, e.g. "a corgi running on a beach"')
    for name, value in (("width", req.width), ("height", req.height)):
        if value < 16 or value % 16:
            nearest = max(16, round(value / 16) * 16)
            raise InputError(f"{name} {value} is not a positive multiple of 16", hint=f"use e.g. {nearest}")
    check_frame_count(req.frames)
    if req.steps < 1:
        raise InputError(f"steps must be at least 1, got {req.steps}", hint="the models are tuned for 40-50 steps")
    if not (req.guidance >= 0 and math.isfinite(req.guidance)):
        raise InputError(f"guidance must be a number >= 0, got {req.guidance}", hint="the default is 5.0")
    if not (req.shift > 0 and math.isfinite(req.shift)):
        raise InputError(f"shift must be a number > 0, got {req.shift}", hint="typical values: 3 (480p) to 5 (720p)")
    if req.solver not in SOLVERS:
        raise InputError(f"unknown solver {req.solver!r}", hint=f"use one of {', '.join(SOLVERS)}")
    if req.seed is not None and not 0 <= req.seed < 2**63:
        raise InputError(f"seed must be in [0, 2^63), got {req.seed}")
    if req.task in ("i2v", "flf2v") and req.image is None:
        raise InputError(f"{req.task} needs an input image", hint="pass the first frame")
    if req.task == "flf2v" and req.last_image is None:
        raise InputError("flf2v needs a last frame too", hint="pass the last frame")
    if req.task == "t2v" and (req.image is not None or req.last_image is not None):
        raise InputError("t2v takes no image", hint="use the i2v task (and an i2v model) for image-to-video")


def resolve_seed(seed: int | None) -> int:
    return random.randrange(SEED_MAX) if seed is None else seed


def make_noise(seed: int, frames: int, height: int, width: int) -> torch.Tensor:
    """[1, 16, F_lat, H/8, W/8] float32 from a CPU generator: the same seed gives the same video on any machine."""
    g = torch.Generator("cpu").manual_seed(seed)
    shape = (1, 16, (frames - 1) // TEMPORAL_STRIDE + 1, height // SPATIAL_STRIDE, width // SPATIAL_STRIDE)
    return torch.randn(shape, generator=g, dtype=torch.float32)


def i2v_size(image_hw: tuple[int, int], max_area: int) -> tuple[int, int]:
    """Official I2V/FLF2V size rule: the requested area, the input's aspect, multiples of 16 → (height, width).

    Float64 arithmetic exactly as the official code (e.g. an 832×480 input at area 399360 gives 464×832)."""
    h, w = image_hw
    ar = h / w
    lat_h = round(np.sqrt(max_area * ar) // SPATIAL_STRIDE // 2 * 2)
    lat_w = round(np.sqrt(max_area / ar) // SPATIAL_STRIDE // 2 * 2)
    if lat_h < 2 or lat_w < 2:
        raise InputError(f"an image of {w}x{h} gives an empty video at area {max_area}", hint="use a larger size")
    return lat_h * SPATIAL_STRIDE, lat_w * SPATIAL_STRIDE


def _center_crop_like_torchvision(img: torch.Tensor, crop_h: int, crop_w: int) -> torch.Tensor:
    """torchvision's center_crop on [3, H, W]: zero-pad when the box is larger, then crop at the rounded centre."""
    _, h, w = img.shape
    if crop_h > h or crop_w > w:
        dh, dw = max(crop_h - h, 0), max(crop_w - w, 0)
        img = F.pad(img, (dw // 2, (dw + 1) // 2, dh // 2, (dh + 1) // 2))
        _, h, w = img.shape
    top, left = round((h - crop_h) / 2.0), round((w - crop_w) / 2.0)
    return img[:, top : top + crop_h, left : left + crop_w]


def match_last_frame(first: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """FLF2V with differently sized images (official quirk, reproduced): centre-crop the last frame with a box
    (round(W₂·r), round(H₂·r)) that torchvision reads as (height, width), r = max(W₁/W₂, H₁/H₂)."""
    (_, h1, w1), (_, h2, w2) = first.shape, last.shape
    if (h1, w1) == (h2, w2):
        return last
    r = max(w1 / w2, h1 / h2)
    return _center_crop_like_torchvision(last, round(w2 * r), round(h2 * r))


def i2v_mask(frames: int, lat_h: int, lat_w: int, last: bool) -> torch.Tensor:
    """The 4-channel mask [4, F_lat, h, w]: 1 where a pixel frame is given (frame 0; flf2v also the last frame)."""
    msk = torch.ones(1, frames, lat_h, lat_w)
    msk[:, 1 : -1 if last else None] = 0
    msk = torch.cat([msk[:, :1].repeat_interleave(TEMPORAL_STRIDE, dim=1), msk[:, 1:]], dim=1)  # [1, F + 3, h, w]
    return msk.view(1, msk.shape[1] // TEMPORAL_STRIDE, TEMPORAL_STRIDE, lat_h, lat_w).transpose(1, 2)[0]


def conditioning_video(images: list[torch.Tensor], frames: int, height: int, width: int) -> torch.Tensor:
    """[1, 3, F, H, W]: the first image (bicubic to H×W, no clamp), zeros (mid-grey), and for flf2v the last image."""
    resized = [
        F.interpolate(im[None].cpu().float(), size=(height, width), mode="bicubic").unsqueeze(2) for im in images
    ]  # [1, 3, 1, H, W] each, computed in fp32 on the CPU like the official code
    parts = [resized[0], torch.zeros(1, 3, frames - len(images), height, width), *resized[1:]]
    return torch.cat(parts, dim=2)


# --------------------------------------------------------------------------------------------------------------------
# Denoising
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class Conditioning:
    """What the DiT sees besides the noisy latents, for one pass (cond or uncond)."""

    context: torch.Tensor  # [L, 4096] text embeddings, trimmed
    clip_fea: torch.Tensor | None = None  # [1, 257|514, 1280]
    y: torch.Tensor | None = None  # [1, 20, F_lat, h, w]


def _stack_contexts(contexts: list[torch.Tensor]) -> torch.Tensor:
    """Zero-pad trimmed embeddings to a common length and stack (the DiT pads the rest up to text_len)."""
    n = max(c.shape[0] for c in contexts)
    return torch.stack([F.pad(c, (0, 0, 0, n - c.shape[0])) for c in contexts])


def predict_velocity(
    model: WanModel,
    x: torch.Tensor,
    t: torch.Tensor,
    cond: Conditioning,
    uncond: Conditioning | None,
    guidance: float,
    batch: bool,
) -> torch.Tensor:
    """Classifier-free guidance u + g·(c − u); one batched forward for both, or two sequential ones.
    ``t`` should already be on x's device: a blocking host→device copy per step would stall the CPU until the GPU
    has drained its queue (``denoise`` moves all timesteps once)."""
    ts = t.reshape(1).to(x.device)

    def run(cs: list[Conditioning]) -> torch.Tensor:
        n = len(cs)
        clip = torch.cat([c.clip_fea for c in cs]) if cs[0].clip_fea is not None else None  # type: ignore[misc]
        y = torch.cat([c.y for c in cs]) if cs[0].y is not None else None  # type: ignore[misc]
        return model(x.expand(n, *x.shape[1:]), ts.expand(n), _stack_contexts([c.context for c in cs]), clip, y)

    if uncond is None:
        return run([cond])
    if batch:
        v_c, v_u = run([cond, uncond]).chunk(2)
    else:
        v_c, v_u = run([cond]), run([uncond])
    return v_u + guidance * (v_c - v_u)


def denoise(
    model: WanModel,
    noise: torch.Tensor,
    cond: Conditioning,
    uncond: Conditioning | None,
    *,
    steps: int,
    shift: float,
    solver: Solver,
    guidance: float,
    batch: bool = True,
    progress: ProgressFn | None = None,
) -> torch.Tensor:
    """Integrate from noise to data: [1, 16, F_lat, h, w] float32 in, the same out (normalised latent space)."""
    schedule = make_schedule(steps, shift, solver)
    state = new_state(schedule, solver)
    latents = noise
    # All timesteps go to the device in one copy before the loop; the solver's σ arithmetic uses CPU scalars (passed
    # by value to the kernels). So no step waits for the GPU: the CPU queues the next forward while it computes.
    for i, t in enumerate(schedule.timesteps.to(noise.device)):
        v = predict_velocity(model, latents, t, cond, uncond, guidance, batch)
        latents = step(state, i, latents, v.float())
        if progress is not None:
            progress("denoise", i + 1, steps)
    return latents


def cfg_batch_fits(model: WanModel, tokens: int, device: torch.device) -> bool:
    """Whether cond + uncond fit in one forward: always on the CPU; on CUDA if the free memory covers a rough
    activation estimate for the doubled batch (residual, FFN and attention buffers per token)."""
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    per_token = (4 * model.config.dim + 2 * model.config.ffn_dim) * 4  # bytes, fp32 residual + half FFN
    return free > 2 * 2 * tokens * per_token


# --------------------------------------------------------------------------------------------------------------------
# The pipeline: loading by phase, with a memory policy
# --------------------------------------------------------------------------------------------------------------------


def default_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "cpu" else torch.bfloat16


class Pipeline:
    """Loads each component when its phase needs it and keeps, offloads or releases it afterwards.

    offload: the memory mode (``memory.py``): ``none``, ``model`` (models visit the device for their phase; the
    text encoder streams its blocks; CFG passes run one after the other), ``blocks`` (the DiT streams its blocks
    too); ``None`` picks from the free device memory at the first video (``none`` on the CPU).
    policy: what happens to a finished phase's models: ``keep`` (stay loaded: fastest for batches), ``offload``
    (moved to the CPU), ``release`` (freed, reloaded when needed again; the least memory). Default: ``release`` on
    the CPU; on accelerators ``keep`` with offload ``none``, else ``offload``.
    fp8: store the DiT blocks' matmul weights as scaled float8_e4m3fn (half of bf16), computing in ``dtype``;
    fp8_matmul: multiply in fp8 too (``torch._scaled_mm``). Loads, moves and releases are logged at DEBUG level
    on ``wan_cli.engine.pipeline``.
    """

    def __init__(self, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                 policy: MemoryPolicy | None = None, offload: Offload | None = None, fp8: bool = False,
                 fp8_matmul: bool = False, compile: bool = False) -> None:  # fmt: skip
        self.device = torch.device(device)
        self.compile = compile  # torch.compile the DiT blocks (prepare.compile_blocks)
        self.dtype = dtype or default_dtype(self.device)
        self.fp8, self.fp8_matmul = fp8 or fp8_matmul, fp8_matmul
        self.offload: Offload | None = offload if offload is not None or self.device.type != "cpu" else "none"
        self._policy = policy
        self._models: dict[tuple[str, str], Any] = {}  # (component, path) → loaded model
        self._streamers: dict[tuple[str, str], tuple[BlockStreamer, torch.nn.Module, tuple[torch.nn.Module, ...]]] = {}
        self._text_cache: dict[tuple[str, str], torch.Tensor] = {}  # (encoder path, prompt) → embedding (CPU)
        self.load_s = 0.0  # seconds spent reading weights, over the pipeline's life (phases report theirs net of it)

    @property
    def policy(self) -> MemoryPolicy:
        if self._policy is not None:
            return self._policy
        if self.device.type == "cpu":
            return "release"
        return "keep" if self.offload == "none" else "offload"

    def _resolve_offload(self, dit_cfg: Any, tokens: int, dit_path: str) -> Offload:
        """The memory mode for ``offload=None`` on an accelerator, from its free memory (decided once)."""
        if self.offload is None:
            free = torch.cuda.mem_get_info(self.device)[0] if self.device.type == "cuda" else 0
            per_weight = torch.finfo(self.dtype).bits // 8
            dit = gguf_dit_bytes(dit_path, per_weight) or dit_weight_bytes(dit_cfg, per_weight, fp8=self.fp8)
            self.offload = choose_offload(free, dit, dit_cfg.dim, dit_cfg.ffn_dim, tokens)
            log.debug("offload %s (free %.1f GiB)", self.offload, free / 2**30)
        return self.offload

    # -- component cache ----------------------------------------------------------------------------------------------

    @property
    def _half(self) -> bool:
        return self.dtype in (torch.float16, torch.bfloat16)

    def _get(self, component: str, path: str, loader: Callable[[], Any]) -> Any:
        key = (component, path)
        if key not in self._models:
            log.debug("load %s from %s", component, path)
            t0 = time.perf_counter()
            self._models[key] = loader()
            self.load_s += time.perf_counter() - t0
            log.debug("loaded %s in %.2f s", component, time.perf_counter() - t0)
        model = self._models[key]
        if self.policy == "offload" and self.device.type != "cpu":
            log.debug("move %s to %s", component, self.device)
            self._move(key, self.device)
        return model

    def _move(self, key: tuple[str, str], device: torch.device | str) -> None:
        if key in self._streamers:  # streamed blocks stay in host memory: move the rest
            streamer, root, stay = self._streamers[key]
            move_except(root, device, stay)
            if torch.device(device).type == "cpu":
                streamer.release()
        else:
            self._models[key].to(device)

    def _stream(self, key: tuple[str, str], root: torch.nn.Module, blocks: torch.nn.ModuleList,
                host_only: tuple[torch.nn.Module, ...] = ()) -> None:  # fmt: skip
        """Stream ``blocks`` of the model ``root`` through the device; the rest of ``root`` lives on the device
        (except ``host_only`` modules, which stay on the CPU)."""
        log.debug("stream the %d blocks of %s through %s", len(blocks), key[0], self.device)
        self._streamers[key] = (stream_blocks(root, blocks, self.device, host_only), root, (blocks, *host_only))

    def _done(self, component: str) -> None:
        """The phase that used ``component`` is over: apply the memory policy."""
        keys = [k for k in self._models if k[0] == component]
        for key in keys:
            if self.policy == "release":
                log.debug("release %s", component)
                if key in self._streamers:
                    self._streamers.pop(key)[0].detach()
                del self._models[key]
            elif self.policy == "offload" and self.device.type != "cpu":
                log.debug("offload %s to cpu", component)
                self._move(key, "cpu")
            elif key in self._streamers:
                self._streamers[key][0].release()  # the slots' device memory goes back for the next phase
        if keys and self.device.type == "cuda":
            torch.cuda.empty_cache()

    @property
    def _stream_text(self) -> bool:
        return self.offload in ("model", "blocks")

    @property
    def _load_device(self) -> torch.device:
        """Offloaded models live on the CPU and visit the accelerator for their phase."""
        return torch.device("cpu") if self.policy == "offload" else self.device

    def text_encoder(self, path: str, tokenizer: str | None) -> TextEncoder:
        dtype = torch.bfloat16 if self._half else torch.float32  # official: UMT5 in bf16
        stream = self._stream_text
        dev = torch.device("cpu") if stream else self._load_device

        def load() -> TextEncoder:
            enc = load_text_encoder(path, tokenizer=tokenizer, device=dev, dtype=dtype)
            if stream:  # the token embedding table (2 GB) stays on the CPU: a lookup needs no GPU
                enc.run_on(self.device)
                model = enc.model
                self._stream(("text_encoder", path), model, model.encoder.block, (model.shared,))
            return enc

        return self._get("text_encoder", path, load)

    def image_encoder(self, path: str) -> ImageEncoder:
        dtype = torch.float16 if self._half else torch.float32  # official: CLIP in fp16
        dev = self._load_device
        return self._get("image_encoder", path, lambda: load_image_encoder(path, device=dev, dtype=dtype))

    def dit(self, path: str, task: Task) -> WanModel:
        stream = self.offload == "blocks"
        dev = torch.device("cpu") if stream else self._load_device

        def load() -> WanModel:
            model = load_transformer(path, device=dev, dtype=self.dtype, model_type=task, fp8=self.fp8)
            if self.fp8_matmul:
                set_fp8_matmul(model, True)
            if stream:
                self._stream(("dit", path), model, model.blocks)
            elif self.policy != "offload":  # the model stays where it is: q/k/v as one GEMM (memory unchanged)
                fuse_qkv_(model)
            return compile_blocks(model) if self.compile else model

        return self._get("dit", path, load)

    def vae(self, path: str) -> WanVAE:
        dev = self._load_device
        return self._get("vae", path, lambda: load_vae(path, device=dev))  # fp32, as official

    def close(self) -> None:
        for streamer, _, _ in self._streamers.values():
            streamer.detach()
        self._streamers.clear()
        self._models.clear()
        self._text_cache.clear()

    # -- prompts ---------------------------------------------------------------------------------------------------

    def encode_prompts(self, path: str, tokenizer: str | None, prompts: list[str]) -> list[torch.Tensor]:
        """Embeddings [L_i, 4096] on the CPU; each distinct prompt is encoded once per pipeline."""
        todo = [p for p in dict.fromkeys(prompts) if (path, p) not in self._text_cache]
        if todo:
            encoder = self.text_encoder(path, tokenizer)
            for p, emb in zip(todo, encoder.encode(todo), strict=True):
                self._text_cache[(path, p)] = emb.cpu()
            self._done("text_encoder")
        return [self._text_cache[(path, p)] for p in prompts]

    # -- one video -------------------------------------------------------------------------------------------------

    def generate(self, request: GenerationRequest, progress: ProgressFn | None = None) -> GenerationResult:
        validate(request)
        root = str(request.model or "")
        needed = ("dit", "vae", "text_encoder") + (("image_encoder",) if request.task != "t2v" else ())
        paths = {name: str(getattr(request, name) or root) for name in needed}
        missing = [name for name, p in paths.items() if not p]
        if missing:
            raise InputError(f"no weights given for: {', '.join(missing)}",
                             hint="pass a checkpoint folder, or a file for each component")  # fmt: skip
        dit_cfg = peek_transformer_config(paths["dit"])  # headers only: is it the right model for the task?
        if dit_cfg.model_type != request.task:
            raise InputError(
                f"{paths['dit']} is {a_model(dit_cfg.model_type)}; {request.task} needs {a_model(request.task)}",
                hint="pick the matching checkpoint (`wan inspect PATH` tells what a file holds)",
            )
        timings: dict[str, float] = {}
        tokens = (request.frames - 1) // TEMPORAL_STRIDE + 1
        tokens *= (request.height // SPATIAL_STRIDE // 2) * (request.width // SPATIAL_STRIDE // 2)
        offload = self._resolve_offload(dit_cfg, tokens, paths["dit"])
        seed = resolve_seed(request.seed)
        negative = request.negative_prompt or DEFAULT_NEGATIVE_PROMPTS[request.task]
        req = replace(request, seed=seed, negative_prompt=negative, device=str(self.device), dtype=self.dtype)
        tokenizer = str(request.tokenizer) if request.tokenizer else None

        loaded_before = self.load_s
        t0, l0 = time.perf_counter(), self.load_s
        ctx, neg = self.encode_prompts(paths["text_encoder"], tokenizer, [req.prompt, negative])
        timings["text_encode_s"] = time.perf_counter() - t0 - (self.load_s - l0)

        clip_fea = y = None
        if req.task != "t2v":
            t0, l0 = time.perf_counter(), self.load_s
            req, clip_fea, y = self._image_conditioning(req, paths)
            timings["image_encode_s"] = time.perf_counter() - t0 - (self.load_s - l0)

        noise = make_noise(seed, req.frames, req.height, req.width)
        dev = self.device
        cond = Conditioning(ctx.to(dev), clip_fea, y)
        uncond = None if req.guidance == 1.0 else Conditioning(neg.to(dev), clip_fea, y)  # g = 1: c exactly

        model = self.dit(paths["dit"], req.task)
        if req.cfg_batch is not None:
            batch = req.cfg_batch
        else:  # the offload modes save memory: one CFG pass at a time
            batch = self.offload == "none" and cfg_batch_fits(model, tokens, dev)
        t0 = time.perf_counter()
        with torch.no_grad():
            latents = denoise(model, noise.to(dev), cond, uncond, steps=req.steps, shift=req.shift,
                              solver=req.solver, guidance=req.guidance, batch=batch, progress=progress)  # fmt: skip
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        timings["denoise_s"] = time.perf_counter() - t0
        timings["load_s"] = self.load_s - loaded_before  # the VAE's load for decoding is added by frames()
        del model
        self._done("dit")
        latents = latents[0].float().cpu()
        check_finite(latents, request)

        vae_path, tiling = paths["vae"], req.tiling

        def decode() -> Iterator[torch.Tensor]:
            l0 = self.load_s
            vae = self.vae(vae_path)
            timings["load_s"] += self.load_s - l0
            try:
                for chunk in vae.stream_decoder(tiling).push(latents[None]):
                    yield chunk[0].cpu()
            finally:
                self._done("vae")

        weights = "fp8" if self.fp8 else "as stored"
        return GenerationResult(request=req, latents=latents, timings=timings, offload=offload, weights=weights,
                                _decode=decode)  # fmt: skip

    def _image_conditioning(
        self, req: GenerationRequest, paths: dict[str, str]
    ) -> tuple[GenerationRequest, torch.Tensor, torch.Tensor]:
        """CLIP features [1, 257|514, 1280] and y [1, 20, F_lat, h, w]; resolves the output size from the image."""
        assert req.image is not None
        first = load_image(req.image)
        images = [first]
        if req.task == "flf2v":
            assert req.last_image is not None
            images.append(match_last_frame(first, load_image(req.last_image)))
        height, width = i2v_size((first.shape[1], first.shape[2]), req.width * req.height)
        req = replace(req, height=height, width=width)
        clip = self.image_encoder(paths["image_encoder"])
        feats = clip.encode(images)  # [n, 257, 1280]; flf2v's two frames may differ in size
        self._done("image_encoder")
        clip_fea = feats.reshape(1, -1, feats.shape[-1]).to(self.device)  # flf2v: [1, 514, 1280], first image first
        vae = self.vae(paths["vae"])
        video = conditioning_video(images, req.frames, height, width)
        with torch.no_grad():
            latent = vae.encode(video.to(vae.device), tiling=req.tiling)  # [1, 16, F_lat, h, w]
        self._done("vae")
        mask = i2v_mask(req.frames, height // SPATIAL_STRIDE, width // SPATIAL_STRIDE, last=req.task == "flf2v")
        y = torch.cat([mask[None].to(latent.device), latent], dim=1).to(self.device)
        return req, clip_fea, y


def check_finite(latents: torch.Tensor, request: GenerationRequest) -> None:
    """Denoised latents with NaN or Inf would decode to a black or broken video: an error, never a result."""
    bad = (~torch.isfinite(latents)).sum().item()
    if bad:
        half = request.dtype == torch.float16
        raise WanError(
            f"the denoised latents hold {bad:,} NaN/Inf values of {latents.numel():,}: the video would be black",
            hint="the DiT overflowed its dtype; use --dtype bf16" + (" (fp16 overflows in Wan's DiT)" if half else
                                                                     " or --dtype fp32"),
        )  # fmt: skip


def generate(request: GenerationRequest, progress: ProgressFn | None = None) -> GenerationResult:
    """One video with a fresh pipeline (models loaded for this call). Batches should reuse a :class:`Pipeline`."""
    return Pipeline(device=request.device, dtype=request.dtype).generate(request, progress)
