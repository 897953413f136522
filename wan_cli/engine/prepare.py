"""What is done to a built DiT before it runs: fp8 storage, fused q/k/v, the attention kernel, ``torch.compile``,
and byte counts. The pipeline applies these in one place (``Pipeline.prepare_dit``), which ``wan bench`` uses too."""

from __future__ import annotations

import re

import torch
from torch import nn

from .layers import Linear
from .ops import quantize_fp8
from .transformer import WanDiTConfig, WanModel, WanSelfAttention, build_transformer

# The matmul weights of the blocks: what fp8 storage quantises (ComfyUI's fp8 files quantise the same set and keep
# embeddings, norms, modulation and head in 16/32 bit).
FP8_KEYS = re.compile(r"^blocks\.\d+\.((self_attn|cross_attn)\.(q|k|v|o|k_img|v_img)|ffn\.(0|2))\.weight$")


def quantize_fp8_(model: WanModel, compute_dtype: torch.dtype, *, fp8_matmul: bool = False) -> WanModel:
    """Store the blocks' matmul weights (``FP8_KEYS``) as per-tensor scaled float8_e4m3fn, in place: half the
    memory of bf16 for the blocks (T2V-14B: 29.0 → 14.9 GB); biases move to ``compute_dtype``."""
    for name, module in model.named_modules():
        if isinstance(module, Linear) and FP8_KEYS.match(name + ".weight") and module.plain:
            q, scale = quantize_fp8(module.weight)
            module.store_fp8(q, scale, compute_dtype)
            module.fp8_matmul = fp8_matmul
    return model


def store_fp8_weights(model: WanModel, scales: dict[str, torch.Tensor], compute_dtype: torch.dtype) -> None:
    """After ``load_state_dict(assign=True)`` put fp8 values in ``FP8_KEYS`` parameters: give each its scale."""
    for key, scale in scales.items():
        layer = model.get_submodule(key.removesuffix(".weight"))
        assert isinstance(layer, Linear)
        layer.store_fp8(layer.weight.data, scale.to(layer.weight.device), compute_dtype)


def fuse_qkv_(model: WanModel) -> WanModel:
    """One q/k/v GEMM per self-attention (``WanSelfAttention.fuse_qkv``), in place; fp8 and GGUF-quantised layers are
    left as they are (each has its own scale or block type). For a model that stays where it is: not with block
    streaming or offloading."""
    for module in model.modules():
        plain = type(module) is WanSelfAttention and all(lin.plain for lin in (module.q, module.k, module.v))
        if plain and module.qkv_weight is None:
            module.fuse_qkv()
    return model


def weight_bytes(model: nn.Module) -> int:
    """Bytes held by the parameters and buffers (as stored: fp8, bf16 or fp32); shared storage counted once."""
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in (*model.parameters(),
                                                                                       *model.buffers())}  # fmt: skip
    return sum(storages.values())


def dit_weight_bytes(cfg: WanDiTConfig, bytes_per_weight: int, *, fp8: bool = False) -> int:
    """Bytes of a DiT's weights as loaded: the fp32 parameters at 4 bytes, the fp8 ones (``fp8``) at 1, the rest at
    ``bytes_per_weight`` (2 for bf16). Counted on the meta device: nothing is allocated."""
    total = 0
    for name, p in build_transformer(cfg).named_parameters():
        size = 4 if WanModel.keeps_fp32(name) else 1 if fp8 and FP8_KEYS.match(name) else bytes_per_weight
        total += p.numel() * size
    return total


def set_fp8_matmul(model: WanModel, enabled: bool) -> None:
    for module in model.modules():
        if isinstance(module, Linear) and module.weight_scale is not None:
            module.fp8_matmul = enabled


def set_attention(model: nn.Module, backend: str) -> None:
    """Run every attention of ``model`` with ``backend`` (an ``ops.ATTENTION_BACKENDS`` name, already resolved)."""
    for module in model.modules():
        if isinstance(module, WanSelfAttention):
            module.attention_backend = backend


def compile_blocks(model: WanModel) -> WanModel:
    """``torch.compile`` every attention block in place. The blocks share their code and (with parameters as graph
    inputs) one compiled graph, so the cost is one compilation (~20 s on an H200), after which the fp32 elementwise
    work around the matmuls (modulation, norms, RoPE, casts, residuals) runs fused: a T2V-1.3B 480p step went from
    1.42 s to 1.05 s on an H200 (docs/performance.md). Numerics stay within bf16 rounding of the eager model."""
    for block in model.blocks:
        # forward, not the whole call (Module.compile): hooks (block streaming) then stay outside the graph
        block.forward = torch.compile(block.forward)
    return model
