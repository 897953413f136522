"""The DiT against diffusers' WanTransformer3DModel (an independent implementation) on random weights.

Tolerance: fp32, relative error ‖ours − ref‖/‖ref‖ ≤ 1e-5 (measured ~5e-7: float rounding only).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from builders import init_random_, random_dit, rel_err, tiny_dit_config, to_diffusers_dit

from wan_cli.engine import InputError, WanError
from wan_cli.engine.ops import (
    apply_rope,
    attention,
    available_backends,
    resolve_attention,
    rope_axis_dims,
    rope_cos_sin,
    sinusoidal_embedding_1d,
)
from wan_cli.engine.transformer import WanDiTConfig, WanModel, build_transformer

FP32_TOL = 1e-5


def _inputs(cfg: WanDiTConfig, b: int = 2, grid: tuple[int, int, int] = (3, 8, 12), text_tokens: int = 512,
            seed: int = 1) -> dict[str, torch.Tensor | None]:  # fmt: skip
    g = torch.Generator().manual_seed(seed)
    f, h, w = grid
    ctx = torch.zeros(b, cfg.text_len, cfg.text_dim)
    ctx[:, :text_tokens] = torch.randn(b, text_tokens, cfg.text_dim, generator=g)
    out: dict[str, torch.Tensor | None] = {
        "x": torch.randn(b, 16, f, h, w, generator=g),
        "timestep": torch.tensor([999, 421, 7, 1000][:b]),
        "context": ctx,
        "clip_fea": None,
        "y": None,
    }
    if cfg.model_type != "t2v":
        out["clip_fea"] = torch.randn(b, cfg.clip_tokens, 1280, generator=g)
        out["y"] = torch.randn(b, 20, f, h, w, generator=g)
    return out


def _reference(ref: torch.nn.Module, cfg: WanDiTConfig, inp: dict[str, torch.Tensor | None]) -> torch.Tensor:
    """diffusers' forward on the same inputs: y concatenated to x, FLF2V CLIP features as [2B, 257, 1280]."""
    x = inp["x"]
    assert x is not None
    if inp["y"] is not None:
        x = torch.cat([x, inp["y"]], dim=1)
    clip = inp["clip_fea"]
    if clip is not None and cfg.model_type == "flf2v":
        clip = clip.reshape(-1, 257, 1280)  # diffusers views it back to [B, 514, 1280], first image first
    with torch.no_grad():
        return ref(x, inp["timestep"], inp["context"], encoder_hidden_states_image=clip, return_dict=False)[0]


@pytest.mark.parametrize("model_type", ["t2v", "i2v", "flf2v"])
def test_tiny_dit_matches_diffusers(model_type: str) -> None:
    cfg = tiny_dit_config(model_type)
    model = random_dit(cfg, seed=3)
    ref = to_diffusers_dit(model)
    inp = _inputs(cfg)
    with torch.no_grad():
        ours = model(**inp)
    expected = _reference(ref, cfg, inp)
    assert ours.shape == (2, 16, 3, 8, 12) and ours.dtype == torch.float32
    err = rel_err(ours, expected)
    assert err <= FP32_TOL, f"{model_type}: relative error {err:.2e} > {FP32_TOL}"


@pytest.mark.slow
@pytest.mark.parametrize("model_type", ["t2v", "i2v", "flf2v"])
def test_real_width_dit_matches_diffusers(model_type: str) -> None:
    """The real 1.3B width (dim 1536, 12 heads, FFN 8960, text_dim 4096), 2 layers, small latent grid."""
    cfg = WanDiTConfig(model_type, dim=1536, ffn_dim=8960, num_heads=12, num_layers=2,  # type: ignore[arg-type]
                       in_dim=16 if model_type == "t2v" else 36)  # fmt: skip
    model = random_dit(cfg, seed=5)
    ref = to_diffusers_dit(model)
    inp = _inputs(cfg, b=1, grid=(2, 6, 8), text_tokens=40)
    with torch.no_grad():
        ours = model(**inp)
    err = rel_err(ours, _reference(ref, cfg, inp))
    assert err <= FP32_TOL, f"{model_type} at 1.3B width: relative error {err:.2e}"


def test_short_context_is_zero_padded_to_text_len() -> None:
    """Official rule: trimmed text embeddings are zero-padded to 512 *before* text_embedding (pads attend too)."""
    cfg = tiny_dit_config("t2v")
    model = random_dit(cfg)
    ref = to_diffusers_dit(model)
    inp = _inputs(cfg, text_tokens=7)
    assert inp["context"] is not None
    short = dict(inp, context=inp["context"][:, :7])
    with torch.no_grad():
        ours = model(**short)
    assert rel_err(ours, _reference(ref, cfg, inp)) <= FP32_TOL
    # and the padded rows matter: attending only to the 7 real tokens would give another result
    with torch.no_grad():
        masked = ref(inp["x"], inp["timestep"], inp["context"][:, :7], return_dict=False)[0]
    assert rel_err(ours, masked) > 1e-3


