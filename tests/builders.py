"""Tiny random Wan checkpoints written in every published layout, for loader and parity tests.

Each writer takes a state dict in official naming and lays it out the way the real releases do
(``checkpoint-formats.md``): official folders, Diffusers folders (written by diffusers' own ``save_pretrained``, an
independent writer), ComfyUI single files with the ``model.diffusion_model.`` prefix, bf16 / fp16 / fp8 / scaled fp8.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file

from wan_cli.engine.layouts import dit_key_to_diffusers, vae_key_to_diffusers
from wan_cli.engine.transformer import WanDiTConfig, WanModel, build_transformer
from wan_cli.engine.vae import WanVAE, WanVAEConfig

COMFY_PREFIX = "model.diffusion_model."
# Comfy-Org's repack files carry the workflow that made them in their metadata (~9 KB of JSON).
COMFY_METADATA = {"prompt": json.dumps({"3": {"class_type": "KSampler", "inputs": {"seed": 0}}}), "workflow": "{}"}


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
    save_file(out, str(path), metadata=COMFY_METADATA)
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
    save_file({k: v.to(dtype).contiguous() for k, v in vae.state_dict().items()}, str(path), metadata=COMFY_METADATA)
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


# -- text and image encoders -----------------------------------------------------------------------------------------

CORPUS = [
    "a dog runs in the park", "a cat sleeps on the sofa", "the quick brown fox jumps over the lazy dog",
    "Bright tones, overexposed, static, blurred details, subtitles", "镜头晃动，色调艳丽，过曝，静态，细节模糊不清",
    "a red car drives through a rainy city at night", "waves crash on a rocky beach under a purple sky",
]  # fmt: skip


def tiny_spiece_model(folder: Path) -> Path:
    """A small SentencePiece unigram model with umt5-xxl's special ids (pad 0, eos 1, bos 2, unk 3,
    checkpoint-formats.md §4.4) and its nmt_nfkc normaliser, trained on a fixed corpus."""
    import sentencepiece as spm

    folder.mkdir(parents=True, exist_ok=True)
    corpus = folder / "corpus.txt"
    corpus.write_text("\n".join(CORPUS * 40))
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(folder / "spiece"), vocab_size=60, model_type="unigram", pad_id=0,
        eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="</s>", bos_piece="<s>", unk_piece="<unk>",
        character_coverage=1.0, hard_vocab_limit=False, minloglevel=2,
    )  # fmt: skip
    return folder / "spiece.model"


def tiny_umt5(seed: int = 0):  # type: ignore[no-untyped-def]
    """A random HF UMT5 encoder (2 layers, d_model 64, 4 heads, 32 buckets), fp32, eval."""
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    cfg = UMT5Config(vocab_size=64, d_model=64, d_kv=16, d_ff=96, num_heads=4, num_layers=2,
                     feed_forward_proj="gated-gelu", relative_attention_num_buckets=32,
                     relative_attention_max_distance=128, dropout_rate=0.0)  # fmt: skip
    model = UMT5EncoderModel(cfg).eval()
    with torch.no_grad():  # random norm gains, so a swapped norm shows
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.copy_(1 + 0.2 * torch.randn_like(p))
    return model


# HF UMT5 → official Wan-T5 names, written independently of the loader's table (which goes the other way).
def umt5_hf_to_official(key: str) -> str | None:
    import re

    if key == "shared.weight":
        return "token_embedding.weight"
    if key == "encoder.embed_tokens.weight":
        return None  # tied to shared
    if key == "encoder.final_layer_norm.weight":
        return "norm.weight"
    m = re.match(r"encoder\.block\.(\d+)\.layer\.(\d)\.(.+)$", key)
    assert m, key
    n, layer, rest = m.groups()
    table = {
        "layer_norm.weight": "norm1.weight" if layer == "0" else "norm2.weight",
        "SelfAttention.q.weight": "attn.q.weight", "SelfAttention.k.weight": "attn.k.weight",
        "SelfAttention.v.weight": "attn.v.weight", "SelfAttention.o.weight": "attn.o.weight",
        "SelfAttention.relative_attention_bias.weight": "pos_embedding.embedding.weight",
        "DenseReluDense.wi_0.weight": "ffn.gate.0.weight", "DenseReluDense.wi_1.weight": "ffn.fc1.weight",
        "DenseReluDense.wo.weight": "ffn.fc2.weight",
    }  # fmt: skip
    return f"blocks.{n}.{table[rest]}"


def tiny_clip(hidden: int = 160, layers: int = 3, seed: int = 0):  # type: ignore[no-untyped-def]
    """A random HF CLIP vision tower with ViT-H's head width 80 and 224-px/14 patches (257 tokens)."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(seed)
    cfg = CLIPVisionConfig(hidden_size=hidden, intermediate_size=64, num_attention_heads=hidden // 80,
                           num_hidden_layers=layers, image_size=224, patch_size=14, hidden_act="gelu",
                           layer_norm_eps=1e-5)  # fmt: skip
    return CLIPVisionModel(cfg).eval()


