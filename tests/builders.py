"""Tiny random Wan checkpoints written in every published layout, for loader and parity tests.

Each writer takes a state dict in official naming and lays it out the way the real releases do
(``checkpoint-formats.md``): official folders, Diffusers folders (written by diffusers' own ``save_pretrained``, an
independent writer), ComfyUI single files with the ``model.diffusion_model.`` prefix, bf16 / fp16 / fp8 / scaled fp8.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from wan_cli.engine.checkpoints import dit_key_to_diffusers, vae_key_to_diffusers
from wan_cli.engine.transformer import WanDiTConfig, WanModel, build_transformer, init_random_
from wan_cli.engine.vae import WanVAE, WanVAEConfig

COMFY_PREFIX = "model.diffusion_model."


def tiny_dit_config(model_type: str = "t2v", **over: object) -> WanDiTConfig:
    """2 heads of the real width 128 (so the head count is inferable from shapes), 2 layers, small FFN and text."""
    base: dict[str, object] = dict(
        model_type=model_type, dim=256, ffn_dim=64, num_heads=2, num_layers=2,
        in_dim=16 if model_type == "t2v" else 36, text_dim=64,
    )  # fmt: skip
    base.update(over)
    return WanDiTConfig(**base)  # type: ignore[arg-type]


def random_dit(cfg: WanDiTConfig, seed: int = 0) -> WanModel:
    return init_random_(build_transformer(cfg), seed=seed).eval()


def tiny_vae_config() -> WanVAEConfig:
    return WanVAEConfig(dim=8)


def random_vae(cfg: WanVAEConfig | None = None, seed: int = 0) -> WanVAE:
    torch.manual_seed(seed)
    vae = WanVAE(cfg or WanVAEConfig())
    with torch.no_grad():  # non-trivial norm gains and biases, so a mix-up of any two tensors shows
        for name, p in vae.named_parameters():
            if name.endswith("gamma"):
                p.add_(0.1 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.normal_(0, 0.02)
    return vae.eval()


def official_config_json(cfg: WanDiTConfig) -> dict[str, object]:
    """The official config.json: only the keys the released files carry."""
    keep = ("dim", "eps", "ffn_dim", "freq_dim", "in_dim", "model_type", "num_heads", "num_layers", "out_dim",
            "text_len")  # fmt: skip
    return {"_class_name": "WanModel", "_diffusers_version": "0.30.0", **{k: getattr(cfg, k) for k in keep}}


def write_sharded(state: dict[str, torch.Tensor], folder: Path, stem: str, shards: int) -> Path:
    """Shards named like the releases, plus ``{stem}.safetensors.index.json``; returns the index path."""
    keys = list(state)
    per = -(-len(keys) // shards)
    weight_map: dict[str, str] = {}
    for i in range(shards):
        name = f"{stem}-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: state[k].contiguous() for k in keys[i * per : (i + 1) * per]}
        save_file(part, str(folder / name))
        weight_map.update(dict.fromkeys(part, name))
    index = folder / f"{stem}.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return index


def write_official_dit(model: WanModel, folder: Path, shards: int = 1) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(official_config_json(model.config)))
    state = {k: v.float().contiguous() for k, v in model.state_dict().items()}
    if shards == 1:
        save_file(state, str(folder / "diffusion_pytorch_model.safetensors"))
    else:
        write_sharded(state, folder, "diffusion_pytorch_model", shards)
    return folder


def diffusers_dit(cfg: WanDiTConfig):  # type: ignore[no-untyped-def]
    from diffusers import WanTransformer3DModel

    image = {} if cfg.model_type == "t2v" else {"image_dim": 1280, "added_kv_proj_dim": cfg.dim}
    if cfg.model_type == "flf2v":
        image["pos_embed_seq_len"] = 2 * 257
    return WanTransformer3DModel(
        patch_size=cfg.patch_size, num_attention_heads=cfg.num_heads, attention_head_dim=cfg.head_dim,
        in_channels=cfg.in_dim, out_channels=cfg.out_dim, text_dim=cfg.text_dim, freq_dim=cfg.freq_dim,
        ffn_dim=cfg.ffn_dim, num_layers=cfg.num_layers, eps=cfg.eps, **image,
    )  # fmt: skip


def to_diffusers_dit(model: WanModel):  # type: ignore[no-untyped-def]
    """A diffusers WanTransformer3DModel holding ``model``'s weights (through the rename table), fp32, eval."""
    ref = diffusers_dit(model.config)
    ref.load_state_dict({dit_key_to_diffusers(k): v.float() for k, v in model.state_dict().items()}, strict=True)
    return ref.eval()


