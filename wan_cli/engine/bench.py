"""What this machine does with a model, before any download: DiT step time, achieved FLOP/s against the measured
matmul peak, text-encoder time, VAE decode speed, peak memory per phase, and the projected time of a whole video.

Random weights at the true architecture by default (the speed of a network does not depend on its weights; the
values are kept in a sane range so no kernel takes a NaN path). FLOPs are counted, not sampled: see
:func:`dit_flops` and ``docs/performance.md``.

Everything timed runs through the generation path: a :class:`Pipeline` with the run's settings prepares the DiT
(``prepare_dit``: fp8 matmul, attention kernel, block streaming or fused q/k/v, compile) and the text encoder
(``prepare_text_encoder``), ``sampling.denoise`` runs the steps (CFG batched or not as the pipeline decides) and
``sampling.decode_frames`` the VAE. A speed change shows up in ``wan t2v`` and ``wan bench`` alike.
"""

from __future__ import annotations

import functools
import math
import re
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from .conditioning import TextEncoder
from .memory import Offload
from .ops import quantize_fp8
from .pipeline import Pipeline
from .prepare import FP8_KEYS, store_fp8_weights
from .sampling import Conditioning, decode_frames, denoise
from .transformer import DIT_CONFIGS, WanDiTConfig, WanModel, build_transformer
from .vae import SPATIAL_STRIDE, TEMPORAL_STRIDE, WanVAE, WanVAEConfig, build_vae

TEXT_TOKENS = 512  # the DiT always sees 512 text positions (zero-padded)
CLIP_TOKENS = {"t2v": 0, "i2v": 257, "flf2v": 514}
# registry name → the DiT config of that variant (the 480p/720p I2V models share one architecture)
BENCH_MODELS = {"1.3b-t2v": "t2v-1.3B", "14b-t2v": "t2v-14B", "14b-i2v-480p": "i2v-14B", "14b-i2v-720p": "i2v-14B",
                "14b-flf2v-720p": "flf2v-14B"}  # fmt: skip
Log = Callable[[str], None]


def dit_flops(cfg: WanDiTConfig, tokens: int, text: int = TEXT_TOKENS, clip: int = 0, batch: int = 2) -> float:
    """Forward FLOPs of the DiT (2 per multiply-add), ``batch`` passes (2 = cond + uncond). Per block: q/k/v/o
    projections 8·N·D², self-attention 4·N²·D, cross-attention 4·N·D² + 4·C·D² + 4·N·C·D (C = text + CLIP tokens),
    FFN 4·N·D·F. Embeddings, norms and the head are < 0.1% and left out."""
    d, f, n, c = cfg.dim, cfg.ffn_dim, tokens, text + clip
    per_block = 8 * n * d * d + 4 * n * n * d + 4 * n * d * d + 4 * c * d * d + 4 * n * c * d + 4 * n * d * f
    return float(batch * cfg.num_layers * per_block)


def latent_shape(width: int, height: int, frames: int) -> tuple[int, int, int]:
    return (frames - 1) // TEMPORAL_STRIDE + 1, height // SPATIAL_STRIDE, width // SPATIAL_STRIDE


# --------------------------------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakMemory:
    """Peak memory of one phase, read when the phase ends: CUDA's allocator peak on a GPU; on the CPU the process's
    peak RSS during the phase (Linux: the peak is reset when the phase starts, ``/proc/self/clear_refs``). Where it
    cannot be reset (macOS) it is the lifetime peak, max(earlier phases, this), and ``lifetime`` says so."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.gib = 0.0
        self.lifetime = False

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset the peak RSS (VmHWM), Linux ≥ 4.0
        except OSError:
            self.lifetime = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            self.gib = torch.cuda.max_memory_allocated(self.device) / 2**30
        elif not self.lifetime:
            with open("/proc/self/status") as f:
                kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
            self.gib = kib / 2**20
        else:
            kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            self.gib = kib / 2**20 if sys.platform != "darwin" else kib / 2**30  # macOS reports bytes


def seconds_of(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds of one call of ``fn``, the device's queue drained before and after."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Mean seconds of ``fn`` over ``repeats`` calls after one warm-up call."""
    fn()
    return seconds_of(lambda: [fn() for _ in range(repeats)], device) / repeats


