"""Running the Wan 2.1 VAE over a video chunk by chunk and tile by tile: the streaming encoder and decoder.

The network (``vae.py``) turns one chunk into the next latent frame (encoder) or one latent frame into its pixel
frames (decoder), carrying what its causal convolutions need in a ``FeatureCache``. This module feeds it: it groups
incoming frames into chunks (1 frame, then 4 per latent), checks the frame counts (1 + 4k), and optionally splits
every frame into overlapping spatial tiles, each with its own cache, cross-fading the tiles' outputs. Memory then
depends on the tile size, never on the video length or the frame size.

Facts: ``wan21-architecture.md`` §4.4-4.6.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator

import torch

from .errors import InputError
from .request import check_frame_count
from .vae import LATENT_CHANNELS, SPATIAL_STRIDE, TEMPORAL_STRIDE, FeatureCache, Tiling, WanVAE

ChunkFn = Callable[[torch.Tensor, FeatureCache], torch.Tensor]  # one chunk (or tile of it) + its cache → output


# --------------------------------------------------------------------------------------------------------------------
# Frame checks
# --------------------------------------------------------------------------------------------------------------------


def _check_frames(frames: torch.Tensor, what: str) -> None:
    """[B, 3, t, H, W] with H and W multiples of 8, else InputError."""
    if frames.ndim != 5 or frames.shape[1] != 3:
        raise InputError(f"{what} must be [B, 3, T, H, W], got shape {tuple(frames.shape)}")
    h, w = frames.shape[-2:]
    if h % SPATIAL_STRIDE or w % SPATIAL_STRIDE:
        raise InputError(f"frame size {w}x{h} is not a multiple of 8", hint="resize or crop to multiples of 16")


# --------------------------------------------------------------------------------------------------------------------
# Spatial tiling
# --------------------------------------------------------------------------------------------------------------------


def _spans(length: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """Tiles along one axis as (start, stop, overlap with the previous tile, overlap with the next tile)."""
    if length <= tile:
        return [(0, length, 0, 0)]
    starts = [*range(0, length - tile, tile - overlap), length - tile]
    stops = [s + tile for s in starts]
    return [
        (s, e, stops[j - 1] - s if j else 0, e - starts[j + 1] if j + 1 < len(starts) else 0)
        for j, (s, e) in enumerate(zip(starts, stops, strict=True))
    ]


def _ramp(n: int, fade_in: int, fade_out: int) -> torch.Tensor:
    """Blend weights along one axis: linear ramps across the overlaps, 1 elsewhere (never 0)."""
    i = torch.arange(n, dtype=torch.float32)
    w = torch.ones(n)
    if fade_in:
        w = torch.minimum(w, (i + 1) / (fade_in + 1))
    if fade_out:
        w = torch.minimum(w, (n - i) / (fade_out + 1))
    return w


class _TiledRunner:
    """Runs a per-chunk function tile by tile, one FeatureCache per tile, and cross-fades the tiles' outputs.

    Input coordinates are in units of ``px_in`` pixels (8 for latents, 1 for frames), outputs in ``px_out``.
    Without tiling it is a single full-frame tile: the plain streaming path.
    """

    def __init__(self, in_hw: tuple[int, int], px_in: int, px_out: int, tiling: Tiling | None) -> None:
        self.px_in, self.px_out = px_in, px_out
        h, w = in_hw
        if tiling is None:
            ys, xs = [(0, h, 0, 0)], [(0, w, 0, 0)]
        else:
            tile, overlap = tiling.tile // px_in, tiling.overlap // px_in
            ys, xs = _spans(h, tile, overlap), _spans(w, tile, overlap)
        self.tiles = [(y, x) for y in ys for x in xs]
        self.caches = [FeatureCache() for _ in self.tiles]
        self.out_hw = (self._o(h), self._o(w))
        self.weights = [
            _ramp(self._o(y1 - y0), self._o(yi), self._o(yo))[:, None]
            * _ramp(self._o(x1 - x0), self._o(xi), self._o(xo))[None, :]
            for (y0, y1, yi, yo), (x0, x1, xi, xo) in self.tiles
        ]  # [tile h, tile w] output-space blend weights

    def _o(self, a: int) -> int:
        return a * self.px_in // self.px_out

    def run(self, chunk: torch.Tensor, fn: ChunkFn) -> torch.Tensor:
        if len(self.tiles) == 1:
            self.caches[0].start_chunk()
            return fn(chunk, self.caches[0])
        acc = wsum = None
        for ((y0, y1, _, _), (x0, x1, _, _)), cache, weight in zip(self.tiles, self.caches, self.weights, strict=True):
            cache.start_chunk()
            piece = fn(chunk[..., y0:y1, x0:x1], cache).float()  # [B, C, t, tile h, tile w]
            if acc is None or wsum is None:
                acc = piece.new_zeros(*piece.shape[:3], *self.out_hw)
                wsum = piece.new_zeros(*self.out_hw)
            wgt = weight.to(piece.device)
            acc[..., self._o(y0) : self._o(y1), self._o(x0) : self._o(x1)] += piece * wgt
            wsum[self._o(y0) : self._o(y1), self._o(x0) : self._o(x1)] += wgt
        assert acc is not None and wsum is not None
        return acc / wsum


# --------------------------------------------------------------------------------------------------------------------
# Streaming
# --------------------------------------------------------------------------------------------------------------------


class StreamEncoder:
    """Feed frames in any grouping; get each latent frame as soon as its frames are in.

    Frame 0 makes latent 0 alone; frames 4k-3..4k make latent k. ``close()`` checks that no partial group is left
    (the total must be 1 + 4k frames).
    """

    def __init__(self, vae: WanVAE, tiling: Tiling | None) -> None:
        self.vae = vae
        self.tiling = tiling
        self._runner: _TiledRunner | None = None
        self._pending: list[torch.Tensor] = []
        self.frames_in = 0
        self.latents_out = 0

    @torch.no_grad()
    def push(self, frames: torch.Tensor) -> Iterator[torch.Tensor]:
        """frames [B, 3, t, H, W] in [-1, 1] → yields latent frames [B, 16, 1, H/8, W/8] float32 as they complete."""
        _check_frames(frames, "frames")
        if self._runner is None:
            self._runner = _TiledRunner((frames.shape[-2], frames.shape[-1]), 1, SPATIAL_STRIDE, self.tiling)
        self._pending.append(frames.to(self.vae.device, self.vae.dtype))
        self.frames_in += frames.shape[2]
        buf = torch.cat(self._pending, dim=2) if len(self._pending) > 1 else self._pending[0]
        while True:
            need = 1 if self.latents_out == 0 else TEMPORAL_STRIDE
            if buf.shape[2] < need:
                break
            chunk, buf = buf[:, :, :need], buf[:, :, need:]
            self.latents_out += 1
            yield self._runner.run(chunk, self.vae.encode_chunk)
        self._pending = [buf] if buf.shape[2] else []

    def close(self) -> None:
        """Raise InputError if frames are left over (the total was not 1 + 4k)."""
        if self._pending or self.frames_in == 0:
            check_frame_count(self.frames_in)


class StreamDecoder:
    """Feed latent frames (any number per push); get pixel frames back: 1 for the first latent, then 4 per latent.

    ``frame_slice``: how many frames the decoder's full-resolution stages hold at a time (``Decoder3d.forward``);
    None runs each chunk whole.
    """

    def __init__(self, vae: WanVAE, tiling: Tiling | None, frame_slice: int | None) -> None:
        self.vae = vae
        self.tiling = tiling
        self.frame_slice = frame_slice
        self._runner: _TiledRunner | None = None
        self.latents_in = 0
        self._fn: ChunkFn = functools.partial(vae.decode_chunk, frame_slice=frame_slice)

    @torch.no_grad()
    def push(self, latents: torch.Tensor) -> Iterator[torch.Tensor]:
        """latents [B, 16, n, h, w] → yields [B, 3, 1|4, 8h, 8w] float32 in [-1, 1], one item per latent frame."""
        if latents.ndim != 5 or latents.shape[1] != LATENT_CHANNELS:
            raise InputError(f"latents must be [B, 16, n, h, w], got shape {tuple(latents.shape)}")
        if self._runner is None:
            self._runner = _TiledRunner((latents.shape[-2], latents.shape[-1]), SPATIAL_STRIDE, 1, self.tiling)
        latents = latents.to(self.vae.device)
        for i in range(latents.shape[2]):
            self.latents_in += 1
            yield self._runner.run(latents[:, :, i : i + 1], self._fn).clamp_(-1.0, 1.0)


@torch.no_grad()
def encode_whole(vae: WanVAE, video: torch.Tensor, tiling: Tiling | None) -> torch.Tensor:
    """video [B, 3, 1+4k, H, W] in [-1, 1] → normalised latents [B, 16, 1+k, H/8, W/8] float32.

    The frame count is checked before anything runs (a stream only finds out at its end)."""
    _check_frames(video, "video")
    check_frame_count(video.shape[2])
    enc = StreamEncoder(vae, tiling)
    out = list(enc.push(video))
    enc.close()
    return torch.cat(out, dim=2)
