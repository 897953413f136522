"""Tiny GGUF stand-ins laid out like city96's files, written by the format's own writer (``gguf.GGUFWriter``).

The layout rules follow city96/ComfyUI-GGUF (``tools/convert.py`` then its patched ``llama-quantize``,
``tools/lcpp.patch``): in a Wan DiT only the blocks' 2-D matmul weights are quantised (``*_K_M`` files put ``v`` and
``ffn.2`` in Q6_K; rows that are not whole K-blocks fall back to F16); 1-D tensors, tensors of at most 1024 elements,
``modulation`` tables and the 5-D ``patch_embedding`` are F32; the embeddings, time projection, image projection and
head keep the source's F16/BF16. The UMT5 file uses llama.cpp's T5-encoder names (``enc.blk.N.attn_q`` …), quantises
every 2-D ``weight`` except the relative attention bias and carries a SentencePiece vocabulary in ``tokenizer.ggml.*``.

Values: the types gguf-py can quantise (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, BF16, F16) encode the real weights; gguf-py
0.19 has no K-quant encoder, so K-quant tensors are random blocks whose fp16 scales are set to give weights of a
chosen magnitude. Either way every writer also returns what the file decodes to by ``gguf.quants.dequantize``
(numpy), the reference the loader is checked against.
"""

from __future__ import annotations

import re
from pathlib import Path

import gguf
import numpy as np
import torch

Q = gguf.GGMLQuantizationType
K_QUANTS = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
BLOCK_QUANTS = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")
QUANTS = BLOCK_QUANTS + K_QUANTS
FLOATS = ("F32", "F16", "BF16")

