"""What a path holds, read from headers only: one weights file, a whole model folder (official, Diffusers, anything),
or a ComfyUI ``models/`` tree — and, for a diffusion model inside such a tree, the VAE, text encoder and CLIP that
sit in its sibling folders (``vae/``, ``text_encoders/`` or ``clip/``, ``clip_vision/``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from .checkpoints import DiTPlan, VAEPlan, dit_variant_name
from .errors import CheckpointError
from .gguf import GGUFSource
from .layouts import IGNORED_KEYS, SCALE_SUFFIX, Component, Kind, Layout, detect_kind
from .loading import is_fp8
from .tensors import PICKLE_SUFFIXES, WEIGHT_SUFFIXES, Source, open_source, shards_from_index, weight_files
from .transformer import CLIP_DIM, WanDiTConfig

Quantization = Literal["none", "fp8", "scaled_fp8", "gguf"]
# ComfyUI's folder for each component (`folder_paths.py`); older installs keep text encoders in clip/, DiTs in unet/.
COMFY_FOLDERS: dict[Component, tuple[str, ...]] = {
    "dit": ("diffusion_models", "unet"),
    "vae": ("vae",),
    "text_encoder": ("text_encoders", "clip"),
    "image_encoder": ("clip_vision",),
}
_KIND_OF: dict[Component, Kind] = {"dit": "dit", "vae": "vae", "text_encoder": "text_encoder", "image_encoder": "clip"}
_FLAGS: dict[Component, str] = {"dit": "-m", "vae": "--vae", "text_encoder": "--text-encoder",
                                "image_encoder": "--clip-vision"}  # fmt: skip


@dataclass
class CheckpointInfo:
    """What one weights file (or shard set) holds, read from its keys and shapes (no tensor data is loaded)."""

    path: str
    files: list[str]
    kind: Kind
    layout: Layout | None
    variant: str | None = None  # e.g. "t2v-1.3B", or "custom" for other sizes
    quantization: Quantization = "none"
    dtypes: dict[str, int] = field(default_factory=dict)  # storage dtype (GGUF: quant type) → tensor count
    tensors: int = 0
    parameters: int = 0
    config: dict[str, Any] | None = None
    tokenizer: str | None = None  # text encoders: "embedded" when the file carries its own SentencePiece model

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FolderInfo:
    """Every component found in a folder (recursively one level for Diffusers and ComfyUI trees)."""

    path: str
    layout: str  # "diffusers", "official", "comfyui-models" or "folder"
    components: list[CheckpointInfo] = field(default_factory=list)
    tokenizers: list[str] = field(default_factory=list)  # tokenizer folders
    kind: str = "folder"

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "kind": self.kind, "layout": self.layout, "tokenizers": self.tokenizers,
                "components": [c.to_dict() for c in self.components]}  # fmt: skip


# --------------------------------------------------------------------------------------------------------------------
# One file
# --------------------------------------------------------------------------------------------------------------------


def _dtypes(src: Source) -> dict[str, int]:
    qtype = getattr(src, "qtype", None)  # GGUF: the quant type of each tensor says more than its torch dtype
    out: dict[str, int] = {}
    for k in src:
        if IGNORED_KEYS.search(k) or k.endswith(SCALE_SUFFIX):
            continue
        try:
            name = qtype(k) if qtype is not None else str(src.dtype(k)).removeprefix("torch.")
        except CheckpointError:
            name = "unreadable"  # a dtype torch has no type for (the loader names it if a model needs it)
        out[name] = out.get(name, 0) + 1
    return out


def _quantization(src: Source) -> Quantization:
    if any(p.suffix.lower() == ".gguf" for p in src.paths):
        return "gguf"
    if any(k.endswith(SCALE_SUFFIX) or k.endswith("scaled_fp8") for k in src):
        return "scaled_fp8"
    return "fp8" if any(is_fp8(src.dtype(k)) for k in src) else "none"


def inspect_files(files: list[Path], shown: Path | None = None) -> CheckpointInfo:
    """Describe one component's file(s)."""
    src = open_source(files)
    found = detect_kind(src.keys())
    where = shown or files[0]
    variant, config, layout = None, None, found.layout
    if found.kind == "dit":
        dit = DiTPlan(where if shown is not None else files[0], source=src)
        variant, config = dit_variant_name(dit.config), dit.config.to_dict()
    elif found.kind == "vae":
        vae = VAEPlan(where if shown is not None else files[0], source=src)
        variant, config = "wan2.1-vae", asdict(vae.config)
    if files[0].suffix.lower() == ".gguf":
        layout = "gguf"
    params = sum(math.prod(src.shape(k)) for k in src if not (IGNORED_KEYS.search(k) or k.endswith(SCALE_SUFFIX)))
    dtypes = _dtypes(src)
    return CheckpointInfo(
        path=str(where), files=[str(f) for f in src.paths], kind=found.kind, layout=layout, variant=variant,
        quantization=_quantization(src), dtypes=dtypes, tensors=sum(dtypes.values()), parameters=params,
        config=config, tokenizer="embedded" if _embeds_tokenizer(src, found.kind) else None,
    )  # fmt: skip


