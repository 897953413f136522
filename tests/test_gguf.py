"""GGUF files (engine/gguf.py) and GGUF weight storage in the DiT (layers.Linear.store_quantized).

The reference for every value is gguf-py's numpy dequantisation (``gguf.quants.dequantize``) of what gguf-py's own
writer put in the file. The torch kernels do the same fp32 operations in the same order, so they must agree exactly
(bit for bit); the models built on them are compared within 1e-5 relative in fp32.
"""

from __future__ import annotations

import copy
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from builders import random_dit, rel_err, tiny_dit_config, tiny_umt5
from gguf_builders import (
    CHARSMAP,
    FLOATS,
    QUANTS,
    TOKEN_TYPES,
    TOKENS,
    decode,
    encode,
    random_blocks,
    write_city96_dit,
    write_city96_umt5,
    write_gguf,
)

from wan_cli.engine.checkpoints import detect_kind, infer_dit_config
from wan_cli.engine.errors import CheckpointError
from wan_cli.engine.gguf import GGUFSource, is_gguf
from wan_cli.engine.layers import Linear
from wan_cli.engine.offload import stream_blocks
from wan_cli.engine.prepare import FP8_KEYS, fuse_qkv_, quantize_fp8_, weight_bytes
from wan_cli.engine.quant import BLOCKS, QuantizedTensor
from wan_cli.engine.transformer import WanModel, build_transformer

FP32_TOL = 1e-5


def _row(qtype: str) -> int:
    return BLOCKS[qtype][0] if qtype in QUANTS else 1


def _mismatch(a: torch.Tensor, b: torch.Tensor) -> str:
    d = (a.double() - b.double()).abs()
    return f"max |diff| {d.max().item():.3g}, mean {d.mean().item():.3g}"


# --------------------------------------------------------------------------------------------------------------------
# Dequantisation against gguf-py's numpy reference
# --------------------------------------------------------------------------------------------------------------------


def test_block_table_is_ggmls() -> None:
    for name, sizes in BLOCKS.items():
        assert gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[name]] == sizes, name


@pytest.mark.parametrize("qtype", FLOATS + QUANTS)
def test_dequantize_matches_numpy_reference(tmp_path: Path, qtype: str) -> None:
    """Values encoded by gguf-py (random blocks for K-quants) and, for every quant type, raw random blocks (every bit
    pattern); 2-D and 3-D tensors whose rows hold several blocks. Exact equality with gguf.quants.dequantize."""
    rng = np.random.default_rng(1)
    block = max(_row(qtype), 32)
    shapes = {"w2d": (3, 4 * block), "w3d": (2, 3, 2 * block)}
    tensors = {k: (qtype, encode(rng.standard_normal(s).astype(np.float32), qtype, rng)) for k, s in shapes.items()}
    if qtype in QUANTS:
        tensors["bits"] = (qtype, random_blocks(qtype, (5, 3 * block), rng, magnitude=3.0))
        shapes["bits"] = (5, 3 * block)
    src = GGUFSource(write_gguf(tmp_path / "t.gguf", "wan", tensors))

    assert set(src) == set(tensors)
    for key, (t, data) in tensors.items():
        ref = decode(data, t, shapes[key])
        assert src.shape(key) == shapes[key] and src.qtype(key) == qtype
        got = src.get(key)
        if qtype in FLOATS:
            assert src.quantized(key) is None
            assert (
                got.dtype == src.dtype(key) == {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}[t]
            )
        else:
            q = src.quantized(key)
            assert q is not None and q.qtype == qtype and q.shape == shapes[key] and q.data.dtype == torch.uint8
            assert got.dtype == src.dtype(key) == torch.float32
            assert torch.equal(q.dequantize(torch.bfloat16), ref.to(torch.bfloat16))
        assert torch.equal(got.float(), ref), f"{qtype} {key}: {_mismatch(got, ref)}"


def test_orig_shape_metadata_restores_the_shape(tmp_path: Path) -> None:
    """A [64, 4, 3, 3] conv weight flattened to 256-wide rows for Q4_K, with comfy.gguf.orig_shape.<name>."""
    rng = np.random.default_rng(2)
    data = random_blocks("Q4_K", (9, 256), rng)
    path = write_gguf(tmp_path / "c.gguf", "sdxl", {"conv.weight": ("Q4_K", data)},
                      fields={"comfy.gguf.orig_shape.conv.weight": [64, 4, 3, 3]})  # fmt: skip
    src = GGUFSource(path)
    assert src.shape("conv.weight") == (64, 4, 3, 3)
    assert torch.equal(src.get("conv.weight"), decode(data, "Q4_K", (64, 4, 3, 3)))
    assert src.metadata["general.architecture"] == "sdxl"


