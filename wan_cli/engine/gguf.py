"""GGUF files (city96's quantised Wan 2.1 DiTs and UMT5-XXL encoder) as a lazy tensor source, read with ``gguf``.

Facts (``checkpoint-formats.md`` §8; city96/ComfyUI-GGUF ``tools/convert.py``, ``tools/lcpp.patch``, ``loader.py``):
- Wan DiT files (``general.architecture`` = "wan") hold the official key names without any prefix (the converter
  strips ``model.diffusion_model.``). Only the blocks' 2-D matmul weights are quantised; biases, norms and the
  ``modulation`` tables are F32, the 5-D ``patch_embedding.weight`` is F32, the text/time embeddings, time projection,
  image projection and head keep the source's F16/BF16. ``*_K_M`` files mix types (e.g. Q4_K_M: ``v`` and ``ffn.2``
  in Q6_K) and a row that is not a multiple of 256 falls back to F16.
- UMT5 files ("t5encoder"/"t5") use llama.cpp names (``enc.blk.N.attn_q.weight`` …), renamed here to HF UMT5
  names through ``UMT5_GGUF_RENAMES``; the SentencePiece vocabulary is in ``tokenizer.ggml.*`` (:class:`GGUFVocab`).
- A tensor reshaped to 256-wide rows before quantisation records its real shape in ``comfy.gguf.orig_shape.<name>``.

Quantised tensors come out as their raw blocks (:class:`quant.QuantizedTensor`), dequantised in torch by ``quant.py``
when a layer runs (``layers.Linear.store_quantized``) or, for the rest, at load.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .errors import CheckpointError
from .layouts import DIT_PREFIXES
from .quant import BLOCKS, KERNELS, QuantizedTensor

if TYPE_CHECKING:
    import gguf as gguf_py

GGUF_MAGIC = b"GGUF"
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
        if s.qtype not in KERNELS:
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
