"""Key sets of the real variants, the foreign layouts' key maps, and loading tiny checkpoints in every layout."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from builders import (
    COMFY_PREFIX,
    dequantized_reference,
    diffusers_dit,
    random_dit,
    random_vae,
    rel_err,
    tiny_dit_config,
    tiny_vae_config,
    write_comfy_dit,
    write_comfy_vae,
    write_diffusers_dit,
    write_diffusers_vae,
    write_official_dit,
    write_official_vae,
)
from safetensors.torch import save_file

from wan_cli.engine import CheckpointError, CheckpointInfo, FolderInfo, inspect_checkpoint, load_transformer, load_vae
from wan_cli.engine.checkpoints import infer_dit_config, infer_vae_config
from wan_cli.engine.layouts import Detected, detect_kind, dit_key_to_diffusers, vae_key_to_diffusers
from wan_cli.engine.transformer import DIT_CONFIGS, build_transformer
from wan_cli.engine.vae import WanVAEConfig, build_vae

# Reference counts (wan21-architecture.md §1.1, §4.1).
REAL = {
    "t2v-1.3B": (825, 1_418_996_800),
    "t2v-14B": (1095, 14_288_491_584),
    "i2v-14B": (1303, 16_394_878_784),
    "flf2v-14B": (1304, 16_395_536_704),
}


@pytest.mark.parametrize("name", list(REAL))
def test_real_variants_have_the_official_keys_and_shapes(name: str) -> None:
    state = build_transformer(DIT_CONFIGS[name]).state_dict()
    tensors, params = REAL[name]
    assert len(state) == tensors
    assert sum(v.numel() for v in state.values()) == params
    d = DIT_CONFIGS[name].dim
    c_in = 16 if name.startswith("t2v") else 36
    ffn = 8960 if d == 1536 else 13824
    expected = {
        "patch_embedding.weight": (d, c_in, 1, 2, 2), "text_embedding.0.weight": (d, 4096),
        "time_embedding.0.weight": (d, 256), "time_projection.1.weight": (6 * d, d), "head.modulation": (1, 2, d),
        "head.head.weight": (64, d), "blocks.0.modulation": (1, 6, d), "blocks.0.norm3.weight": (d,),
        "blocks.0.self_attn.norm_q.weight": (d,), "blocks.0.ffn.0.weight": (ffn, d), "blocks.0.ffn.2.weight": (d, ffn),
    }  # fmt: skip
    if name.startswith(("i2v", "flf2v")):
        expected |= {
            "img_emb.proj.0.weight": (1280,),
            "img_emb.proj.3.weight": (d, 1280),
            "blocks.39.cross_attn.k_img.weight": (d, d),
            "blocks.39.cross_attn.norm_k_img.weight": (d,),
        }
    if name.startswith("flf2v"):
        expected["img_emb.emb_pos"] = (1, 514, 1280)
    for key, shape in expected.items():
        assert tuple(state[key].shape) == shape, key
    assert not any(k.endswith(("norm1.weight", "norm2.weight")) for k in state)  # parameter-free norms


@pytest.mark.parametrize("name", list(REAL))
def test_diffusers_keys_map_one_to_one(name: str) -> None:
    """The rename table maps the official key set exactly onto diffusers' own model (built on meta)."""
    cfg = DIT_CONFIGS[name]
    ours = build_transformer(cfg).state_dict()
    with torch.device("meta"):
        theirs = diffusers_dit(cfg).state_dict()
    mapped = {dit_key_to_diffusers(k): tuple(v.shape) for k, v in ours.items()}
    assert len(mapped) == len(ours)
    assert mapped == {k: tuple(v.shape) for k, v in theirs.items()}
    # and both layouts are recognised from the full key sets (ComfyUI: the official names behind a prefix)
    assert detect_kind(mapped) == Detected("dit", "diffusers", "")
    assert detect_kind(COMFY_PREFIX + k for k in ours) == Detected("dit", "comfyui", COMFY_PREFIX)


def test_vae_diffusers_keys_map_one_to_one() -> None:
    from diffusers import AutoencoderKLWan

    ours = build_vae().state_dict()
    with torch.device("meta"):
        theirs = AutoencoderKLWan().state_dict()
    cfg = WanVAEConfig()
    mapped = {vae_key_to_diffusers(k, cfg): tuple(v.shape) for k, v in ours.items()}
    assert len(mapped) == 194
    assert mapped == {k: tuple(v.shape) for k, v in theirs.items()}
    # the reference's own examples (checkpoint-formats.md §3.7)
    upsample = vae_key_to_diffusers("decoder.upsamples.9.residual.3.gamma", cfg)
    assert upsample == "decoder.up_blocks.2.resnets.1.norm2.gamma"
    assert vae_key_to_diffusers("encoder.middle.0.residual.2.weight", cfg) == "encoder.mid_block.resnets.0.conv1.weight"


