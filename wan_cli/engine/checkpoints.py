"""Reading Wan 2.1 weights in every published layout: official, Diffusers and ComfyUI (incl. fp8 and scaled fp8).

Facts: ``checkpoint-formats.md``. One recipe for every layout: open the file(s) lazily, recognise what they hold
from key names and shapes, map foreign names onto the official ones (one rename table per layout), check the key
set and every shape against a model built on the meta device, then read tensor by tensor (dequantising fp8 and
casting to the storage dtype on the way) and ``load_state_dict(strict=True, assign=True)``. Nothing is loaded
non-strictly; the only keys skipped are the named allow-list in ``IGNORED_KEYS``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from .errors import CheckpointError
from .ops import FP8, quantize_fp8
from .transformer import (
    DIT_CONFIGS,
    FP8_KEYS,
    ModelType,
    WanDiTConfig,
    WanModel,
    a_model,
    build_transformer,
    store_fp8_weights,
)
from .vae import WanVAE, WanVAEConfig, build_vae

Kind = Literal["dit", "vae", "text_encoder", "clip", "unknown"]
Layout = Literal["official", "diffusers", "comfyui"]

# Prefixes some single files put before the official names (ComfyUI: model.diffusion_model.; bundles: vae.).
DIT_PREFIXES = ("model.diffusion_model.", "diffusion_model.")
VAE_PREFIXES = ("first_stage_model.", "vae.")
FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
# Keys that carry no weights of ours and are skipped on purpose (everything else must match exactly):
# the ComfyUI scaled-fp8 marker and input scales (we dequantise weights instead of scaling inputs), and the
# `norm_added_q` that Diffusers itself ignores on load.
IGNORED_KEYS = re.compile(r"(^|\.)(scaled_fp8|scale_input|norm_added_q\.weight)$")
SCALE_SUFFIX = ".scale_weight"

_ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "I64": torch.int64, "I32": torch.int32,
    "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}  # fmt: skip


# --------------------------------------------------------------------------------------------------------------------
# Rename tables (official → Diffusers). Loading uses them backwards through the expected key set of the model.
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
# Lazy tensor sources
# --------------------------------------------------------------------------------------------------------------------


class TensorSource:
    """A name → tensor mapping over one file or a set of shards; shapes and dtypes are known before any data is read."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths
        self._where: dict[str, int] = {}
        self._handles: list[Any] = []
        self._meta: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
        self.metadata: dict[str, str] = {}
        for i, p in enumerate(paths):
            if p.suffix in (".pth", ".pt", ".bin", ".ckpt"):
                self._handles.append(_load_pickle(p))
                for k, t in self._handles[-1].items():
                    self._add(k, i, tuple(t.shape), t.dtype, p)
            else:
                h = _open_safetensors(p)
                self._handles.append(h)
                self.metadata.update(h.metadata() or {})
                for k in h.keys():  # noqa: SIM118 - safe_open is not a dict
                    sl = h.get_slice(k)
                    self._add(k, i, tuple(sl.get_shape()), _ST_DTYPES.get(sl.get_dtype(), torch.uint8), p)

    def renamed(self, tensors: dict[str, torch.Tensor]) -> TensorSource:
        """A source over tensors derived from this one (renamed, or split views of a mmapped .pth); same file name."""
        out = TensorSource([])
        out.paths, out.metadata = self.paths, self.metadata
        out._handles = [tensors]
        for k, t in tensors.items():
            out._where[k] = 0
            out._meta[k] = (tuple(t.shape), t.dtype)
        return out

    def _add(self, key: str, idx: int, shape: tuple[int, ...], dtype: torch.dtype, path: Path) -> None:
        if key in self._where and self._where[key] != idx:
            raise CheckpointError(f"tensor {key!r} appears in two shards ({self.paths[self._where[key]].name}, "
                                  f"{path.name})", hint="the shard set is inconsistent; download it again")  # fmt: skip
        self._where[key] = idx
        self._meta[key] = (shape, dtype)

    @property
    def name(self) -> str:
        return str(self.paths[0]) if len(self.paths) == 1 else f"{self.paths[0].parent} ({len(self.paths)} shards)"

    def keys(self) -> list[str]:
        return list(self._meta)

    def __contains__(self, key: object) -> bool:
        return key in self._meta

    def __iter__(self) -> Iterator[str]:
        return iter(self._meta)

    def shape(self, key: str) -> tuple[int, ...]:
        return self._meta[key][0]

    def dtype(self, key: str) -> torch.dtype:
        return self._meta[key][1]

    def get(self, key: str) -> torch.Tensor:
        idx = self._where[key]
        h = self._handles[idx]
        try:
            return h[key] if isinstance(h, dict) else h.get_tensor(key)
        except Exception as exc:  # a file cut short after its header was written
            raise CheckpointError(
                f"cannot read tensor {key!r} from {self.paths[idx]}: {exc}",
                hint="the file looks truncated or corrupted; download it again",
            ) from exc