def test_not_gguf_truncated_and_unsupported_types_fail_clearly(tmp_path: Path) -> None:
    other = tmp_path / "model.safetensors"
    other.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    with pytest.raises(CheckpointError, match="is not a GGUF file") as exc:
        GGUFSource(other)
    assert exc.value.hint and not is_gguf(other)

    rng = np.random.default_rng(3)
    iq = rng.integers(0, 256, size=(4, 2 * 18), dtype=np.uint8)  # IQ4_NL: 32-element blocks of 18 bytes
    tensors = {"a.weight": ("Q8_0", encode(rng.standard_normal((4, 64)).astype(np.float32), "Q8_0", rng)),
               "b.weight": ("IQ4_NL", iq)}  # fmt: skip
    good = write_gguf(tmp_path / "m.gguf", "wan", tensors)
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size - 100])
    with pytest.raises(CheckpointError, match="truncated"):
        GGUFSource(cut)

    src = GGUFSource(good)
    assert src.unsupported() == {"b.weight": "IQ4_NL"} and src.qtype("b.weight") == "IQ4_NL"
    assert src.shape("b.weight") == (4, 64)
    for read in (src.get, src.quantized):
        with pytest.raises(CheckpointError, match=r"'b.weight'.*IQ4_NL") as exc:
            read("b.weight")
        assert exc.value.hint
    with pytest.raises(ValueError, match="IQ4_NL"):
        QuantizedTensor(torch.from_numpy(iq), "IQ4_NL", (4, 64))
    with pytest.raises(ValueError, match="bytes"):
        QuantizedTensor(torch.zeros(10, dtype=torch.uint8), "Q8_0", (4, 64))


# --------------------------------------------------------------------------------------------------------------------
# Key names and layout of city96's files
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("task", "qtype", "prefix"), [("t2v", "Q4_K", ""), ("i2v", "Q8_0", "model.diffusion_model."),
                                                       ("t2v", "BF16", "")])  # fmt: skip
def test_city96_dit_opens_with_official_names(tmp_path: Path, task: str, qtype: str, prefix: str) -> None:
    cfg = tiny_dit_config(task)
    model = random_dit(cfg)
    path, ref, types = write_city96_dit(model, tmp_path / f"wan-{qtype}.gguf", qtype, mix=qtype == "Q4_K",
                                        prefix=prefix)  # fmt: skip
    src = GGUFSource(path)

    expected = {k: tuple(v.shape) for k, v in build_transformer(cfg).state_dict().items()}
    assert {k: src.shape(k) for k in src} == expected
    assert src.architecture == "wan" and detect_kind(src.keys()).kind == "dit"
    assert infer_dit_config(lambda k: src.shape(k) if k in src else None) == cfg
    for k in src:
        assert src.qtype(k) == types[k]
        assert torch.equal(src.get(k).float(), ref[k]), k
    # the layout the builder reproduces: 5-D patch embedding and modulation in F32, embeddings in 16 bit
    assert src.qtype("patch_embedding.weight") == "F32" and len(src.shape("patch_embedding.weight")) == 5
    assert src.qtype("blocks.0.modulation") == "F32" and src.qtype("text_embedding.0.weight") in ("F16", "BF16")
    if qtype == "Q4_K":  # Q4_K_M: q in Q4_K, v in Q6_K, ffn.2 (rows of 64) fell back to F16
        assert [src.qtype(f"blocks.1.{k}.weight") for k in ("self_attn.q", "self_attn.v", "ffn.0", "ffn.2")] == [
            "Q4_K", "Q6_K", "Q4_K", "F16"]  # fmt: skip
    quantized = {k for k in src if src.quantized(k) is not None}
    assert all(FP8_KEYS.match(k) for k in quantized) and bool(quantized) == (qtype in QUANTS)


@pytest.mark.parametrize("arch", ["t5encoder", "t5"])
def test_city96_umt5_opens_with_hf_names_and_vocab(tmp_path: Path, arch: str) -> None:
    model = tiny_umt5()
    path, ref = write_city96_umt5(model, tmp_path / "umt5-xxl-encoder-Q8_0.gguf", arch=arch)
    src = GGUFSource(path)

    state = model.state_dict()
    expected = {k: tuple(v.shape) for k, v in state.items() if k != "encoder.embed_tokens.weight"}
    assert {k: src.shape(k) for k in src} == expected
    assert detect_kind(src.keys()).kind == "text_encoder" and src.architecture == arch
    assert src.qtype("shared.weight") == "Q8_0" and src.qtype("encoder.block.1.layer.0.layer_norm.weight") == "F32"
    assert src.qtype("encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight") == "F16"
    for k in src:
        assert torch.equal(src.get(k).float(), ref[k]), k
    # the renamed weights load strictly into an HF UMT5 encoder (embed_tokens is tied to shared)
    fresh = copy.deepcopy(model)
    loaded = {k: src.get(k).float() for k in src}
    fresh.load_state_dict({**loaded, "encoder.embed_tokens.weight": loaded["shared.weight"]}, strict=True)

    vocab = src.vocab()
    assert vocab is not None and vocab.model == "t5"
    assert vocab.tokens == TOKENS and vocab.token_types == TOKEN_TYPES
    assert vocab.scores == [-float(i) for i in range(len(TOKENS))]
    assert vocab.add_space_prefix is True and vocab.remove_extra_whitespaces is True
    assert vocab.precompiled_charsmap == CHARSMAP and vocab.special_ids == {"eos": 1, "unk": 2, "pad": 0}
    assert "tokenizer.ggml.tokens" not in src.metadata and src.metadata["tokenizer.ggml.model"] == "t5"


