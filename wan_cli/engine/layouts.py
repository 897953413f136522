"""The published layouts of Wan 2.1's weights: one rename table per foreign layout, detection, the strict key check.

Facts: ``checkpoint-formats.md`` (§3.6 DiT and §3.7 VAE → Diffusers, §5.1 Wan-T5 → HF UMT5, §5.2 Wan CLIP → HF CLIP,
§6 detection). Our modules carry the official names; every other layout is mapped onto them (DiT, VAE) or onto
transformers' names (UMT5, CLIP, which run as transformers models) by the tables here.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

import torch

from .errors import CheckpointError
from .tensors import Source, TensorSource
from .vae import WanVAEConfig

Kind = Literal["dit", "vae", "text_encoder", "clip", "unknown"]
# "diffusers" also names transformers' own naming of the encoders (Diffusers folders, ComfyUI's umt5/clip_vision files)
Layout = Literal["official", "diffusers", "comfyui", "open_clip", "gguf"]

# Prefixes some single files put before the official names (ComfyUI: model.diffusion_model.; bundles: vae.).
DIT_PREFIXES = ("model.diffusion_model.", "diffusion_model.")
VAE_PREFIXES = ("first_stage_model.", "vae.")
# Entries other tools save beside the weights that are not parameters of ours, skipped on purpose (everything else
# must match exactly): transformers' `position_ids` buffers (clip_vision_h.safetensors holds one), ComfyUI's
# scaled-fp8 marker and input scales (we dequantise the weights instead of scaling inputs), the `spiece_model`
# tokenizer bytes of ComfyUI's text encoders (read by the tokenizer, not the model), and Diffusers' `norm_added_q`.
IGNORED_KEYS = re.compile(r"(^|\.)(position_ids|scaled_fp8|scale_input|spiece_model|norm_added_q\.weight)$")
SCALE_SUFFIX = ".scale_weight"  # ComfyUI scaled fp8: W = W_fp8 · scale_weight

Component = Literal["dit", "vae", "text_encoder", "image_encoder"]
# Where each component lives in a folder: the Diffusers pipeline's sub-folder, then the file names a folder may hold
# (official names first; an index before the file it indexes).
COMPONENT_FILES: dict[Component, tuple[str, tuple[str, ...]]] = {
    "dit": ("transformer", ("diffusion_pytorch_model.safetensors.index.json", "diffusion_pytorch_model.safetensors")),
    "vae": ("vae", ("Wan2.1_VAE.pth", "wan_2.1_vae.safetensors", "diffusion_pytorch_model.safetensors.index.json",
                    "diffusion_pytorch_model.safetensors")),
    "text_encoder": ("text_encoder", ("models_t5_umt5-xxl-enc-bf16.pth", "model.safetensors.index.json",
                                      "model.safetensors")),
    "image_encoder": ("image_encoder", ("models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth",
                                        "model.safetensors.index.json", "model.safetensors",
                                        "clip_vision_h.safetensors")),
}  # fmt: skip


# --------------------------------------------------------------------------------------------------------------------
# DiT and VAE: official → Diffusers. Loading uses them backwards through the expected key set of the model.
# --------------------------------------------------------------------------------------------------------------------

# checkpoint-formats.md §3.6: substring replacements, applied in this order (the norm2/norm3 swap needs the order).
DIFFUSERS_DIT_RENAMES: tuple[tuple[str, str], ...] = (
    ("time_embedding.0", "condition_embedder.time_embedder.linear_1"),
    ("time_embedding.2", "condition_embedder.time_embedder.linear_2"),
    ("text_embedding.0", "condition_embedder.text_embedder.linear_1"),
    ("text_embedding.2", "condition_embedder.text_embedder.linear_2"),
    ("time_projection.1", "condition_embedder.time_proj"),
    ("head.modulation", "scale_shift_table"),
    ("head.head", "proj_out"),
    ("modulation", "scale_shift_table"),
    ("ffn.0", "ffn.net.0.proj"),
    ("ffn.2", "ffn.net.2"),
    ("norm2", "__norm_tmp__"),  # official norm2 (FFN) ↔ Diffusers norm3, official norm3 (cross-attn) ↔ norm2
    ("norm3", "norm2"),
    ("__norm_tmp__", "norm3"),
    ("img_emb.proj.0", "condition_embedder.image_embedder.norm1"),
    ("img_emb.proj.1", "condition_embedder.image_embedder.ff.net.0.proj"),
    ("img_emb.proj.3", "condition_embedder.image_embedder.ff.net.2"),
    ("img_emb.proj.4", "condition_embedder.image_embedder.norm2"),
    ("img_emb.emb_pos", "condition_embedder.image_embedder.pos_embed"),
    ("self_attn.q", "attn1.to_q"),
    ("self_attn.k", "attn1.to_k"),
    ("self_attn.v", "attn1.to_v"),
    ("self_attn.o", "attn1.to_out.0"),
    ("self_attn.norm_q", "attn1.norm_q"),
    ("self_attn.norm_k", "attn1.norm_k"),
    ("cross_attn.q", "attn2.to_q"),
    ("cross_attn.k", "attn2.to_k"),
    ("cross_attn.v", "attn2.to_v"),
    ("cross_attn.o", "attn2.to_out.0"),
    ("cross_attn.norm_q", "attn2.norm_q"),
    ("cross_attn.norm_k", "attn2.norm_k"),
    ("attn2.to_k_img", "attn2.add_k_proj"),
    ("attn2.to_v_img", "attn2.add_v_proj"),
    ("attn2.norm_k_img", "attn2.norm_added_k"),
)


def dit_key_to_diffusers(key: str) -> str:
    for old, new in DIFFUSERS_DIT_RENAMES:
        key = key.replace(old, new)
    return key


def _vae_decoder_index(m: re.Match[str], cfg: WanVAEConfig) -> str:
    # decoder.upsamples is flat: per stage (num_res_blocks + 1) residual blocks, then one Resample (not after the last)
    i, per_stage = int(m.group(1)), cfg.num_res_blocks + 2
    stage, j = divmod(i, per_stage)
    return f"decoder.up_blocks.{stage}." + (f"resnets.{j}." if j <= cfg.num_res_blocks else "upsamplers.0.")


# checkpoint-formats.md §3.7, as regex rules applied in order.
DIFFUSERS_VAE_RENAMES: tuple[tuple[str, str | Callable[[re.Match[str], WanVAEConfig], str]], ...] = (
    (r"^(encoder|decoder)\.conv1\.", r"\1.conv_in."),
    (r"^conv1\.", "quant_conv."),
    (r"^conv2\.", "post_quant_conv."),
    (r"^(encoder|decoder)\.middle\.0\.", r"\1.mid_block.resnets.0."),
    (r"^(encoder|decoder)\.middle\.1\.", r"\1.mid_block.attentions.0."),
    (r"^(encoder|decoder)\.middle\.2\.", r"\1.mid_block.resnets.1."),
    (r"^(encoder|decoder)\.head\.0\.", r"\1.norm_out."),
    (r"^(encoder|decoder)\.head\.2\.", r"\1.conv_out."),
    (r"^encoder\.downsamples\.(\d+)\.", r"encoder.down_blocks.\1."),
    (r"^decoder\.upsamples\.(\d+)\.", _vae_decoder_index),
    (r"\.residual\.0\.", ".norm1."),
    (r"\.residual\.2\.", ".conv1."),
    (r"\.residual\.3\.", ".norm2."),
    (r"\.residual\.6\.", ".conv2."),
    (r"\.shortcut\.", ".conv_shortcut."),
)


def vae_key_to_diffusers(key: str, cfg: WanVAEConfig) -> str:
    for pattern, repl in DIFFUSERS_VAE_RENAMES:
        if callable(repl):
            fn = repl
            key = re.sub(pattern, lambda m, fn=fn: fn(m, cfg), key)  # type: ignore[misc]
        else:
            key = re.sub(pattern, repl, key)
    return key


# --------------------------------------------------------------------------------------------------------------------
# Encoders: foreign layouts → transformers' names
# --------------------------------------------------------------------------------------------------------------------

# checkpoint-formats.md §5.1: official Wan-T5 names → HF UMT5 names.
T5_OFFICIAL_TO_HF: tuple[tuple[str, str], ...] = (
    (r"^token_embedding\.", "shared."),
    (r"^blocks\.(\d+)\.norm1\.", r"encoder.block.\1.layer.0.layer_norm."),
    (r"^blocks\.(\d+)\.attn\.([qkvo])\.", r"encoder.block.\1.layer.0.SelfAttention.\2."),
    (r"^blocks\.(\d+)\.pos_embedding\.embedding\.", r"encoder.block.\1.layer.0.SelfAttention.relative_attention_bias."),
    (r"^blocks\.(\d+)\.norm2\.", r"encoder.block.\1.layer.1.layer_norm."),
    (r"^blocks\.(\d+)\.ffn\.gate\.0\.", r"encoder.block.\1.layer.1.DenseReluDense.wi_0."),  # the GELU branch
    (r"^blocks\.(\d+)\.ffn\.fc1\.", r"encoder.block.\1.layer.1.DenseReluDense.wi_1."),
    (r"^blocks\.(\d+)\.ffn\.fc2\.", r"encoder.block.\1.layer.1.DenseReluDense.wo."),
    (r"^norm\.", "encoder.final_layer_norm."),
)

# checkpoint-formats.md §5.2: Wan's own open-clip names (the official .pth) → HF CLIPVisionModel names. The fused
# `to_qkv` is split into q/k/v (rows in that order); the class and position embeddings lose their leading 1s.
CLIP_OFFICIAL_TO_HF: tuple[tuple[str, str], ...] = (
    (r"^visual\.cls_embedding$", "embeddings.class_embedding"),
    (r"^visual\.pos_embedding$", "embeddings.position_embedding.weight"),
    (r"^visual\.patch_embedding\.", "embeddings.patch_embedding."),
    (r"^visual\.pre_norm\.", "pre_layrnorm."),
    (r"^visual\.post_norm\.", "post_layernorm."),
    (r"^visual\.transformer\.(\d+)\.norm1\.", r"encoder.layers.\1.layer_norm1."),
    (r"^visual\.transformer\.(\d+)\.norm2\.", r"encoder.layers.\1.layer_norm2."),
    (r"^visual\.transformer\.(\d+)\.attn\.to_qkv\.(weight|bias)$", r"encoder.layers.\1.self_attn.{qkv}_proj.\2"),
    (r"^visual\.transformer\.(\d+)\.attn\.proj\.", r"encoder.layers.\1.self_attn.out_proj."),
    (r"^visual\.transformer\.(\d+)\.mlp\.0\.", r"encoder.layers.\1.mlp.fc1."),
    (r"^visual\.transformer\.(\d+)\.mlp\.2\.", r"encoder.layers.\1.mlp.fc2."),
)
# The stock open_clip ViT-H/14 layout (laion's open_clip files; what ComfyUI converts): nn.MultiheadAttention's
# fused in_proj, CLIP-paper names for the norms and MLP.
CLIP_OPEN_CLIP_TO_HF: tuple[tuple[str, str], ...] = (
    (r"^visual\.class_embedding$", "embeddings.class_embedding"),
    (r"^visual\.positional_embedding$", "embeddings.position_embedding.weight"),
    (r"^visual\.conv1\.", "embeddings.patch_embedding."),
    (r"^visual\.ln_pre\.", "pre_layrnorm."),
    (r"^visual\.ln_post\.", "post_layernorm."),
    (r"^visual\.transformer\.resblocks\.(\d+)\.ln_1\.", r"encoder.layers.\1.layer_norm1."),
    (r"^visual\.transformer\.resblocks\.(\d+)\.ln_2\.", r"encoder.layers.\1.layer_norm2."),
    (r"^visual\.transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)$",
     r"encoder.layers.\1.self_attn.{qkv}_proj.\2"),
    (r"^visual\.transformer\.resblocks\.(\d+)\.attn\.out_proj\.", r"encoder.layers.\1.self_attn.out_proj."),
    (r"^visual\.transformer\.resblocks\.(\d+)\.mlp\.c_fc\.", r"encoder.layers.\1.mlp.fc1."),
    (r"^visual\.transformer\.resblocks\.(\d+)\.mlp\.c_proj\.", r"encoder.layers.\1.mlp.fc2."),
)  # fmt: skip
# What a CLIP file holds besides the vision tower (text towers, projections, logit scales): never used by Wan.
CLIP_IGNORED = re.compile(
    r"^(textual\.|text_model\.|token_embedding\.|transformer\.resblocks\.|ln_final\.|positional_embedding$|"
    r"text_projection|logit_scale$|log_scale$|visual\.head$|visual\.proj$|visual_projection\.)"
)
CLIP_HF_PREFIX = "vision_model."  # transformers 4.x CLIPVisionModel (and ComfyUI files) put the tower under this name


def rename_first(key: str, table: tuple[tuple[str, str], ...]) -> str | None:
    """The key renamed by the first rule that matches it, or None."""
    for pattern, repl in table:
        new, n = re.subn(pattern, repl, key)
        if n:
            return new
    return None


def t5_official_to_hf(key: str) -> str:
    return rename_first(key, T5_OFFICIAL_TO_HF) or key


def clip_to_hf(src: Source, layout: Layout | None) -> Source:
    """The vision tower of a CLIP file under HF ``CLIPVisionModel`` names, without the ``vision_model.`` prefix
    (tensors are views of the file's: nothing is copied). Unknown names pass through for the strict check to report."""
    table = {"official": CLIP_OFFICIAL_TO_HF, "open_clip": CLIP_OPEN_CLIP_TO_HF}.get(layout or "")
    out: dict[str, torch.Tensor] = {}
    for key in src:
        if CLIP_IGNORED.search(key) or IGNORED_KEYS.search(key):
            continue
        new = (rename_first(key, table) if table else None) or key.removeprefix(CLIP_HF_PREFIX)
        t = src.get(key)
        if "{qkv}" in new:
            for part, chunk in zip("qkv", t.chunk(3, dim=0), strict=True):
                out[new.replace("{qkv}", part)] = chunk
        elif new == "embeddings.class_embedding":
            out[new] = t.reshape(-1)  # official: [1, 1, C]
        elif new == "embeddings.position_embedding.weight":
            out[new] = t.reshape(t.shape[-2], t.shape[-1])  # official: [1, 257, C]
        else:
            out[new] = t
    return TensorSource.of(out, src)


# --------------------------------------------------------------------------------------------------------------------
# Recognising what a set of keys is
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Detected:
    kind: Kind
    layout: Layout | None
    prefix: str = ""  # stripped from every key before the official names apply


def detect_kind(keys: Iterable[str]) -> Detected:
    """What the keys hold (dit / vae / text_encoder / clip), in which layout, behind which key prefix."""
    ks = set(keys)
    for p in ("", *DIT_PREFIXES):
        if f"{p}head.modulation" in ks:
            return Detected("dit", "comfyui" if p else "official", p)
    if {"scale_shift_table", "proj_out.weight"} <= ks:
        return Detected("dit", "diffusers")
    for p in ("", *VAE_PREFIXES):
        if f"{p}decoder.middle.0.residual.0.gamma" in ks:
            return Detected("vae", "comfyui" if p else "official", p)
    if "decoder.mid_block.resnets.0.norm1.gamma" in ks:
        return Detected("vae", "diffusers")
    # CLIP before T5: an open_clip file's text tower also has a `token_embedding.weight`
    if any(k.startswith("visual.transformer.resblocks.") for k in ks):
        return Detected("clip", "open_clip")
    if any(k.startswith("visual.transformer.") for k in ks):
        return Detected("clip", "official")
    if f"{CLIP_HF_PREFIX}embeddings.class_embedding" in ks or "embeddings.class_embedding" in ks:
        return Detected("clip", "diffusers")  # HF naming (transformers 4.x and ComfyUI: vision_model. prefix)
    if "token_embedding.weight" in ks and any(k.startswith("blocks.") for k in ks):
        return Detected("text_encoder", "official")
    if "shared.weight" in ks or any(k.startswith("encoder.block.") for k in ks):
        return Detected("text_encoder", "diffusers")
    return Detected("unknown", None)


KIND_WORDS = {"dit": "a Wan DiT (diffusion model)", "vae": "a Wan VAE", "text_encoder": "a UMT5 text encoder",
              "clip": "a CLIP image encoder", "unknown": "no Wan weights we recognise"}  # fmt: skip


def wrong_kind(src: Source, want: Kind, got: Kind) -> CheckpointError:
    vace = any("vace_" in k for k in src)
    what = "a Wan VACE model, which wan does not support yet" if vace else KIND_WORDS[got]
    return CheckpointError(f"{src.name} holds {what}, not {KIND_WORDS[want]}",
                           hint="check which file you passed; `wan inspect PATH` tells what a file holds")  # fmt: skip


def check_keys(
    src: Source,
    expected: dict[str, tuple[int, ...]],
    to_file: dict[str, str],
    what: str,
    ignore: re.Pattern[str] | None = None,
) -> None:
    """Strict key and shape check; the error names the file and the first offending keys.

    ``to_file`` maps each expected (model) key to its name in the file. File keys matching ``IGNORED_KEYS`` or the
    component's own ``ignore`` pattern are skipped; every other file key must be used.
    """
    file_keys = {
        k
        for k in src
        if not IGNORED_KEYS.search(k) and not k.endswith(SCALE_SUFFIX) and not (ignore and ignore.search(k))
    }
    wanted = set(to_file.values())
    missing = sorted(o for o, f in to_file.items() if f not in file_keys)
    unexpected = sorted(file_keys - wanted)
    misshaped = sorted(
        f"{f} {list(src.shape(f))} (expected {list(expected[o])})"
        for o, f in to_file.items()
        if f in file_keys and tuple(src.shape(f)) != expected[o]
    )
    if not (missing or unexpected or misshaped):
        for f in to_file.values():  # headers only: a weight that is not a number type is refused before any read
            dt = src.dtype(f)
            if not dt.is_floating_point:  # (fp8 counts as floating point)
                raise CheckpointError(f"tensor {f!r} of {src.name} is stored as {str(dt).removeprefix('torch.')}: "
                                      f"a {what} weight must be floating point",
                                      hint="the file is damaged or not weights (`wan inspect PATH`)")  # fmt: skip
        return
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
        if items:
            more = f" (+{len(items) - 3} more)" if len(items) > 3 else ""
            parts.append(f"{len(items)} {label}: {', '.join(items[:3])}{more}")
    if missing:
        hint = "the file is incomplete or holds another model: check which file you passed, or download it again"
    elif misshaped:
        hint = "the file is another size of model, or its config.json does not belong to it"
    else:  # every tensor we need is there: the file is complete, it just holds more
        hint = (f"the file holds tensors a Wan 2.1 {what} does not have: it is a variant wan does not support; "
                "`wan inspect PATH` tells what it holds")  # fmt: skip
    raise CheckpointError(f"{src.name} does not match the {what} it looks like: " + "; ".join(parts), hint=hint)