def test_bf16_compute_close_to_fp32() -> None:
    """bf16 weights for the matmuls, fp32 for the rest: within bf16 rounding of the fp32 model (tol 3e-2)."""
    cfg = tiny_dit_config("i2v")
    fp32 = random_dit(cfg, seed=2)
    bf16 = init_random_(build_transformer(cfg), seed=2, dtype=torch.bfloat16).eval()
    inp = _inputs(cfg)
    with torch.no_grad():
        a, b = fp32(**inp), bf16(**inp)
    assert b.dtype == torch.float32
    err = rel_err(b, a)
    assert 1e-5 < err < 3e-2, f"bf16 vs fp32 relative error {err:.2e}"  # >1e-5: bf16 really was used


def test_precision_rules_in_bf16() -> None:
    """Official rules: time embedding, modulation, norms and head fp32; matmuls bf16; residual stream fp32."""
    cfg = tiny_dit_config("flf2v")
    model = init_random_(build_transformer(cfg), seed=0, dtype=torch.bfloat16).eval()
    state = model.state_dict()
    for key in ("time_embedding.0.weight", "time_projection.1.weight", "head.head.weight", "head.modulation",
                "blocks.0.modulation", "blocks.0.norm3.weight", "blocks.1.self_attn.norm_q.weight",
                "blocks.0.cross_attn.norm_k_img.weight", "img_emb.proj.0.weight", "img_emb.emb_pos"):  # fmt: skip
        assert state[key].dtype == torch.float32, key
    for key in ("patch_embedding.weight", "text_embedding.0.weight", "blocks.0.self_attn.q.weight",
                "blocks.0.cross_attn.k_img.weight", "blocks.1.ffn.2.weight", "img_emb.proj.1.weight"):  # fmt: skip
        assert state[key].dtype == torch.bfloat16, key

    seen: dict[str, torch.dtype] = {}

    def hook(name: str):  # type: ignore[no-untyped-def]
        def fn(module: torch.nn.Module, args: tuple, out: torch.Tensor) -> None:  # type: ignore[type-arg]
            seen[f"{name}.in"] = args[0].dtype
            seen[f"{name}.out"] = out.dtype
            if name == "blocks.0":
                seen["e0"] = args[1].dtype

        return fn

    for name in ("blocks.0", "blocks.1", "head", "time_embedding", "blocks.0.self_attn.q", "blocks.0.ffn.0"):
        model.get_submodule(name).register_forward_hook(hook(name))
    with torch.no_grad():
        out = model(**_inputs(cfg))
    assert out.dtype == torch.float32
    assert seen["e0"] == torch.float32 and seen["time_embedding.out"] == torch.float32
    assert seen["blocks.0.out"] == torch.float32 and seen["blocks.1.in"] == torch.float32  # residual stream
    assert seen["head.out"] == torch.float32
    assert seen["blocks.0.self_attn.q.out"] == torch.bfloat16 and seen["blocks.0.ffn.0.out"] == torch.bfloat16


def test_sinusoid_follows_the_official_formula() -> None:
    """cos first, f_i = 10000^(-i/128), float64 (reference §2.2); diffusers' fp32 version agrees to 2e-4."""
    t = torch.tensor([0, 1, 421, 999, 1000])
    emb = sinusoidal_embedding_1d(256, t)
    assert emb.dtype == torch.float64 and emb.shape == (5, 256)
    for row, tv in enumerate(t.tolist()):
        for i in (0, 1, 64, 127):
            angle = tv * 10000 ** (-i / 128)
            assert emb[row, i].item() == pytest.approx(math.cos(angle), abs=1e-12)
            assert emb[row, 128 + i].item() == pytest.approx(math.sin(angle), abs=1e-12)
    from diffusers.models.embeddings import Timesteps

    ref = Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0)(t)
    assert (emb.float() - ref).abs().max() < 2e-4


def test_rope_tables_split_44_42_42_interleaved() -> None:
    """Against an independent complex-number RoPE written from the reference (§2.6)."""
    assert rope_axis_dims(128) == (44, 42, 42)
    grid = (3, 4, 5)
    cos, sin = rope_cos_sin(grid, 128, torch.device("cpu"))
    assert cos.shape == (60, 64)
    x = torch.randn(2, 60, 3, 128, dtype=torch.float64)
    ours = apply_rope(x, cos, sin)

    def axis(n: int, d: int) -> torch.Tensor:
        ang = torch.outer(torch.arange(n, dtype=torch.float64), 1.0 / 10000 ** (torch.arange(0, d, 2).double() / d))
        return torch.polar(torch.ones_like(ang), ang)

    ft, fh, fw = axis(3, 44), axis(4, 42), axis(5, 42)
    tables = torch.cat([ft[:, None, None].expand(3, 4, 5, 22), fh[None, :, None].expand(3, 4, 5, 21),
                        fw[None, None, :].expand(3, 4, 5, 21)], dim=-1).reshape(60, 1, 64)  # fmt: skip
    xc = torch.view_as_complex(x.reshape(2, 60, 3, 64, 2))
    ref = torch.view_as_real(xc * tables).flatten(-2)
    assert (ours.double() - ref).abs().max() < 1e-5
    assert rope_cos_sin(grid, 128, torch.device("cpu"))[0] is cos  # cached per grid


