"""LoRAs for the DiT: the three key formats people have, one rename table each, merged or applied at run time.

Facts: ``checkpoint-formats.md`` §7 and ``docs/distill-facts.md`` §6. Every format is mapped onto our (official)
module names, as the checkpoint layouts are:

- ``diffusers`` (PEFT, ``transformer.blocks.0.attn1.to_q.lora_A.weight``): the Diffusers checkpoint rename table
  (``layouts.DIFFUSERS_DIT_RENAMES``) read backwards; the scale is ``lora_alpha / r`` from the file's
  ``lora_adapter_metadata`` when it is there, else 1; ``lora_B.bias`` is a bias delta.
- ``comfyui`` (official names under ``diffusion_model.``: ComfyUI, Kijai, lightx2v, CausVid, diffusion-pipe):
  ``lora_A/B`` or ``lora_down/up``, scale ``alpha / rank`` with a ``.alpha`` tensor, else 1; ``.diff`` is a full
  delta of a weight (norms included), ``.diff_b`` of a bias, ``.diff_m`` of a block's or the head's ``modulation``.
- ``musubi`` (kohya / musubi-tuner, ``lora_unet_blocks_0_self_attn_q.lora_down.weight``): the official name with
  dots written as underscores; scale ``alpha / rank`` (alpha 0 or absent: 1).

A delta is ``strength · scale · up @ down`` ([out, r] @ [r, in]) plus ``strength · diff``. :func:`merge` adds the
deltas into float weights once (no per-step cost); :func:`apply_runtime` leaves the weights as stored (fp8, GGUF
blocks, streamed) and each Linear adds ``strength · scale · (x @ downᵀ) @ upᵀ`` to its output. Small targets (biases,
norm weights, modulation) are always added into the parameter, with their originals kept so that :meth:`Applied.remove`
restores them exactly. Diffusers drops norm ``.diff`` keys (zeros in the files it met); we apply them, as ComfyUI does.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from .errors import InputError
from .layers import Linear
from .layouts import dit_key_to_diffusers

LoraFormat = Literal["diffusers", "comfyui", "musubi"]
LORA_FORMATS: tuple[LoraFormat, ...] = ("diffusers", "comfyui", "musubi")

# The suffix of each kind of tensor in a LoRA file, longest first (".lora_B.bias" before ".bias"-less forms).
_SUFFIXES: tuple[tuple[str, str], ...] = (
    (".lora_A.weight", "down"),
    (".lora_down.weight", "down"),
    (".lora_B.weight", "up"),
    (".lora_up.weight", "up"),
    (".lora_B.bias", "diff_b"),
    (".alpha", "alpha"),
    (".diff_b", "diff_b"),
    (".diff_m", "diff_m"),
    (".diff", "diff"),
    (".dora_scale", "dora"),
)
_PREFIXES: dict[LoraFormat, tuple[str, ...]] = {
    "diffusers": ("transformer.",),
    "comfyui": ("model.diffusion_model.", "diffusion_model."),
    "musubi": ("lora_unet_",),
}
_DIFFUSERS_NAMES = re.compile(r"(^|\.)(attn1|attn2|condition_embedder|proj_out|scale_shift_table)(\.|$)")


@dataclass(frozen=True)
class LoraSpec:
    """What the user asked for: a file and a strength (``--lora PATH[:SCALE]``)."""

    path: str
    strength: float = 1.0

    def __str__(self) -> str:
        return f"{self.path}:{self.strength:g}"


def parse_lora(text: str) -> LoraSpec:
    """``PATH`` or ``PATH:SCALE`` (the last colon splits only when what follows is a number, so ``C:\\x`` and
    ``a:b.safetensors`` stay paths)."""
    path, sep, tail = text.rpartition(":")
    if sep and path:
        try:
            strength = float(tail)
        except ValueError:
            return LoraSpec(text)
        if not math.isfinite(strength):
            raise InputError(f"LoRA strength {tail!r} is not a finite number", hint="write PATH:0.8, for example")
        return LoraSpec(path, strength)
    return LoraSpec(text)


@dataclass
class Patch:
    """Everything one LoRA holds for one target: a Linear (low rank, full diff, bias diff) or a parameter."""

    down: torch.Tensor | None = None  # [r, in]
    up: torch.Tensor | None = None  # [out, r]
    alpha: float | None = None
    diff: torch.Tensor | None = None  # same shape as the weight (or the parameter)
    diff_b: torch.Tensor | None = None  # [out]

    def scale(self, default: float) -> float:
        """alpha / rank where the file gives alpha (0 means rank, as kohya), else ``default``."""
        if self.alpha is None or self.down is None:
            return default
        rank = self.down.shape[0]
        return (self.alpha or rank) / rank


@dataclass
class Lora:
    """A LoRA file read and renamed onto our module names (``patches``), with its format and strength."""

    path: str
    format: LoraFormat
    strength: float
    patches: dict[str, Patch]  # our module name (or parameter name, for diff_m) → patch
    default_scale: float = 1.0  # diffusers: lora_alpha / r from the file's metadata
    dropped: list[str] = field(default_factory=list)  # keys read but not applied (DoRA scales), reported


def detect_format(keys: Iterable[str]) -> LoraFormat | None:
    keys = list(keys)
    if any(k.startswith("lora_unet_") for k in keys):
        return "musubi"
    if any(k.startswith(_PREFIXES["comfyui"]) for k in keys):
        return "comfyui"
    if any(_DIFFUSERS_NAMES.search(k) for k in keys):
        return "diffusers"
    if any(k.startswith("blocks.") for k in keys):
        return "comfyui"  # official names without a prefix
    return None


def _split(key: str) -> tuple[str, str] | None:
    for suffix, kind in _SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)], kind
    return None


def _strip(name: str, fmt: LoraFormat) -> str:
    for prefix in _PREFIXES[fmt]:
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name


def rename_table(model: nn.Module, fmt: LoraFormat) -> dict[str, str]:
    """The format's name of every module and parameter of ``model`` → ours (identity for ``comfyui``)."""
    names = [n for n, _ in model.named_modules() if n] + [n for n, _ in model.named_parameters()]
    if fmt == "diffusers":  # the checkpoint table works on full keys; give it one and take the suffix off again
        return {dit_key_to_diffusers(n + ".weight").removesuffix(".weight"): n for n in names}
    if fmt == "musubi":
        return {n.replace(".", "_"): n for n in names}
    return {n: n for n in names}


