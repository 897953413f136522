"""GGUF quantised weights as torch tensors: ggml's block layouts and their dequantisation, on any device.

A quantised weight stays as its raw blocks (:class:`QuantizedTensor`, uint8 in the file's byte layout) and is
dequantised when its layer runs (``layers.Linear.store_quantized``): a Q4 14B DiT holds a third of its bf16 size.
The layouts are ggml's (``ggml-common.h``); ``gguf.quants.dequantize`` (numpy) is the reference the tests compare
against. Reading the files is ``gguf.py``'s job: this module is numerics only (the networks import it).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

QK_K = 256  # elements in a K-quant super-block

# qtype → (elements per block, bytes per block): ggml's block layouts (the same numbers as gguf.GGML_QUANT_SIZES).
BLOCKS: dict[str, tuple[int, int]] = {
    "F32": (1, 4), "F16": (1, 2), "BF16": (1, 2),
    "Q4_0": (32, 18), "Q4_1": (32, 20), "Q5_0": (32, 22), "Q5_1": (32, 24), "Q8_0": (32, 34),
    "Q2_K": (256, 84), "Q3_K": (256, 110), "Q4_K": (256, 144), "Q5_K": (256, 176), "Q6_K": (256, 210),
}  # fmt: skip
# --------------------------------------------------------------------------------------------------------------------
# Dequantisation (torch; every kernel maps blocks [n, bytes per block] uint8 → [n, elements per block] float32)
# --------------------------------------------------------------------------------------------------------------------


def _f16(b: torch.Tensor) -> torch.Tensor:
    """[n, 2] bytes → [n, 1] float32 (a block's fp16 scale)."""
    return b.contiguous().view(torch.float16).float()


def _bits(x: torch.Tensor, width: int, count: int) -> torch.Tensor:
    """[..., B] uint8 → [..., count, B] uint8: field i holds bits [i·width, (i+1)·width) of every byte."""
    mask = (1 << width) - 1
    return torch.stack([(x >> (i * width)) & mask for i in range(count)], dim=-2)


def _high_bits_32(qh: torch.Tensor) -> torch.Tensor:
    """Q5_0/Q5_1: [n, 4] bytes = one little-endian 32-bit mask, bit j the 5th bit of element j → [n, 32]."""
    return _bits(qh, 1, 8).transpose(1, 2).reshape(-1, 32)


def _nibbles_32(qs: torch.Tensor) -> torch.Tensor:
    """[n, 16] bytes → [n, 32]: elements 0-15 are the low nibbles, 16-31 the high ones."""
    return _bits(qs, 4, 2).reshape(-1, 32)


def _q8_0(b: torch.Tensor) -> torch.Tensor:  # d f16 | 32 × int8
    return b[:, 2:].contiguous().view(torch.int8).float() * _f16(b[:, :2])


def _q4_0(b: torch.Tensor) -> torch.Tensor:  # d | 16 B nibbles; w = d·(q − 8)
    return _f16(b[:, :2]) * (_nibbles_32(b[:, 2:]).float() - 8)


def _q4_1(b: torch.Tensor) -> torch.Tensor:  # d | m | 16 B nibbles; w = d·q + m
    return _f16(b[:, :2]) * _nibbles_32(b[:, 4:]).float() + _f16(b[:, 2:4])


def _q5_0(b: torch.Tensor) -> torch.Tensor:  # d | 4 B high bits | 16 B nibbles; w = d·(q − 16)
    q = _nibbles_32(b[:, 6:]) | (_high_bits_32(b[:, 2:6]) << 4)
    return _f16(b[:, :2]) * (q.float() - 16)


def _q5_1(b: torch.Tensor) -> torch.Tensor:  # d | m | 4 B high bits | 16 B nibbles; w = d·q + m
    q = _nibbles_32(b[:, 8:]) | (_high_bits_32(b[:, 4:8]) << 4)
    return _f16(b[:, :2]) * q.float() + _f16(b[:, 2:4])


def _q2_k(b: torch.Tensor) -> torch.Tensor:
    """16 B scales (low nibble scale, high nibble min, per 16 elements) | 64 B 2-bit values | d | dmin.
    The values come in two halves of 128: 32 bytes each, read 2 bits at a time (shift 0, 2, 4, 6)."""
    n = b.shape[0]
    scales, d, dmin = b[:, :16], _f16(b[:, 80:82]), _f16(b[:, 82:84])
    dl = (d * (scales & 0xF).float()).view(n, 16, 1)
    ml = (dmin * (scales >> 4).float()).view(n, 16, 1)
    q = _bits(b[:, 16:80].reshape(n, 2, 32), 2, 4).reshape(n, 16, 16).float()  # [half, shift, 32] = 16 groups of 16
    return (dl * q - ml).reshape(n, QK_K)


def _q3_k(b: torch.Tensor) -> torch.Tensor:
    """32 B high-bit mask | 64 B 2-bit values (as Q2_K) | 12 B 6-bit signed scales (per 16) | d.
    Element e's third bit is bit e // 32 of mask byte e % 32; a cleared bit subtracts 4."""
    n = b.shape[0]
    sc, d = b[:, 96:108], _f16(b[:, 108:110])
    low = _bits(sc[:, :8], 4, 2).reshape(n, 16)  # scale j: low 4 bits from byte j % 8, nibble j // 8
    high = _bits(sc[:, 8:12], 2, 4).reshape(n, 16)  # high 2 bits from byte 8 + j % 4, bits 2·(j // 4)
    dl = (d * ((low | (high << 4)).float() - 32)).view(n, 16, 1)
    ql = _bits(b[:, 32:96].reshape(n, 2, 32), 2, 4).reshape(n, 16, 16)
    hm = _bits(b[:, :32], 1, 8).reshape(n, 16, 16)
    q = ql.float() - ((hm ^ 1) << 2).float()
    return (dl * q).reshape(n, QK_K)


def _scale_min_k4(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K/Q5_K: 12 bytes → 8 six-bit scales and 8 six-bit mins. Sub-blocks 0-3: low 6 bits of bytes 0-3 (scale)
    and 4-7 (min); 4-7: a nibble of bytes 8-11 plus the top 2 bits of bytes 0-3 (scale) or 4-7 (min)."""
    d, m, md = s[:, 0:4], s[:, 4:8], s[:, 8:12]
    scale = torch.cat([d & 63, (md & 0xF) | ((d >> 6) << 4)], dim=1)
    mins = torch.cat([m & 63, (md >> 4) | ((m >> 6) << 4)], dim=1)
    return scale, mins


def _k4_values(qs: torch.Tensor) -> torch.Tensor:
    """128 B → [n, 8, 32] 4-bit values: each 32-byte chunk gives 32 low nibbles, then 32 high nibbles."""
    return _bits(qs.reshape(-1, 4, 32), 4, 2).reshape(-1, 8, 32)


def _q4_k(b: torch.Tensor) -> torch.Tensor:  # d | dmin | 12 B scales | 128 B nibbles; w = d·sc·q − dmin·m per 32
    n = b.shape[0]
    scale, mins = _scale_min_k4(b[:, 4:16])
    dd = (_f16(b[:, :2]) * scale.float()).view(n, 8, 1)
    dm = (_f16(b[:, 2:4]) * mins.float()).view(n, 8, 1)
    return (dd * _k4_values(b[:, 16:]).float() - dm).reshape(n, QK_K)


def _q5_k(b: torch.Tensor) -> torch.Tensor:  # as Q4_K plus 32 B of fifth bits (bit e // 32 of byte e % 32)
    n = b.shape[0]
    scale, mins = _scale_min_k4(b[:, 4:16])
    dd = (_f16(b[:, :2]) * scale.float()).view(n, 8, 1)
    dm = (_f16(b[:, 2:4]) * mins.float()).view(n, 8, 1)
    q = _k4_values(b[:, 48:]) | (_bits(b[:, 16:48], 1, 8) << 4)
    return (dd * q.float() - dm).reshape(n, QK_K)


def _q6_k(b: torch.Tensor) -> torch.Tensor:
    """128 B low nibbles | 64 B high 2-bit pairs | 16 int8 scales (per 16) | d; w = d·sc·(q − 32).
    Two halves of 128 elements; in half h, group g of 32: nibble g // 2 of low bytes 64h + 32(g % 2) + l, and bits
    2g of high byte 32h + l."""
    n = b.shape[0]
    dd = (_f16(b[:, 208:210]) * b[:, 192:208].contiguous().view(torch.int8).float()).view(n, 16, 1)
    lo = _bits(b[:, :128].reshape(n, 2, 64), 4, 2).reshape(n, 2, 4, 32)
    hi = _bits(b[:, 128:192].reshape(n, 2, 32), 2, 4)
    q = (lo | (hi << 4)).float() - 32
    return (dd * q.reshape(n, 16, 16)).reshape(n, QK_K)


KERNELS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "F32": lambda b: b.contiguous().view(torch.float32),
    "F16": lambda b: b.contiguous().view(torch.float16).float(),
    "BF16": lambda b: b.contiguous().view(torch.bfloat16).float(),
    "Q8_0": _q8_0, "Q4_0": _q4_0, "Q4_1": _q4_1, "Q5_0": _q5_0, "Q5_1": _q5_1,
    "Q2_K": _q2_k, "Q3_K": _q3_k, "Q4_K": _q4_k, "Q5_K": _q5_k, "Q6_K": _q6_k,
}  # fmt: skip


def stored_bytes(qtype: str, shape: Sequence[int]) -> int:
    """Bytes of a tensor of ``shape`` in ``qtype``. Blocks run over the flattened tensor (a file may store it
    reshaped, see ``comfy.gguf.orig_shape``), so only the element count must be a multiple of the block size."""
    block, size = BLOCKS[qtype]
    n = math.prod(shape)
    if n % block:
        raise ValueError(f"a {qtype} tensor needs a multiple of {block} elements, got shape {tuple(shape)}")
    return n // block * size


def dequantize(data: torch.Tensor, qtype: str, shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    """Raw blocks (uint8, any shape) → a ``shape`` tensor of ``dtype`` on ``data``'s device (arithmetic in fp32)."""
    kernel = KERNELS.get(qtype)
    if kernel is None:
        raise ValueError(f"cannot dequantize {qtype} (supported: {', '.join(KERNELS)})")
    size = BLOCKS[qtype][1]
    return kernel(data.reshape(-1, size)).reshape(tuple(shape)).to(dtype)


@dataclass(frozen=True)
class QuantizedTensor:
    """A GGUF tensor kept as stored: ``data`` holds the raw blocks (uint8, the file's byte layout), ``shape`` is the
    tensor's shape in torch order (``[out, in]`` for a Linear weight)."""

    data: torch.Tensor
    qtype: str
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.qtype not in KERNELS:
            raise ValueError(f"cannot dequantize {self.qtype} (supported: {', '.join(KERNELS)})")
        if self.data.dtype != torch.uint8 or self.data.numel() != stored_bytes(self.qtype, self.shape):
            raise ValueError(f"{self.qtype} data for shape {self.shape} must be {stored_bytes(self.qtype, self.shape)} "
                             f"uint8 bytes, got {self.data.numel()} of {self.data.dtype}")  # fmt: skip

    @property
    def nbytes(self) -> int:
        return self.data.numel()

    def to(self, device: str | torch.device) -> QuantizedTensor:
        return QuantizedTensor(self.data.to(device), self.qtype, self.shape)

    def dequantize(self, dtype: torch.dtype = torch.float32, device: str | torch.device | None = None) -> torch.Tensor:
        """The values as a ``dtype`` tensor, computed on ``device`` (default: where the blocks are)."""
        data = self.data if device is None else self.data.to(device)
        return dequantize(data, self.qtype, self.shape, dtype)
