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

Files are written to a hidden temp file beside the target and renamed onto it, so a target is never half-written;
any failure (a full disk, Ctrl-C, SIGTERM) deletes the temp files. :class:`LatentsWriter` insists on ``.safetensors``.

Long videos: :class:`LatentsWriter` takes latent frames one at a time and spills them to a raw temp file, then
writes the safetensors file (header + channel-major data) from it; :func:`read_latents_info` reads only the header
and :func:`iter_latents` yields latent frames by slices. Memory stays one frame, whatever the length.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import numpy as np
import torch

from .errors import InputError
from .outputs import check_extension, check_output_path, close_quietly, remove_quietly, temp_beside
from .outputs import check_not_input as check_not_input  # re-exported beside the writers, as in video.py
from .vae import LATENT_CHANNELS, SPATIAL_STRIDE, TEMPORAL_STRIDE

FORMAT = "wan-latents/1"
_SHAPE = "[16, F, H/8, W/8]"


@dataclass(kw_only=True)
class LatentsInfo:
    """A latents file's header: shape and metadata, parsed (the raw strings in ``metadata``); no tensor data."""

    path: Path
    shape: tuple[int, ...]  # [16, F_lat, H/8, W/8]
    fps: float
    frames: int  # pixel frames: 4·(F_lat − 1) + 1
    width: int  # pixels
    height: int
    source: str = ""
    model: str = ""
    record: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(kw_only=True)
class LatentsFile(LatentsInfo):
    """A loaded latents file: the header plus the tensor."""

    latents: torch.Tensor  # [16, F_lat, H/8, W/8] float32, CPU


def _check_shape_dtype(x: torch.Tensor, where: str) -> None:
    shape = tuple(x.shape)
    if x.ndim != 4 or shape[0] != LATENT_CHANNELS or min(shape) < 1:
        raise InputError(
            f"{where} has shape {list(shape)}, expected {_SHAPE}",
            hint="latents are 16 channels × latent frames × height/8 × width/8 (no batch dimension)",
        )
    if not x.is_floating_point():
        raise InputError(f"{where} holds {x.dtype} values, expected floating point", hint="save them as float32")


def _check_finite(x: torch.Tensor, where: str) -> None:
    nan, inf = int(torch.isnan(x).sum()), int(torch.isinf(x).sum())
    if nan or inf:
        raise InputError(
            f"{where} contains {nan} NaN and {inf} infinite values (of {x.numel()})",
            hint="the generation diverged: try float32/bfloat16 instead of float16, or another seed",
        )


def _check_latents(x: torch.Tensor, where: str) -> None:
    """Shape, dtype and finiteness, each failure with a one-line message naming ``where``."""
    _check_shape_dtype(x, where)
    _check_finite(x, where)


def _derived(x: torch.Tensor) -> dict[str, int]:
    """Pixel frames and size implied by a [16, F, h, w] latent."""
    f, h, w = x.shape[1:]
    return {"frames": TEMPORAL_STRIDE * (f - 1) + 1, "width": SPATIAL_STRIDE * w, "height": SPATIAL_STRIDE * h}


def _metadata(
    shape: tuple[int, ...], fps: float, source: str, model: str, record: dict[str, Any] | None
) -> dict[str, str]:
    if not (fps > 0 and math.isfinite(fps)):
        raise InputError(f"fps must be a positive number, got {fps}", hint="Wan 2.1 videos are 16 fps")
    f, h, w = shape[1:]
    meta = {"format": FORMAT, "fps": f"{fps:g}" if float(fps).is_integer() else repr(float(fps))}
    meta |= {"frames": str(TEMPORAL_STRIDE * (f - 1) + 1), "width": str(SPATIAL_STRIDE * w)}
    meta |= {"height": str(SPATIAL_STRIDE * h), "source": str(source), "model": str(model)}
    if record is not None:
        meta["record"] = json.dumps(record, ensure_ascii=False)  # TypeError before anything is written
    return meta


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
    x = latents.detach().to("cpu", torch.float32).contiguous()
    meta = _metadata(tuple(x.shape), fps, source, model, record)
    tmp = temp_beside(target)
    try:
        save_file({"latents": x}, str(tmp), metadata=meta)
        os.replace(tmp, target)
    except OSError as e:
        raise _disk_error(target, e) from e
    finally:
        remove_quietly([tmp])  # gone already after the rename; left only by a failure
    return target


