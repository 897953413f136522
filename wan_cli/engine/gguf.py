"""GGUF files (city96's quantised Wan 2.1 DiTs and UMT5-XXL encoder): a lazy tensor source and torch dequantisation.

Facts (``checkpoint-formats.md`` §8; city96/ComfyUI-GGUF ``tools/convert.py``, ``tools/lcpp.patch``, ``loader.py``):
- Wan DiT files (``general.architecture`` = "wan") hold the official key names without any prefix (the converter
  strips ``model.diffusion_model.``). Only the blocks' 2-D matmul weights are quantised; biases, norms and the
  ``modulation`` tables are F32, the 5-D ``patch_embedding.weight`` is F32, the text/time embeddings, time projection,
  image projection and head keep the source's F16/BF16. ``*_K_M`` files mix types (e.g. Q4_K_M: ``v`` and ``ffn.2``
  in Q6_K) and a row that is not a multiple of 256 falls back to F16.
- UMT5 files ("t5encoder"/"t5") use llama.cpp names (``enc.blk.N.attn_q.weight`` …), renamed here to HF UMT5
  names through ``UMT5_GGUF_RENAMES``; the SentencePiece vocabulary is in ``tokenizer.ggml.*`` (:class:`GGUFVocab`).
- A tensor reshaped to 256-wide rows before quantisation records its real shape in ``comfy.gguf.orig_shape.<name>``.

Quantised weights stay as their raw blocks (:class:`QuantizedTensor`, uint8) and are dequantised in torch, on
whatever device holds them, when a layer runs (``transformer.Linear.store_quantized``). The layouts are ggml's
(``ggml-common.h``); ``gguf.quants.dequantize`` (numpy) is the reference the tests compare against.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .errors import CheckpointError

if TYPE_CHECKING:
    import gguf as gguf_py

GGUF_MAGIC = b"GGUF"
QK_K = 256  # elements in a K-quant super-block

# qtype → (elements per block, bytes per block): ggml's block layouts (the same numbers as gguf.GGML_QUANT_SIZES).
BLOCKS: dict[str, tuple[int, int]] = {
    "F32": (1, 4), "F16": (1, 2), "BF16": (1, 2),
    "Q4_0": (32, 18), "Q4_1": (32, 20), "Q5_0": (32, 22), "Q5_1": (32, 24), "Q8_0": (32, 34),
    "Q2_K": (256, 84), "Q3_K": (256, 110), "Q4_K": (256, 144), "Q5_K": (256, 176), "Q6_K": (256, 210),
}  # fmt: skip
# Stored as plain numbers: read as they are, never wrapped in a QuantizedTensor by GGUFSource.
PLAIN_DTYPES: dict[str, torch.dtype] = {
    "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
    "I8": torch.int8, "I16": torch.int16, "I32": torch.int32, "I64": torch.int64,
}  # fmt: skip

# llama.cpp T5-encoder names → HF UMT5 names (checkpoint-formats.md §4.4), substring replacements in this order.
# The dots on both sides keep e.g. ``attn_o`` from matching inside a longer name.
UMT5_GGUF_RENAMES: tuple[tuple[str, str], ...] = (
    ("token_embd.", "shared."),
    ("enc.output_norm.", "encoder.final_layer_norm."),
    ("enc.blk.", "encoder.block."),
    (".attn_norm.", ".layer.0.layer_norm."),
    (".attn_q.", ".layer.0.SelfAttention.q."),
    (".attn_k.", ".layer.0.SelfAttention.k."),
    (".attn_v.", ".layer.0.SelfAttention.v."),
    (".attn_o.", ".layer.0.SelfAttention.o."),
    (".attn_rel_b.", ".layer.0.SelfAttention.relative_attention_bias."),  # in every block (UMT5, not T5)
    (".ffn_norm.", ".layer.1.layer_norm."),
    (".ffn_gate.", ".layer.1.DenseReluDense.wi_0."),  # the GELU branch
    (".ffn_up.", ".layer.1.DenseReluDense.wi_1."),
    (".ffn_down.", ".layer.1.DenseReluDense.wo."),
)
T5_ARCHITECTURES = ("t5encoder", "t5")
ORIG_SHAPE_PREFIX = "comfy.gguf.orig_shape."
_SPECIAL_IDS = (
    ("bos", "bos"),
    ("eos", "eos"),
    ("unk", "unknown"),
    ("pad", "padding"),
)  # tokenizer.ggml.<name>_token_id
_METADATA_MAX_ITEMS = 64  # longer arrays (the 256k-entry vocabulary) stay out of ``metadata``; see field()


def umt5_key_from_gguf(name: str) -> str:
    for old, new in UMT5_GGUF_RENAMES:
        name = name.replace(old, new)
    return name


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


_KERNELS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
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
    kernel = _KERNELS.get(qtype)
    if kernel is None:
        raise ValueError(f"cannot dequantize {qtype} (supported: {', '.join(_KERNELS)})")
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
        if self.qtype not in _KERNELS:
            raise ValueError(f"cannot dequantize {self.qtype} (supported: {', '.join(_KERNELS)})")
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


# --------------------------------------------------------------------------------------------------------------------
# The tensor source
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GGUFVocab:
    """The SentencePiece vocabulary llama.cpp's T5 converter writes into ``tokenizer.ggml.*`` (enough to rebuild a
    unigram ``spiece.model``: pieces, scores, types and the normaliser settings)."""

    model: str  # tokenizer.ggml.model: "t5" = SentencePiece unigram
    tokens: list[str]
    scores: list[float]
    token_types: list[
        int
    ]  # SentencePiece piece types: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte
    add_space_prefix: bool | None
    remove_extra_whitespaces: bool | None
    precompiled_charsmap: bytes | None  # the normaliser's compiled rules (normalizer_spec.precompiled_charsmap)
    special_ids: dict[str, int]  # of "bos", "eos", "unk", "pad" when the file names them


@dataclass(frozen=True)
class _Stored:
    path: Path
    name: str  # as in the file
    qtype: str  # ggml type name: "Q4_K", "F16", …
    shape: tuple[int, ...]  # torch order, original shape
    raw: Any  # numpy view of the memory-mapped file: values for plain types, bytes for the others


def is_gguf(path: str | Path) -> bool:
    """Whether the file starts with the GGUF magic."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