@pytest.mark.parametrize("name", list(REAL))
def test_variant_is_detected_from_shapes(name: str) -> None:
    """Official/ComfyUI files carry no config: dims, layers, FFN and model type come from keys and shapes."""
    state = build_transformer(DIT_CONFIGS[name]).state_dict()
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    assert infer_dit_config(shapes.get) == DIT_CONFIGS[name]
    diff = {dit_key_to_diffusers(k): s for k, s in shapes.items()}
    assert infer_dit_config(lambda k: diff.get(dit_key_to_diffusers(k))) == DIT_CONFIGS[name]


def test_real_vae_config_is_detected_from_shapes() -> None:
    shapes = {k: tuple(v.shape) for k, v in build_vae().state_dict().items()}
    assert infer_vae_config(shapes.get) == WanVAEConfig()


# -- loading tiny checkpoints in every layout ------------------------------------------------------------------------


def _dit_inputs(model_type: str) -> dict[str, torch.Tensor | None]:
    g = torch.Generator().manual_seed(0)
    cfg = tiny_dit_config(model_type)
    out: dict[str, torch.Tensor | None] = {
        "x": torch.randn(1, 16, 2, 4, 6, generator=g), "timestep": torch.tensor([500]),
        "context": torch.randn(1, 9, cfg.text_dim, generator=g), "clip_fea": None, "y": None,
    }  # fmt: skip
    if model_type != "t2v":
        out["clip_fea"] = torch.randn(1, cfg.clip_tokens, 1280, generator=g)
        out["y"] = torch.randn(1, 20, 2, 4, 6, generator=g)
    return out


def _run(model: torch.nn.Module, inp: dict[str, torch.Tensor | None]) -> torch.Tensor:
    with torch.no_grad():
        return model(**inp)


@pytest.mark.parametrize("model_type", ["t2v", "i2v", "flf2v"])
def test_every_fp32_layout_loads_to_the_same_model(model_type: str, tmp: Path) -> None:
    model = random_dit(tiny_dit_config(model_type), seed=7)
    inp = _dit_inputs(model_type)
    expected = _run(model, inp)
    paths = {
        "official folder": write_official_dit(model, tmp / "official"),
        "official file": tmp / "official" / "diffusion_pytorch_model.safetensors",
        "official sharded": write_official_dit(model, tmp / "sharded", shards=3),
        "official index": tmp / "sharded" / "diffusion_pytorch_model.safetensors.index.json",
        "diffusers pipeline": write_diffusers_dit(model, tmp / "pipe"),
        "diffusers transformer": tmp / "pipe" / "transformer",
    }
    assert len(list((tmp / "pipe" / "transformer").glob("*.safetensors"))) > 1  # really sharded by diffusers
    for label, path in paths.items():
        loaded = load_transformer(path)
        assert loaded.config == model.config, label
        for k, v in model.state_dict().items():
            assert torch.equal(loaded.state_dict()[k], v), f"{label}: {k}"
        assert rel_err(_run(loaded, inp), expected) < 1e-6, label  # (mmapped tensors may take other BLAS paths)


@pytest.mark.parametrize("precision", ["bf16", "fp16", "fp8", "fp8_scaled"])
def test_comfyui_single_files(precision: str, tmp: Path) -> None:
    model = random_dit(tiny_dit_config("i2v"), seed=8)
    path = write_comfy_dit(model, tmp / f"wan_{precision}.safetensors", precision)
    loaded = load_transformer(path)
    # exactly the dequantised weights (fp8: W_fp8 · scale_weight), in fp32
    ref = dequantized_reference(model, precision)
    for k, v in loaded.state_dict().items():
        assert v.dtype == torch.float32 and torch.equal(v, ref[k]), k
    inp = _dit_inputs("i2v")
    tol = {"bf16": 2e-2, "fp16": 2e-3, "fp8": 0.25, "fp8_scaled": 0.15}[precision]
    err = rel_err(_run(loaded, inp), _run(model, inp))
    assert err < tol, f"{precision}: {err:.3e}"
    info = inspect_checkpoint(path)
    assert (info.kind, info.layout, info.variant) == ("dit", "comfyui", "custom")
    assert info.quantization == {"fp8": "fp8", "fp8_scaled": "scaled_fp8"}.get(precision, "none")