def _disk_error(target: Path, e: OSError) -> InputError:
    return InputError(f"cannot write {target}: {e.strerror or e}", hint="check free disk space")


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


_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}


def _existing(path: str | os.PathLike[str]) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        what = "is a directory" if p.is_dir() else "does not exist"
        raise InputError(f"{p} {what}", hint="pass a latents file written by `wan encode` (.safetensors)")
    return p


def _require_latents(p: Path, keys: list[str]) -> None:
    if "latents" not in keys:
        raise InputError(
            f"{p} has no 'latents' tensor (it holds {', '.join(keys) or 'no tensors'})",
            hint="pass a latents file written by `wan encode`, not a model checkpoint",
        )


def _unreadable(p: Path, e: Exception) -> InputError:
    why = str(e).splitlines()[0] if str(e) else type(e).__name__
    return InputError(
        f"{p} is not a readable safetensors file ({why})",
        hint="the file is truncated or corrupt, or not a latents file: encode the video again",
    )


def _parse_meta(p: Path, x: torch.Tensor, meta: dict[str, str]) -> LatentsInfo:
    """The metadata checked against the tensor's shape (``x`` may be on the meta device)."""
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
    return LatentsInfo(
        path=p,
        shape=tuple(x.shape),
        fps=_number(meta, "fps", p) or 16.0,
        frames=derived["frames"],
        width=derived["width"],
        height=derived["height"],
        source=meta.get("source", ""),
        model=meta.get("model", ""),
        record=record if isinstance(record, dict) else {},
        metadata=meta,
    )


def load_latents(path: str | os.PathLike[str]) -> LatentsFile:
    """Read and check a latents file; float16/bfloat16 are upcast to float32. Every problem is an InputError."""
    from safetensors import SafetensorError, safe_open

    p = _existing(path)
    try:
        with safe_open(str(p), framework="pt") as f:
            keys, meta = list(f.keys()), dict(f.metadata() or {})
            _require_latents(p, keys)
            x = f.get_tensor("latents")
    except (SafetensorError, OSError) as e:
        raise _unreadable(p, e) from e
    _check_latents(x, str(p))
    return LatentsFile(**vars(_parse_meta(p, x, meta)), latents=x.to(torch.float32))


# --------------------------------------------------------------------------------------------------------------------
# Streaming: write and read one latent frame at a time
# --------------------------------------------------------------------------------------------------------------------