def read_lora(spec: LoraSpec, model: nn.Module, *, strict: bool = True) -> tuple[Lora, list[str]]:
    """Read ``spec.path`` (safetensors only: no pickles) and rename it onto ``model``. Returns the LoRA and the
    keys that matched nothing; with ``strict`` those are an error naming the first ones."""
    from safetensors import SafetensorError, safe_open

    path = Path(spec.path)
    if not path.is_file():
        raise InputError(f"LoRA file not found: {spec.path}", hint="give the path of a .safetensors LoRA file")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118  (safe_open has no __iter__)
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(f"{spec.path} is not a readable safetensors file ({exc})",
                         hint="LoRAs are read from .safetensors files only") from None  # fmt: skip
    fmt = detect_format(tensors)
    if fmt is None:
        raise InputError(f"{spec.path} is not a Wan LoRA: no key looks like a DiT block's",
                         hint="expected diffusers (transformer.blocks.N…), ComfyUI (diffusion_model.blocks.N…) "
                              "or musubi (lora_unet_blocks_N_…) names")  # fmt: skip
    table = rename_table(model, fmt)
    patches: dict[str, Patch] = {}
    unmatched: list[str] = []
    dropped: list[str] = []
    for key, tensor in tensors.items():
        split = _split(key)
        if split is None:
            unmatched.append(key)
            continue
        name, kind = split
        if kind == "dora":
            dropped.append(key)
            continue
        ours = table.get(_strip(name, fmt))
        if kind == "diff_m":  # lightx2v: the delta of `<module>.modulation`
            ours = table.get(_strip(name, fmt) + ("_" if fmt == "musubi" else ".") + "modulation")
        if ours is None:
            unmatched.append(key)
            continue
        patch = patches.setdefault(ours, Patch())
        if kind == "alpha":
            patch.alpha = float(tensor.float().reshape(-1)[0])
        elif kind == "diff_m":
            patch.diff = tensor
        else:
            setattr(patch, kind, tensor)
    if strict and unmatched:
        shown = ", ".join(sorted(unmatched)[:3])
        raise InputError(f"{spec.path}: {len(unmatched)} LoRA keys match nothing in this model ({shown}…)",
                         hint="is it a LoRA for another Wan model (an I2V LoRA on T2V)? "
                              "--lora-strict off applies the keys that match")  # fmt: skip
    lora = Lora(str(path), fmt, spec.strength, patches, _metadata_scale(metadata), dropped)
    _check_shapes(lora, model)
    return lora, unmatched