def _open_safetensors(path: Path) -> Any:
    from safetensors import safe_open

    try:
        handle = safe_open(str(path), framework="pt", device="cpu")
    except Exception as exc:
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({exc})",
            hint="the file looks truncated or corrupted; download it again",
        ) from exc
    return handle  # safe_open checks the header against the file size: a truncated file fails above


def _load_pickle(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:
        raise CheckpointError(
            f"{path} is not a readable PyTorch weights file ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})",
            hint="the file looks truncated or corrupted, or is not a plain state dict; download it again",
        ) from exc
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold a plain dict of tensors", hint="pass a Wan weights file")
    return obj


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
    if "token_embedding.weight" in ks:
        return Detected("text_encoder", "official")
    if "shared.weight" in ks or any(k.startswith("encoder.block.") for k in ks):
        return Detected("text_encoder", "diffusers")
    if any(k.startswith("visual.transformer.") for k in ks):
        return Detected("clip", "official")
    if "vision_model.embeddings.class_embedding" in ks or "embeddings.class_embedding" in ks:
        return Detected("clip", "diffusers")  # HF naming (transformers 4.x and ComfyUI: vision_model. prefix)
    return Detected("unknown", None)


_KIND_WORDS = {"dit": "a Wan DiT (diffusion model)", "vae": "a Wan VAE", "text_encoder": "a UMT5 text encoder",
               "clip": "a CLIP image encoder", "unknown": "no Wan weights we recognise"}  # fmt: skip


def wrong_kind(src: TensorSource, want: Kind, got: Kind) -> CheckpointError:
    vace = any("vace_" in k for k in src)
    what = "a Wan VACE model, which wan does not support yet" if vace else _KIND_WORDS[got]
    return CheckpointError(f"{src.name} holds {what}, not {_KIND_WORDS[want]}",
                           hint="check which file you passed; `wan inspect PATH` tells what a file holds")  # fmt: skip


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
# Resolving a user path to files
# --------------------------------------------------------------------------------------------------------------------

_DIT_NAMES = ("diffusion_pytorch_model.safetensors.index.json", "diffusion_pytorch_model.safetensors")
_VAE_NAMES = (
    "Wan2.1_VAE.pth",
    "wan_2.1_vae.safetensors",
    "diffusion_pytorch_model.safetensors.index.json",
    "diffusion_pytorch_model.safetensors",
)


def _shards_from_index(index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except Exception as exc:
        raise CheckpointError(f"{index} is not a valid shard index ({exc})", hint="download it again") from exc
    files = sorted(set(weight_map.values()))
    missing = [f for f in files if not (index.parent / f).is_file()]
    if missing:
        raise CheckpointError(f"{index} lists shards that are missing: {', '.join(missing[:3])}",
                              hint="the download is incomplete; run the download again")  # fmt: skip
    return [index.parent / f for f in files]


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except Exception as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is not a JSON object")
    return data


def resolve_files(path: str | Path, component: str, names: tuple[str, ...]) -> tuple[list[Path], dict[str, Any] | None]:
    """Files (one, or shards) and the config.json beside them, for a file, a model folder or a pipeline folder."""
    p = Path(path).expanduser()
    if not p.exists():
        raise CheckpointError(f"{p} does not exist", hint="pass a weights file or a model folder")
    if p.is_file():
        files = _shards_from_index(p) if p.name.endswith(".index.json") else [p]
        cfg = p.parent / "config.json"
        return files, (read_json(cfg) if cfg.is_file() and p.suffix != ".pth" else None)
    if (p / component).is_dir() and (p / "model_index.json").is_file():
        p = p / component  # a Diffusers pipeline folder
    for name in names:
        f = p / name
        if f.is_file():
            files = _shards_from_index(f) if name.endswith(".index.json") else [f]
            cfg = p / "config.json"
            return files, (read_json(cfg) if cfg.is_file() and f.suffix != ".pth" else None)
    found = sorted(x.name for x in p.iterdir() if x.suffix in (".safetensors", ".pth", ".json"))[:6]
    raise CheckpointError(
        f"no {component} weights found in {p}" + (f" (it has: {', '.join(found)})" if found else " (it is empty)"),
        hint=f"expected one of {', '.join(names)}; or pass the weights file itself",
    )


# --------------------------------------------------------------------------------------------------------------------
# Inspecting and loading
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class CheckpointInfo:
    """What a weights file or folder holds, read from its keys and shapes (no tensor data is loaded)."""

    path: str
    files: list[str]
    kind: Kind
    layout: Layout | None
    variant: str | None = None  # e.g. "t2v-1.3B", or "custom" for other sizes
    quantization: Literal["none", "fp8", "scaled_fp8"] = "none"
    dtypes: dict[str, int] = field(default_factory=dict)  # storage dtype → tensor count
    tensors: int = 0
    parameters: int = 0
    config: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


def _quantization(src: TensorSource) -> Literal["none", "fp8", "scaled_fp8"]:
    if any(k.endswith(SCALE_SUFFIX) or k.endswith("scaled_fp8") for k in src):
        return "scaled_fp8"
    if any(src.dtype(k) in FP8_DTYPES for k in src):
        return "fp8"
    return "none"


def dit_variant_name(cfg: WanDiTConfig) -> str:
    for name, ref in DIT_CONFIGS.items():
        if ref == cfg:
            return name
    return "custom"


def _open(path: str | Path, component: str, names: tuple[str, ...]) -> tuple[TensorSource, dict[str, Any] | None]:
    files, cfg = resolve_files(path, component, names)
    return TensorSource(files), cfg


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


class _DiTPlan:
    """Everything known about a DiT checkpoint before its data is read."""

    def __init__(self, path: str | Path) -> None:
        self.src, raw_cfg = _open(path, "transformer", _DIT_NAMES)
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
        self.config: WanDiTConfig = config
        self.rename = rename


def check_keys(
    src: TensorSource,
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
    if missing or unexpected or misshaped:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
            if items:
                more = f" (+{len(items) - 3} more)" if len(items) > 3 else ""
                parts.append(f"{len(items)} {label}: {', '.join(items[:3])}{more}")
        raise CheckpointError(
            f"{src.name} does not match the {what} it looks like: " + "; ".join(parts),
            hint="the file is incomplete, a different model, or its config.json does not belong to it",
        )


def materialise(src: TensorSource, file_key: str, target: torch.dtype, device: torch.device | str) -> torch.Tensor:
    t = src.get(file_key)
    scale_key = file_key.removesuffix(".weight") + SCALE_SUFFIX
    if scale_key in src:
        t = t.float() * src.get(scale_key).float()  # scaled fp8: W = W_fp8 · scale_weight
    elif t.dtype in FP8_DTYPES:
        t = t.float()
    return t.to(device=device, dtype=target)


def _torch_device(device: str | torch.device) -> torch.device:
    return torch.device(device)


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
    plan = _DiTPlan(path)
    if model_type is not None and plan.config.model_type != model_type:
        raise CheckpointError(
            f"{plan.src.name} is {a_model(plan.config.model_type)} ({dit_variant_name(plan.config)}), "
            f"not {a_model(model_type)}",
            hint=f"pass a {model_type} checkpoint (`wan inspect PATH` tells what a file holds)",
        )
    model = build_transformer(plan.config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    to_file = {k: plan.prefix + plan.rename(k) for k in expected}
    check_keys(plan.src, expected, to_file, f"{plan.config.model_type} DiT")
    dev = _torch_device(device)
    scales: dict[str, torch.Tensor] = {}
    state: dict[str, torch.Tensor] = {}
    for k, f in to_file.items():
        if fp8 and FP8_KEYS.match(k):
            state[k], scales[k] = _fp8_weight(plan.src, f, dev)
        else:
            state[k] = materialise(plan.src, f, torch.float32 if WanModel.keeps_fp32(k) else dtype, dev)
    model.load_state_dict(state, strict=True, assign=True)
    store_fp8_weights(model, scales, dtype)
    return model.eval().requires_grad_(False)


def _fp8_weight(src: TensorSource, file_key: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(float8_e4m3fn values, fp32 scale) for one weight: an e4m3fn file's own, or quantised from the file's."""
    raw = src.get(file_key)
    scale_key = file_key.removesuffix(".weight") + SCALE_SUFFIX
    if raw.dtype == FP8:
        scale = src.get(scale_key).float() if scale_key in src else torch.tensor(1.0)
        return raw.to(device), scale.reshape(()).to(device)
    q, scale = quantize_fp8(materialise(src, file_key, torch.float32, "cpu"))
    return q.to(device), scale.to(device)


def peek_transformer_config(path: str | Path) -> WanDiTConfig:
    """The DiT's configuration from its headers (and config.json): nothing heavy is read."""
    return _DiTPlan(path).config


class _VAEPlan:
    def __init__(self, path: str | Path) -> None:
        self.src, raw_cfg = _open(path, "vae", _VAE_NAMES)
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
    plan = _VAEPlan(path)
    vae = build_vae(plan.config)
    expected = {k: tuple(v.shape) for k, v in vae.state_dict().items()}
    to_file = {k: plan.prefix + plan.rename(k) for k in expected}
    check_keys(plan.src, expected, to_file, "Wan VAE")
    dev = _torch_device(device)
    state = {k: materialise(plan.src, f, dtype, dev) for k, f in to_file.items()}
    vae.load_state_dict(state, strict=True, assign=True)
    vae.latent_mean = vae.latent_mean.to(dev)
    vae.latent_inv_std = vae.latent_inv_std.to(dev)
    return vae.eval().requires_grad_(False)


def inspect_checkpoint(path: str | Path) -> CheckpointInfo:
    """Describe a weights file or folder without loading its data (used by ``wan inspect`` and error messages)."""
    p = Path(path).expanduser()
    try:
        files, _ = resolve_files(p, "transformer", _DIT_NAMES)
    except CheckpointError:
        if not p.is_dir():
            raise
        files, _ = resolve_files(p, "vae", _VAE_NAMES)  # a VAE folder, or the error names what the folder has
    found = detect_kind(TensorSource(files).keys())
    if found.kind == "dit":
        dit = _DiTPlan(p)
        return _info(p, dit.src, "dit", dit.layout, dit_variant_name(dit.config), dit.config.to_dict())
    if found.kind == "vae":
        vae = _VAEPlan(p)
        return _info(p, vae.src, "vae", vae.layout, "wan2.1-vae", asdict(vae.config))
    src = TensorSource(files)
    return _info(p, src, found.kind, found.layout, None, None)


def _info(p: Path, src: TensorSource, kind: Kind, layout: Layout | None, variant: str | None,
          config: dict[str, Any] | None) -> CheckpointInfo:  # fmt: skip
    dtypes: dict[str, int] = {}
    params = 0
    for k in src:
        if IGNORED_KEYS.search(k) or k.endswith(SCALE_SUFFIX):
            continue
        name = str(src.dtype(k)).removeprefix("torch.")
        dtypes[name] = dtypes.get(name, 0) + 1
        params += math.prod(src.shape(k))
    return CheckpointInfo(
        path=str(p), files=[str(f) for f in src.paths], kind=kind, layout=layout, variant=variant,
        quantization=_quantization(src), dtypes=dtypes, tensors=sum(dtypes.values()), parameters=params,
        config=config,
    )  # fmt: skip