class LatentsWriter:
    """Build a latents file from latent frames [16, h, w] given one at a time, holding none of them in memory.

    Frames are appended to a raw float32 temp file (frame-major); ``finish()`` writes the safetensors file — an
    8-byte little-endian header length, the JSON header, then the tensor channel-major as [16, F, h, w] — by
    reading each channel's frames back from that file, and renames it onto the target. Any exception or
    BaseException in ``append`` or ``finish`` (a full disk, Ctrl-C, SIGTERM), or leaving the ``with`` block
    unfinished, deletes both temp files; the interrupt itself is what comes out, never a cleanup error.
    """

    def __init__(self, path: str | os.PathLike[str], *, force: bool = False) -> None:
        self.path = check_output_path(path, force=force)
        check_extension(self.path, ".safetensors", "a latents file")
        self.force = force
        self._raw = temp_beside(self.path)
        self._out = temp_beside(self.path)
        self._file: IO[bytes] | None = None  # the raw spill file, opened by the first frame
        self._closed = False
        self.frame_shape: tuple[int, int] | None = None
        self.count = 0

    def __enter__(self) -> LatentsWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.abort()  # after finish() only the spent temp names are left; without it, nothing may stay behind

    def append(self, frame: torch.Tensor) -> None:
        """One latent frame [16, h, w] (any float dtype, any device). A writer that raised is aborted."""
        if self._closed:
            raise ValueError(f"append to a finished or aborted LatentsWriter ({self.path})")
        try:
            x = frame.detach().to("cpu", torch.float32)
            if x.ndim != 3 or x.shape[0] != LATENT_CHANNELS:
                raise InputError(f"a latent frame must be [16, h, w], got {list(x.shape)}")
            if self.frame_shape is None:
                self.frame_shape = (x.shape[1], x.shape[2])
            elif (x.shape[1], x.shape[2]) != self.frame_shape:
                raise InputError(f"latent frame {self.count} is {list(x.shape)}, the first was {self.frame_shape}")
            bad = int((~torch.isfinite(x)).sum())
            if bad:
                raise InputError(f"latent frame {self.count} has {bad} NaN/infinite values",
                                 hint="the encoder diverged: check the input video and the VAE weights")  # fmt: skip
            if self._file is None:
                self._file = self._raw.open("xb")
            self._file.write(x.contiguous().numpy().tobytes())
        except OSError as e:
            self.abort()
            raise _disk_error(self.path, e) from e
        except BaseException:
            self.abort()
            raise
        self.count += 1

    def finish(self, *, fps: float, source: str, model: str, record: dict[str, Any] | None = None) -> Path:
        """Write the safetensors file and rename it onto the target; returns the path written."""
        if self._closed:
            raise ValueError(f"finish of a finished or aborted LatentsWriter ({self.path})")
        try:
            self._finish(fps, source, model, record)
        except OSError as e:
            self.abort()
            raise _disk_error(self.path, e) from e
        except BaseException:
            self.abort()
            raise
        self.abort()  # the target is in place: only the raw spill file is left to delete
        return self.path

    def _finish(self, fps: float, source: str, model: str, record: dict[str, Any] | None) -> None:
        if self.frame_shape is None or self._file is None:
            raise InputError("no latent frames were written", hint="the input had no frames")
        h, w = self.frame_shape
        shape = (LATENT_CHANNELS, self.count, h, w)
        nbytes = 4 * math.prod(shape)
        meta = _metadata(shape, fps, source, model, record)
        header = json.dumps({"__metadata__": meta, "latents": {"dtype": "F32", "shape": list(shape),
                                                                "data_offsets": [0, nbytes]}}).encode()  # fmt: skip
        header += b" " * (-len(header) % 8)  # the data starts 8-byte aligned
        self._file.close()  # ENOSPC can come here, with the last buffered frames
        frames = np.memmap(self._raw, dtype=np.float32, mode="r", shape=(self.count, LATENT_CHANNELS, h, w))
        out = self._out.open("xb")
        try:
            out.write(struct.pack("<Q", len(header)) + header)
            step = max(1, (64 << 20) // (4 * h * w))  # ≤ 64 MB read per slice
            for c in range(LATENT_CHANNELS):
                for f0 in range(0, self.count, step):
                    out.write(np.ascontiguousarray(frames[f0 : f0 + step, c]).tobytes())
        except BaseException:
            close_quietly(out)  # not `with`: its close would raise ENOSPC again, over an interrupt
            raise
        finally:
            del frames
        out.close()  # ENOSPC can come here too
        if self.path.exists() and not self.force:  # appeared while we were writing: still never clobber it
            raise InputError(f"{self.path} already exists", hint="pass --force to overwrite it")
        os.replace(self._out, self.path)

    def abort(self) -> None:
        """Close and delete the temp files; the target is left as it was (or as finish() made it). Safe to repeat."""
        self._closed = True
        if self._file is not None:
            close_quietly(self._file)
        remove_quietly([self._raw, self._out])


def read_latents_info(path: str | os.PathLike[str]) -> LatentsInfo:
    """Check a latents file by its header (shape, dtype, metadata) without reading the tensor."""
    from safetensors import SafetensorError, safe_open

    p = _existing(path)
    try:
        with safe_open(str(p), framework="pt") as f:
            keys, meta = list(f.keys()), dict(f.metadata() or {})
            _require_latents(p, keys)
            sl = f.get_slice("latents")
            shape, dtype = tuple(sl.get_shape()), str(sl.get_dtype())
    except (SafetensorError, OSError) as e:
        raise _unreadable(p, e) from e
    probe = torch.empty(shape, dtype=_DTYPES.get(dtype, torch.int32), device="meta")
    _check_shape_dtype(probe, str(p))
    return _parse_meta(p, probe, meta)


def iter_latents(info: LatentsInfo, chunk: int = 1) -> Iterator[torch.Tensor]:
    """Latent frames [16, n ≤ chunk, h, w] float32, read slice by slice; NaN/Inf are an InputError when met."""
    from safetensors import safe_open

    with safe_open(str(info.path), framework="pt") as f:
        sl = f.get_slice("latents")
        for f0 in range(0, info.shape[1], chunk):
            x = sl[:, f0 : f0 + chunk].to(torch.float32)
            _check_finite(x, f"{info.path} (latent frames {f0}–{f0 + x.shape[1] - 1})")
            yield x