def test_bf16_compute_dtype_from_any_file(tmp: Path) -> None:
    model = random_dit(tiny_dit_config("t2v"))
    loaded = load_transformer(write_comfy_dit(model, tmp / "m.safetensors", "fp8_scaled"), dtype=torch.bfloat16)
    assert loaded.blocks[0].self_attn.q.weight.dtype == torch.bfloat16
    assert loaded.time_embedding[0].weight.dtype == torch.float32


def test_vae_layouts_load_to_the_same_model(tmp: Path) -> None:
    vae = random_vae(tiny_vae_config(), seed=3)
    video = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    with torch.no_grad():
        expected = vae.encode(video)
    official = write_official_vae(vae, tmp / "Wan2.1_VAE.pth")
    (tmp / "ckpt").mkdir()
    write_official_vae(vae, tmp / "ckpt" / "Wan2.1_VAE.pth")
    for label, path in {"official .pth": official, "official folder": tmp / "ckpt",
                        "diffusers pipeline": write_diffusers_vae(vae, tmp / "pipe"),
                        "diffusers vae": tmp / "pipe" / "vae"}.items():  # fmt: skip
        loaded = load_vae(path)
        assert loaded.config == vae.config, label
        with torch.no_grad():
            assert rel_err(loaded.encode(video), expected) < 1e-6, label
    comfy = load_vae(write_comfy_vae(vae, tmp / "wan_2.1_vae.safetensors", torch.float16))
    assert comfy.dtype == torch.float32
    with torch.no_grad():
        assert rel_err(comfy.encode(video), expected) < 5e-3


def test_real_vae_diffusers_layout_roundtrip(tmp: Path) -> None:
    """The real-config VAE written by diffusers' save_pretrained loads back to identical weights."""
    vae = build_vae(device="cpu")
    torch.nn.init.normal_(vae.decoder.head[2].weight)
    write_diffusers_vae(vae, tmp / "pipe")
    loaded = load_vae(tmp / "pipe")
    assert loaded.config == WanVAEConfig()
    assert torch.equal(loaded.decoder.head[2].weight, vae.decoder.head[2].weight)


def test_inspect_reports_layout_and_variant(tmp: Path) -> None:
    model = random_dit(tiny_dit_config("flf2v"))
    folder = inspect_checkpoint(write_diffusers_dit(model, tmp / "pipe"))
    assert isinstance(folder, FolderInfo) and folder.layout == "diffusers"
    (info,) = folder.components
    assert (info.kind, info.layout) == ("dit", "diffusers") and info.config is not None
    assert info.config["model_type"] == "flf2v" and len(info.files) > 1  # diffusers' 1 MB shards, one component
    info = inspect_checkpoint(write_official_vae(random_vae(tiny_vae_config()), tmp / "v.pth"))
    assert (info.kind, info.layout, info.tensors) == ("vae", "official", 194)


# -- errors ----------------------------------------------------------------------------------------------------------


def _official_file(tmp: Path) -> Path:
    return write_official_dit(random_dit(tiny_dit_config("t2v")), tmp / "m") / "diffusion_pytorch_model.safetensors"


def test_truncated_safetensors(tmp: Path) -> None:
    path = _official_file(tmp)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as err:
        load_transformer(path)
    assert str(path) in err.value.message and "download" in err.value.hint


def test_corrupted_pth(tmp: Path) -> None:
    path = write_official_vae(random_vae(tiny_vae_config()), tmp / "Wan2.1_VAE.pth")
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"Wan2\.1_VAE\.pth"):
        load_vae(path)
    path.write_bytes(b"not a pickle at all")
    with pytest.raises(CheckpointError, match="not a readable"):
        load_vae(path)


def test_pth_with_code_is_refused(tmp: Path) -> None:
    """weights_only=True: a pickle that would run code is never executed."""
    path = tmp / "evil.pth"
    torch.save({"w": torch.zeros(1), "obj": Path("/tmp")}, path)
    with pytest.raises(CheckpointError):
        load_vae(path)


def test_missing_shard(tmp: Path) -> None:
    folder = write_official_dit(random_dit(tiny_dit_config("t2v")), tmp / "m", shards=2)
    next(folder.glob("*00002-of-00002.safetensors")).unlink()
    with pytest.raises(CheckpointError, match="missing"):
        load_transformer(folder)