def test_attention_backends_match_sdpa() -> None:
    backends = [b for b in available_backends() if b != "sdpa"]
    if not backends:
        pytest.skip("no flash-attn / sageattention (they need CUDA); sdpa is the only backend here")
    q, k, v = (torch.randn(2, 64, 4, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    ref = attention(q, k, v, backend="sdpa").float()
    for name in backends:
        out = attention(q, k, v, backend=name).float()
        diff = (out - ref).abs()
        assert diff.max() < 5e-2, f"{name}: max {diff.max():.3e} mean {diff.mean():.3e}"


def test_unavailable_backend_is_a_clear_error() -> None:
    with pytest.raises(WanError) as err:
        resolve_attention("nonsense")
    assert "sdpa" in err.value.hint
    for name in ("flash3", "sage"):
        if name not in available_backends():
            with pytest.raises(WanError, match="not available"):
                resolve_attention(name)
    assert resolve_attention("auto") in available_backends()


def test_attention_backend_is_a_setting_of_each_model() -> None:
    """Two models in one process keep their own backend: nothing is process-wide."""
    from wan_cli.engine.prepare import set_attention

    a, b = random_dit(tiny_dit_config(), seed=0), random_dit(tiny_dit_config(), seed=0)
    set_attention(a, "cudnn")
    assert {m.attention_backend for m in a.modules() if hasattr(m, "attention_backend")} == {"cudnn"}
    assert {m.attention_backend for m in b.modules() if hasattr(m, "attention_backend")} == {"sdpa"}


def test_forward_rejects_bad_inputs() -> None:
    cfg = tiny_dit_config("i2v")
    model = random_dit(cfg)
    inp = _inputs(cfg)
    bad = [
        dict(inp, x=torch.randn(2, 36, 3, 8, 12)),  # y already concatenated
        dict(inp, x=torch.randn(2, 16, 3, 7, 12), y=torch.randn(2, 20, 3, 7, 12)),  # odd height
        dict(inp, context=torch.randn(2, 600, cfg.text_dim)),
        dict(inp, clip_fea=None),
        dict(inp, clip_fea=torch.randn(2, 514, 1280)),
        dict(inp, timestep=torch.tensor([1])),
    ]
    for kwargs in bad:
        with pytest.raises(InputError):
            model(**kwargs)
    with pytest.raises(InputError, match="t2v"):
        random_dit(tiny_dit_config("t2v"))(**_inputs(tiny_dit_config("t2v")) | {"y": inp["y"]})


def test_config_reads_official_json_and_rejects_unknown_keys() -> None:
    raw = {"_class_name": "WanModel", "_diffusers_version": "0.30.0", "dim": 1536, "eps": 1e-06, "ffn_dim": 8960,
           "freq_dim": 256, "in_dim": 16, "model_type": "t2v", "num_heads": 12, "num_layers": 30, "out_dim": 16,
           "text_len": 512}  # fmt: skip
    cfg = WanDiTConfig.from_dict(raw)
    assert cfg.patch_size == (1, 2, 2) and cfg.text_dim == 4096 and cfg.qk_norm and cfg.cross_attn_norm
    assert isinstance(build_transformer(cfg), WanModel)
    with pytest.raises(ValueError, match="dimm"):
        WanDiTConfig.from_dict({**raw, "dimm": 3})


@pytest.mark.slow
def test_compiled_blocks_match_eager() -> None:
    """compile_blocks (torch.compile per block, one shared graph) computes the same function: fp32 on the CPU."""
    import torch._dynamo

    from wan_cli.engine.offload import BlockStreamer
    from wan_cli.engine.prepare import compile_blocks

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    cfg = tiny_dit_config("i2v")
    model = random_dit(cfg)
    g = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(1, 16, 2, 8, 8, generator=g), torch.randn(1, 12, cfg.text_dim, generator=g)
    args = (
        x,
        torch.tensor([700]),
        ctx,
        torch.randn(1, 257, 1280, generator=g),
        torch.randn(1, 20, 2, 8, 8, generator=g),
    )
    streamed = copy.deepcopy(model)
    BlockStreamer(streamed.blocks, "cpu")  # hooks around compiled blocks: must stay out of the graph
    with torch.no_grad():
        want = model(*args)
        got = compile_blocks(model)(*args)
        got_streamed = compile_blocks(streamed)(*args)
    assert rel_err(got, want) <= 1e-5, rel_err(got, want)
    assert rel_err(got_streamed, want) <= 1e-5, rel_err(got_streamed, want)
    # one graph for all the blocks of both models: no graph break (RoPE), no recompilation per block or per hook
    from torch._dynamo.utils import counters

    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]
