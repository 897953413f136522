"""Reading Wan 2.1 weights in every published layout: official, Diffusers and ComfyUI (incl. fp8 and scaled fp8).

Facts: ``checkpoint-formats.md``. One recipe for every layout: open the file(s) lazily, recognise what they hold
from key names and shapes, map foreign names onto the official ones (one rename table per layout), check the key
set and every shape against a model built on the meta device, then read tensor by tensor (dequantising fp8 and
casting to the storage dtype on the way) and ``load_state_dict(strict=True, assign=True)``: ``loading.load_strict``,
the recipe the text and image encoders share. Nothing is loaded non-strictly; the only keys skipped are the named
allow-list in ``IGNORED_KEYS``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError
from .gguf import GGUFSource
from .layers import Linear
from .layouts import (
    COMPONENT_FILES,
    SCALE_SUFFIX,
    Layout,
    detect_kind,
    dit_key_to_diffusers,
    vae_key_to_diffusers,
    wrong_kind,
)
from .loading import load_strict, materialise
from .ops import FP8, quantize_fp8
from .prepare import FP8_KEYS, store_fp8_weights
from .quant import QuantizedTensor
from .tensors import Source, open_source, resolve_files
from .transformer import DIT_CONFIGS, ModelType, WanDiTConfig, WanModel, a_model, build_transformer
from .vae import WanVAE, WanVAEConfig, build_vae

_RELEASED_HEADS = {cfg.dim: cfg.num_heads for cfg in DIT_CONFIGS.values()}  # 1536 → 12, 5120 → 40 (head width 128)


def infer_dit_config(shape: Callable[[str], tuple[int, ...] | None]) -> WanDiTConfig:
    """Hyper-parameters from tensor shapes (official names). Head width 128, as in every released model.

    Raises ValueError naming the first tensor it needed and did not find.
    """

    def need(key: str) -> tuple[int, ...]:
        s = shape(key)
        if s is None:
            raise ValueError(f"no {key}")
        return s

    dim, in_dim, *patch = need("patch_embedding.weight")
    layers = 0
    while shape(f"blocks.{layers}.modulation") is not None:
        layers += 1
    ffn, text, freq, head = (need(k) for k in ("blocks.0.ffn.0.weight", "text_embedding.0.weight",
                                                "time_embedding.0.weight", "head.head.weight"))  # fmt: skip
    model_type = "flf2v" if shape("img_emb.emb_pos") else ("i2v" if shape("img_emb.proj.0.bias") else "t2v")
    return WanDiTConfig(
        model_type=model_type,  # type: ignore[arg-type]
        dim=dim, ffn_dim=ffn[0], num_heads=max(1, dim // 128), num_layers=layers, in_dim=in_dim,
        out_dim=head[0] // math.prod(patch), freq_dim=freq[1], text_dim=text[1],
        patch_size=tuple(patch),  # type: ignore[arg-type]
        qk_norm=shape("blocks.0.self_attn.norm_q.weight") is not None,
        cross_attn_norm=shape("blocks.0.norm3.weight") is not None,
    )  # fmt: skip


def infer_vae_config(shape: Callable[[str], tuple[int, ...] | None]) -> WanVAEConfig:
    """VAE hyper-parameters from the encoder's tensor shapes (official names)."""
    conv = shape("encoder.conv1.weight")
    if conv is None:
        raise ValueError("no encoder.conv1.weight")
    dim = conv[0]
    stages: list[int] = []  # output width of each stage
    temporal: list[bool] = []
    blocks_per_stage: list[int] = []
    i, n = 0, 0
    while True:
        res = shape(f"encoder.downsamples.{i}.residual.2.weight")
        if res is not None:
            n += 1
        elif shape(f"encoder.downsamples.{i}.resample.1.weight") is not None:
            temporal.append(shape(f"encoder.downsamples.{i}.time_conv.weight") is not None)
        else:
            break
        if res is not None and (shape(f"encoder.downsamples.{i + 1}.residual.2.weight") is None):
            stages.append(res[0])
            blocks_per_stage.append(n)
            n = 0
        i += 1
    if not stages or len(set(blocks_per_stage)) != 1 or any(c % dim for c in stages):
        raise ValueError("the encoder has an unexpected structure")
    return WanVAEConfig(dim=dim, dim_mult=tuple(c // dim for c in stages), num_res_blocks=blocks_per_stage[0],
                        temperal_downsample=tuple(temporal))  # fmt: skip


# --------------------------------------------------------------------------------------------------------------------
# Inspecting and loading
# --------------------------------------------------------------------------------------------------------------------


def dit_variant_name(cfg: WanDiTConfig) -> str:
    for name, ref in DIT_CONFIGS.items():
        if ref == cfg:
            return name
    return "custom"


def _dit_config_from_json(raw: dict[str, Any], inferred: WanDiTConfig | None, where: str) -> WanDiTConfig | None:
    cls = raw.get("_class_name")
    try:
        if cls == "WanTransformer3DModel":
            model_type = "t2v" if raw.get("image_dim") is None else ("flf2v" if raw.get("pos_embed_seq_len") else "i2v")
            return WanDiTConfig(
                model_type=model_type,  # type: ignore[arg-type]
                dim=raw["num_attention_heads"] * raw["attention_head_dim"], ffn_dim=raw["ffn_dim"],
                num_heads=raw["num_attention_heads"], num_layers=raw["num_layers"], in_dim=raw["in_channels"],
                out_dim=raw["out_channels"], freq_dim=raw.get("freq_dim", 256), text_dim=raw.get("text_dim", 4096),
                patch_size=tuple(raw.get("patch_size", (1, 2, 2))),
                qk_norm=raw.get("qk_norm") is not None, cross_attn_norm=raw.get("cross_attn_norm", True),
                eps=raw.get("eps", 1e-6),
            )  # fmt: skip
        if "dim" in raw and "num_heads" in raw and inferred is not None:
            # official config.json: the keys it leaves out (text_dim, patch_size, ...) come from the shapes
            return WanDiTConfig.from_dict({**inferred.to_dict(), **raw})
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"the config.json of {where} is not a valid DiT config ({exc})",
                              hint="download config.json again") from exc  # fmt: skip
    return None