def matmul_peak(device: torch.device, dtype: torch.dtype) -> float:
    """The machine's dense matmul rate in FLOP/s for ``dtype`` (square products, large enough to saturate): the
    best of several timed products after a warm-up (a mean would count a busy moment of a shared machine)."""
    n = 8192 if device.type == "cuda" else 2048
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    if device.type == "cuda":
        seconds = min(timed(lambda: a @ b, device, repeats=10) for _ in range(3))
    else:  # a product takes ~0.1 s here: one warm-up, then the best of three
        seconds = min(timed(lambda: a @ b, device, repeats=1) for _ in range(3))
    return 2 * n**3 / seconds


def random_dit(
    cfg: WanDiTConfig,
    device: torch.device,
    dtype: torch.dtype,
    seed: int = 0,
    *,
    fp8: bool = False,
    stream_blocks: bool = False,
) -> WanModel:
    """The DiT at its true shape with random weights drawn on ``device`` (a CPU init of 14B parameters would take
    minutes): N(0, 0.02) matrices, norm gains near 1, the official dtype rules (fp32 where the model keeps fp32).

    ``fp8``: the block matmul weights quantised as ``--dtype fp8`` stores them. ``stream_blocks``: each block tensor
    goes to host memory as soon as it is drawn (so a 14B model never sits whole on the device), where
    ``Pipeline.prepare_dit`` streams it from, as ``--offload blocks`` does.

    On a CPU every block is a copy of the first one's draw: a CPU draws 1.4B normals in ~15 s (2 cores), a copy
    costs a tenth of that, and neither speed nor memory depends on the values."""
    model = build_transformer(cfg)
    g = torch.Generator(device).manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    scales: dict[str, torch.Tensor] = {}
    first_block: dict[str, torch.Tensor] = {}
    for name, p in model.named_parameters():
        key = re.sub(r"^blocks\.\d+\.", "", name) if name.startswith("blocks.") else None
        if device.type == "cpu" and key in first_block:
            t = first_block[key].clone()
        else:
            t = torch.randn(p.shape, device=device, generator=g).mul_(0.02 if p.ndim >= 2 else 0.1)
            if "norm" in name:
                t += 1.0
            if device.type == "cpu" and key is not None:
                first_block[key] = t
        if fp8 and FP8_KEYS.match(name):
            t, scales[name] = quantize_fp8(t)
        else:
            t = t.to(torch.float32 if WanModel.keeps_fp32(name) else dtype)
        state[name] = t.cpu() if stream_blocks and name.startswith("blocks.") else t
    model.load_state_dict(state, strict=True, assign=True)
    store_fp8_weights(model, scales, dtype)
    return model.eval().requires_grad_(False)


def random_vae(device: torch.device) -> WanVAE:
    vae = build_vae(WanVAEConfig())
    g = torch.Generator(device).manual_seed(0)
    state = {}
    for name, p in vae.named_parameters():
        fan_in = math.prod(p.shape[1:]) if p.ndim > 1 else 1
        state[name] = (
            torch.randn(p.shape, device=device, generator=g) / math.sqrt(fan_in)
            if p.ndim > 1
            else (torch.ones(p.shape, device=device) if name.endswith("gamma") else torch.zeros(p.shape, device=device))
        )
    vae.load_state_dict(state, strict=True, assign=True)  # buffers (latent stats) were set by build_vae
    vae.latent_mean, vae.latent_inv_std = vae.latent_mean.to(device), vae.latent_inv_std.to(device)
    return vae.eval().requires_grad_(False)


# --------------------------------------------------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class BenchRequest:
    model: str = "1.3b-t2v"  # a registry name
    width: int = 832
    height: int = 480
    frames: int = 81
    steps: int = 2  # timed DiT steps (after one warm-up)
    full_steps: int = 50  # the step count the projection is for
    device: str = "cpu"
    dtype: torch.dtype = torch.bfloat16
    text_encoder: bool = True  # build the real UMT5-XXL (5.7B parameters) and time it
    vae: bool = True
    dit: str | None = None  # an installed DiT's weights (a file or folder) instead of random weights
    compile: bool = False  # torch.compile the DiT blocks (the first step then includes the compilation)
    # model: the text encoder streams its blocks, CFG in two passes; blocks: the DiT too; None: as `--offload auto`
    offload: Offload | None = None
    attention: str = "sdpa"  # the kernel, as `wan t2v --attention` (ops.resolve_attention)
    fp8: bool = False  # DiT block weights stored in fp8 (`--dtype fp8`), computed in `dtype`
    fp8_matmul: bool = False  # and multiplied in fp8 (torch._scaled_mm)
    why_not: dict[str, str] = field(default_factory=dict)  # phase → why it is off ("--no-vae"), for the report
    notes: list[str] = field(default_factory=list)  # the caller's notes, reported with the result