def clip_hf_state(model) -> dict[str, torch.Tensor]:  # type: ignore[no-untyped-def]
    """HF keys without any ``vision_model.`` prefix (transformers 4 has one, 5 not)."""
    return {k.removeprefix("vision_model."): v for k, v in model.state_dict().items() if "position_ids" not in k}


def clip_to_official(model) -> dict[str, torch.Tensor]:  # type: ignore[no-untyped-def]
    """The open-clip layout of Wan's .pth: visual.* with fused qkv, plus a text tower and log_scale to ignore."""
    import re

    out: dict[str, torch.Tensor] = {}
    sd = clip_hf_state(model)
    names = {"layer_norm1": "norm1", "layer_norm2": "norm2", "self_attn.out_proj": "attn.proj", "mlp.fc1": "mlp.0",
             "mlp.fc2": "mlp.2"}  # fmt: skip
    for k, v in sd.items():
        if k == "embeddings.class_embedding":
            out["visual.cls_embedding"] = v.reshape(1, 1, -1)
        elif k == "embeddings.position_embedding.weight":
            out["visual.pos_embedding"] = v.unsqueeze(0)
        elif k == "embeddings.patch_embedding.weight":
            out["visual.patch_embedding.weight"] = v
        elif k.startswith("pre_layrnorm."):
            out["visual.pre_norm." + k.split(".")[-1]] = v
        elif k.startswith("post_layernorm."):
            out["visual.post_norm." + k.split(".")[-1]] = v
        else:
            m = re.match(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$", k)
            assert m, k
            n, mod, kind = m.groups()
            if mod in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                if mod == "self_attn.q_proj":
                    qkv = [sd[f"encoder.layers.{n}.self_attn.{x}_proj.{kind}"] for x in "qkv"]
                    out[f"visual.transformer.{n}.attn.to_qkv.{kind}"] = torch.cat(qkv, 0)
            else:
                out[f"visual.transformer.{n}.{names[mod]}.{kind}"] = v
    hidden = sd["embeddings.class_embedding"].shape[0]
    out["visual.head"] = torch.randn(hidden, 1024)
    out["textual.token_embedding.weight"] = torch.randn(10, 8)
    out["log_scale"] = torch.tensor(4.6)
    return out


def write_comfy_t5(model, path: Path, spm: Path, precision: str = "fp16") -> Path:  # type: ignore[no-untyped-def]
    """A ComfyUI umt5_xxl file: HF names, fp16 or scaled fp8, the tokenizer embedded as a ``spiece_model`` tensor."""
    out: dict[str, torch.Tensor] = {}
    for k, v in model.state_dict().items():
        if k == "encoder.embed_tokens.weight":
            continue
        if precision == "fp8_scaled" and k.endswith(".weight") and "layer_norm" not in k and k != "shared.weight":
            q, scale = quantize_fp8(v, scaled=True)
            out[k], out[k.removesuffix(".weight") + ".scale_weight"] = q, scale  # type: ignore[assignment]
        else:
            out[k] = v.to(torch.float16).contiguous()
    if precision == "fp8_scaled":
        out["scaled_fp8"] = torch.zeros(0, dtype=torch.float8_e4m3fn)
    out["spiece_model"] = torch.frombuffer(bytearray(spm.read_bytes()), dtype=torch.uint8)
    save_file(out, str(path))
    return path


# -- whole models ------------------------------------------------------------------------------------------------------


def _tiny_parts(task: str, seed: int):  # type: ignore[no-untyped-def]
    """The tiny DiT (text_dim 64 = the tiny UMT5's width), VAE, UMT5 and, for image tasks, a 1280-wide CLIP."""
    dit = random_dit(tiny_dit_config(task), seed=seed)
    vae = random_vae(tiny_vae_config(), seed=seed)
    clip = tiny_clip(hidden=1280, layers=2, seed=seed) if task != "t2v" else None
    return dit, vae, tiny_umt5(seed), clip


def write_official_model(root: Path, task: str, seed: int = 0) -> Path:
    """An official Wan-AI folder: DiT safetensors + config.json, T5 and VAE .pth, google/umt5-xxl/, CLIP .pth."""
    from wan_cli.engine.conditioning import load_tokenizer

    dit, vae, t5, clip = _tiny_parts(task, seed)
    write_official_dit(dit, root)
    write_official_vae(vae, root / "Wan2.1_VAE.pth")
    official = {o: v for k, v in t5.state_dict().items() if (o := umt5_hf_to_official(k)) is not None}
    torch.save(official, root / "models_t5_umt5-xxl-enc-bf16.pth")
    spm = tiny_spiece_model(root.parent / f"{root.name}-spm")
    load_tokenizer(spm).save_pretrained(str(root / "google" / "umt5-xxl"))
    if clip is not None:
        torch.save(clip_to_official(clip), root / "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth")
    return root


def write_comfy_model(root: Path, task: str, seed: int = 0, precision: str = "bf16") -> dict[str, Path]:
    """ComfyUI split files, named as in the repack: diffusion model, umt5 (fp16, embedded tokenizer), VAE, CLIP."""
    dit, vae, t5, clip = _tiny_parts(task, seed)
    root.mkdir(parents=True, exist_ok=True)
    files = {
        "dit": write_comfy_dit(dit, root / f"wan2.1_{task}_tiny_{precision}.safetensors", precision),
        "vae": write_comfy_vae(vae, root / "wan_2.1_vae.safetensors"),
        "text_encoder": write_comfy_t5(t5, root / "umt5_xxl_fp16.safetensors", tiny_spiece_model(root / "spm")),
    }
    if clip is not None:
        files["image_encoder"] = write_clip_vision_h(clip, root / "clip_vision_h.safetensors")
    return files


def write_clip_vision_h(clip, path: Path) -> Path:  # type: ignore[no-untyped-def]
    """ComfyUI's clip_vision_h.safetensors (checkpoint-formats.md §4.5): HF CLIPVisionModelWithProjection names under
    `vision_model.`, fp16, the projection, and the int64 [1, 257] `position_ids` buffer older transformers saved."""
    state = {"vision_model." + k: v.half() for k, v in clip_hf_state(clip).items()}
    state["visual_projection.weight"] = torch.randn(
        1024, state["vision_model.embeddings.class_embedding"].shape[0]
    ).half()
    state["vision_model.embeddings.position_ids"] = torch.arange(257, dtype=torch.int64)[None]
    save_file(state, str(path))
    return path


def write_comfy_tree(
    models: Path, task: str, seed: int = 0, dit: str = "fp8", text: str = "fp8_scaled"
) -> dict[str, Path]:
    """A ComfyUI models/ tree with the I2V (or T2V) set every tutorial shows, under the published file names:
    diffusion_models/wan2.1_i2v_480p_14B_fp8_e4m3fn.safetensors, text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors,
    clip_vision/clip_vision_h.safetensors, vae/wan_2.1_vae.safetensors (tiny widths, real names and dtypes)."""
    dit_model, vae, t5, clip = _tiny_parts(task, seed)
    for d in ("diffusion_models", "text_encoders", "vae", "clip_vision", "loras"):
        (models / d).mkdir(parents=True, exist_ok=True)
    name = {"t2v": "wan2.1_t2v_1.3B", "i2v": "wan2.1_i2v_480p_14B", "flf2v": "wan2.1_flf2v_720p_14B"}[task]
    suffix = {"fp8": "fp8_e4m3fn", "fp8_scaled": "fp8_scaled"}.get(dit, dit)
    files = {
        "dit": write_comfy_dit(dit_model, models / "diffusion_models" / f"{name}_{suffix}.safetensors", dit),
        "vae": write_comfy_vae(vae, models / "vae" / "wan_2.1_vae.safetensors"),
        "text_encoder": write_comfy_t5(
            t5,
            models / "text_encoders" / f"umt5_xxl_{'fp8_e4m3fn_scaled' if text == 'fp8_scaled' else text}.safetensors",
            tiny_spiece_model(models.parent / "spm"),
            text,
        ),
    }
    if clip is not None:
        files["image_encoder"] = write_clip_vision_h(clip, models / "clip_vision" / "clip_vision_h.safetensors")
    return files


# -- whole pipelines ---------------------------------------------------------------------------------------------------


def write_diffusers_pipeline(root: Path, task: str, seed: int = 0) -> Path:
    """A complete tiny Diffusers pipeline folder, written by diffusers' own save_pretrained.

    DiT: 2 layers of width 256 with text_dim 64 (= the tiny UMT5's d_model); VAE of width 8; for i2v/flf2v a CLIP
    tower of the real width 1280 (the DiT's image projection takes 1280) with 2 blocks.
    """
    from diffusers import UniPCMultistepScheduler, WanImageToVideoPipeline, WanPipeline
    from transformers import CLIPImageProcessor

    from wan_cli.engine.conditioning import load_tokenizer

    dit = random_dit(tiny_dit_config(task), seed=seed)
    vae = random_vae(tiny_vae_config(), seed=seed)
    parts = {
        "transformer": to_diffusers_dit(dit),
        "vae": to_diffusers_vae(vae),
        "text_encoder": tiny_umt5(seed),
        "tokenizer": load_tokenizer(tiny_spiece_model(root.parent / f"{root.name}-spm")),
        "scheduler": UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0,
                                             solver_order=2, solver_type="bh2", predict_x0=True,
                                             lower_order_final=True, final_sigmas_type="zero"),
    }  # fmt: skip
    if task == "t2v":
        pipe = WanPipeline(**parts)
    else:
        clip = tiny_clip(hidden=1280, layers=2, seed=seed)
        processor = CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224},
                                       image_mean=[0.48145466, 0.4578275, 0.40821073],
                                       image_std=[0.26862954, 0.26130258, 0.27577711], resample=3)  # fmt: skip
        pipe = WanImageToVideoPipeline(**parts, image_encoder=clip, image_processor=processor)
    pipe.save_pretrained(str(root))
    return root