class DiTPlan:
    """Everything known about a DiT checkpoint before its data is read."""

    def __init__(self, path: str | Path, source: Source | None = None) -> None:
        files, raw_cfg = resolve_files(path, *COMPONENT_FILES["dit"])
        self.src = source or open_source(files)
        found = detect_kind(self.src.keys())
        if found.kind != "dit" or any("vace_" in k for k in self.src):
            raise wrong_kind(self.src, "dit", found.kind)
        assert found.layout is not None
        self.layout: Layout = found.layout
        self.prefix = found.prefix
        rename = dit_key_to_diffusers if found.layout == "diffusers" else (lambda k: k)

        def shape(official: str) -> tuple[int, ...] | None:
            k = self.prefix + rename(official)
            return self.src.shape(k) if k in self.src else None

        try:
            inferred = infer_dit_config(shape)
        except ValueError as exc:
            inferred = None
            shape_problem = str(exc)
        from_json = _dit_config_from_json(raw_cfg, inferred, self.src.name) if raw_cfg else None
        config = from_json or inferred
        if config is None:
            raise CheckpointError(f"{self.src.name} is an incomplete Wan DiT ({shape_problem})",
                                  hint="the file is damaged or only part of a model; download it again")  # fmt: skip
        if from_json is None and found.layout == "diffusers" and config.dim not in _RELEASED_HEADS:
            # No shape holds the head count (the q/k norms span all heads). The official and ComfyUI layouts only
            # carry the released models, with heads of 128 as ComfyUI assumes; a Diffusers file may be anything.
            raise CheckpointError(
                f"{self.src.name} is a Diffusers-layout DiT of width {config.dim} without its config.json: its number "
                "of attention heads cannot be read from the weights",
                hint="pass the folder that holds the file and its config.json (the transformer/ folder)",
            )
        self.config: WanDiTConfig = config
        self.rename = rename


def load_transformer(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    model_type: ModelType | None = None,
    fp8: bool = False,
) -> WanModel:
    """Load the Wan DiT from a file, an official folder, a Diffusers model folder or a Diffusers pipeline folder.

    ``dtype`` is the compute dtype: matmul weights are stored in it; the time embedding, modulation, norms and head
    stay fp32 (official precision rules). fp8 and scaled-fp8 weights are dequantised to it. With ``model_type``,
    a checkpoint of another type (say an i2v model for t2v) is refused before any data is read.

    ``fp8``: the blocks' matmul weights (``FP8_KEYS``) are stored as scaled float8_e4m3fn instead (``--dtype fp8``):
    an e4m3fn file's values are kept as they are (with its ``scale_weight``, or 1), anything else is quantised
    per tensor while loading, one tensor at a time.
    """
    plan = DiTPlan(path)
    if model_type is not None and plan.config.model_type != model_type:
        raise CheckpointError(
            f"{plan.src.name} is {a_model(plan.config.model_type)} ({dit_variant_name(plan.config)}), "
            f"not {a_model(model_type)}",
            hint=f"pass a {model_type} checkpoint (`wan inspect PATH` tells what a file holds)",
        )
    model = build_transformer(plan.config)
    src, dev = plan.src, torch.device(device)
    _check_gguf_types(src)
    blocks: dict[str, QuantizedTensor] = {}  # GGUF block matmul weights, kept quantised
    scales: dict[str, torch.Tensor] = {}  # fp8 storage: each weight's fp32 scale

    def read(k: str, f: str) -> torch.Tensor | None:
        """The blocks' matmul weights (``FP8_KEYS``) when not read plainly. A GGUF's quantised ones are kept as
        stored: each layer dequantises its own per call, so a Q4 14B DiT holds ~9 GB, not 28 (other quantised
        tensors, embeddings if a file quantises them, are dequantised at load). With ``fp8``: scaled float8."""
        if not FP8_KEYS.match(k):
            return None
        if isinstance(src, GGUFSource) and (qt := src.quantized(f)) is not None:
            blocks[k] = qt.to(dev)
            return torch.empty(src.shape(f), dtype=dtype, device="meta")  # a placeholder: the layer takes qt below
        if fp8:
            t, scales[k] = _fp8_weight(src, f, dev)
            return t
        return None

    to_file = {k: plan.prefix + plan.rename(k) for k in model.state_dict()}
    load_strict(model, src, to_file, f"{plan.config.model_type} DiT", device=dev, read=read,
                dtype=lambda k: torch.float32 if WanModel.keeps_fp32(k) else dtype)  # fmt: skip
    store_fp8_weights(model, scales, dtype)
    for k, qt in blocks.items():
        layer = model.get_submodule(k.removesuffix(".weight"))
        assert isinstance(layer, Linear)
        layer.store_quantized(qt, dtype)
    return model.eval().requires_grad_(False)