def _embeds_tokenizer(src: Source, kind: Kind) -> bool:
    """A ComfyUI text encoder's `spiece_model` tensor, or a UMT5 GGUF's vocabulary metadata."""
    if kind != "text_encoder":
        return False
    return "spiece_model" in src or (isinstance(src, GGUFSource) and src.vocab() is not None)


# --------------------------------------------------------------------------------------------------------------------
# Folders
# --------------------------------------------------------------------------------------------------------------------


def weight_groups(folder: Path) -> list[list[Path]]:
    """The weights in one folder, each shard set (through its index) as one group, sorted by name."""
    groups: list[list[Path]] = []
    sharded: set[Path] = set()
    for index in sorted(folder.glob("*.index.json")):
        shards = shards_from_index(index)
        groups.append(shards)
        sharded.update(shards)
    for f in sorted(folder.iterdir()):
        if f.is_file() and f.suffix.lower() in WEIGHT_SUFFIXES and f not in sharded and not f.name.startswith("."):
            groups.append([f])
    return groups


def _is_tokenizer_folder(folder: Path) -> bool:
    return (folder / "tokenizer.json").is_file() or (folder / "spiece.model").is_file()


def inspect_folder(folder: Path) -> FolderInfo:
    """Every component of a model folder: a Diffusers pipeline (one sub-folder per component), a ComfyUI
    ``models/`` tree (one sub-folder per kind, several files each), or a flat folder (official, or the user's)."""
    if (folder / "model_index.json").is_file():
        layout, subdirs = "diffusers", [folder / d for d in ("transformer", "vae", "text_encoder", "image_encoder")]
    elif any((folder / d).is_dir() for names in COMFY_FOLDERS.values() for d in names):
        layout, subdirs = "comfyui-models", [folder / d for names in COMFY_FOLDERS.values() for d in names]
    else:
        layout, subdirs = "folder", [folder]
    info = FolderInfo(path=str(folder), layout=layout)
    for sub in subdirs:
        if not sub.is_dir():
            continue
        for group in weight_groups(sub):
            shown = group[0].parent / group[0].name if len(group) == 1 else group[0].parent
            try:
                info.components.append(inspect_files(group, shown))
            except CheckpointError:
                info.components.append(CheckpointInfo(path=str(shown), files=[str(f) for f in group],
                                                      kind="unknown", layout=None))  # fmt: skip
    if layout == "folder" and any(c.kind == "dit" and c.layout == "official" for c in info.components):
        info.layout = "official"
    for cand in (folder / "tokenizer", folder / "google" / "umt5-xxl", folder):
        if cand.is_dir() and _is_tokenizer_folder(cand):
            info.tokenizers.append(str(cand))
    if not info.components and not info.tokenizers:
        raise CheckpointError(f"{folder} holds no weights files", hint="pass a weights file or a model folder")
    return info