@dataclass
class BenchResult:
    model: str
    device: str
    device_name: str
    dtype: str
    size: str
    frames: int
    tokens: int
    matmul_tflops: float  # measured peak of this device in `dtype` (at least the DiT's own rate: see notes)
    step_s: float  # one denoising step: cond + uncond
    flop_per_step: float
    achieved_tflops: float
    peak_fraction: float
    dit_peak_gib: float
    first_step_s: float = 0.0  # the warm-up step (includes torch.compile's compilation with --compile)
    compiled: bool = False
    offload: str = "none"
    weights: str = "as stored"  # or fp8 / fp8 matmul
    text_encode_s: float | None = None
    text_peak_gib: float | None = None
    vae_decode_s: float | None = None
    vae_fps: float | None = None
    vae_peak_gib: float | None = None
    full_steps: int = 50
    projected_s: float = 0.0  # text + full_steps × step + decode, of the phases measured
    skipped: dict[str, str] = field(default_factory=dict)  # "text_encoder" / "vae" → why it was not measured
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"{platform.machine()} CPU, {torch.get_num_threads()} threads"


def bench_text_encoder(pipe: Pipeline, dtype: torch.dtype) -> tuple[float, float]:
    """UMT5-XXL at its true shape (random weights): one batch of prompt + negative prompt, 512 tokens each, run as
    the pipeline runs it (``Pipeline.prepare_text_encoder``: with offloading the blocks stream from host memory and
    the embedding lookup stays on the CPU)."""
    from transformers import UMT5Config, UMT5EncoderModel

    device, stream = pipe.device, pipe.offload != "none"
    cfg = UMT5Config(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_heads=64, num_layers=24,
                     feed_forward_proj="gated-gelu", relative_attention_num_buckets=32, dropout_rate=0.0)  # fmt: skip
    with PeakMemory(device) as mem:
        with torch.device("meta"):
            model = UMT5EncoderModel(cfg)
        g = torch.Generator(device).manual_seed(0)
        state = {}
        for n, p in model.state_dict().items():
            t = torch.randn(p.shape, device=device, generator=g) * 0.02
            if "layer_norm" in n:
                t = torch.ones_like(t)
            host = stream and (n.startswith("encoder.block.") or n == "shared.weight")
            state[n] = t.to(dtype).cpu() if host else t.to(dtype)
        model.load_state_dict(state, strict=True, assign=True)
        model.eval().requires_grad_(False)
        del state
        encoder = pipe.prepare_text_encoder(TextEncoder(model, tokenizer=None), ("text_encoder", "random"))
        ids = torch.randint(0, 256384, (2, TEXT_TOKENS), generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            seconds = timed(functools.partial(encoder.hidden_states, ids, torch.ones_like(ids)), device, repeats=1)
        pipe.close()
        del model, encoder
    return seconds, mem.gib


def _dit(req: BenchRequest, pipe: Pipeline, cfg: WanDiTConfig) -> WanModel:
    """The DiT as ``wan t2v`` would run it: installed weights through ``Pipeline.dit`` (loader + preparation), or
    random ones at the true shape through the same ``Pipeline.prepare_dit``."""
    if req.dit is not None:
        return pipe.dit(req.dit, cfg.model_type)
    # drawn where it computes (an offloaded model visits the device for its phase), blocks kept in host memory
    # when they stream
    model = random_dit(cfg, pipe.device, req.dtype, fp8=pipe.fp8, stream_blocks=pipe.offload == "blocks")
    return pipe.prepare_dit(model)


def _time_dit(req: BenchRequest, pipe: Pipeline, cfg: WanDiTConfig, tokens: int, log: Log) -> tuple[float, float]:
    """(first step, mean step) of ``sampling.denoise`` with CFG, as the pipeline batches it."""
    device = pipe.device
    f, h, w = latent_shape(req.width, req.height, req.frames)
    clip = CLIP_TOKENS[cfg.model_type]
    model = _dit(req, pipe, cfg)
    g = torch.Generator(device).manual_seed(1)
    noise = torch.randn(1, 16, f, h, w, device=device, generator=g)
    clip_fea = torch.randn(1, clip, 1280, device=device, generator=g) if clip else None
    y = torch.randn(1, 20, f, h, w, device=device, generator=g) if cfg.model_type != "t2v" else None
    cond, uncond = (Conditioning(torch.randn(TEXT_TOKENS, cfg.text_dim, device=device, generator=g) * 0.1,
                                 clip_fea, y) for _ in range(2))  # fmt: skip
    batch = pipe.cfg_batch(model, tokens)

    def steps(n: int) -> object:
        return denoise(model, noise, cond, uncond, steps=n, shift=5.0, solver="unipc", guidance=5.0, batch=batch)

    log(f"timing {req.steps} DiT step{'s' * (req.steps != 1)} at {tokens} tokens (+1 warm-up)")
    with torch.inference_mode():
        first = seconds_of(lambda: steps(1), device)  # the warm-up (and compilation with --compile)
        total = seconds_of(lambda: steps(req.steps), device)
    pipe.close()
    return first, total / req.steps


def _time_vae(req: BenchRequest, device: torch.device) -> tuple[float, float, float]:
    """(seconds, frames/s, peak GiB) of ``sampling.decode_frames``: frames to host memory, as a video is written."""
    f, h, w = latent_shape(req.width, req.height, req.frames)
    with PeakMemory(device) as mem:
        vae = random_vae(device)
        z = torch.randn(16, f, h, w) * 0.5
        sync(device)
        t0 = time.perf_counter()
        n = sum(chunk.shape[1] for chunk in decode_frames(vae, z))
        sync(device)
        seconds = time.perf_counter() - t0
        del vae, z
    return seconds, n / seconds, mem.gib


def run_bench(req: BenchRequest, log: Log = lambda _: None) -> BenchResult:
    device = torch.device(req.device)
    cfg = DIT_CONFIGS[BENCH_MODELS[req.model]]
    f, h, w = latent_shape(req.width, req.height, req.frames)
    tokens = f * h * w // 4
    clip = CLIP_TOKENS[cfg.model_type]
    notes: list[str] = list(req.notes)
    skipped: dict[str, str] = {}
    pipe = Pipeline(device=device, dtype=req.dtype, offload=req.offload, fp8=req.fp8, fp8_matmul=req.fp8_matmul,
                    compile=req.compile, attention=req.attention)  # fmt: skip
    offload = pipe.resolve_offload(cfg, tokens, req.dit)

    log(f"measuring the {req.dtype} matmul peak")
    peak = matmul_peak(device, req.dtype)

    text_s = text_mem = None
    if req.text_encoder:
        log("timing the text encoder (UMT5-XXL, 5.7B parameters)")
        text_s, text_mem = bench_text_encoder(pipe, torch.bfloat16 if req.dtype != torch.float32 else req.dtype)
    else:
        skipped["text_encoder"] = req.why_not.get("text_encoder", "not asked for")

    log(f"building the DiT ({BENCH_MODELS[req.model]}, {'installed' if req.dit else 'random'} weights)")
    with PeakMemory(device) as dit_mem:
        first, step = _time_dit(req, pipe, cfg, tokens, log)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    flops = dit_flops(cfg, tokens, clip=clip)

    vae_s = vae_fps = vae_mem = None
    if req.vae:
        log(f"timing the VAE decode of {req.frames} frames at {req.width}x{req.height}")
        vae_s, vae_fps, vae_mem = _time_vae(req, device)
    else:
        skipped["vae"] = req.why_not.get("vae", "not asked for")

    projected = req.full_steps * step + (text_s or 0.0) + (vae_s or 0.0)
    achieved = flops / step
    if dit_mem.lifetime and device.type == "cpu":
        notes.append("peak memory on this CPU is the process's peak so far, not per phase")
    if achieved > peak:  # the probe under-measured (a busy moment, or kernels faster than square products)
        notes.append(f"the DiT ran at {achieved / 1e12:.2f} TFLOP/s, above the {peak / 1e12:.2f} TFLOP/s of the "
                     "square-matmul probe; that rate is taken as the peak")  # fmt: skip
        peak = achieved
    return BenchResult(
        model=req.model, device=str(device), device_name=_device_name(device),
        dtype=str(req.dtype).removeprefix("torch."), size=f"{req.width}x{req.height}", frames=req.frames,
        tokens=tokens, matmul_tflops=peak / 1e12, step_s=step, flop_per_step=flops,
        achieved_tflops=achieved / 1e12, peak_fraction=achieved / peak, dit_peak_gib=dit_mem.gib,
        first_step_s=first, compiled=req.compile, offload=offload,
        weights="fp8 matmul" if req.fp8_matmul else "fp8" if req.fp8 else "as stored",
        text_encode_s=text_s, text_peak_gib=text_mem, vae_decode_s=vae_s, vae_fps=vae_fps, vae_peak_gib=vae_mem,
        full_steps=req.full_steps, projected_s=projected, skipped=skipped, notes=notes,
    )  # fmt: skip
