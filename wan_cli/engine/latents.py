"""The latents file that ``wan encode`` writes and ``wan decode`` (or a later generation) reads.

Format ``wan-latents/1``: a safetensors file holding one tensor and string metadata.

- ``latents``: [16, F_lat, H_lat, W_lat] float32 in the *normalised* latent space, ``(mu - mean) / std`` with the
  VAE's per-channel statistics: what the DiT denoises and ``StreamDecoder`` takes.
- metadata (all strings, as safetensors requires):

  ``format``  ``wan-latents/1``
  ``fps``     frame rate of the pixel video, e.g. ``16``
  ``frames``  pixel frames, 4·(F_lat − 1) + 1 (the causal VAE: frame 0 alone, then 4 per latent frame)
  ``width``   8·W_lat;  ``height``: 8·H_lat
  ``source``  where the latents came from: the input video's path, or the task (``t2v``, ``i2v``, ``flf2v``)
  ``model``   the model that made or will read them
  ``record``  optional: the full settings record, as JSON

Files are written to a hidden temp file beside the target and renamed onto it, so a target is never half-written.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import InputError
from .vae import LATENT_CHANNELS, SPATIAL_STRIDE, TEMPORAL_STRIDE
from .video import check_output_path, temp_beside

FORMAT = "wan-latents/1"
_SHAPE = "[16, F, H/8, W/8]"


@dataclass
class LatentsFile:
    """A loaded latents file: the tensor plus its metadata, parsed (and the raw strings in ``metadata``)."""

    latents: torch.Tensor  # [16, F_lat, H/8, W/8] float32, CPU
    fps: float
    frames: int  # pixel frames: 4·(F_lat − 1) + 1
    width: int  # pixels
    height: int
    source: str = ""
    model: str = ""
    record: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)


def _check_latents(x: torch.Tensor, where: str) -> None:
    """Shape, dtype and finiteness, each failure with a one-line message naming ``where``."""
    shape = tuple(x.shape)
    if x.ndim != 4 or shape[0] != LATENT_CHANNELS or min(shape) < 1:
        raise InputError(
            f"{where} has shape {list(shape)}, expected {_SHAPE}",
            hint="latents are 16 channels × latent frames × height/8 × width/8 (no batch dimension)",
        )
    if not x.is_floating_point():
        raise InputError(f"{where} holds {x.dtype} values, expected floating point", hint="save them as float32")
    nan, inf = int(torch.isnan(x).sum()), int(torch.isinf(x).sum())
    if nan or inf:
        raise InputError(
            f"{where} contains {nan} NaN and {inf} infinite values (of {x.numel()})",
            hint="the generation diverged: try float32/bfloat16 instead of float16, or another seed",
        )


def _derived(x: torch.Tensor) -> dict[str, int]:
    """Pixel frames and size implied by a [16, F, h, w] latent."""
    f, h, w = x.shape[1:]
    return {"frames": TEMPORAL_STRIDE * (f - 1) + 1, "width": SPATIAL_STRIDE * w, "height": SPATIAL_STRIDE * h}


def save_latents(
    path: str | os.PathLike[str],
    latents: torch.Tensor,
    *,
    fps: float,
    source: str,
    model: str,
    record: dict[str, Any] | None = None,
    force: bool = False,
) -> Path:
    """Write ``latents`` [16, F, H/8, W/8] (saved as float32) atomically; returns the path written."""
    from safetensors.torch import save_file

    target = check_output_path(path, force=force)
    _check_latents(latents, "the latents")
    if not (fps > 0 and math.isfinite(fps)):
        raise InputError(f"fps must be a positive number, got {fps}", hint="Wan 2.1 videos are 16 fps")
    x = latents.detach().to("cpu", torch.float32).contiguous()
    meta = {"format": FORMAT, "fps": f"{fps:g}" if float(fps).is_integer() else repr(float(fps))}
    meta |= {k: str(v) for k, v in _derived(x).items()} | {"source": str(source), "model": str(model)}
    if record is not None:
        meta["record"] = json.dumps(record, ensure_ascii=False)  # TypeError before anything is written
    tmp = temp_beside(target)
    try:
        save_file({"latents": x}, str(tmp), metadata=meta)
        os.replace(tmp, target)
    except OSError as e:
        raise InputError(f"cannot write {target}: {e.strerror or e}", hint="check free disk space") from e
    finally:
        tmp.unlink(missing_ok=True)  # gone already after the rename; left only by a failure
    return target


def _number(meta: dict[str, str], key: str, where: Path) -> float | None:
    if key not in meta:
        return None
    try:
        value = float(meta[key])
    except ValueError:
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        raise InputError(f"{where}: metadata {key}={meta[key]!r} is not a positive number", hint="fix or re-encode")
    return value


def load_latents(path: str | os.PathLike[str]) -> LatentsFile:
    """Read and check a latents file; float16/bfloat16 are upcast to float32. Every problem is an InputError."""
    from safetensors import SafetensorError, safe_open

    p = Path(path).expanduser()
    if not p.is_file():
        what = "is a directory" if p.is_dir() else "does not exist"
        raise InputError(f"{p} {what}", hint="pass a latents file written by `wan encode` (.safetensors)")
    try:
        with safe_open(str(p), framework="pt") as f:
            keys, meta = list(f.keys()), dict(f.metadata() or {})
            if "latents" not in keys:
                raise InputError(
                    f"{p} has no 'latents' tensor (it holds {', '.join(keys) or 'no tensors'})",
                    hint="pass a latents file written by `wan encode`, not a model checkpoint",
                )
            x = f.get_tensor("latents")
    except (SafetensorError, OSError) as e:
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InputError(
            f"{p} is not a readable safetensors file ({why})",
            hint="the file is truncated or corrupt, or not a latents file: encode the video again",
        ) from e
    _check_latents(x, str(p))
    derived = _derived(x)
    for key, value in derived.items():
        if _number(meta, key, p) not in (None, value):
            raise InputError(
                f"{p}: metadata says {key}={meta[key]} but the latents {list(x.shape)} give {value}",
                hint="the file was edited or written by another tool: encode the video again",
            )
    if meta.get("format", FORMAT).startswith("wan-latents/") and meta.get("format", FORMAT) != FORMAT:
        raise InputError(f"{p} is in format {meta['format']}, this wan reads {FORMAT}", hint="upgrade wan")
    try:
        record = json.loads(meta["record"]) if meta.get("record") else {}
    except json.JSONDecodeError as e:
        raise InputError(f"{p}: the settings record is not valid JSON ({e.msg})", hint="encode the video again") from e
    return LatentsFile(
        latents=x.to(torch.float32),
        fps=_number(meta, "fps", p) or 16.0,
        frames=derived["frames"],
        width=derived["width"],
        height=derived["height"],
        source=meta.get("source", ""),
        model=meta.get("model", ""),
        record=record if isinstance(record, dict) else {},
        metadata=meta,
    )
