"""Text-, image- and first-last-frame-to-video: the phases in order, over the models they load.

The request and its rules live in ``request.py``, the image rules in ``images.py``, the sampling functions in
``sampling.py``, the memory policy in ``memory.py``; this module runs the phases in the order memory wants them:
encoders (UMT5, CLIP, and for images the VAE encoder) → DiT → VAE decode. A :class:`Pipeline` keeps loaded models
according to its memory policy and caches prompt embeddings, so a batch loads each model once and encodes each
distinct prompt once.

    result = generate(GenerationRequest(model="Wan2.1-T2V-1.3B", prompt="a dog in a park", seed=42))
    for chunk in result.frames():   # [3, 1 or 4, H, W] in [-1, 1], one latent frame at a time
        writer.write(chunk)
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from .checkpoints import gguf_dit_bytes, load_transformer, load_vae, peek_transformer_config
from .conditioning import ImageEncoder, TextEncoder, load_image_encoder, load_text_encoder
from .errors import InputError, WanError
from .images import conditioning_video, i2v_mask, i2v_size, load_image, match_last_frame
from .layers import Linear
from .lora import Applied, LoraSpec, apply, read_lora
from .memory import MemoryPolicy, ModelCache, Offload, choose_offload, free_memory
from .ops import resolve_attention
from .prepare import compile_blocks, dit_weight_bytes, fuse_qkv_, set_attention, set_fp8_matmul
from .request import DEFAULT_NEGATIVE_PROMPTS, GenerationRequest, Task, latent_tokens, resolve_seed, validate
from .sampling import (
    Conditioning,
    ProgressFn,
    cfg_batch_fits,
    check_finite,
    decode_frames,
    denoise_with_record,
    make_noise,
)
from .stepcache import detect_variant
from .transformer import WanModel, a_model
from .vae import SPATIAL_STRIDE, WanVAE

log = logging.getLogger(__name__)
LORA_MODES = ("auto", "merge", "runtime")


@dataclass
class GenerationResult:
    """The resolved settings, the final latents (normalised latent space) and a decoder for the frames."""

    request: GenerationRequest  # with seed, size and negative prompt resolved
    latents: torch.Tensor  # [16, F_lat, H/8, W/8] float32, CPU
    timings: dict[str, float] = field(default_factory=dict)
    offload: str = "none"  # the memory mode used
    weights: str = "as stored"  # the DiT's block weights: "as stored" (in the compute dtype) or "fp8"
    attention: str = "sdpa"  # the attention kernel that ran
    loras: list[dict[str, Any]] = field(default_factory=list)  # path, strength, format, applied, unmatched keys
    cache: dict[str, Any] = field(default_factory=lambda: {"kind": "none"})  # the step cache's record
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
    fp8_matmul: multiply in fp8 too (``torch._scaled_mm``). attention: the kernel (``ops.resolve_attention``:
    ``auto``, ``sdpa``, ``cudnn``, ``flash3``, ``flash``, ``sage``), checked here, before anything loads.
    lora_mode: how a request's LoRAs go on the DiT (``lora.py``): ``merge`` into the weights (float weights only; no
    per-step cost; a different set later reloads the DiT, since merged weights cannot be restored bit-exactly),
    ``runtime`` (beside each layer: a set changes without a reload; fp8 / GGUF / streamed weights), ``auto`` (merge
    where the weights are plain floats and resident, else run time). A batch with several LoRA sets should use
    ``runtime`` (the CLI does).
    Loads, moves and releases are logged at DEBUG level on ``wan_cli.engine.pipeline``.
    """

    def __init__(self, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                 policy: MemoryPolicy | None = None, offload: Offload | None = None, fp8: bool = False,
                 fp8_matmul: bool = False, compile: bool = False, attention: str = "sdpa",
                 lora_mode: str = "auto") -> None:  # fmt: skip
        self.device = torch.device(device)
        self.compile = compile  # torch.compile the DiT blocks (prepare.compile_blocks)
        self.dtype = dtype or default_dtype(self.device)
        self.fp8, self.fp8_matmul = fp8 or fp8_matmul, fp8_matmul
        self.attention = resolve_attention(attention)
        self.offload: Offload | None = offload if offload is not None or self.device.type != "cpu" else "none"
        self._policy = policy
        self.cache = ModelCache(self.device, self.policy)
        self._text_cache: dict[tuple[str, str], torch.Tensor] = {}  # (encoder path, prompt) → embedding (CPU)
        if lora_mode not in LORA_MODES:
            raise InputError(f"unknown LoRA mode {lora_mode!r}", hint=f"choose one of: {', '.join(LORA_MODES)}")
        self.lora_mode = lora_mode
        # DiT path → (the model, weakly: a released model must be freed), what is on it, its record
        self._loras: dict[str, tuple[weakref.ref[WanModel], Applied, list[dict[str, Any]]]] = {}

    @property
    def policy(self) -> MemoryPolicy:
        if self._policy is not None:
            return self._policy
        if self.device.type == "cpu":
            return "release"
        return "keep" if self.offload == "none" else "offload"

    @property
    def load_s(self) -> float:
        """Seconds spent reading weights over the pipeline's life (phases report theirs net of it)."""
        return self.cache.load_s

    def resolve_offload(self, dit_cfg: Any, tokens: int, dit_path: str | None = None) -> Offload:
        """The memory mode; for ``offload=None`` chosen once from the device's free memory."""
        if self.offload is None:
            free = free_memory(self.device)
            per_weight = torch.finfo(self.dtype).bits // 8
            stored = gguf_dit_bytes(dit_path, per_weight) if dit_path else None
            dit = stored or dit_weight_bytes(dit_cfg, per_weight, fp8=self.fp8)
            self.offload = choose_offload(free, dit, dit_cfg.dim, dit_cfg.ffn_dim, tokens)
            self.cache.policy = self.policy
            log.debug("offload %s (free %.1f GiB)", self.offload, free / 2**30)
        return self.offload

    # -- the components ------------------------------------------------------------------------------------------------

    @property
    def _half(self) -> bool:
        return self.dtype in (torch.float16, torch.bfloat16)

    @property
    def _stream_text(self) -> bool:
        return self.offload in ("model", "blocks")

    def prepare_text_encoder(self, enc: TextEncoder, key: tuple[str, str]) -> TextEncoder:
        """As the memory mode runs it: with offloading the blocks stream and the token embedding table (2 GB)
        stays on the CPU, where a lookup needs no GPU."""
        if self._stream_text:
            enc.run_on(self.device)
            self.cache.stream(key, enc.model, enc.model.encoder.block, (enc.model.shared,))
        return enc

    def text_encoder(self, path: str, tokenizer: str | None) -> TextEncoder:
        dtype = torch.bfloat16 if self._half else torch.float32  # official: UMT5 in bf16
        dev = torch.device("cpu") if self._stream_text else self.cache.load_device

        def load() -> TextEncoder:
            enc = load_text_encoder(path, tokenizer=tokenizer, device=dev, dtype=dtype)
            return self.prepare_text_encoder(enc, ("text_encoder", path))

        return self.cache.get("text_encoder", path, load)

    def image_encoder(self, path: str) -> ImageEncoder:
        dtype = torch.float16 if self._half else torch.float32  # official: CLIP in fp16
        dev = self.cache.load_device
        return self.cache.get("image_encoder", path, lambda: load_image_encoder(path, device=dev, dtype=dtype))

    def prepare_dit(self, model: WanModel, key: tuple[str, str] = ("dit", "")) -> WanModel:
        """Everything done to a loaded DiT before it runs, in one place (``wan bench`` runs its random DiT through
        it too): the fp8 matmul switch, the attention kernel, block streaming (``blocks``) or fused q/k/v (a model
        that stays where it is: memory unchanged), ``torch.compile``."""
        if self.fp8_matmul:
            set_fp8_matmul(model, True)
        set_attention(model, self.attention)
        if self.offload == "blocks":
            self.cache.stream(key, model, model.blocks)
        elif self.policy != "offload":
            fuse_qkv_(model)
        return compile_blocks(model) if self.compile else model

    def dit_load_device(self) -> torch.device:
        return torch.device("cpu") if self.offload == "blocks" else self.cache.load_device

    def dit(self, path: str, task: Task, loras: tuple[LoraSpec, ...] = (), strict: bool = True) -> WanModel:
        """The DiT with exactly ``loras`` on it (what was on it before is taken off, a merged set by a reload)."""
        dev = self.dit_load_device()

        def load() -> WanModel:
            model = load_transformer(path, device=dev, dtype=self.dtype, model_type=task, fp8=self.fp8)
            return self.prepare_dit(model, ("dit", path))

        on = self._loras.get(path)
        loaded = self.cache.loaded("dit", path)
        if on is not None and isinstance(loaded, WanModel) and on[0]() is loaded and on[1].specs != loras:  # new set
            if on[1].merged:
                log.info("LoRAs %s were merged into the DiT: reloading it for %s", on[1].specs, loras or "none")
                self.cache.evict("dit")
            else:
                on[1].remove(loaded)
            del self._loras[path]
        model = self.cache.get("dit", path, load)
        if path in self._loras and self._loras[path][0]() is not model:  # a fresh load (released before): bare
            del self._loras[path]
        if loras and path not in self._loras:
            self._loras[path] = (weakref.ref(model), *self._put_loras(model, loras, strict))
        return model

    def _put_loras(self, model: WanModel, specs: tuple[LoraSpec, ...],
                   strict: bool) -> tuple[Applied, list[dict[str, Any]]]:  # fmt: skip
        read = [read_lora(spec, model, strict=strict) for spec in specs]
        plain = all(m.plain for m in model.blocks.modules() if isinstance(m, Linear))
        merge = self.lora_mode == "merge" or (self.lora_mode == "auto" and plain and self.offload != "blocks")
        applied = apply(model, [lora for lora, _ in read], specs, merge=merge, device=self.device)
        records = [{"path": lora.path, "strength": lora.strength, "format": lora.format,
                    "applied": "merged" if merge else "runtime", "unmatched_keys": len(unmatched),
                    "dropped_keys": len(lora.dropped)} for lora, unmatched in read]  # fmt: skip
        for lora, unmatched in read:
            if unmatched:
                log.warning("%s: %d keys matched nothing and were skipped (first: %s)", lora.path, len(unmatched),
                            sorted(unmatched)[0])  # fmt: skip
        return applied, records

    def vae(self, path: str) -> WanVAE:
        dev = self.cache.load_device
        return self.cache.get("vae", path, lambda: load_vae(path, device=dev))  # fp32, as official

    def done(self, component: str) -> None:
        self.cache.done(component)

    def close(self) -> None:
        self.cache.clear()
        self._text_cache.clear()

    # -- prompts ---------------------------------------------------------------------------------------------------

    def encode_prompts(self, path: str, tokenizer: str | None, prompts: list[str]) -> list[torch.Tensor]:
        """Embeddings [L_i, 4096] on the CPU; each distinct prompt is encoded once per pipeline."""
        todo = [p for p in dict.fromkeys(prompts) if (path, p) not in self._text_cache]
        if todo:
            encoder = self.text_encoder(path, tokenizer)
            for p, emb in zip(todo, encoder.encode(todo), strict=True):
                self._text_cache[(path, p)] = emb.cpu()
            self.done("text_encoder")
        return [self._text_cache[(path, p)] for p in prompts]

    # -- one video -------------------------------------------------------------------------------------------------

    def cfg_batch(self, model: WanModel, tokens: int, requested: bool | None = None) -> bool:
        """cond + uncond in one forward? As asked, else when resident (the offload modes save memory: one CFG pass
        at a time) and the activations fit."""
        if requested is not None:
            return requested
        return self.offload == "none" and cfg_batch_fits(model, tokens, self.device)

    def _paths(self, request: GenerationRequest) -> dict[str, str]:
        """The weights of each component the task needs, checked against the task from the DiT's header."""
        root = str(request.model or "")
        needed = ("dit", "vae", "text_encoder") + (("image_encoder",) if request.task != "t2v" else ())
        paths = {name: str(getattr(request, name) or root) for name in needed}
        missing = [name for name, p in paths.items() if not p]
        if missing:
            raise InputError(f"no weights given for: {', '.join(missing)}",
                             hint="pass a checkpoint folder, or a file for each component")  # fmt: skip
        return paths

    def generate(self, request: GenerationRequest, progress: ProgressFn | None = None) -> GenerationResult:
        """Text encode → (image conditioning) → denoise → checked latents; the frames are decoded on demand."""
        validate(request)
        paths = self._paths(request)
        dit_cfg = peek_transformer_config(paths["dit"])  # headers only: is it the right model for the task?
        if dit_cfg.model_type != request.task:
            raise InputError(
                f"{paths['dit']} is {a_model(dit_cfg.model_type)}; {request.task} needs {a_model(request.task)}",
                hint="pick the matching checkpoint (`wan inspect PATH` tells what a file holds)",
            )
        if request.cache in ("teacache", "magcache"):  # no calibration for this model: fails now, not after loading
            detect_variant(dit_cfg, (request.height // SPATIAL_STRIDE, request.width // SPATIAL_STRIDE))
        timings: dict[str, float] = {}
        tokens = latent_tokens(request.width, request.height, request.frames)
        offload = self.resolve_offload(dit_cfg, tokens, paths["dit"])
        negative = request.negative_prompt or DEFAULT_NEGATIVE_PROMPTS[request.task]
        req = replace(request, seed=resolve_seed(request.seed), negative_prompt=negative, device=str(self.device),
                      dtype=self.dtype)  # fmt: skip
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
            tokens = latent_tokens(req.width, req.height, req.frames)  # the size now follows the image

        assert req.seed is not None
        noise = make_noise(req.seed, req.frames, req.height, req.width)
        dev = self.device
        cond = Conditioning(ctx.to(dev), clip_fea, y)
        uncond = None if req.guidance == 1.0 else Conditioning(neg.to(dev), clip_fea, y)  # g = 1: c exactly
        model = self.dit(paths["dit"], req.task, tuple(req.loras), req.lora_strict)
        loras = self._loras[paths["dit"]][2] if req.loras else []
        batch = self.cfg_batch(model, tokens, req.cfg_batch)
        t0 = time.perf_counter()
        with torch.no_grad():
            latents, record = denoise_with_record(
                model, noise.to(dev), cond, uncond, steps=req.steps, shift=req.shift, solver=req.solver,
                guidance=req.guidance, batch=batch, progress=progress, cache=req.cache,
                cache_threshold=req.cache_threshold, seed=req.seed,
            )  # fmt: skip
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        timings["denoise_s"] = time.perf_counter() - t0
        timings["load_s"] = self.load_s - loaded_before  # the VAE's load for decoding is added by frames()
        del model
        self.done("dit")
        latents = latents[0].float().cpu()
        check_finite(latents, request.dtype)
        weights = "fp8" if self.fp8 else "as stored"
        decode = lambda: self._decode(paths["vae"], latents, req, timings)  # noqa: E731  (lazy: no VAE load yet)
        return GenerationResult(request=req, latents=latents, timings=timings, offload=offload, weights=weights,
                                attention=self.attention, loras=loras, _decode=decode,
                                cache=record.to_json() if record is not None else {"kind": "none"})  # fmt: skip

    def _decode(self, vae_path: str, latents: torch.Tensor, req: GenerationRequest,
                timings: dict[str, float]) -> Iterator[torch.Tensor]:  # fmt: skip
        l0 = self.load_s
        vae = self.vae(vae_path)
        timings["load_s"] += self.load_s - l0
        try:
            yield from decode_frames(vae, latents, req.tiling)
        finally:
            self.done("vae")

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
        self.done("image_encoder")
        clip_fea = feats.reshape(1, -1, feats.shape[-1]).to(self.device)  # flf2v: [1, 514, 1280], first image first
        vae = self.vae(paths["vae"])
        video = conditioning_video(images, req.frames, height, width)
        with torch.no_grad():
            latent = vae.encode(video.to(vae.device), tiling=req.tiling)  # [1, 16, F_lat, h, w]
        self.done("vae")
        mask = i2v_mask(req.frames, height // SPATIAL_STRIDE, width // SPATIAL_STRIDE, last=req.task == "flf2v")
        y = torch.cat([mask[None].to(latent.device), latent], dim=1).to(self.device)
        return req, clip_fea, y


def generate(request: GenerationRequest, progress: ProgressFn | None = None) -> GenerationResult:
    """One video with a fresh pipeline (models loaded for this call). Batches should reuse a :class:`Pipeline`."""
    return Pipeline(device=request.device, dtype=request.dtype).generate(request, progress)