# Byte offsets of the fp16 fields (scales, mins) in one block, and the largest |quant · sub-scale| a block can hold
# (so that fp16 scale s gives weights up to about s · that).
_F16_FIELDS = {"Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2), "Q8_0": (0,), "Q2_K": (80, 82),
               "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}  # fmt: skip
_RANGE = {"Q4_0": 8, "Q4_1": 15, "Q5_0": 16, "Q5_1": 31, "Q8_0": 127, "Q2_K": 45, "Q3_K": 128, "Q4_K": 945,
          "Q5_K": 1953, "Q6_K": 4096}  # fmt: skip


def random_blocks(qtype: str, shape: tuple[int, ...], rng: np.random.Generator, magnitude: float = 1.0) -> np.ndarray:
    """Random raw blocks for a ``shape`` tensor (every bit pattern), with finite fp16 scales of about
    ``magnitude / range``: bytes [*shape[:-1], row bytes] as GGUFWriter and GGUFReader hold them."""
    block, size = gguf.GGML_QUANT_SIZES[Q[qtype]]
    n_blocks = int(np.prod(shape)) // block
    raw = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    for offset in _F16_FIELDS[qtype]:
        scale = (rng.standard_normal(n_blocks) * magnitude / _RANGE[qtype]).astype(np.float16)
        raw[:, offset : offset + 2] = scale.view(np.uint8).reshape(n_blocks, 2)
    return raw.reshape(*shape[:-1], shape[-1] // block * size)


def encode(values: np.ndarray, qtype: str, rng: np.random.Generator) -> np.ndarray:
    """``values`` (float32, torch order) as GGUFWriter takes them in ``qtype``: floats for F32/F16, bytes otherwise."""
    if qtype in K_QUANTS:
        return random_blocks(qtype, values.shape, rng, magnitude=float(np.abs(values).max()) or 1.0)
    return gguf.quants.quantize(values.astype(np.float32), Q[qtype])


def decode(data: np.ndarray, qtype: str, shape: tuple[int, ...]) -> torch.Tensor:
    """The reference: what ``data`` stands for, by gguf-py's numpy dequantisation, as float32 of ``shape``."""
    if qtype in ("F32", "F16"):
        return torch.from_numpy(data.astype(np.float32)).reshape(shape)
    return torch.from_numpy(gguf.quants.dequantize(data, Q[qtype]).astype(np.float32)).reshape(shape)


def write_gguf(path: Path, arch: str, tensors: dict[str, tuple[str, np.ndarray]],
               fields: dict[str, list[int]] | None = None, file_type: int | None = None) -> Path:  # fmt: skip
    """Write ``name → (qtype, data)`` (data as ``encode`` gives it) with the general.* keys city96's files carry."""
    writer = gguf.GGUFWriter(path, arch)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    if file_type is not None:
        writer.add_file_type(file_type)
    for key, value in (fields or {}).items():
        writer.add_array(key, value)
    for name, (qtype, data) in tensors.items():
        writer.add_tensor(name, data, raw_dtype=Q[qtype])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# -- Wan DiT ----------------------------------------------------------------------------------------------------------

# lcpp.patch, LLM_ARCH_WAN: never quantised (besides anything that is not a 2-D "...weight").
_DIT_KEEP = ("modulation", "patch_embedding.", "text_embedding.", "time_projection.", "time_embedding.", "img_emb.",
             "head.")  # fmt: skip


def dit_tensor_type(key: str, shape: tuple[int, ...], qtype: str, base: str = "F16", mix: bool = False) -> str:
    """The type city96's pipeline gives the official DiT tensor ``key`` in a ``qtype`` file (``mix``: a *_K_M file)."""
    n = int(np.prod(shape))
    if len(shape) == 1 or n <= 1024 or "modulation" in key or len(shape) > 4:
        return "F32"  # convert.py: 1-D, tiny and "hiprec" tensors; fix_5d_tensors.py adds the 5-D conv as F32
    if qtype in FLOATS:
        return qtype
    if any(k in key for k in _DIT_KEEP) or len(shape) != 2 or not key.endswith("weight"):
        return base  # e.g. img_emb.emb_pos: 3-D and not a "weight", so llama-quantize leaves it
    if mix and (key.endswith((".v.weight", ".ffn.2.weight"))):
        qtype = "Q6_K"
    block = gguf.GGML_QUANT_SIZES[Q[qtype]][0]
    return qtype if shape[-1] % block == 0 else "F16"  # K-quant row not a multiple of 256: F16 fallback


def write_city96_dit(
    model: torch.nn.Module, path: Path, qtype: str = "Q4_K", *, mix: bool = False, base: str = "F16", prefix: str = "",
    seed: int = 0,
) -> tuple[Path, dict[str, torch.Tensor], dict[str, str]]:  # fmt: skip
    """A Wan DiT GGUF (official names, optional ``prefix``); returns (path, reference values, qtype per key)."""
    rng = np.random.default_rng(seed)
    tensors: dict[str, tuple[str, np.ndarray]] = {}
    reference: dict[str, torch.Tensor] = {}
    types: dict[str, str] = {}
    for key, value in model.state_dict().items():
        shape = tuple(value.shape)
        t = dit_tensor_type(key, shape, qtype, base, mix)
        data = encode(value.float().numpy(), t, rng)
        tensors[prefix + key] = (t, data)
        reference[key], types[key] = decode(data, t, shape), t
    ftype = {"F16": gguf.LlamaFileType.MOSTLY_F16, "BF16": gguf.LlamaFileType.MOSTLY_BF16}.get(qtype)
    write_gguf(path, "wan", tensors, file_type=ftype)
    return path, reference, types


# -- UMT5 encoder -----------------------------------------------------------------------------------------------------

_T5_LAYER = {
    "layer.0.layer_norm": "attn_norm", "layer.0.SelfAttention.q": "attn_q", "layer.0.SelfAttention.k": "attn_k",
    "layer.0.SelfAttention.v": "attn_v", "layer.0.SelfAttention.o": "attn_o",
    "layer.0.SelfAttention.relative_attention_bias": "attn_rel_b", "layer.1.layer_norm": "ffn_norm",
    "layer.1.DenseReluDense.wi_0": "ffn_gate", "layer.1.DenseReluDense.wi_1": "ffn_up",
    "layer.1.DenseReluDense.wo": "ffn_down",
}  # fmt: skip


def hf_to_llamacpp(key: str) -> str | None:
    """HF UMT5 name → llama.cpp T5-encoder name (gguf-py's TensorNameMap naming); None for the tied embed_tokens."""
    if key == "encoder.embed_tokens.weight":
        return None
    if key == "shared.weight":
        return "token_embd.weight"
    if key == "encoder.final_layer_norm.weight":
        return "enc.output_norm.weight"
    m = re.fullmatch(r"encoder\.block\.(\d+)\.(.+)\.weight", key)
    assert m, key
    return f"enc.blk.{m.group(1)}.{_T5_LAYER[m.group(2)]}.weight"


# More pieces than GGUFSource.metadata keeps of an array (64): like the real 256,384, they stay out of it.
TOKENS = ["<pad>", "</s>", "<unk>", "▁a", "▁dog", "▁cat", "s", "<0x41>", "▁红"] + [f"▁w{i}" for i in range(61)]
TOKEN_TYPES = [3, 3, 2, 1, 1, 1, 1, 6, 1] + [1] * 61
CHARSMAP = bytes(range(7)) * 3


def spiece_vocab(spm: Path) -> dict[str, object]:
    """What llama.cpp's T5 converter copies from a ``spiece.model`` into ``tokenizer.ggml.*``."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(spm.read_bytes())
    spec, norm = proto.trainer_spec, proto.normalizer_spec
    return {"tokens": [p.piece for p in proto.pieces], "scores": [p.score for p in proto.pieces],
            "types": [p.type for p in proto.pieces], "charsmap": norm.precompiled_charsmap,
            "eos": spec.eos_id, "unk": spec.unk_id, "pad": spec.pad_id}  # fmt: skip


def write_city96_umt5(
    model: torch.nn.Module, path: Path, qtype: str = "Q8_0", arch: str = "t5encoder", seed: int = 0,
    vocab: dict[str, object] | None = None,
) -> tuple[Path, dict[str, torch.Tensor]]:  # fmt: skip
    """A UMT5 encoder GGUF in llama.cpp naming with an embedded vocabulary (``vocab``: from :func:`spiece_vocab`,
    default a small synthetic one); returns (path, reference by HF name)."""
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(path, arch)
    cfg = model.config
    writer.add_context_length(512)
    writer.add_embedding_length(cfg.d_model)
    writer.add_block_count(cfg.num_layers)
    writer.add_head_count(cfg.num_heads)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    v = vocab or {"tokens": TOKENS, "scores": [-float(i) for i in range(len(TOKENS))], "types": TOKEN_TYPES,
                  "charsmap": CHARSMAP, "eos": 1, "unk": 2, "pad": 0}  # fmt: skip
    writer.add_tokenizer_model("t5")
    writer.add_token_list(v["tokens"])  # type: ignore[arg-type]
    writer.add_token_scores(v["scores"])  # type: ignore[arg-type]
    writer.add_token_types(v["types"])  # type: ignore[arg-type]
    writer.add_add_space_prefix(True)
    writer.add_remove_extra_whitespaces(True)
    writer.add_precompiled_charsmap(v["charsmap"])  # type: ignore[arg-type]
    writer.add_eos_token_id(v["eos"])  # type: ignore[arg-type]
    writer.add_unk_token_id(v["unk"])  # type: ignore[arg-type]
    writer.add_pad_token_id(v["pad"])  # type: ignore[arg-type]
    reference: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        name = hf_to_llamacpp(key)
        if name is None:
            continue
        shape = tuple(value.shape)
        # llama-quantize: 2-D weights, not the norms, not the relative position bias (kept F16 here)
        t = "F32" if len(shape) == 1 else "F16" if "attn_rel_b" in name else qtype
        data = encode(value.float().numpy(), t, rng)
        writer.add_tensor(name, data, raw_dtype=Q[t])
        reference[key] = decode(data, t, shape)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path, reference