def inspect_checkpoint(path: str | Path) -> CheckpointInfo | FolderInfo:
    """Describe a weights file or a folder without loading any tensor data (``wan inspect``)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise CheckpointError(f"{p} does not exist", hint="pass a weights file or a model folder")
    if p.is_dir():
        return inspect_folder(p)
    return inspect_files(weight_files(p), p)


# --------------------------------------------------------------------------------------------------------------------
# A ComfyUI models/ tree: the components beside a diffusion model
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class Found:
    """Component paths found in a ComfyUI tree, and a note for each choice made (for stderr)."""

    paths: dict[Component, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def comfy_models_root(path: Path) -> Path | None:
    """The ``models/`` folder of a ComfyUI tree that ``path`` is (or whose ``diffusion_models/`` file it is)."""
    if path.is_dir():  # (a Diffusers pipeline folder has a vae/ too, but no diffusion_models/ or unet/)
        return path if any((path / d).is_dir() for d in COMFY_FOLDERS["dit"]) else None
    for parent in path.parents:  # a file may sit in a sub-folder of diffusion_models/
        if parent.name in COMFY_FOLDERS["dit"]:
            return parent.parent
    return None


def _fits(component: Component, src: Source, dit: WanDiTConfig | None) -> bool:
    """Whether a file of the right kind is one a Wan 2.1 DiT takes (not, say, Flux's T5 or SDXL's CLIP)."""
    try:
        if component == "text_encoder":
            # UMT5: a relative position bias in every block (T5 v1.1: the first only); width = the DiT's text_dim
            width = src.shape("shared.weight")[-1] if "shared.weight" in src else None
            umt5 = "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight" in src
            return umt5 and (dit is None or width == dit.text_dim)
        if component == "image_encoder":
            key = next((k for k in src if k.endswith("embeddings.class_embedding") or k == "visual.class_embedding"),
                       None)  # fmt: skip
            return key is None or src.shape(key)[-1] == CLIP_DIM  # ViT-H's 1280 (not bigG's 1664 or L's 1024)
        if component == "vae":
            VAEPlan(src.paths[0], source=src)  # a Wan 2.2 VAE has another structure and fails here
    except (CheckpointError, KeyError):
        return False
    return True


def _candidates(root: Path, component: Component, dit: WanDiTConfig | None, task: str) -> list[Path]:
    out = []
    for name in COMFY_FOLDERS[component]:
        folder = root / name
        if not folder.is_dir():
            continue
        for f in sorted(folder.rglob("*")):
            if not f.is_file() or f.suffix.lower() not in WEIGHT_SUFFIXES or f.suffix in PICKLE_SUFFIXES:
                continue  # pickles would have to be read whole to be told apart: ComfyUI trees hold safetensors/GGUF
            try:
                src = open_source([f])
            except CheckpointError:
                continue
            found = detect_kind(src.keys())
            if found.kind != _KIND_OF[component]:
                continue
            if component == "dit":
                try:
                    if DiTPlan(f, source=src).config.model_type != task:
                        continue
                except CheckpointError:
                    continue
            elif not _fits(component, src, dit):
                continue
            out.append(f)
    return out


def _pick(root: Path, component: Component, cands: list[Path], task: str) -> Path:
    folders = " or ".join(f"{root / d}/" for d in COMFY_FOLDERS[component])
    what = {"dit": f"{task} diffusion model", "vae": "Wan 2.1 VAE", "text_encoder": "UMT5 text encoder",
            "image_encoder": "CLIP ViT-H vision model"}[component]  # fmt: skip
    if not cands:
        raise CheckpointError(f"no {what} found in {folders}",
                              hint=f"pass {_FLAGS[component]} PATH, or put the file there")  # fmt: skip
    if len(cands) > 1:
        listed = ", ".join(str(c.relative_to(root)) for c in cands[:6]) + (" …" if len(cands) > 6 else "")
        raise CheckpointError(f"several {what}s in {root}: {listed}",
                              hint=f"pass the one to use with {_FLAGS[component]} PATH")  # fmt: skip
    return cands[0]


def find_components(path: Path, task: str, wanted: tuple[Component, ...]) -> Found:
    """The components ``wanted`` from a ComfyUI ``models/`` tree, for a diffusion-model file in it (or for the tree
    itself: then its one ``task`` diffusion model too). Each is taken only when exactly one file fits; otherwise
    the error lists what is there and names the flag to pass. Returns an empty result outside a ComfyUI tree."""
    root = comfy_models_root(path)
    found = Found()
    if root is None:
        return found
    dit_path = path
    if path.is_dir():
        dit_path = _pick(root, "dit", _candidates(root, "dit", None, task), task)
        found.paths["dit"] = dit_path
        found.notes.append(f"note: using the diffusion model {dit_path}")
    try:
        dit: WanDiTConfig | None = DiTPlan(dit_path).config
    except CheckpointError:
        dit = None  # the loader will say what is wrong with it
    for component in wanted:
        if component == "dit":
            continue
        chosen = _pick(root, component, _candidates(root, component, dit, task), task)
        found.paths[component] = chosen
        found.notes.append(f"note: using {chosen} ({component.replace('_', ' ')}, found beside the model)")
    return found