def _metadata_scale(metadata: dict[str, str]) -> float:
    """diffusers ≥ 0.35 saves the PEFT config as JSON under ``lora_adapter_metadata``: scale = lora_alpha / r."""
    raw = metadata.get("lora_adapter_metadata")
    if not raw:
        return 1.0
    try:
        cfg = json.loads(raw)
    except json.JSONDecodeError:
        return 1.0
    alpha = cfg.get("transformer.lora_alpha", cfg.get("lora_alpha"))
    rank = cfg.get("transformer.r", cfg.get("r"))
    return float(alpha) / float(rank) if alpha and rank else 1.0


def _target(model: nn.Module, name: str) -> nn.Module | nn.Parameter:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return model.get_parameter(name)


def _check_shapes(lora: Lora, model: nn.Module) -> None:
    for name, p in lora.patches.items():
        target = _target(model, name)
        shapes: list[tuple[str, torch.Tensor | None, tuple[int, ...] | None]]
        if isinstance(target, nn.Parameter):
            shapes = [("diff", p.diff, tuple(target.shape))]
        else:
            w = getattr(target, "weight", None)
            b = getattr(target, "bias", None)
            out_in = (target.out_features, target.in_features) if isinstance(target, Linear) else None
            shapes = [("diff", p.diff, tuple(w.shape) if out_in is None and w is not None else out_in),
                      ("diff_b", p.diff_b, tuple(b.shape) if b is not None else None)]  # fmt: skip
            if p.down is not None or p.up is not None:
                if out_in is None or p.down is None or p.up is None:
                    raise InputError(f"{lora.path}: {name} needs both LoRA matrices of a Linear layer",
                                     hint="the file is incomplete or not a Wan LoRA")  # fmt: skip
                if p.down.shape[1] != out_in[1] or p.up.shape[0] != out_in[0] or p.up.shape[1] != p.down.shape[0]:
                    raise InputError(
                        f"{lora.path}: {name} is [{p.up.shape[0]}×{p.down.shape[1]}] in the LoRA, "
                        f"[{out_in[0]}×{out_in[1]}] in the model",
                        hint="the LoRA was trained for another Wan model size (1.3B vs 14B)",
                    )
        for what, t, want in shapes:
            if t is not None and (want is None or tuple(t.shape) != want):
                raise InputError(f"{lora.path}: {name}.{what} has shape {tuple(t.shape)}, the model {want}",
                                 hint="the LoRA was trained for another Wan model")  # fmt: skip


# --------------------------------------------------------------------------------------------------------------------
# Applying: merged into float weights, or beside the frozen layer at run time
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class Applied:
    """The LoRAs on a model, and the originals of the small parameters they changed (restored by ``remove``)."""

    specs: tuple[LoraSpec, ...]
    merged: bool
    originals: dict[str, torch.Tensor] = field(default_factory=dict)  # parameter name → value before (its device)
    runtime: list[Linear] = field(default_factory=list)  # layers that got run-time adapters

    def remove(self, model: nn.Module) -> None:
        """Undo: run-time adapters dropped, small parameters restored bit-exactly. Merged Linear weights cannot be
        restored exactly (rounding), so a merged set is removed by reloading the weights (the pipeline does)."""
        if self.merged:
            raise RuntimeError("merged LoRA weights are removed by reloading the model")
        for layer in self.runtime:
            layer.lora_adapters = ()
        for name, value in self.originals.items():
            model.get_parameter(name).data.copy_(value)