def _check_gguf_types(src: Source) -> None:
    """Refuse a GGUF that stores tensors in types wan cannot read (headers only; other formats pass)."""
    bad = src.unsupported() if isinstance(src, GGUFSource) else {}
    if bad:
        key, qtype = next(iter(bad.items()))
        raise CheckpointError(f"{src.name} stores {len(bad)} tensors as types wan cannot read ({key}: {qtype})",
                              hint="use a file in Q8_0, Q6_K, Q5_K, Q5_0/1, Q4_K, Q4_0/1, Q3_K or Q2_K")  # fmt: skip


def _fp8_weight(src: Source, file_key: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(float8_e4m3fn values, fp32 scale) for one weight: an e4m3fn file's own, or quantised from the file's."""
    raw = src.get(file_key)
    scale_key = file_key.removesuffix(".weight") + SCALE_SUFFIX
    if raw.dtype == FP8:
        scale = src.get(scale_key).float() if scale_key in src else torch.tensor(1.0)
        return raw.to(device), scale.reshape(()).to(device)
    q, scale = quantize_fp8(materialise(src, file_key, torch.float32, "cpu"))
    return q.to(device), scale.to(device)


def gguf_dit_bytes(path: str | Path, bytes_per_weight: int) -> int | None:
    """Bytes a GGUF DiT holds once loaded, from its headers: the quantised block weights as stored, the fp32
    parameters at 4 bytes, the rest at ``bytes_per_weight``. None for other formats (see ``dit_weight_bytes``)."""
    src = DiTPlan(path).src
    if not isinstance(src, GGUFSource):
        return None
    total = 0
    for k in src:
        qt = src.quantized(k) if FP8_KEYS.match(k) else None
        size = 4 if WanModel.keeps_fp32(k) else bytes_per_weight
        total += qt.nbytes if qt is not None else math.prod(src.shape(k)) * size
    return total


def peek_transformer_config(path: str | Path) -> WanDiTConfig:
    """The DiT's configuration from its headers (and config.json): nothing heavy is read."""
    return DiTPlan(path).config


class VAEPlan:
    def __init__(self, path: str | Path, source: Source | None = None) -> None:
        files, raw_cfg = resolve_files(path, *COMPONENT_FILES["vae"])
        self.src = source or open_source(files)
        found = detect_kind(self.src.keys())
        if found.kind != "vae":
            raise wrong_kind(self.src, "vae", found.kind)
        assert found.layout is not None
        self.layout: Layout = found.layout
        self.prefix = found.prefix
        if found.layout == "diffusers":
            raw = raw_cfg or {}
            try:
                self.config = WanVAEConfig(
                    dim=raw.get("base_dim", 96), dim_mult=tuple(raw.get("dim_mult", (1, 2, 4, 4))),
                    num_res_blocks=raw.get("num_res_blocks", 2),
                    temperal_downsample=tuple(raw.get("temperal_downsample", (False, True, True))),
                )  # fmt: skip
            except (TypeError, ValueError) as exc:
                raise CheckpointError(f"the VAE config.json is not a Wan 2.1 VAE config: {exc}") from exc
            self.rename: Callable[[str], str] = lambda k: vae_key_to_diffusers(k, self.config)
        else:
            try:
                self.config = infer_vae_config(lambda k: self.src.shape(self.prefix + k) if self.prefix + k in self.src
                                               else None)  # fmt: skip
            except ValueError as exc:
                raise CheckpointError(
                    f"{self.src.name} is not a complete Wan 2.1 VAE ({exc})",
                    hint="the file is damaged or a different VAE (Wan 2.2's is not supported)",
                ) from exc
            self.rename = lambda k: k


def load_vae(path: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> WanVAE:
    """Load the Wan 2.1 VAE from ``Wan2.1_VAE.pth``, a ComfyUI ``.safetensors``, or a Diffusers ``vae/`` folder.

    Runs in fp32 by default, as the official code does.
    """
    plan = VAEPlan(path)
    vae = build_vae(plan.config)
    to_file = {k: plan.prefix + plan.rename(k) for k in vae.state_dict()}
    load_strict(vae, plan.src, to_file, "Wan VAE", device=device, dtype=dtype)  # the latent statistics move too
    return vae.eval().requires_grad_(False)