def test_wrong_model_type_is_refused(tmp: Path) -> None:
    path = write_comfy_dit(random_dit(tiny_dit_config("i2v")), tmp / "i2v.safetensors")
    assert load_transformer(path, model_type="i2v").config.model_type == "i2v"
    with pytest.raises(CheckpointError, match=r"is an i2v model \(custom\), not a t2v model"):
        load_transformer(path, model_type="t2v")


@pytest.mark.parametrize("which", ["vae_as_dit", "dit_as_vae", "text_encoder"])
def test_wrong_kind_of_file(which: str, tmp: Path) -> None:
    if which == "vae_as_dit":
        path = write_comfy_vae(random_vae(tiny_vae_config()), tmp / "vae.safetensors")
        with pytest.raises(CheckpointError, match="holds a Wan VAE, not a Wan DiT"):
            load_transformer(path)
    elif which == "dit_as_vae":
        with pytest.raises(CheckpointError, match=r"holds a Wan DiT .*not a Wan VAE"):
            load_vae(_official_file(tmp))
    else:
        path = tmp / "umt5.safetensors"
        save_file({"shared.weight": torch.zeros(4, 2), "encoder.final_layer_norm.weight": torch.zeros(2)}, str(path))
        with pytest.raises(CheckpointError, match="UMT5 text encoder"):
            load_transformer(path)


def test_missing_unexpected_and_misshaped_keys_are_named(tmp: Path) -> None:
    model = random_dit(tiny_dit_config("t2v"))
    state = {COMFY_PREFIX + k: v.contiguous() for k, v in model.state_dict().items()}
    del state[COMFY_PREFIX + "blocks.1.ffn.2.bias"]
    state[COMFY_PREFIX + "blocks.0.extra.weight"] = torch.zeros(2)
    state[COMFY_PREFIX + "blocks.0.self_attn.o.bias"] = torch.zeros(7)
    path = tmp / "broken.safetensors"
    save_file(state, str(path))
    with pytest.raises(CheckpointError) as err:
        load_transformer(path)
    msg = err.value.message
    assert str(path) in msg
    assert "1 missing: blocks.1.ffn.2.bias" in msg
    assert "1 unexpected: model.diffusion_model.blocks.0.extra.weight" in msg
    assert "blocks.0.self_attn.o.bias [7] (expected [256])" in msg


def test_incomplete_files_name_what_is_missing(tmp: Path) -> None:
    state = {COMFY_PREFIX + k: v for k, v in random_dit(tiny_dit_config("t2v")).state_dict().items()}
    del state[COMFY_PREFIX + "head.head.weight"]
    save_file(state, str(tmp / "dit.safetensors"))
    with pytest.raises(CheckpointError, match=r"dit\.safetensors is an incomplete Wan DiT \(no head\.head\.weight\)"):
        load_transformer(tmp / "dit.safetensors")
    vae = {k: v for k, v in random_vae(tiny_vae_config()).state_dict().items() if not k.startswith("encoder.conv1")}
    save_file(vae, str(tmp / "vae.safetensors"))
    with pytest.raises(CheckpointError, match=r"not a complete Wan 2\.1 VAE"):
        load_vae(tmp / "vae.safetensors")


def test_config_that_does_not_match_the_weights(tmp: Path) -> None:
    folder = write_official_dit(random_dit(tiny_dit_config("t2v")), tmp / "m")
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(cfg | {"ffn_dim": 128}))
    with pytest.raises(CheckpointError, match=r"mis-shaped: blocks.0.ffn.0.bias"):
        load_transformer(folder)
    (folder / "config.json").write_text(json.dumps(cfg | {"num_heads": 3}))
    with pytest.raises(CheckpointError, match="not a valid DiT config"):
        load_transformer(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_transformer(folder)


def test_paths_that_hold_nothing(tmp: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_transformer(tmp / "nope.safetensors")
    (tmp / "empty").mkdir()
    with pytest.raises(CheckpointError, match="empty"):
        load_transformer(tmp / "empty")
    with pytest.raises(CheckpointError, match="no vae weights"):
        load_vae(tmp / "empty")


def test_parameter_count_matches_shapes(tmp: Path) -> None:
    model = random_dit(tiny_dit_config("i2v"))
    info = inspect_checkpoint(write_official_dit(model, tmp / "m") / "diffusion_pytorch_model.safetensors")
    assert isinstance(info, CheckpointInfo)
    assert info.parameters == sum(math.prod(v.shape) for v in model.state_dict().values())
    assert info.variant == "custom" and info.dtypes == {"float32": len(model.state_dict())}
