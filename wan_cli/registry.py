"""The Wan 2.1 variants wan knows by name: task, repos, files, supported sizes and default preset.

One frozen :class:`ModelSpec` per variant in :data:`MODELS` (as flux ``util.py::configs`` and the official
``WAN_CONFIGS`` / ``SUPPORTED_SIZES``). Three sources hold the same weights (``checkpoint-formats.md``):

- ``comfy`` (default): single files from ``Comfy-Org/Wan_2.1_ComfyUI_repackaged`` (bf16, or fp8 for the 14B models)
  plus the tokenizer files from the variant's official repo;
- ``official``: the ``Wan-AI`` repo (fp32 DiT shards, bf16 T5 ``.pth``, fp32 VAE and CLIP ``.pth``);
- ``diffusers``: the ``-Diffusers`` repo (one folder per component).

Sizes here are what ``wan models`` shows before anything is downloaded; ``approx`` marks the ones the reference only
gives rounded. A download always uses the sizes the hub reports.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Literal

from .engine.errors import InputError
from .engine.request import Task

Source = Literal["comfy", "official", "diffusers"]
Precision = Literal["bf16", "fp8"]

SOURCES: tuple[Source, ...] = ("comfy", "official", "diffusers")
PRECISIONS: tuple[Precision, ...] = ("bf16", "fp8")
DEFAULT_SOURCE: Source = "comfy"
DEFAULT_PRECISION: Precision = "bf16"

COMFY_REPO = "Comfy-Org/Wan_2.1_ComfyUI_repackaged"
TOKENIZER_DIR = "google/umt5-xxl"  # in every official repo; the official code loads it with AutoTokenizer
TOKENIZER_FILES = ("spiece.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
OFFICIAL_T5 = "models_t5_umt5-xxl-enc-bf16.pth"
OFFICIAL_VAE = "Wan2.1_VAE.pth"
OFFICIAL_CLIP = "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"

# what each task needs to run (the DiT config and shards count as "dit")
TASK_COMPONENTS: dict[str, tuple[str, ...]] = {
    "t2v": ("dit", "text_encoder", "tokenizer", "vae"),
    "i2v": ("dit", "text_encoder", "tokenizer", "vae", "image_encoder"),
    "flf2v": ("dit", "text_encoder", "tokenizer", "vae", "image_encoder"),
}

GB = 1_000_000_000


@dataclass(frozen=True)
class FileSpec:
    """One file (or, for folder layouts, an fnmatch pattern over repo paths) that a download fetches."""

    component: str  # dit | text_encoder | tokenizer | vae | image_encoder | config | scheduler | image_processor
    repo: str
    pattern: str  # an exact repo path, or a pattern such as "transformer/*"
    size: int | None = None  # expected bytes, for `wan models`; None when unknown
    approx: bool = False  # a rounded size (the reference gives only GB with one decimal)
    required: bool = True  # False: fetched when the repo has it (e.g. one of several tokenizer files)

    @property
    def is_pattern(self) -> bool:
        return any(c in self.pattern for c in "*?[")


@dataclass(frozen=True)
class ComfyDiT:
    """A ComfyUI-repackaged diffusion-model file for one precision."""

    file: str  # under split_files/diffusion_models/
    size: int
    approx: bool
    stored: str  # the dtype in the file ("bf16", "fp16", "fp8_e4m3fn")


# Shared ComfyUI files (checkpoint-formats.md §4.1). The reference rounds the VAE and CLIP sizes; the byte counts here
# (and the tokenizer's below) come from third-party download manifests and are unverified.
_COMFY_T5 = {
    "bf16": FileSpec("text_encoder", COMFY_REPO, "split_files/text_encoders/umt5_xxl_fp16.safetensors", 11_366_399_385),
    "fp8": FileSpec(
        "text_encoder", COMFY_REPO, "split_files/text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors", 6_735_906_897
    ),
}
_COMFY_VAE = FileSpec("vae", COMFY_REPO, "split_files/vae/wan_2.1_vae.safetensors", 253_815_318)
_COMFY_CLIP = FileSpec("image_encoder", COMFY_REPO, "split_files/clip_vision/clip_vision_h.safetensors", 1_264_219_396)
_TOKENIZER_SIZES = {
    "spiece.model": 4_548_313,
    "tokenizer.json": 16_837_417,
    "tokenizer_config.json": 61_728,
    "special_tokens_map.json": 6_623,
}

# Official (Wan-AI) repo files, by component; the DiT is fp32 and sharded for 14B (checkpoint-formats.md §2.1–2.2)
_OFFICIAL_PATTERNS: tuple[tuple[str, str, bool], ...] = (
    ("dit", "config.json", True),
    ("dit", "diffusion_pytorch_model*.safetensors", True),
    ("dit", "diffusion_pytorch_model.safetensors.index.json", False),
    ("text_encoder", OFFICIAL_T5, True),
    ("vae", OFFICIAL_VAE, True),
    ("image_encoder", OFFICIAL_CLIP, True),
    ("tokenizer", f"{TOKENIZER_DIR}/*", True),
)
# Diffusers pipeline folders (checkpoint-formats.md §3.2)
_DIFFUSERS_PATTERNS: tuple[tuple[str, str, bool], ...] = (
    ("config", "model_index.json", True),
    ("dit", "transformer/*", True),
    ("text_encoder", "text_encoder/*", True),
    ("tokenizer", "tokenizer/*", True),
    ("vae", "vae/*", True),
    ("scheduler", "scheduler/*", True),
    ("image_encoder", "image_encoder/*", True),
    ("image_processor", "image_processor/*", True),
)
_IMAGE_ONLY = ("image_encoder", "image_processor")


@dataclass(frozen=True)
class ModelSpec:
    """One Wan 2.1 variant."""

    name: str  # canonical registry name, e.g. "1.3b-t2v"
    task: Task
    repo: str  # official Wan-AI repo
    diffusers_repo: str
    sizes: tuple[tuple[int, int], ...]  # supported (width, height), the official SUPPORTED_SIZES
    preset: str  # default preset name (presets/*.yaml)
    comfy: tuple[tuple[Precision, ComfyDiT], ...]  # precision → ComfyUI DiT file; absent = not published
    aliases: tuple[str, ...] = ()
    description: str = ""

    @property
    def components(self) -> tuple[str, ...]:
        return TASK_COMPONENTS[self.task]

    def comfy_dit(self, precision: str) -> ComfyDiT | None:
        return next((dit for p, dit in self.comfy if p == precision), None)

    def precision_note(self, source: str, precision: str) -> str | None:
        """A line for stderr when the files differ from what was asked (e.g. no bf16 FLF2V file: fp16 instead)."""
        dit = self.comfy_dit(precision) if source == "comfy" else None
        if dit is not None and precision == "bf16" and dit.stored != "bf16":
            return f"note: there is no bf16 {self.name} file in {COMFY_REPO}; using the {dit.stored} one"
        if source != "comfy":
            return (
                f"note: the {source} DiT is stored in fp32 (twice the bf16 size); wan runs it in bf16 on accelerators"
            )
        return None

    def check(self, source: str, precision: str) -> None:
        """Raise InputError (with a hint) if ``source``/``precision`` is not published for this variant."""
        if source not in SOURCES:
            raise InputError(f"unknown source {source!r}", hint=f"use one of {', '.join(SOURCES)}")
        if precision not in PRECISIONS:
            raise InputError(f"unknown precision {precision!r}", hint=f"use one of {', '.join(PRECISIONS)}")
        if precision == "fp8" and source != "comfy":
            raise InputError(
                f"fp8 weights exist only in the ComfyUI repack, not in the {source} repo",
                hint=f"use `wan download {self.name} --precision fp8` (source comfy) or --precision bf16",
            )
        if source == "comfy" and self.comfy_dit(precision) is None:
            raise InputError(
                f"there is no {precision} file for {self.name} in {COMFY_REPO}",
                hint=f"use `wan download {self.name} --precision bf16` (the 1.3B model is small enough in bf16)",
            )

    def files(self, source: str = DEFAULT_SOURCE, precision: str = DEFAULT_PRECISION) -> tuple[FileSpec, ...]:
        """What a download of this variant from ``source`` at ``precision`` fetches."""
        self.check(source, precision)
        needs_image = self.task != "t2v"
        if source == "official":
            return tuple(
                FileSpec(comp, self.repo, pattern, required=required)
                for comp, pattern, required in _OFFICIAL_PATTERNS
                if needs_image or comp not in _IMAGE_ONLY
            )
        if source == "diffusers":
            return tuple(
                FileSpec(comp, self.diffusers_repo, pattern, required=required)
                for comp, pattern, required in _DIFFUSERS_PATTERNS
                if needs_image or comp not in _IMAGE_ONLY
            )
        dit = self.comfy_dit(precision)
        assert dit is not None  # check() above
        files = [
            FileSpec("dit", COMFY_REPO, f"split_files/diffusion_models/{dit.file}", dit.size, dit.approx),
            _COMFY_T5[precision],
            _COMFY_VAE,
        ]
        if needs_image:
            files.append(_COMFY_CLIP)
        # the ComfyUI text encoder embeds a SentencePiece model too, but the official tokenizer files are the
        # reference (and what the engine looks for first); any one of them is enough
        for name in TOKENIZER_FILES:
            files.append(
                FileSpec("tokenizer", self.repo, f"{TOKENIZER_DIR}/{name}", _TOKENIZER_SIZES[name], required=False)
            )
        return tuple(files)

    def download_size(self, source: str = DEFAULT_SOURCE, precision: str = DEFAULT_PRECISION) -> int | None:
        """Expected bytes of a download (None if not published, or unknown for the folder layouts)."""
        try:
            files = self.files(source, precision)
        except InputError:
            return None
        sizes = [f.size for f in files]
        return None if any(s is None for s in sizes) else sum(s for s in sizes if s is not None)

    def size_is_approx(self, source: str = DEFAULT_SOURCE, precision: str = DEFAULT_PRECISION) -> bool:
        try:
            return any(f.approx for f in self.files(source, precision))
        except InputError:
            return False


def _comfy(task: str, res: str, size: str) -> tuple[tuple[Precision, ComfyDiT], ...]:
    """The 14B ComfyUI DiT files: bf16 and fp8_e4m3fn (fp16 in place of bf16 for FLF2V, which has no bf16 file)."""
    gb16 = {"t2v": 28.6, "i2v": 32.8, "flf2v": 32.8}[task]
    stem = f"wan2.1_{task}{res}_{size}"
    wide = "fp16" if task == "flf2v" else "bf16"
    return (
        ("bf16", ComfyDiT(f"{stem}_{wide}.safetensors", round(gb16 * GB), True, wide)),
        ("fp8", ComfyDiT(f"{stem}_fp8_e4m3fn.safetensors", round(gb16 / 2 * GB), True, "fp8_e4m3fn")),
    )


MODELS: dict[str, ModelSpec] = {
    "1.3b-t2v": ModelSpec(
        name="1.3b-t2v",
        task="t2v",
        repo="Wan-AI/Wan2.1-T2V-1.3B",
        diffusers_repo="Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
        sizes=((832, 480), (480, 832)),
        preset="t2v-1.3b-480p",
        comfy=(("bf16", ComfyDiT("wan2.1_t2v_1.3B_bf16.safetensors", 2_838_104_528, False, "bf16")),),
        aliases=("t2v-1.3b", "wan2.1-t2v-1.3b", "1.3b", "t2v-1.3b-480p"),
        description="text to video, 1.3B, 480p",
    ),
    "14b-t2v": ModelSpec(
        name="14b-t2v",
        task="t2v",
        repo="Wan-AI/Wan2.1-T2V-14B",
        diffusers_repo="Wan-AI/Wan2.1-T2V-14B-Diffusers",
        sizes=((1280, 720), (720, 1280), (832, 480), (480, 832)),
        preset="t2v-14b-720p",
        comfy=_comfy("t2v", "", "14B"),
        aliases=("t2v-14b", "wan2.1-t2v-14b", "14b", "t2v-14b-720p", "t2v-14b-480p"),
        description="text to video, 14B, 720p and 480p",
    ),
    "14b-i2v-480p": ModelSpec(
        name="14b-i2v-480p",
        task="i2v",
        repo="Wan-AI/Wan2.1-I2V-14B-480P",
        diffusers_repo="Wan-AI/Wan2.1-I2V-14B-480P-Diffusers",
        sizes=((832, 480), (480, 832)),
        preset="i2v-14b-480p",
        comfy=_comfy("i2v", "_480p", "14B"),
        aliases=("i2v-14b-480p", "wan2.1-i2v-14b-480p", "i2v-480p"),
        description="image to video, 14B, 480p",
    ),
    "14b-i2v-720p": ModelSpec(
        name="14b-i2v-720p",
        task="i2v",
        repo="Wan-AI/Wan2.1-I2V-14B-720P",
        diffusers_repo="Wan-AI/Wan2.1-I2V-14B-720P-Diffusers",
        sizes=((1280, 720), (720, 1280)),
        preset="i2v-14b-720p",
        comfy=_comfy("i2v", "_720p", "14B"),
        aliases=("i2v-14b-720p", "wan2.1-i2v-14b-720p", "i2v-720p"),
        description="image to video, 14B, 720p",
    ),
    "14b-flf2v-720p": ModelSpec(
        name="14b-flf2v-720p",
        task="flf2v",
        repo="Wan-AI/Wan2.1-FLF2V-14B-720P",
        diffusers_repo="Wan-AI/Wan2.1-FLF2V-14B-720P-diffusers",  # lower-case suffix on the hub (§3.1)
        sizes=((1280, 720), (720, 1280)),
        preset="flf2v-14b-720p",
        comfy=_comfy("flf2v", "_720p", "14B"),
        aliases=("flf2v-14b-720p", "wan2.1-flf2v-14b-720p", "flf2v-720p", "flf2v", "14b-flf2v"),
        description="first and last frame to video, 14B, 720p",
    ),
}

# the official name for the same thing (wan/configs/__init__.py), keyed by our names
SUPPORTED_SIZES: dict[str, tuple[tuple[int, int], ...]] = {name: spec.sizes for name, spec in MODELS.items()}


def _norm(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def _alias_table() -> dict[str, str]:
    table: dict[str, str] = {}
    for spec in MODELS.values():
        keys = [spec.name, *spec.aliases, spec.repo, spec.diffusers_repo]
        keys += [k.split("/", 1)[1] for k in (spec.repo, spec.diffusers_repo)]
        for key in keys:
            table.setdefault(_norm(key), spec.name)
    return table


ALIASES: dict[str, str] = _alias_table()


def find(name: str) -> ModelSpec | None:
    """The variant called ``name`` (canonical, alias or repo id; case-insensitive), or None."""
    canonical = ALIASES.get(_norm(name))
    return MODELS[canonical] if canonical else None


def _billions(name: str) -> float | None:
    match = re.search(r"(\d+(?:\.\d+)?)b", name)
    return float(match.group(1)) if match else None


def suggest(name: str) -> str | None:
    """The canonical name closest to ``name``, or None.

    difflib ranks the candidates; among the close ones the parameter count in the name decides, since it is the most
    telling part ("t2v-1.4b" is one edit from both "t2v-1.3b" and "t2v-14b", and means the 1.3B model).
    """
    close = [ALIASES[c] for c in difflib.get_close_matches(_norm(name), list(ALIASES), n=4, cutoff=0.6)]
    if not close:
        return None
    size = _billions(_norm(name))
    if size is None:
        return close[0]
    return min(close, key=lambda c: abs((_billions(c) or 0.0) - size))  # min keeps difflib's order on ties


def get(name: str) -> ModelSpec:
    """The variant called ``name``; InputError naming the closest one otherwise."""
    spec = find(name)
    if spec is not None:
        return spec
    guess = suggest(name)
    did_you_mean = f"; did you mean {guess}?" if guess else ""
    raise InputError(
        f"unknown model {name!r}{did_you_mean}",
        hint=f"`wan models` lists the models wan knows ({', '.join(MODELS)}); or pass a weights file or folder",
    )
