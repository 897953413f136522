"""The layers that carry the precision rules of the Wan networks, and the storage of their weights.

A Linear or Conv3d runs in the dtype its weight is stored in (the compute dtype), whatever dtype its input arrives
in; LayerNorm and RMSNorm compute in fp32 (the official autocast policy). A Linear may instead keep its weight as fp8
with a per-tensor scale, or as a GGUF file's raw blocks, and compute in a given dtype (``store_fp8``,
``store_quantized``): the weight is dequantised for each call only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .ops import FP8, fp8_linear, rms_normalize
from .quant import QuantizedTensor, dequantize


class Linear(nn.Linear):
    """A Linear that runs in its weight's dtype, whatever dtype the input arrives in.

    fp8 storage (:func:`store_fp8`): ``weight`` holds float8_e4m3fn values and ``weight_scale`` (a buffer, not in
    the state dict) their per-tensor scale; the layer then computes in ``compute_dtype`` (see ``ops.fp8_linear``).

    GGUF storage (:func:`store_quantized`): ``weight`` holds the file's raw blocks (uint8, still a Parameter, so
    ``.to()``, offloading and block streaming move it like any weight) and ``weight_qtype`` names their type; each
    call dequantises the weight for that call only, in ``compute_dtype``, on the weight's device.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__(in_features, out_features, bias)
        self.register_buffer("weight_scale", None, persistent=False)
        self._compute_dtype: torch.dtype | None = None
        self.fp8_matmul = False  # fp8 × fp8 products with torch._scaled_mm (CUDA, sm_89+)
        self.weight_qtype: str | None = None  # GGUF block type of ``weight`` ("Q4_K", …); None for float weights
        # Run-time LoRA adapters (``lora.apply``): (down [r, in], up [out, r], scale) adds scale·(x·downᵀ)·upᵀ;
        # (diff [out, in], None, scale) adds scale·x·diffᵀ. In the compute dtype, on the compute device.
        self.lora_adapters: tuple[tuple[torch.Tensor, torch.Tensor | None, float], ...] = ()

    @property
    def compute_dtype(self) -> torch.dtype:
        return self._compute_dtype or self.weight.dtype

    def store_fp8(self, q: torch.Tensor, scale: torch.Tensor, compute_dtype: torch.dtype) -> None:
        """Keep the weight as fp8 ``q`` with ``scale`` (W = q · scale); compute in ``compute_dtype``."""
        if q.dtype != FP8 or q.shape != self.weight.shape:
            raise ValueError(f"expected a {FP8} tensor of shape {tuple(self.weight.shape)}")
        self.weight = nn.Parameter(q, requires_grad=False)
        self.weight_scale = scale.reshape(()).float().to(q.device)
        self.weight_qtype = None
        self._compute_dtype = compute_dtype
        if self.bias is not None:
            self.bias.data = self.bias.data.to(compute_dtype)

    def store_quantized(self, qt: QuantizedTensor, compute_dtype: torch.dtype) -> None:
        """Keep the weight as GGUF blocks ``qt`` (shape [out, in]); compute in ``compute_dtype``. The bias (already
        loaded) moves to ``compute_dtype``. The state dict then holds the blocks, not a float weight."""
        if qt.shape != (self.out_features, self.in_features):
            raise ValueError(f"expected a quantized weight of shape {(self.out_features, self.in_features)}, "
                             f"got {qt.shape}")  # fmt: skip
        self.weight = nn.Parameter(qt.data, requires_grad=False)
        self._buffers["weight_scale"] = None  # no fp8 scale (in case the layer held fp8 before)
        self.weight_qtype = qt.qtype
        self._compute_dtype = compute_dtype
        if self.bias is not None:
            self.bias.data = self.bias.data.to(compute_dtype)

    @property
    def plain(self) -> bool:
        """Whether the weight is an ordinary float tensor (neither fp8 nor GGUF blocks)."""
        return self.weight_scale is None and self.weight_qtype is None

    def lora_out(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``out`` plus the run-time LoRA adapters' contribution for input ``x`` (in the compute dtype)."""
        for a, b, scale in self.lora_adapters:
            a, b = a.to(x.device), None if b is None else b.to(x.device)  # no-ops unless the layer was moved
            h = F.linear(x, a)  # [.., r] (or [.., out] for a full diff)
            out = out + (h if b is None else F.linear(h, b)) * scale
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.compute_dtype)
        if self.weight_qtype is not None:
            w = dequantize(self.weight, self.weight_qtype, (self.out_features, self.in_features), x.dtype)  # [out, in]
            out = F.linear(x, w, self.bias)
        elif self.weight_scale is None:
            out = F.linear(x, self.weight, self.bias)
        else:
            out = fp8_linear(x, self.weight, self.weight_scale, self.bias, self.fp8_matmul)
        return self.lora_out(x, out) if self.lora_adapters else out


class Conv3d(nn.Conv3d):
    """A Conv3d that runs in its weight's dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.to(self.weight.dtype))


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 and returned in the input's dtype (official ``WanLayerNorm``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = None if self.weight is None else self.weight.float()
        b = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).type_as(x)


class RMSNorm(nn.Module):
    """RMSNorm over the full width (not per head): normalised in fp32, cast back, times an fp32 weight."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_normalize(x, self.eps) * self.weight  # bf16 · fp32 → fp32, as in the official code