def _open_reader(path: Path) -> gguf_py.GGUFReader:
    import gguf as gguf_py

    if not path.is_file():
        raise CheckpointError(f"{path} does not exist", hint="pass a .gguf file")
    if not is_gguf(path):
        raise CheckpointError(
            f"{path} is not a GGUF file (it does not start with 'GGUF')",
            hint="pass a .gguf file; .safetensors and .pth files load without the GGUF reader",
        )
    try:
        # copy-on-write mapping: pages are read from the file on first use, and tensors made from it are writable
        return gguf_py.GGUFReader(path, mode="c")
    except Exception as exc:  # header or tensor table cut short, or an unknown type id
        raise CheckpointError(f"{path} is not a readable GGUF file ({type(exc).__name__}: {exc})",
                              hint="the file looks truncated or corrupted; download it again") from exc  # fmt: skip


def _orig_shape(reader: gguf_py.GGUFReader, name: str, n_elements: int, path: Path) -> tuple[int, ...] | None:
    import gguf as gguf_py

    field = reader.get_field(ORIG_SHAPE_PREFIX + name)
    if field is None:
        return None
    shape = tuple(int(v) for v in field.contents()) if field.types[:1] == [gguf_py.GGUFValueType.ARRAY] else ()
    if not shape or math.prod(shape) != n_elements:
        raise CheckpointError(f"{path}: bad {ORIG_SHAPE_PREFIX}{name} metadata {field.contents()!r} for a tensor of "
                              f"{n_elements} elements", hint="the file is damaged; download it again")  # fmt: skip
    return shape