def init_random_(model: WanModel, *, seed: int = 0, dtype: torch.dtype = torch.float32) -> WanModel:
    """Fill a (meta or real) DiT with the official initialisation scheme on the CPU (tests and dev benchmarks).

    xavier-uniform Linears with zero bias, normal(0.02) text/time embeddings, modulation ~ randn/sqrt(D). Unlike the
    official init the head weight is random (not zero) so that the output depends on every block.
    """
    g = torch.Generator("cpu").manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    dim = model.config.dim
    for name, p in model.named_parameters():
        shape = tuple(p.shape)
        if name.endswith("modulation"):
            t = torch.randn(shape, generator=g) / dim**0.5
        elif name.endswith("bias"):
            t = torch.randn(shape, generator=g) * 0.02
        elif "norm" in name.rsplit(".", 2)[-2] or name.startswith("img_emb.proj.0") or ".proj.4." in name:
            t = 1.0 + 0.1 * torch.randn(shape, generator=g)  # norm gains near 1
        elif name.startswith(("text_embedding", "time_embedding")) or name == "img_emb.emb_pos":
            t = torch.randn(shape, generator=g) * 0.02
        else:
            fan_out, fan_in = shape[0], math.prod(shape[1:])
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            t = (torch.rand(shape, generator=g) * 2 - 1) * bound
        state[name] = t.to(torch.float32 if WanModel.keeps_fp32(name) else dtype)
    model.load_state_dict(state, strict=True, assign=True)
    return model
