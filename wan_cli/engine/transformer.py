"""The Wan 2.1 diffusion transformer (DiT) for text-, image- and first-last-frame-to-video.

Notable points, all from the official model (``wan21-architecture.md`` §2):
- Module attributes are the official state-dict keys, so the official and ComfyUI layouts load without renaming.
- Precision follows the official bf16-autocast run: the time embedding, modulation, LayerNorm/RMSNorm arithmetic,
  the gated residual stream and the head run in fp32; every other Linear/Conv runs in the dtype its weight is stored
  in (the compute dtype). Storing those weights in bf16 gives the same numbers as autocast casting fp32 weights.
- Text context is zero-padded to ``text_len`` before ``text_embedding`` (padded rows become bias vectors and are
  attended to, as in the official model); I2V/FLF2V put the CLIP tokens before the text tokens.
- 3D RoPE with interleaved pairs, split 44/42/42 over (frame, row, column), tables cached per token grid.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .errors import InputError
from .layers import Conv3d, LayerNorm, Linear, RMSNorm
from .ops import apply_rope, attention, rope_cos_sin, sinusoidal_embedding_1d
from .request import Task

ModelType = Task  # the DiT's model_type is the task it was trained for
CLIP_TOKENS = 257  # ViT-H/14 at 224 px: 16×16 patches + CLS
CLIP_DIM = 1280


@dataclass(frozen=True)
class WanDiTConfig:
    """DiT hyper-parameters; field names are the official ``config.json`` keys."""

    model_type: ModelType
    dim: int
    ffn_dim: int
    num_heads: int
    num_layers: int
    in_dim: int = 16
    out_dim: int = 16
    freq_dim: int = 256
    text_len: int = 512
    # The five below are absent from the released config.json files; these are the official constructor defaults.
    patch_size: tuple[int, int, int] = (1, 2, 2)
    text_dim: int = 4096
    window_size: tuple[int, int] = (-1, -1)
    qk_norm: bool = True
    cross_attn_norm: bool = True
    eps: float = 1e-6

    def __post_init__(self) -> None:
        if self.model_type not in ("t2v", "i2v", "flf2v"):
            raise ValueError(f"model_type must be t2v, i2v or flf2v, not {self.model_type!r}")
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} is not a multiple of num_heads {self.num_heads}")
        if self.window_size != (-1, -1):
            raise ValueError("windowed attention is not used by any Wan 2.1 model")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def clip_tokens(self) -> int:
        """Image tokens expected in ``clip_fea``: 0 (t2v), 257 (i2v), 514 (flf2v: two images)."""
        return {"t2v": 0, "i2v": CLIP_TOKENS, "flf2v": 2 * CLIP_TOKENS}[self.model_type]

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> WanDiTConfig:
        """Read an official ``config.json`` (ignores ``_class_name`` and friends, rejects unknown keys)."""
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in raw.items() if not k.startswith("_")}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown DiT config keys: {', '.join(unknown)}")
        for key in ("patch_size", "window_size"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def a_model(model_type: str) -> str:
    """'a t2v model', 'an i2v model', 'an flf2v model' (for messages)."""
    return f"{'a' if model_type == 't2v' else 'an'} {model_type} model"


# The released variants (wan21-architecture.md §1.1). I2V 480P and 720P share one architecture.
DIT_CONFIGS: dict[str, WanDiTConfig] = {
    "t2v-1.3B": WanDiTConfig("t2v", dim=1536, ffn_dim=8960, num_heads=12, num_layers=30),
    "t2v-14B": WanDiTConfig("t2v", dim=5120, ffn_dim=13824, num_heads=40, num_layers=40),
    "i2v-14B": WanDiTConfig("i2v", dim=5120, ffn_dim=13824, num_heads=40, num_layers=40, in_dim=36),
    "flf2v-14B": WanDiTConfig("flf2v", dim=5120, ffn_dim=13824, num_heads=40, num_layers=40, in_dim=36),
}


# --------------------------------------------------------------------------------------------------------------------
# Attention
# --------------------------------------------------------------------------------------------------------------------


class WanSelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qk_norm: bool, eps: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = Linear(dim, dim)
        self.k = Linear(dim, dim)
        self.v = Linear(dim, dim)
        self.o = Linear(dim, dim)
        self.norm_q: nn.Module = RMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.norm_k: nn.Module = RMSNorm(dim, eps) if qk_norm else nn.Identity()
        # fuse_qkv: one [3D, D] projection (not in the state dict; q/k/v.weight become views of it)
        self.register_buffer("qkv_weight", None, persistent=False)
        self.register_buffer("qkv_bias", None, persistent=False)
        self.attention_backend = "sdpa"  # an ops.ATTENTION_BACKENDS name, set per model by prepare.set_attention

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        return t.unflatten(-1, (self.num_heads, -1))  # [B, L, D] → [B, L, H, Dh]

    def fuse_qkv(self) -> None:
        """Compute q, k and v with one GEMM: the input is read once and the product is 3× wider. The weights are
        concatenated once and q/k/v.weight re-pointed at views of the result, so memory does not grow (moving the
        model to another device afterwards would copy the views apart: fuse on the final device)."""
        w = torch.cat([self.q.weight, self.k.weight, self.v.weight])  # [3D, D]
        b = torch.cat([self.q.bias, self.k.bias, self.v.bias])
        d = self.q.weight.shape[0]
        for i, lin in enumerate((self.q, self.k, self.v)):
            lin.weight.data = w[i * d : (i + 1) * d]
            lin.bias.data = b[i * d : (i + 1) * d]
        self.qkv_weight, self.qkv_bias = w, b

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """x [B, L, D] → [B, L, D] in the compute dtype (the weights' dtype)."""
        cdt = self.o.compute_dtype
        x = x.to(cdt)  # once, not in each of q, k and v (the input arrives in fp32 from the modulation)
        if self.qkv_weight is not None:
            q, k, v = F.linear(x, self.qkv_weight, self.qkv_bias).chunk(3, dim=-1)
            if self.q.lora_adapters or self.k.lora_adapters or self.v.lora_adapters:  # run-time LoRAs
                q, k, v = self.q.lora_out(x, q), self.k.lora_out(x, k), self.v.lora_out(x, v)
        else:
            q, k, v = self.q(x), self.k(x), self.v(x)
        q = apply_rope(self._heads(self.norm_q(q)), *rope).to(cdt)
        k = apply_rope(self._heads(self.norm_k(k)), *rope).to(cdt)
        v = self._heads(v).to(cdt)
        return self.o(attention(q, k, v, backend=self.attention_backend).flatten(2))


class WanT2VCrossAttention(WanSelfAttention):
    """Queries from the video tokens, keys/values from the 512 text tokens; no RoPE, no mask."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool, eps: float, text_len: int) -> None:
        super().__init__(dim, num_heads, qk_norm, eps)
        self.text_len = text_len

    def _text(self, q: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        cdt = self.o.compute_dtype
        k = self._heads(self.norm_k(self.k(context))).to(cdt)
        v = self._heads(self.v(context)).to(cdt)
        return attention(q, k, v, backend=self.attention_backend)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        q = self._heads(self.norm_q(self.q(x))).to(self.o.compute_dtype)
        return self.o(self._text(q, context).flatten(2))


class WanI2VCrossAttention(WanT2VCrossAttention):
    """Adds a second attention over the CLIP tokens (the first ``len(context) - text_len`` tokens); outputs summed."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool, eps: float, text_len: int) -> None:
        super().__init__(dim, num_heads, qk_norm, eps, text_len)
        self.k_img = Linear(dim, dim)
        self.v_img = Linear(dim, dim)
        self.norm_k_img: nn.Module = RMSNorm(dim, eps) if qk_norm else nn.Identity()

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        cdt = self.o.compute_dtype
        n_img = context.shape[1] - self.text_len
        img, text = context[:, :n_img], context[:, n_img:]
        q = self._heads(self.norm_q(self.q(x))).to(cdt)
        k_img = self._heads(self.norm_k_img(self.k_img(img))).to(cdt)
        v_img = self._heads(self.v_img(img)).to(cdt)
        out = self._text(q, text) + attention(q, k_img, v_img, backend=self.attention_backend)
        return self.o(out.flatten(2))


# --------------------------------------------------------------------------------------------------------------------
# Blocks, head, image projection
# --------------------------------------------------------------------------------------------------------------------


class WanAttentionBlock(nn.Module):
    def __init__(self, cfg: WanDiTConfig) -> None:
        super().__init__()
        dim, eps = cfg.dim, cfg.eps
        cross = WanT2VCrossAttention if cfg.model_type == "t2v" else WanI2VCrossAttention
        self.norm1 = LayerNorm(dim, eps, elementwise_affine=False)
        self.self_attn = WanSelfAttention(dim, cfg.num_heads, cfg.qk_norm, eps)
        # Official naming kept for checkpoint compatibility: norm3 is the (affine) cross-attention norm and norm2 the
        # FFN norm, i.e. not in execution order. Diffusers swaps the two names; its rename table handles that.
        self.norm3: nn.Module = LayerNorm(dim, eps, elementwise_affine=True) if cfg.cross_attn_norm else nn.Identity()
        self.cross_attn = cross(dim, cfg.num_heads, cfg.qk_norm, eps, cfg.text_len)
        self.norm2 = LayerNorm(dim, eps, elementwise_affine=False)
        self.ffn = nn.Sequential(Linear(dim, cfg.ffn_dim), nn.GELU(approximate="tanh"), Linear(cfg.ffn_dim, dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def forward(
        self, x: torch.Tensor, e0: torch.Tensor, context: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        """x [B, L, D] (fp32 after the first block), e0 [B, 6, D] fp32, context [B, Lc, D] → [B, L, D] fp32."""
        shift_sa, scale_sa, gate_sa, shift_ffn, scale_ffn, gate_ffn = (self.modulation.float() + e0).unbind(1)
        scale_sa, shift_sa, gate_sa = scale_sa[:, None], shift_sa[:, None], gate_sa[:, None]
        scale_ffn, shift_ffn, gate_ffn = scale_ffn[:, None], shift_ffn[:, None], gate_ffn[:, None]

        y = self.self_attn(self.norm1(x).float() * (1 + scale_sa) + shift_sa, rope)
        x = x + y.float() * gate_sa
        x = x + self.cross_attn(self.norm3(x), context).float()
        y = self.ffn(self.norm2(x).float() * (1 + scale_ffn) + shift_ffn)
        return x + y.float() * gate_ffn


class Head(nn.Module):
    """Final modulated LayerNorm + Linear to ``out_dim · prod(patch)`` channels per token; all fp32."""

    def __init__(self, dim: int, out_dim: int, patch_size: tuple[int, int, int], eps: float) -> None:
        super().__init__()
        self.norm = LayerNorm(dim, eps, elementwise_affine=False)
        self.head = Linear(dim, out_dim * math.prod(patch_size))
        self.modulation = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        shift, scale = (self.modulation.float() + e[:, None]).unbind(1)  # uses e, not the 6-way projection e0
        return self.head(self.norm(x).float() * (1 + scale[:, None]) + shift[:, None]).float()


class MLPProj(nn.Module):
    """CLIP features [B, 257|514, 1280] → image context [B, 257|514, D]. FLF2V adds a learned position table."""

    def __init__(self, in_dim: int, out_dim: int, flf_tokens: int | None) -> None:
        super().__init__()
        self.proj = nn.Sequential(
            LayerNorm(in_dim, eps=1e-5),
            Linear(in_dim, in_dim),
            nn.GELU(),
            Linear(in_dim, out_dim),
            LayerNorm(out_dim, eps=1e-5),
        )
        self.emb_pos = nn.Parameter(torch.zeros(1, flf_tokens, in_dim)) if flf_tokens else None

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        x = image_embeds.float()  # the LayerNorms run in fp32 (autocast policy in the official run)
        if self.emb_pos is not None:
            x = x + self.emb_pos.float()
        return self.proj(x)


# --------------------------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class Embedded:
    """What ``WanModel.embed`` hands to the block stack and the head (one forward's worth)."""

    tokens: torch.Tensor  # [B, L, D] patch tokens, compute dtype
    e: torch.Tensor  # [B, D] fp32 time embedding (the head's modulation)
    e0: torch.Tensor  # [B, 6, D] fp32 its 6-way projection (each block's modulation)
    ctx: torch.Tensor  # [B, (257|514 +) text_len, D] context tokens
    rope: tuple[torch.Tensor, torch.Tensor]  # cos, sin tables for the token grid
    grid: tuple[int, int, int]  # (F, H, W) in patches


class WanModel(nn.Module):
    def __init__(self, cfg: WanDiTConfig) -> None:
        super().__init__()
        self.config = cfg
        dim = cfg.dim
        self.patch_embedding = Conv3d(cfg.in_dim, dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.text_embedding = nn.Sequential(Linear(cfg.text_dim, dim), nn.GELU(approximate="tanh"), Linear(dim, dim))
        self.time_embedding = nn.Sequential(Linear(cfg.freq_dim, dim), nn.SiLU(), Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), Linear(dim, 6 * dim))
        self.blocks = nn.ModuleList([WanAttentionBlock(cfg) for _ in range(cfg.num_layers)])
        self.head = Head(dim, cfg.out_dim, cfg.patch_size, cfg.eps)
        if cfg.model_type != "t2v":
            self.img_emb = MLPProj(CLIP_DIM, dim, cfg.clip_tokens if cfg.model_type == "flf2v" else None)

    # Parameters that stay fp32 whatever the compute dtype (official: fp32 autocast regions, norm weights).
    FP32_PREFIXES = ("time_embedding.", "time_projection.", "head.")
    FP32_SUFFIXES = (
        "modulation",
        "norm3.weight",
        "norm3.bias",
        "norm_q.weight",
        "norm_k.weight",
        "norm_k_img.weight",
        "img_emb.proj.0.weight",
        "img_emb.proj.0.bias",
        "img_emb.proj.4.weight",
        "img_emb.proj.4.bias",
        "img_emb.emb_pos",
    )

    @classmethod
    def keeps_fp32(cls, key: str) -> bool:
        """Whether the parameter ``key`` is stored in fp32 regardless of the compute dtype."""
        return key.startswith(cls.FP32_PREFIXES) or key.endswith(cls.FP32_SUFFIXES)

    def forward(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        context: torch.Tensor,
        clip_fea: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the flow velocity.

        x [B, 16, F, H, W] noisy latents; timestep [B] (integers 0..1000); context [B, L ≤ text_len, text_dim] text
        embeddings (zero-padded here to text_len); i2v/flf2v also take clip_fea [B, 257|514, 1280] and y
        [B, 20, F, H, W] (4 mask + 16 image-latent channels). Returns [B, 16, F, H, W] float32.

        The three phases are public so that a step cache (``stepcache.py``) can run them apart, reusing the block
        stack's residual, with exactly these numerics.
        """
        emb = self.embed(x, timestep, context, clip_fea, y)
        return self.final(self.run_blocks(emb.tokens, emb.e0, emb.ctx, emb.rope), emb.e, emb.grid)

    def embed(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        context: torch.Tensor,
        clip_fea: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
    ) -> Embedded:
        """Inputs checked, patchified and embedded: everything the block stack and the head take."""
        cfg = self.config
        self._check_inputs(x, timestep, context, clip_fea, y)
        if y is not None:
            x = torch.cat([x, y.to(x.dtype)], dim=1)
        pt, ph, pw = cfg.patch_size
        grid = (x.shape[2] // pt, x.shape[3] // ph, x.shape[4] // pw)

        tokens = self.patch_embedding(x).flatten(2).transpose(1, 2)  # [B, L, D] in the compute dtype
        rope = rope_cos_sin(grid, cfg.head_dim, tokens.device)

        e = self.time_embedding(sinusoidal_embedding_1d(cfg.freq_dim, timestep).float()).float()  # [B, D]
        e0 = self.time_projection(e).float().unflatten(1, (6, cfg.dim))  # [B, 6, D]

        if context.shape[1] < cfg.text_len:
            context = F.pad(context, (0, 0, 0, cfg.text_len - context.shape[1]))
        ctx = self.text_embedding(context)  # [B, text_len, D]
        if clip_fea is not None:
            ctx = torch.cat([self.img_emb(clip_fea).to(ctx.dtype), ctx], dim=1)  # image tokens first
        return Embedded(tokens, e, e0, ctx, rope, grid)

    def run_blocks(
        self, tokens: torch.Tensor, e0: torch.Tensor, ctx: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        """The block stack: tokens [B, L, D] (compute dtype) → [B, L, D] fp32; e0 [B, 6, D], ctx [B, Lc, D]."""
        for block in self.blocks:
            tokens = block(tokens, e0, ctx, rope)
        return tokens

    def final(self, tokens: torch.Tensor, e: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """Head and unpatchify: tokens [B, L, D], e [B, D] → velocity [B, out_dim, F, H, W] fp32."""
        cfg = self.config
        b = tokens.shape[0]
        pt, ph, pw = cfg.patch_size
        out = self.head(tokens, e)  # [B, L, 16·pt·ph·pw] fp32
        f, h, w = grid
        out = out.view(b, f, h, w, pt, ph, pw, cfg.out_dim)  # channel last within a patch
        return out.permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(b, cfg.out_dim, f * pt, h * ph, w * pw)

    def _check_inputs(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        context: torch.Tensor,
        clip_fea: torch.Tensor | None,
        y: torch.Tensor | None,
    ) -> None:
        cfg = self.config
        if x.ndim != 5:
            raise InputError(f"x must be [B, C, F, H, W], got shape {tuple(x.shape)}")
        b = x.shape[0]
        latent_ch = cfg.in_dim - (20 if cfg.model_type != "t2v" else 0)
        if x.shape[1] != latent_ch:
            raise InputError(f"x has {x.shape[1]} channels; this {cfg.model_type} model takes {latent_ch}")
        for axis, p in zip((2, 3, 4), cfg.patch_size, strict=True):
            if x.shape[axis] % p:
                raise InputError(f"latent size {tuple(x.shape[2:])} is not a multiple of the patch {cfg.patch_size}")
        if timestep.shape != (b,):
            raise InputError(f"timestep must have shape [{b}], got {tuple(timestep.shape)}")
        if context.ndim != 3 or context.shape[0] != b or context.shape[2] != cfg.text_dim:
            raise InputError(f"context must be [{b}, L, {cfg.text_dim}], got {tuple(context.shape)}")
        if context.shape[1] > cfg.text_len:
            raise InputError(f"context has {context.shape[1]} tokens; the model takes at most {cfg.text_len}")
        if cfg.model_type == "t2v":
            if clip_fea is not None or y is not None:
                raise InputError("a t2v model takes no clip_fea or y; load an i2v or flf2v checkpoint for images")
            return
        if clip_fea is None or y is None:
            raise InputError(f"an {cfg.model_type} model needs clip_fea and y (the image conditioning)")
        if tuple(clip_fea.shape) != (b, cfg.clip_tokens, CLIP_DIM):
            raise InputError(f"clip_fea must be [{b}, {cfg.clip_tokens}, {CLIP_DIM}], got {tuple(clip_fea.shape)}")
        if tuple(y.shape) != (b, 20, *x.shape[2:]):
            raise InputError(f"y must be [{b}, 20, {', '.join(map(str, x.shape[2:]))}], got {tuple(y.shape)}")


def build_transformer(cfg: WanDiTConfig, *, device: str | torch.device = "meta") -> WanModel:
    """An unloaded model (meta device by default: no memory, ready for ``load_state_dict(assign=True)``)."""
    with torch.device(device):
        return WanModel(cfg)