class GGUFSource:
    """The ``tensors.Source`` interface over GGUF files (a single file, or shards of one model).

    Keys: a Wan DiT under its official names (a ``model.diffusion_model.`` / ``diffusion_model.`` prefix, which
    city96's files do not have, is stripped); a UMT5 encoder under HF UMT5 names (``UMT5_GGUF_RENAMES``).
    ``get`` returns F32/F16/BF16 tensors in their own dtype and quantised ones dequantised to float32; ``dtype``
    reports what ``get`` returns (float32 for quantised tensors), ``qtype`` the storage and ``quantized`` the raw
    blocks (None for plain types).
    """

    def __init__(self, paths: str | Path | Sequence[str | Path]) -> None:
        from .layouts import DIT_PREFIXES  # here, not at the top: transformer.py imports this module

        self.paths = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
        self.metadata: dict[str, str] = {}
        self._readers = [_open_reader(p) for p in self.paths]
        self._tensors: dict[str, _Stored] = {}
        arch = self.field("general.architecture")
        self.architecture: str | None = arch if isinstance(arch, str) else None
        names = [t.name for r in self._readers for t in r.tensors]
        t5 = self.architecture in T5_ARCHITECTURES or any(n.startswith("enc.blk.") for n in names)
        for path, reader in zip(self.paths, self._readers, strict=True):
            self._read_metadata(reader)
            for t in reader.tensors:
                shape = tuple(int(d) for d in reversed(t.shape.tolist()))  # ggml lists dims innermost first
                shape = _orig_shape(reader, t.name, t.n_elements, path) or shape
                key = umt5_key_from_gguf(t.name) if t5 else t.name
                key = next((key[len(p) :] for p in DIT_PREFIXES if key.startswith(p)), key)
                if key in self._tensors:
                    raise CheckpointError(f"tensor {key!r} appears twice ({self._tensors[key].path.name}, {path.name})",
                                          hint="the files are not shards of one model")  # fmt: skip
                self._tensors[key] = _Stored(path, t.name, t.tensor_type.name, shape, t.data)

    def _read_metadata(self, reader: gguf_py.GGUFReader) -> None:
        for name, field in reader.fields.items():
            if name.startswith("GGUF.") or len(field.data) > _METADATA_MAX_ITEMS:
                continue
            value = field.contents()
            self.metadata[name] = value if isinstance(value, str) else json.dumps(value)

    @property
    def name(self) -> str:
        return str(self.paths[0]) if len(self.paths) == 1 else f"{self.paths[0].parent} ({len(self.paths)} shards)"

    def keys(self) -> list[str]:
        return list(self._tensors)

    def __contains__(self, key: object) -> bool:
        return key in self._tensors

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def shape(self, key: str) -> tuple[int, ...]:
        return self._tensors[key].shape

    def qtype(self, key: str) -> str:
        return self._tensors[key].qtype

    def dtype(self, key: str) -> torch.dtype:
        return PLAIN_DTYPES.get(self._tensors[key].qtype, torch.float32)

    def unsupported(self) -> dict[str, str]:
        """Key → type of every tensor stored in a type wan cannot read (check before loading anything)."""
        return {k: s.qtype for k, s in self._tensors.items() if s.qtype not in PLAIN_DTYPES and s.qtype not in BLOCKS}

    def quantized(self, key: str) -> QuantizedTensor | None:
        """The raw blocks of a quantised tensor (memory-mapped, on the CPU); None for F32/F16/BF16 and integers."""
        s = self._tensors[key]
        if s.qtype in PLAIN_DTYPES:
            return None
        if s.qtype not in _KERNELS:
            raise CheckpointError(
                f"tensor {key!r} of {s.path} is stored as {s.qtype}, which wan cannot dequantize",
                hint=f"use a file quantised with one of {', '.join(k for k in BLOCKS if k not in PLAIN_DTYPES)}",
            )
        return QuantizedTensor(torch.from_numpy(s.raw), s.qtype, s.shape)

    def get(self, key: str) -> torch.Tensor:
        s = self._tensors[key]
        q = self.quantized(key)
        if q is not None:
            return q.dequantize(torch.float32)
        t = torch.from_numpy(s.raw)
        return (t.view(torch.bfloat16) if s.qtype == "BF16" else t).reshape(s.shape)  # BF16 arrives as bytes

    def field(self, name: str) -> Any:
        """A metadata value as Python data (str, number, bool or list), from the first file that has it; or None."""
        for reader in self._readers:
            f = reader.get_field(name)
            if f is not None:
                return f.contents()
        return None

    def vocab(self) -> GGUFVocab | None:
        """The embedded tokenizer vocabulary (UMT5 files), or None when the file carries none."""
        tokens = self.field("tokenizer.ggml.tokens")
        if tokens is None:
            return None
        charsmap = self.field("tokenizer.ggml.precompiled_charsmap")
        ids = {k: self.field(f"tokenizer.ggml.{name}_token_id") for k, name in _SPECIAL_IDS}
        return GGUFVocab(
            model=str(self.field("tokenizer.ggml.model")),
            tokens=list(tokens),
            scores=[float(s) for s in self.field("tokenizer.ggml.scores") or []],
            token_types=[int(t) for t in self.field("tokenizer.ggml.token_type") or []],
            add_space_prefix=self.field("tokenizer.ggml.add_space_prefix"),
            remove_extra_whitespaces=self.field("tokenizer.ggml.remove_extra_whitespaces"),
            precompiled_charsmap=bytes(charsmap) if charsmap is not None else None,
            special_ids={k: int(v) for k, v in ids.items() if v is not None},
        )
