"""Sampling as plain functions (flux's ``sampling.py`` is the model): noise → CFG denoise → checked latents → frames.

Facts: ``wan21-architecture.md`` §6 (solvers), §7 (CFG, noise). Each function is testable alone; the pipeline
(``pipeline.py``) calls them in order and ``wan bench`` times the same :func:`denoise` and :func:`decode_frames`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from .errors import WanError
from .request import Solver
from .schedulers import make_schedule, new_state, step
from .stepcache import COND, UNCOND, CacheRecord, CacheSettings, StepCache, cached_forward, check_cache, make_cache
from .transformer import WanModel
from .vae import SPATIAL_STRIDE, TEMPORAL_STRIDE, Tiling, WanVAE

ProgressFn = Callable[[str, int, int], None]  # (phase, done, total)


def make_noise(seed: int, frames: int, height: int, width: int) -> torch.Tensor:
    """[1, 16, F_lat, H/8, W/8] float32 from a CPU generator: the same seed gives the same video on any machine."""
    g = torch.Generator("cpu").manual_seed(seed)
    shape = (1, 16, (frames - 1) // TEMPORAL_STRIDE + 1, height // SPATIAL_STRIDE, width // SPATIAL_STRIDE)
    return torch.randn(shape, generator=g, dtype=torch.float32)


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
    cache: StepCache | None = None,
    step_index: int = 0,
) -> torch.Tensor:
    """Classifier-free guidance u + g·(c − u); one batched forward for both, or two sequential ones.
    ``t`` should already be on x's device: a blocking host→device copy per step would stall the CPU until the GPU
    has drained its queue (``denoise`` moves all timesteps once). With a step ``cache`` each forward goes through
    ``stepcache.cached_forward``, which is told the step and which rows are cond / uncond."""
    ts = t.reshape(1).to(x.device)

    def run(cs: list[Conditioning], branches: tuple[int, ...]) -> torch.Tensor:
        n = len(cs)
        clip = torch.cat([c.clip_fea for c in cs]) if cs[0].clip_fea is not None else None  # type: ignore[misc]
        y = torch.cat([c.y for c in cs]) if cs[0].y is not None else None  # type: ignore[misc]
        args = (x.expand(n, *x.shape[1:]), ts.expand(n), _stack_contexts([c.context for c in cs]), clip, y)
        if cache is None:
            return model(*args)
        return cached_forward(model, cache, *args, step=step_index, branches=branches)

    if uncond is None:
        return run([cond], (COND,))
    if batch:
        v_c, v_u = run([cond, uncond], (COND, UNCOND)).chunk(2)
    else:
        v_c, v_u = run([cond], (COND,)), run([uncond], (UNCOND,))
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
    cache: str | CacheSettings = "none",
    cache_threshold: float | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Integrate from noise to data: [1, 16, F_lat, h, w] float32 in, the same out (normalised latent space).
    ``cache``: a ``stepcache.CACHE_KINDS`` name or full ``CacheSettings``; ``cache_threshold`` overrides its
    threshold. :func:`denoise_with_record` also returns what the cache did."""
    return denoise_with_record(model, noise, cond, uncond, steps=steps, shift=shift, solver=solver,
                               guidance=guidance, batch=batch, progress=progress, cache=cache,
                               cache_threshold=cache_threshold, seed=seed)[0]  # fmt: skip


def denoise_with_record(
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
    cache: str | CacheSettings = "none",
    cache_threshold: float | None = None,
    seed: int = 0,
) -> tuple[torch.Tensor, CacheRecord | None]:
    """:func:`denoise`, and the step cache's record (None without a cache). ``cache="none"`` runs the plain loop.
    ``seed``: the lcm solver's fresh noise per step (``schedulers.lcm_step``)."""
    settings = cache if isinstance(cache, CacheSettings) else CacheSettings(kind=cache)
    if cache_threshold is not None:
        settings = replace(settings, threshold=cache_threshold)
    check_cache(settings.kind, settings.threshold)  # before any step runs
    state = None if settings.kind == "none" else make_cache(model.config, settings, steps, noise.shape)
    schedule = make_schedule(steps, shift, solver)
    solver_state = new_state(schedule, solver, seed)
    latents = noise
    # All timesteps go to the device in one copy before the loop; the solver's σ arithmetic uses CPU scalars (passed
    # by value to the kernels). So no step waits for the GPU: the CPU queues the next forward while it computes.
    for i, t in enumerate(schedule.timesteps.to(noise.device)):
        if state is None:
            v = predict_velocity(model, latents, t, cond, uncond, guidance, batch)
        else:
            v = predict_velocity(model, latents, t, cond, uncond, guidance, batch, state, i)
        latents = step(solver_state, i, latents, v.float())
        if progress is not None:
            progress("denoise", i + 1, steps)
    return latents, None if state is None else state.record


def cfg_batch_fits(model: WanModel, tokens: int, device: torch.device) -> bool:
    """Whether cond + uncond fit in one forward: always on the CPU; on CUDA if the free memory covers a rough
    activation estimate for the doubled batch (residual, FFN and attention buffers per token)."""
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    per_token = (4 * model.config.dim + 2 * model.config.ffn_dim) * 4  # bytes, fp32 residual + half FFN
    return free > 2 * 2 * tokens * per_token


def check_finite(latents: torch.Tensor, dtype: torch.dtype | None) -> None:
    """Denoised latents with NaN or Inf would decode to a black or broken video: an error, never a result."""
    bad = (~torch.isfinite(latents)).sum().item()
    if bad:
        half = dtype == torch.float16
        raise WanError(
            f"the denoised latents hold {bad:,} NaN/Inf values of {latents.numel():,}: the video would be black",
            hint="the DiT overflowed its dtype; use --dtype bf16" + (" (fp16 overflows in Wan's DiT)" if half else
                                                                     " or --dtype fp32"),
        )  # fmt: skip


def decode_frames(vae: WanVAE, latents: torch.Tensor, tiling: Tiling | None = None) -> Iterator[torch.Tensor]:
    """[16, F_lat, h, w] latents → one chunk per latent frame, [3, 1 (first) or 4, H, W] float32 on the CPU.

    On CUDA each chunk lands in pinned host memory with an asynchronous copy, and a chunk is handed out only after
    the next one has been queued: the GPU decodes frame k+1 while the caller encodes frame k to the MP4."""
    z = latents[None].to(vae.device)
    pending: tuple[torch.Tensor, torch.cuda.Event] | None = None
    for chunk in vae.stream_decoder(tiling).push(z):
        if chunk.device.type != "cuda":
            yield chunk[0].cpu()
            continue
        host = torch.empty(chunk.shape[1:], dtype=chunk.dtype, pin_memory=True)
        host.copy_(chunk[0], non_blocking=True)
        done = torch.cuda.Event()
        done.record(torch.cuda.current_stream(chunk.device))
        if pending is not None:
            pending[1].synchronize()
            yield pending[0]
        pending = (host, done)
    if pending is not None:
        pending[1].synchronize()
        yield pending[0]