# --------------------------------------------------------------------------------------------------------------------
# Quantised storage in the model
# --------------------------------------------------------------------------------------------------------------------


def _quantized(weight: torch.Tensor, qtype: str, rng: np.random.Generator) -> tuple[QuantizedTensor, torch.Tensor]:
    """(the weight in ``qtype`` blocks, its numpy-reference dequantisation in fp32)."""
    data = encode(weight.detach().float().numpy(), qtype, rng)
    return QuantizedTensor(torch.from_numpy(data), qtype, tuple(weight.shape)), decode(data, qtype, tuple(weight.shape))


@pytest.mark.parametrize("qtype", QUANTS)
def test_linear_store_quantized_matches_f_linear(qtype: str) -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(4)
    lin = Linear(512, 24)
    bias = lin.bias.detach().clone()
    qt, w = _quantized(lin.weight, qtype, rng)
    lin.store_quantized(qt, torch.float32)
    x = torch.randn(2, 7, 512, dtype=torch.bfloat16)  # any input dtype: the layer computes in its compute dtype
    with torch.no_grad():
        y = lin(x)
    ref = F.linear(x.float(), w, bias)
    assert y.dtype == torch.float32 and lin.weight.dtype == torch.uint8 and not lin.plain
    assert rel_err(y, ref) < FP32_TOL, _mismatch(y, ref)

    lin.store_quantized(qt, torch.bfloat16)
    assert lin(x).dtype == torch.bfloat16 and lin.bias.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="shape"):
        Linear(256, 24).store_quantized(qt, torch.float32)


def _quantize_blocks(model: WanModel, seed: int = 0) -> tuple[WanModel, WanModel]:
    """(the model with every block matmul weight in GGUF blocks, types cycling over all quant types that fit the
    row, and a copy holding the dequantised reference weights as plain fp32)."""
    rng = np.random.default_rng(seed)
    plain = copy.deepcopy(model)
    used: dict[int, int] = {}  # row length → layers of that row length quantised so far
    for name, module in model.named_modules():
        if isinstance(module, Linear) and FP8_KEYS.match(name + ".weight"):
            fits = [q for q in QUANTS if module.in_features % BLOCKS[q][0] == 0]
            i = used[module.in_features] = used.get(module.in_features, -1) + 1
            qt, w = _quantized(module.weight, fits[i % len(fits)], rng)
            module.store_quantized(qt, torch.float32)
            plain.get_submodule(name).weight.data = w
    return model, plain


def _inputs(text_dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return (
        torch.randn(2, 16, 3, 8, 8, generator=g),
        torch.tensor([999.0, 250.0]),
        torch.randn(2, 20, text_dim, generator=g),
    )


def test_quantized_dit_matches_dequantized_plain_dit_also_streamed() -> None:
    cfg = tiny_dit_config("t2v", num_layers=3)
    model, plain = _quantize_blocks(random_dit(cfg, seed=2))
    kinds = {m.weight_qtype for m in model.modules() if isinstance(m, Linear)}
    assert set(QUANTS) <= kinds  # every type ran through a real forward
    assert weight_bytes(model) < weight_bytes(plain) / 2

    x, t, ctx = _inputs(cfg.text_dim)
    with torch.no_grad():
        ref = plain(x, t, ctx)
        out = model(x, t, ctx)
        assert rel_err(out, ref) < FP32_TOL, _mismatch(out, ref)

        fuse_qkv_(model)  # quantised q/k/v are left alone, as are they by fp8 storage
        quantize_fp8_(model, torch.float32)
        assert all(m.qkv_weight is None for m in model.modules() if hasattr(m, "qkv_weight"))
        assert torch.equal(model(x, t, ctx), out)

        streamer = stream_blocks(model, model.blocks, "cpu")  # the uint8 blocks travel through the flat slots
        try:
            for _ in range(2):  # the second pass runs on slots refilled after the ring wrapped
                streamed = model(x, t, ctx)
                assert torch.equal(streamed, out), _mismatch(streamed, out)
        finally:
            streamer.detach()
        assert streamer.slot_bytes < weight_bytes(plain.blocks[0])