def _low_rank(p: Patch, strength: float, default_scale: float) -> tuple[torch.Tensor, torch.Tensor, float] | None:
    if p.down is None or p.up is None:
        return None
    return p.down, p.up, strength * p.scale(default_scale)


def _add_(param: torch.Tensor, delta: torch.Tensor) -> None:
    """param += delta computed in fp32, rounded once into the parameter's dtype, in place (views stay views: fused
    q/k/v weights are views of one tensor)."""
    param.data.copy_(param.data.float() + delta.to(param.device, torch.float32))


def _small_(applied: Applied, model: nn.Module, name: str, delta: torch.Tensor) -> None:
    param = model.get_parameter(name)
    applied.originals.setdefault(name, param.data.clone())
    _add_(param, delta)


def apply(model: nn.Module, loras: Sequence[Lora], specs: tuple[LoraSpec, ...], *, merge: bool,
          device: torch.device | None = None) -> Applied:  # fmt: skip
    """Put ``loras`` on ``model``: merged into the Linear weights (``merge``; float weights only) or as run-time
    adapters in each Linear's compute dtype on ``device`` (default: its weight's; a streamed model's weights live on
    the CPU while its adapters, a few % of its size, stay on the GPU)."""
    applied = Applied(specs, merged=merge)
    runtime: dict[int, tuple[Linear, list[tuple[torch.Tensor, torch.Tensor | None, float]]]] = {}
    with torch.no_grad():
        for lora in loras:
            for name, p in lora.patches.items():
                target = _target(model, name)
                if isinstance(target, nn.Parameter):  # diff_m on a modulation table
                    assert p.diff is not None
                    _small_(applied, model, name, lora.strength * p.diff.float())
                    continue
                if p.diff_b is not None:  # PEFT's lora_B.bias is scaled with lora_B; ComfyUI's .diff_b is not
                    bias_scale = lora.default_scale if lora.format == "diffusers" else 1.0
                    _small_(applied, model, f"{name}.bias", lora.strength * bias_scale * p.diff_b.float())
                low = _low_rank(p, lora.strength, lora.default_scale)
                if not isinstance(target, Linear):  # a norm: only full diffs
                    if p.diff is not None:
                        _small_(applied, model, f"{name}.weight", lora.strength * p.diff.float())
                    continue
                if merge:
                    if not target.plain:
                        raise InputError(f"cannot merge a LoRA into the quantized layer {name}",
                                         hint="quantized weights take LoRAs at run time")  # fmt: skip
                    delta = torch.zeros(target.weight.shape, dtype=torch.float32, device=target.weight.device)
                    if low is not None:
                        down, up, s = low
                        dev = target.weight.device
                        delta += s * (up.to(dev, torch.float32) @ down.to(dev, torch.float32))
                    if p.diff is not None:
                        delta += lora.strength * p.diff.to(delta.device, torch.float32)
                    _add_(target.weight, delta)
                    continue
                entry = runtime.setdefault(id(target), (target, []))
                cdt, dev = target.compute_dtype, device or target.weight.device
                if low is not None:
                    down, up, s = low
                    entry[1].append((down.to(dev, cdt), up.to(dev, cdt), s))
                if p.diff is not None:
                    entry[1].append((p.diff.to(dev, cdt), None, lora.strength))
    for layer, adapters in runtime.values():
        layer.lora_adapters = tuple(adapters)
        applied.runtime.append(layer)
    return applied


def signature(specs: Sequence[LoraSpec]) -> str:
    """A stable text for a LoRA set (cache keys, records): ``path:strength`` joined by ``+``; empty for none."""
    return "+".join(str(s) for s in specs)
