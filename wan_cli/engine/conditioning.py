"""Text and image conditioning: the UMT5-XXL encoder and the CLIP ViT-H/14 vision tower, run by ``transformers``.

Facts: ``wan21-architecture.md`` §3.4 (CLIP), §5 (T5); ``checkpoint-formats.md`` §5 (key maps). The models are
transformers' own classes (``UMT5EncoderModel``, ``CLIPVisionModel``) built on the meta device and filled by the same
strict loader as the DiT, from any layout:

- text encoder: official ``models_t5_umt5-xxl-enc-bf16.pth`` (+ ``google/umt5-xxl/`` tokenizer), Diffusers
  ``text_encoder/`` (+ ``tokenizer/``), ComfyUI ``umt5_xxl_fp16`` / ``umt5_xxl_fp8_e4m3fn_scaled`` (tokenizer from
  the embedded ``spiece_model`` tensor when no folder is given);
- image encoder: official open-clip ``.pth`` (visual tower; fused qkv split), Diffusers ``image_encoder/``, ComfyUI
  ``clip_vision_h.safetensors``.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .errors import CheckpointError, InputError
from .gguf import GGUFSource
from .layouts import CLIP_HF_PREFIX, COMPONENT_FILES, clip_to_hf, detect_kind, t5_official_to_hf, wrong_kind
from .loading import check_model, load_strict
from .tensors import Source, TensorSource, open_source, resolve_files
from .tokenizer import TOKENIZER_HINT, load_tokenizer, tokenizer_beside, tokenizer_from_gguf, tokenizer_from_spiece

TEXT_LEN = 512
CLIP_SIZE = 224
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def clean_prompt(text: str) -> str:
    """The official cleaning: ftfy, HTML-unescape twice, collapse whitespace."""
    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return re.sub(r"\s+", " ", text).strip()


# --------------------------------------------------------------------------------------------------------------------
# UMT5 text encoder
# --------------------------------------------------------------------------------------------------------------------

_T5_TIED = {"encoder.embed_tokens.weight": "shared.weight"}  # the input embedding is the shared table
_T5_IGNORED = re.compile(r"^encoder\.embed_tokens\.weight$")  # a file's copy of that alias


def _umt5_config_from_shapes(src: Source) -> Any:
    from transformers import UMT5Config

    vocab, d_model = src.shape("shared.weight")
    layers = 0
    while f"encoder.block.{layers}.layer.0.SelfAttention.q.weight" in src:
        layers += 1
    buckets, heads = src.shape("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight")
    return UMT5Config(
        vocab_size=vocab, d_model=d_model, d_kv=src.shape("encoder.block.0.layer.0.SelfAttention.q.weight")[0] // heads,
        d_ff=src.shape("encoder.block.0.layer.1.DenseReluDense.wi_0.weight")[0], num_heads=heads, num_layers=layers,
        relative_attention_num_buckets=buckets, relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
        layer_norm_epsilon=1e-6, dropout_rate=0.0, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )  # fmt: skip


class TextEncoder:
    """UMT5 encoder + tokenizer. ``encode`` returns one [L_i, d_model] tensor per prompt, trimmed to its tokens."""

    def __init__(self, model: Any, tokenizer: Any, text_len: int = TEXT_LEN) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.text_len = text_len
        self._run_on: torch.device | None = None

    @property
    def device(self) -> torch.device:
        """Where the encoder runs (its blocks may live elsewhere and be streamed there)."""
        return self._run_on or next(self.model.parameters()).device

    def to(self, device: str | torch.device) -> TextEncoder:
        self.model.to(device)
        return self

    def run_on(self, device: str | torch.device) -> None:
        """Run on ``device`` with the token embedding table left wherever it is (the CPU when blocks are streamed):
        the lookup happens there and only the looked-up rows [B, 512, 4096] travel."""
        self._run_on = torch.device(device)

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> list[torch.Tensor]:
        texts = [clean_prompt(p) for p in prompts]
        tok = self.tokenizer(texts, padding="max_length", truncation=True, max_length=self.text_len,
                             add_special_tokens=True, return_attention_mask=True, return_tensors="pt")  # fmt: skip
        ids, mask = tok["input_ids"], tok["attention_mask"]
        hidden = self.hidden_states(ids, mask)
        return [h[:n] for h, n in zip(hidden, mask.sum(dim=1).tolist(), strict=True)]

    @torch.no_grad()
    def hidden_states(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Token ids and mask [B, L] → [B, L, d_model]: the lookup where the embedding table lives, the rest on
        ``device``."""
        table = self.model.get_input_embeddings()
        embeds = table(ids.to(table.weight.device)).to(self.device)
        return self.model(inputs_embeds=embeds, attention_mask=mask.to(self.device)).last_hidden_state