def write_diffusers_dit(model: WanModel, root: Path, pipeline: bool = True) -> Path:
    """A Diffusers pipeline folder (model_index.json + transformer/) written by diffusers itself, sharded."""
    ref = to_diffusers_dit(model)
    target = root / "transformer" if pipeline else root
    ref.save_pretrained(str(target), max_shard_size="1MB", safe_serialization=True)
    if pipeline:
        (root / "model_index.json").write_text(json.dumps({"_class_name": "WanPipeline",
                                                           "transformer": ["diffusers", "WanTransformer3DModel"],
                                                           "vae": ["diffusers", "AutoencoderKLWan"]}))  # fmt: skip
    return root


def quantize_fp8(t: torch.Tensor, scaled: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """float8_e4m3fn storage; with ``scaled`` a per-tensor fp32 scale (ComfyUI ``scale_weight``) is used."""
    if not scaled:
        return t.to(torch.float8_e4m3fn), None
    scale = (t.abs().max().float() / 448.0).clamp(min=1e-12)
    return (t.float() / scale).to(torch.float8_e4m3fn), scale.reshape(())


def write_comfy_dit(model: WanModel, path: Path, precision: str = "bf16") -> Path:
    """A ComfyUI single file: official names behind ``model.diffusion_model.``; bf16 / fp16 / fp8 / fp8_scaled.

    fp8 files keep biases, norms, modulation and embeddings in 16/32 bit and quantise the 2-D matmul weights.
    """
    out: dict[str, torch.Tensor] = {}
    half = torch.float16 if precision == "fp16" else torch.bfloat16
    for k, v in model.state_dict().items():
        quantise = precision.startswith("fp8") and k.endswith(".weight") and v.ndim == 2 and "norm" not in k
        if quantise:
            q, scale = quantize_fp8(v.float(), scaled=precision == "fp8_scaled")
            out[COMFY_PREFIX + k] = q
            if scale is not None:
                out[COMFY_PREFIX + k.removesuffix(".weight") + ".scale_weight"] = scale
        else:
            out[COMFY_PREFIX + k] = v.to(half).contiguous()
    if precision == "fp8_scaled":
        out[COMFY_PREFIX + "scaled_fp8"] = torch.zeros(0, dtype=torch.float8_e4m3fn)
    save_file(out, str(path))
    return path


def dequantized_reference(model: WanModel, precision: str) -> dict[str, torch.Tensor]:
    """The fp32 weights a loader must produce from ``write_comfy_dit(model, …, precision)``."""
    ref: dict[str, torch.Tensor] = {}
    half = torch.float16 if precision == "fp16" else torch.bfloat16
    for k, v in model.state_dict().items():
        if precision.startswith("fp8") and k.endswith(".weight") and v.ndim == 2 and "norm" not in k:
            q, scale = quantize_fp8(v.float(), scaled=precision == "fp8_scaled")
            ref[k] = q.float() * (scale if scale is not None else 1.0)
        else:
            ref[k] = v.to(half).float()
    return ref


# -- VAE ---------------------------------------------------------------------------------------------------------------


def write_official_vae(vae: WanVAE, path: Path) -> Path:
    torch.save({k: v.float().contiguous() for k, v in vae.state_dict().items()}, path)
    return path


def write_comfy_vae(vae: WanVAE, path: Path, dtype: torch.dtype = torch.bfloat16) -> Path:
    save_file({k: v.to(dtype).contiguous() for k, v in vae.state_dict().items()}, str(path))
    return path


def to_diffusers_vae(vae: WanVAE):  # type: ignore[no-untyped-def]
    from diffusers import AutoencoderKLWan

    cfg = vae.config
    ref = AutoencoderKLWan(base_dim=cfg.dim, dim_mult=list(cfg.dim_mult), num_res_blocks=cfg.num_res_blocks,
                           temperal_downsample=list(cfg.temperal_downsample))  # fmt: skip
    ref.load_state_dict({vae_key_to_diffusers(k, cfg): v.float() for k, v in vae.state_dict().items()}, strict=True)
    return ref.eval()


def write_diffusers_vae(vae: WanVAE, root: Path) -> Path:
    """A Diffusers pipeline folder with vae/ written by ``AutoencoderKLWan.save_pretrained``."""
    to_diffusers_vae(vae).save_pretrained(str(root / "vae"), safe_serialization=True)
    (root / "model_index.json").write_text(json.dumps({"_class_name": "WanPipeline",
                                                       "vae": ["diffusers", "AutoencoderKLWan"]}))  # fmt: skip
    return root


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖ in float64."""
    a64, b64 = a.double(), b.double()
    return float((a64 - b64).norm() / b64.norm().clamp(min=1e-30))
