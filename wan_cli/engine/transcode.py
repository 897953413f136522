"""The VAE round trip between video files and latents files, streamed: what `wan encode` and `wan decode` run.

- :func:`encode_video`: ffmpeg decodes (and resizes/crops) ``CHUNK_FRAMES`` frames at a time → the causal VAE's
  :class:`StreamEncoder` → each latent frame straight to disk (:class:`LatentsWriter`).
- :func:`decode_latents`: the latents file is read one latent frame at a time → :class:`StreamDecoder` → the MP4
  writer. On CUDA each decoded chunk is quantised to uint8 on the GPU and copied into pinned host memory without
  blocking, and handed to ffmpeg one chunk later, so the copy and ffmpeg's encoding overlap the next decode.

Memory is a chunk in each direction, whatever the video's length. Inputs are checked (and too-large sizes refused)
before the VAE is loaded; the VAE may be given loaded, as a weights path, or as a function returning either (called
only once the input has passed its checks). Both return a :class:`Transcoded` whose ``record`` is the settings
record with every timing (the latents file holds it too; for a video it is the sidecar's, as the MP4 comment is
written when the file is opened and so has the load time only).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from .checkpoints import load_vae
from .devices import resolve_device
from .errors import InputError
from .latents import LatentsWriter, iter_latents, read_latents_info
from .memory import check_fits
from .request import check_frame_count
from .vae import TEMPORAL_STRIDE, Tiling, WanVAE
from .video import VideoReader, VideoWriter, to_rgb24

CHUNK_FRAMES = 16  # frames read from ffmpeg at a time: 4 latent frames; memory ∝ this, not the video length
ProgressFn = Callable[[str, int, int], None]  # (phase, done, total)
VaeSource = WanVAE | str | os.PathLike[str] | Callable[[], WanVAE | str | os.PathLike[str]]  # loaded, or where from


@dataclass(kw_only=True)
class Transcoded:
    """What :func:`encode_video` / :func:`decode_latents` wrote."""

    path: Path  # the file written
    record: dict[str, Any]  # the settings record, timings included
    frames: int  # pixel frames encoded (4k+1) or written
    frames_read: int  # encode: the source frames decoded (≥ frames: a tail short of 4 is dropped); decode: = frames


def _device_of(vae: VaeSource, device: str | None) -> str:
    return str(vae.device) if isinstance(vae, WanVAE) else resolve_device(device)


def _load(vae: VaeSource, device: str, dtype: torch.dtype) -> tuple[WanVAE, str | None]:
    """The VAE to run → (vae, its weights path or None when it came loaded)."""
    if not isinstance(vae, WanVAE) and callable(vae):
        vae = vae()
    if isinstance(vae, WanVAE):
        return vae, None
    return load_vae(Path(vae), device=device, dtype=dtype), str(vae)


def _record(dst: Path, src: Path, model: str | None, vae: WanVAE, weights: str | None, frames: int, width: int,
            height: int, fps: float, extra: Mapping[str, Any] | None) -> dict[str, Any]:  # fmt: skip
    """The record's common fields; ``extra``, the caller's, may replace ``output`` and add its own (the tool's
    version: the engine does not know the package it ships in)."""
    record: dict[str, Any] = {
        "output": str(dst), "source": str(src), "model": model, "vae": weights, "device": str(vae.device),
        "dtype": str(vae.dtype).removeprefix("torch."), "frames": frames, "width": width, "height": height,
        "fps": fps, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }  # fmt: skip
    return record | dict(extra or {})


def _timings(t0: float, t_loaded: float, phase: str, t1: float | None = None) -> dict[str, float]:
    now = time.perf_counter()
    out = {"load_s": round(t_loaded - t0, 3)}
    if t1 is not None:
        out |= {f"{phase}_s": round(now - t1, 3), "total_s": round(now - t0, 3)}
    return out


# --------------------------------------------------------------------------------------------------------------------
# Video → latents
# --------------------------------------------------------------------------------------------------------------------


def _encode_size(src: Path, size: tuple[int, int] | None, frames: int | None) -> tuple[int, int]:
    """``size``, else the source's, cropped to multiples of 16 (the reader centre-crops)."""
    with VideoReader(src, max_frames=frames) as probe:  # probes only: no frame is decoded here
        sw, sh = probe.source_width, probe.source_height
    if size is not None:
        return size
    wh = (sw // 16 * 16, sh // 16 * 16)
    if 0 in wh:
        raise InputError(f"{src} is {sw}x{sh}: too small", hint="the VAE needs at least 16x16 frames")
    return wh


def encode_video(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    vae: VaeSource,
    device: str | None = "auto",
    dtype: torch.dtype = torch.float32,  # the VAE's default, as the official code runs it
    size: tuple[int, int] | None = None,
    frames: int | None = None,
    tiling: Tiling | None = None,
    model: str | None = None,
    force: bool = False,
    record: Mapping[str, Any] | None = None,
    progress: ProgressFn | None = None,
    chunk_frames: int = CHUNK_FRAMES,
) -> Transcoded:
    """A video → a latents file ``dst`` (``latents`` [16, F, H/8, W/8], normalised; ``wan-latents/1``).

    ``size=(W, H)`` scales to cover and centre-crops (multiples of 8; default: the source's size cropped to
    multiples of 16); ``frames`` (4n+1) takes the first N frames, else all down to the nearest 4n+1 (fewer than
    asked is an error). ``model`` is the name recorded in the file; ``record`` adds fields to the settings record
    (and may replace ``output``, e.g. with the final name of a staged file). ``device``/``dtype`` apply when the VAE
    is loaded here."""
    t0 = time.perf_counter()
    src = Path(src).expanduser()
    if frames is not None:
        check_frame_count(frames)
    wh = _encode_size(src, size, frames)
    dev = _device_of(vae, device)
    check_fits(wh[0], wh[1], frames or 1, dev, tile=tiling.tile if tiling else None, what=f"encoding {src.name}")
    model_vae, weights = _load(vae, dev, dtype)
    t_loaded = t1 = time.perf_counter()
    encoder = model_vae.stream_encoder(tiling)
    with LatentsWriter(dst, force=force) as sink, VideoReader(src, size=wh, max_frames=frames) as reader:
        for chunk in reader.chunks(chunk_frames):  # [3, T, H, W]
            for z in encoder.push(chunk[None]):  # [1, 16, 1, h, w]: to disk at once, never accumulated
                sink.append(z[0, :, 0])
            if progress is not None:
                progress("encode", encoder.frames_in, reader.frame_count or encoder.frames_in)
        used = 1 + TEMPORAL_STRIDE * (sink.count - 1)
        if frames is not None and used < frames:
            raise InputError(f"{src} has only {encoder.frames_in} frames; --frames {frames} asks for more",
                             hint=f"use --frames {used} or leave --frames out")  # fmt: skip
        h, w = sink.frame_shape or (0, 0)
        rec = _record(sink.path, src, model, model_vae, weights, used, wh[0], wh[1], reader.fps, record)
        rec |= {"latent_shape": [16, sink.count, h, w], "timings": _timings(t0, t_loaded, "encode", t1)}
        sink.finish(fps=reader.fps, source=str(src), model=model or weights or "", record=rec)
    return Transcoded(path=sink.path, record=rec, frames=used, frames_read=encoder.frames_in)


# --------------------------------------------------------------------------------------------------------------------
# Latents → video
# --------------------------------------------------------------------------------------------------------------------


class _HostCopy:
    """One decoded chunk on its way to the host as uint8 [T, H, W, 3].

    On CUDA: quantised on the GPU (a quarter of the float32 bytes), copied into pinned memory without blocking (the
    copy is queued behind the decode on the current stream), an event marks its end; :meth:`wait` waits for that
    event only. torch's pinned allocator reuses a buffer only after the copies recorded on it are done. Elsewhere
    (CPU, MPS) a plain, blocking copy."""

    def __init__(self, chunk: torch.Tensor) -> None:
        rgb = to_rgb24(chunk)  # [T, H, W, 3] uint8, on the decoder's device
        self.event: torch.cuda.Event | None = None
        if rgb.device.type != "cuda":
            self.host = rgb.cpu()
            return
        self.host = torch.empty(rgb.shape, dtype=rgb.dtype, pin_memory=True)
        self.host.copy_(rgb, non_blocking=True)
        self.event = torch.cuda.Event()
        self.event.record()

    def wait(self) -> torch.Tensor:
        if self.event is not None:
            self.event.synchronize()
        return self.host


def _host_chunks(chunks: Iterator[torch.Tensor]) -> Iterator[torch.Tensor]:
    """Decoded chunks → the same frames on the host, each yielded once the next one's copy is queued (one behind)."""
    pending: _HostCopy | None = None
    for chunk in chunks:
        ready, pending = pending, _HostCopy(chunk)
        if ready is not None:
            yield ready.wait()
    if pending is not None:
        yield pending.wait()


def decode_latents(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    vae: VaeSource,
    device: str | None = "auto",
    dtype: torch.dtype = torch.float32,
    fps: float | None = None,
    tiling: Tiling | None = None,
    model: str | None = None,
    force: bool = False,
    record: Mapping[str, Any] | None = None,
    progress: ProgressFn | None = None,
) -> Transcoded:
    """A latents file → an H.264 MP4 ``dst``, decoded and written one latent frame at a time.

    ``fps`` defaults to the rate recorded in the file (else 16). The MP4's comment holds the record with the load
    time; the returned record adds the decode and total times (write it as the sidecar). NaN/Inf anywhere in the
    file fail before the VAE is loaded."""
    t0 = time.perf_counter()
    lat = read_latents_info(src)  # the header only: latent frames are read one at a time below
    if fps is not None and not (fps > 0 and math.isfinite(fps)):
        raise InputError(f"fps must be a positive number, got {fps}", hint="e.g. 16")
    dev = _device_of(vae, device)
    check_fits(lat.width, lat.height, lat.frames, dev, tile=tiling.tile if tiling else None,
               what=f"decoding {lat.path.name}")  # fmt: skip
    for _ in iter_latents(lat, chunk=8):  # a quick pass for NaN/Inf before any model is loaded (memory: 8 frames)
        pass
    model_vae, weights = _load(vae, dev, dtype)
    t_loaded = time.perf_counter()
    rate = fps if fps is not None else lat.fps
    out = Path(dst).expanduser()
    rec = _record(out, lat.path, model, model_vae, weights, lat.frames, lat.width, lat.height, rate, record)
    rec["generation"] = lat.record or None
    opened = rec | {"timings": _timings(t0, t_loaded, "decode")}  # what the MP4 can hold: known at open
    t1 = time.perf_counter()
    decoder = model_vae.stream_decoder(tiling)
    with VideoWriter(dst, lat.width, lat.height, rate, force=force, metadata=opened) as writer:
        decoded = (chunk for z in iter_latents(lat) for chunk in decoder.push(z[None]))  # [1, 3, 1|4, H, W]
        for frames in _host_chunks(decoded):  # uint8 [1|4, H, W, 3] on the host
            writer.write(frames.numpy())
            if progress is not None:
                progress("decode", writer.frames_written, lat.frames)
    rec["timings"] = _timings(t0, t_loaded, "decode", t1)
    return Transcoded(path=writer.path, record=rec, frames=writer.frames_written, frames_read=writer.frames_written)