def _tokenizer_for(files: list[Path], src: Source) -> Any:
    """The tokenizer the layout puts beside the encoder, else the one embedded in the file (ComfyUI)."""
    beside = tokenizer_beside(files[0])
    if beside is not None:
        return load_tokenizer(beside)
    if "spiece_model" in src:
        return tokenizer_from_spiece(src.get("spiece_model").to(torch.uint8).numpy().tobytes())
    vocab = src.vocab() if isinstance(src, GGUFSource) else None  # a UMT5 GGUF carries its vocabulary as metadata
    if vocab is not None:
        return tokenizer_from_gguf(vocab)
    raise CheckpointError(f"no tokenizer found for {files[0]}", hint=TOKENIZER_HINT)


def load_text_encoder(
    path: str | Path,
    *,
    tokenizer: str | Path | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.bfloat16,
) -> TextEncoder:
    """Load the UMT5 encoder (bf16 by default, as the official code runs it) and its tokenizer."""
    from transformers import UMT5Config, UMT5EncoderModel

    p = Path(path).expanduser()
    files, raw_cfg = resolve_files(p, *COMPONENT_FILES["text_encoder"])
    src = open_source(files)
    found = detect_kind(src)
    if found.kind != "text_encoder":
        raise wrong_kind(src, "text_encoder", found.kind)
    if found.layout == "official":
        src = TensorSource.of({t5_official_to_hf(k): src.get(k) for k in src}, src)
    if "shared.weight" not in src and "encoder.embed_tokens.weight" in src:
        src = TensorSource.of({("shared.weight" if k == "encoder.embed_tokens.weight" else k): src.get(k) for k in src},
                              src)  # fmt: skip
    try:
        config = UMT5Config.from_dict(raw_cfg) if raw_cfg and "d_model" in raw_cfg else _umt5_config_from_shapes(src)
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{src.name} is not a complete UMT5 encoder ({exc})", hint="download it again") from exc
    with torch.device("meta"):
        model = UMT5EncoderModel(config)
    to_file = {k: k for k in model.state_dict() if k not in _T5_TIED}
    # Fail early: a bad file before the tokenizer is looked for, a missing tokenizer before any tensor is read
    # (load_strict checks the keys again: headers only).
    check_model(model, src, to_file, "UMT5 text encoder", ignore=_T5_IGNORED)
    tok = load_tokenizer(tokenizer) if tokenizer is not None else _tokenizer_for(files, src)
    load_strict(model, src, to_file, "UMT5 text encoder", device=device, dtype=dtype, ignore=_T5_IGNORED, tied=_T5_TIED)
    return TextEncoder(model.eval().requires_grad_(False), tok)


# --------------------------------------------------------------------------------------------------------------------
# CLIP vision tower
# --------------------------------------------------------------------------------------------------------------------


