"""Shared numerical ops: attention (one entry point, several backends), 3D RoPE, timestep sinusoid.

Facts: ``wan21-architecture.md`` §2.2 (sinusoid), §2.5-2.6 (attention, RoPE).
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from . import request
from .errors import WanError

# --------------------------------------------------------------------------------------------------------------------
# Attention
# --------------------------------------------------------------------------------------------------------------------

# sdpa: PyTorch picks its kernel; cudnn: PyTorch's cuDNN attention kernel only (Hopper); flash3 / flash / sage: the
# packages (FlashAttention 3 `flash_attn_interface`, FlashAttention 2 `flash_attn`, `sageattention`). ``auto`` is
# resolved by :func:`resolve_attention`. The backend is a setting of each attention module (``prepare.set_attention``),
# never process-wide state: two pipelines in one process may use two kernels.
ATTENTION_BACKENDS = tuple(name for name in request.ATTENTION_BACKENDS if name != "auto")  # the kernels
_PACKAGES = {"flash3": "flash_attn_interface", "flash": "flash_attn", "sage": "sageattention"}


def _import_first(*names: str) -> Any | None:
    for name in names:
        try:
            return importlib.import_module(name)
        except Exception:  # ImportError, or a broken CUDA extension raising anything at import
            continue
    return None


@functools.cache
def _kernel(backend: str) -> Callable[..., Any] | None:
    mod = _import_first(_PACKAGES[backend])
    return getattr(mod, "sageattn" if backend == "sage" else "flash_attn_func", None) if mod is not None else None


def available_backends() -> list[str]:
    """Attention backends usable in this process (``sdpa`` always)."""
    out = ["sdpa"]
    if torch.cuda.is_available() and torch.backends.cudnn.is_available():
        out.append("cudnn")
    if torch.cuda.is_available():
        out += [name for name in _PACKAGES if _kernel(name) is not None]
    return out


def resolve_attention(name: str) -> str:
    """``auto`` → FlashAttention 3 where it is installed (Hopper), else ``sdpa``; any other name is checked to run
    here, failing early (with a hint) before a model is loaded."""
    if name == "auto":
        return "flash3" if "flash3" in available_backends() else "sdpa"
    if name not in ATTENTION_BACKENDS:
        raise WanError(f"unknown attention backend {name!r}",
                       hint=f"choose one of: {', '.join(request.ATTENTION_BACKENDS)}")  # fmt: skip
    if name not in available_backends():
        pkg = {"cudnn": "cuDNN (a CUDA build of torch)", "flash3": "flash_attn_interface (FlashAttention 3)",
               "flash": "flash-attn", "sage": "sageattention"}[name]  # fmt: skip
        raise WanError(
            f"attention backend {name!r} is not available here",
            hint=f"it needs a CUDA GPU and the `{pkg}` package; the default `sdpa` always works",
        )
    return name


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, backend: str = "sdpa") -> torch.Tensor:
    """Full (unmasked, non-causal) multi-head attention with scale 1/sqrt(head_dim).

    q: [B, Lq, H, D], k and v: [B, Lk, H, D], all of one dtype → [B, Lq, H, D] in that dtype.
    """
    name = backend
    if name == "sdpa":
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2)
    if name == "cudnn":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2)
    half = q.dtype if q.dtype in (torch.float16, torch.bfloat16) else torch.bfloat16  # these kernels need 16-bit
    if name in ("flash3", "flash"):
        fn = _kernel(name)
        if fn is None:
            raise WanError(f"{_PACKAGES[name]} is not installed", hint="pip install it, or use the sdpa backend")
        res = fn(q.to(half), k.to(half), v.to(half))
        res = res[0] if isinstance(res, tuple) else res  # FA3 returns (out, lse)
        return res.to(q.dtype)
    if name == "sage":
        fn = _kernel("sage")
        if fn is None:
            raise WanError("sageattention is not installed", hint="pip install sageattention, or use sdpa")
        return fn(q.to(half), k.to(half), v.to(half), tensor_layout="NHD").to(q.dtype)
    raise WanError(f"unknown attention backend {name!r}", hint=f"choose one of: {', '.join(ATTENTION_BACKENDS)}")


# --------------------------------------------------------------------------------------------------------------------
# Timestep embedding
# --------------------------------------------------------------------------------------------------------------------


def sinusoidal_embedding_1d(dim: int, t: torch.Tensor) -> torch.Tensor:
    """[B] timesteps → [B, dim] float64, cos first: [cos(t·f_i), sin(t·f_i)], f_i = 10000^(-i/(dim/2)).

    Computed in float64 like the official code (Diffusers uses float32; the difference is ~1e-4 at t≈1000).
    """
    half = dim // 2
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device).div(half))
    angles = torch.outer(t.to(torch.float64), freqs)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


# --------------------------------------------------------------------------------------------------------------------
# 3D RoPE
# --------------------------------------------------------------------------------------------------------------------


def rope_axis_dims(head_dim: int) -> tuple[int, int, int]:
    """Channels per axis (frame, height, width): 128 → (44, 42, 42)."""
    hw = 2 * (head_dim // 6)
    return head_dim - 2 * hw, hw, hw


@functools.lru_cache(maxsize=16)
def rope_cos_sin(
    grid: tuple[int, int, int], head_dim: int, device: torch.device, theta: float = 10000.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables for a (frames, rows, cols) token grid → two [L, head_dim/2] float32 tensors.

    Token order is row-major over (f, h, w); pair j of a head uses the frame index for j < 22, the row index for
    22 ≤ j < 43 and the column index after (for head_dim 128). Angles in float64, as the official tables.
    Cached per grid: the sampler calls the DiT with one grid for every step.
    """
    f, h, w = grid
    angles = []
    for n, d_axis, view in zip(
        (f, h, w), rope_axis_dims(head_dim), ((f, 1, 1, -1), (1, h, 1, -1), (1, 1, w, -1)), strict=True
    ):
        inv = 1.0 / torch.pow(theta, torch.arange(0, d_axis, 2, dtype=torch.float64) / d_axis)
        ang = torch.outer(torch.arange(n, dtype=torch.float64), inv)  # [n, d_axis/2]
        angles.append(ang.view(view).expand(f, h, w, -1))
    table = torch.cat(angles, dim=-1).reshape(f * h * w, head_dim // 2)
    return table.cos().float().to(device), table.sin().float().to(device)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved channel pairs (2j, 2j+1) of x [B, L, H, D] by the angles of cos/sin [L, D/2]; fp32 out."""
    xf = x.float().unflatten(-1, (-1, 2))  # [B, L, H, D/2, 2]
    re, im = xf[..., 0], xf[..., 1]
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    if torch.compiler.is_compiling():  # inductor fuses this into one kernel; `out=` views would break the graph
        return torch.stack([re * c - im * s, re * s + im * c], dim=-1).flatten(-2)
    out = torch.empty_like(xf)  # eager: written in place, no stacked temporaries
    torch.addcmul(re * c, im, s, value=-1, out=out[..., 0])
    torch.addcmul(re * s, im, c, out=out[..., 1])
    return out.flatten(-2)


def rms_normalize(x: torch.Tensor, eps: float) -> torch.Tensor:
    """x · rsqrt(mean(x²) + eps) over the last axis, in fp32, returned in x's dtype (the official WanRMSNorm)."""
    # torch's fused kernel computes the same x · rsqrt(mean(x²) + eps) in fp32 in one pass (no x² temporary)
    return F.rms_norm(x.float(), (x.shape[-1],), eps=eps).type_as(x)


# --------------------------------------------------------------------------------------------------------------------
# fp8 weights
# --------------------------------------------------------------------------------------------------------------------

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0  # the largest finite float8_e4m3fn


def quantize_fp8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tensor scaled fp8: W ≈ q · scale with q float8_e4m3fn and scale = max|W| / 448 (a 0-dim fp32 tensor)."""
    scale = (w.detach().abs().amax().float() / FP8_MAX).clamp(min=1e-12)
    return (w.detach().float() / scale).to(FP8), scale


def fp8_linear(
    x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None, scaled_mm: bool = False
) -> torch.Tensor:
    """y = x · (q · scale)ᵀ + b in x's dtype, for fp8 weights q [out, in].

    Default: the weight is dequantised for this call (q cast to x's dtype, times the scale in x's dtype), so the
    matmul is the ordinary one and the error is the weight's fp8 rounding plus one rounding of the product.
    ``scaled_mm``: x is quantised to fp8 too
    (per-tensor, max|x| / 448, computed on the device: no host sync) and ``torch._scaled_mm`` multiplies in fp8
    (Hopper/Ada tensor cores: twice the bf16 rate), at the price of the activations' rounding as well.
    """
    if not scaled_mm:
        # q is exact in bf16/fp16 (e4m3's 3 mantissa bits, exponents within range): one cast, then the fp32 scale
        # in place (computed in fp32 and rounded once, as a full fp32 dequantisation would round). No fp32 copy of
        # the weight per call: that cost 4 bytes a weight of memory traffic on every forward.
        return F.linear(x, q.to(x.dtype).mul_(scale), bias)
    lead, n = x.shape[:-1], x.shape[-1]
    x2 = x.reshape(-1, n)
    sx = (x2.abs().amax().float() / FP8_MAX).clamp(min=1e-12)
    xq = (x2.float() / sx).to(FP8)
    y = torch._scaled_mm(xq, q.t(), scale_a=sx, scale_b=scale.float(), bias=bias, out_dtype=x.dtype)
    return y.view(*lead, -1)


__all__ = [
    "ATTENTION_BACKENDS",
    "FP8",
    "apply_rope",
    "attention",
    "available_backends",
    "fp8_linear",
    "quantize_fp8",
    "resolve_attention",
    "rms_normalize",
    "rope_axis_dims",
    "rope_cos_sin",
    "sinusoidal_embedding_1d",
]