def _clip_config_from_shapes(src: Source) -> Any:
    from transformers import CLIPVisionConfig

    hidden = src.shape("embeddings.class_embedding")[0]
    layers = 0
    while f"encoder.layers.{layers}.layer_norm1.weight" in src:
        layers += 1
    patch = src.shape("embeddings.patch_embedding.weight")[-1]
    positions = src.shape("embeddings.position_embedding.weight")[0]
    return CLIPVisionConfig(
        hidden_size=hidden, intermediate_size=src.shape("encoder.layers.0.mlp.fc1.weight")[0],
        num_attention_heads=max(1, hidden // 80), num_hidden_layers=layers, patch_size=patch,
        image_size=round((positions - 1) ** 0.5) * patch, hidden_act="gelu", layer_norm_eps=1e-5,
    )  # fmt: skip


class ImageEncoder:
    """CLIP ViT-H/14 truncated after block 31 of 32: ``encode`` → [N, 257, 1280] (the penultimate hidden states)."""

    def __init__(self, model: Any) -> None:
        self.model = model

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def to(self, device: str | torch.device) -> ImageEncoder:
        self.model.to(device)
        return self

    @torch.no_grad()
    def encode(self, images: Sequence[torch.Tensor]) -> torch.Tensor:
        """images, each [3, H_i, W_i] in [-1, 1] (sizes may differ: FLF2V's two frames) → [N, 257, 1280] float32."""
        pixels = torch.cat([preprocess_clip(im[None].to(self.device)) for im in images])  # each squashed to 224²
        return self.model(pixel_values=pixels.to(self.dtype)).last_hidden_state.float()


def preprocess_clip(images: torch.Tensor) -> torch.Tensor:
    """Official rule: the whole [-1, 1] image resized bicubically straight to 224×224 (no crop, no antialias, no
    clamp), mapped to [0, 1], normalised with the CLIP mean/std; fp32. (HF's image processor would centre-crop.)
    Each image is resized on its own, as the official encoder does with its list of inputs."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise InputError(f"images must be [N, 3, H, W], got {tuple(images.shape)}")
    x = F.interpolate(images.float(), size=(CLIP_SIZE, CLIP_SIZE), mode="bicubic", align_corners=False)
    x = x * 0.5 + 0.5
    mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def load_image_encoder(
    path: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float16
) -> ImageEncoder:
    """Load the CLIP vision tower (fp16 by default, as the official code runs it), without its unused last block."""
    files, raw_cfg = resolve_files(path, *COMPONENT_FILES["image_encoder"])
    src, model, to_file = plan_image_encoder(open_source(files), raw_cfg)  # checked there, again here (headers)
    ignore = _unused_block(model.config.num_hidden_layers)
    load_strict(model, src, to_file, "CLIP vision tower", device=device, dtype=dtype, ignore=ignore)
    return ImageEncoder(model.eval().requires_grad_(False))


def _unused_block(blocks: int) -> re.Pattern[str]:
    """A file's keys of the block after the ``blocks`` the model keeps (CLIP's last: Wan never runs it)."""
    return re.compile(rf"^encoder\.layers\.{blocks}\.")


def plan_image_encoder(src: Source, raw_cfg: dict[str, Any] | None) -> tuple[Source, Any, dict[str, str]]:
    """Everything checked before a CLIP file's data is read: its layout, its config, every key and shape against a
    ``CLIPVisionModel`` of 31 blocks built on the meta device → (source under HF names, that model, model key →
    source key)."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    found = detect_kind(src)
    if found.kind != "clip":
        raise wrong_kind(src, "clip", found.kind)
    src = clip_to_hf(src, found.layout)  # HF names without the vision_model. prefix, the text tower left out
    try:
        config = CLIPVisionConfig.from_dict(raw_cfg) if raw_cfg and "hidden_size" in raw_cfg else None
        config = config or _clip_config_from_shapes(src)
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(
            f"{src.name} is not a complete CLIP vision tower ({exc})", hint="download it again"
        ) from exc
    last = config.num_hidden_layers - 1  # Wan uses the hidden states after block 31 of 32: the last block never runs
    config.num_hidden_layers = last
    with torch.device("meta"):
        model = CLIPVisionModel(config)
    to_file = {k: k.removeprefix(CLIP_HF_PREFIX) for k in model.state_dict()}
    check_model(model, src, to_file, "CLIP vision tower", ignore=_unused_block(last))
    return src, model, to_file
