"""The Wan 2.1 3D causal VAE network, with an explicit feature cache.

Facts: ``wan21-architecture.md`` §4. The video is compressed 4×8×8 (t, h, w) into 16 channels. Time is causal: frame
0 is encoded alone, then every 4 frames make one latent frame, and every causal convolution carries the last two
input frames of a chunk over to the next one in a ``FeatureCache``. That cache is what lets the VAE stream: memory
depends on the frame size, never on the video length. Grouping frames into chunks, checking frame counts and
spatial tiling live in ``vae_stream.py``; ``WanVAE.encode``/``decode``/``stream_*`` hand over to it.

Module attributes are the official ``Wan2.1_VAE.pth`` keys (194 tensors at the real config).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from .errors import InputError

if TYPE_CHECKING:
    from .vae_stream import StreamDecoder, StreamEncoder

CACHE_T = 2  # frames a causal conv keeps from the previous chunk (its temporal kernel is 3)
LATENT_CHANNELS = 16
TEMPORAL_STRIDE = 4
SPATIAL_STRIDE = 8

# Per-channel latent statistics (official WanVAE.__init__, verbatim); latents are (mu - mean) / std.
LATENT_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
               0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)  # fmt: skip
LATENT_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
              3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)  # fmt: skip


@dataclass(frozen=True)
class WanVAEConfig:
    """The real Wan 2.1 VAE by default; smaller widths build tiny test models with the same structure."""

    dim: int = 96
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    temperal_downsample: tuple[bool, ...] = (False, True, True)  # official spelling; the decoder uses the reverse

    def __post_init__(self) -> None:
        if len(self.temperal_downsample) != len(self.dim_mult) - 1:
            raise ValueError("temperal_downsample needs one entry per downsampling stage (len(dim_mult) - 1)")
        if sum(self.temperal_downsample) != 2 or len(self.dim_mult) != 4:
            raise ValueError("the Wan 2.1 VAE has 3 spatial (×8) and 2 temporal (×4) downsampling stages")


@dataclass(frozen=True)
class Tiling:
    """Spatial tiles for frames too large for memory, in pixels (multiples of 8); ``vae_stream`` cross-fades them."""

    tile: int = 256
    overlap: int = 64

    def __post_init__(self) -> None:
        if self.tile % SPATIAL_STRIDE or self.overlap % SPATIAL_STRIDE or not 0 <= self.overlap < self.tile:
            raise InputError(
                f"bad tiling {self.tile}/{self.overlap} px",
                hint="tile and overlap must be multiples of 8 with 0 <= overlap < tile, e.g. 256 and 64",
            )


# --------------------------------------------------------------------------------------------------------------------
# Feature cache and building blocks
# --------------------------------------------------------------------------------------------------------------------


class FeatureCache:
    """What every causal conv of one encoder or decoder pass remembers from the previous chunk.

    One slot per temporal conv, visited in the same order on every chunk: ``start_chunk`` rewinds the cursor and
    each conv takes the next slot. A slot holds the last ``CACHE_T`` frames of that conv's input (or ``None`` before
    the first chunk). Create a new cache per video (and per spatial tile).
    """

    def __init__(self) -> None:
        self.slots: list[torch.Tensor | None] = []
        self._cursor = 0

    def start_chunk(self) -> None:
        self._cursor = 0

    @property
    def cursor(self) -> int:
        return self._cursor

    def rewind(self, cursor: int) -> None:
        """Go back to an earlier position of this chunk's walk: the layers after it run again on another slice."""
        self._cursor = cursor

    def take(self) -> int:
        """Index of the next conv's slot (slots are created as the first chunk walks the network)."""
        if self._cursor == len(self.slots):
            self.slots.append(None)
        i = self._cursor
        self._cursor += 1
        return i


class CausalConv3d(nn.Conv3d):
    """Conv3d padded causally in time (2·pad frames in front, none behind), optionally after frames from the cache.

    Spatial zero padding is the convolution's own (no padded copy of the activation); the causal front is one
    concatenation of the cached history (or zero frames) with the chunk."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int, int],
        stride: int | tuple[int, int, int] = 1,
        padding: int | tuple[int, int, int] = 0,
    ) -> None:
        pt, ph, pw = (padding, padding, padding) if isinstance(padding, int) else padding
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=(0, ph, pw))
        self.time_pad = 2 * pt

    def forward(self, x: torch.Tensor, history: torch.Tensor | None = None) -> torch.Tensor:
        if history is None and x.shape[2] == 1 and self.time_pad == self.kernel_size[0] - 1 and self.stride[0] == 1:
            # The first frame of a video: every earlier tap sees zero padding, so only the last temporal tap counts.
            # A 2-D convolution with that tap gives the same frame for 1/3 of the work and no padded copy.
            w = self.weight[:, :, -1]
            return F.conv2d(x[:, :, 0], w, self.bias, self.stride[1:], self.padding[1:]).unsqueeze(2)
        front: list[torch.Tensor] = []
        missing = self.time_pad
        if history is not None and missing > 0:
            front.append(history.to(x.dtype))
            missing -= history.shape[2]
        if missing > 0:
            front.insert(0, x.new_zeros(*x.shape[:2], missing, *x.shape[3:]))
        return super().forward(torch.cat([*front, x], dim=2) if front else x)


def cached_conv(conv: CausalConv3d, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
    """Run ``conv`` on one chunk, continuing from the frames the cache kept of the previous chunk."""
    i = cache.take()
    history = cache.slots[i]
    keep = x[:, :, -CACHE_T:].clone()
    if keep.shape[2] < CACHE_T and history is not None:  # a 1-frame chunk: keep the previous last frame too
        keep = torch.cat([history[:, :, -1:], keep], dim=2)
    out = conv(x, history)
    cache.slots[i] = keep
    return out


class RMS_norm(nn.Module):
    """x / ||x||₂ over channels · sqrt(C) · gamma (an L2 normalisation; gamma keeps the official key name)."""

    def __init__(self, dim: int, images: bool = True) -> None:
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(dim, 1, 1) if images else torch.ones(dim, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1) * (self.scale * self.gamma)  # one full-size product, not two


class Upsample(nn.Upsample):
    """Nearest-exact upsampling computed in fp32 (as the official code), returned in the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type_as(x)


class ResidualBlock(nn.Module):
    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.residual = nn.Sequential(
            RMS_norm(in_dim, images=False), nn.SiLU(), CausalConv3d(in_dim, out_dim, 3, padding=1),
            RMS_norm(out_dim, images=False), nn.SiLU(), nn.Dropout(0.0), CausalConv3d(out_dim, out_dim, 3, padding=1),
        )  # fmt: skip
        self.shortcut: nn.Module = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        h = self.shortcut(x)
        for layer in self.residual:
            x = cached_conv(layer, x, cache) if isinstance(layer, CausalConv3d) else layer(x)
        return x + h


class AttentionBlock(nn.Module):
    """Single-head self-attention over the pixels of each frame (no temporal mixing, so no cache)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = RMS_norm(dim)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        identity = x
        x = x.transpose(1, 2).reshape(b * t, c, h, w)
        qkv = self.to_qkv(self.norm(x)).reshape(b * t, 1, c * 3, h * w).permute(0, 1, 3, 2).contiguous()
        q, k, v = qkv.chunk(3, dim=-1)  # [b·t, 1, h·w, c] each
        x = F.scaled_dot_product_attention(q, k, v).squeeze(1).permute(0, 2, 1).reshape(b * t, c, h, w)
        x = self.proj(x).view(b, t, c, h, w).transpose(1, 2)
        return x + identity


class Resample(nn.Module):
    """Spatial ×2 up/down sampling per frame, plus (3-D modes) a causal temporal ×2 in ``time_conv``."""

    def __init__(self, dim: int, mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.time_conv: CausalConv3d | None = None
        if mode.startswith("upsample"):
            self.resample = nn.Sequential(Upsample(scale_factor=(2.0, 2.0), mode="nearest-exact"),
                                          nn.Conv2d(dim, dim // 2, 3, padding=1))  # fmt: skip
            if mode == "upsample3d":
                self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))
        else:
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=(2, 2)))
            if mode == "downsample3d":
                self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1), padding=(0, 0, 0))

    def forward(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        if self.mode == "upsample3d":
            x = self._time_up(x, cache)
        b, c, t, h, w = x.shape
        x = self.resample(x.transpose(1, 2).reshape(b * t, c, h, w))
        x = x.view(b, t, *x.shape[1:]).transpose(1, 2)
        if self.mode == "downsample3d":
            x = self._time_down(x, cache)
        return x

    def _time_up(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        assert self.time_conv is not None
        i = cache.take()
        history = cache.slots[i]
        if history is None:
            # The very first frame is not upsampled in time (1 frame → 1 frame). Later chunks see a causal conv
            # whose history starts as two zero frames, exactly the official 'Rep' behaviour.
            b, c, _, h, w = x.shape
            cache.slots[i] = x.new_zeros(b, c, CACHE_T, h, w)
            return x
        keep = x[:, :, -CACHE_T:].clone()
        if keep.shape[2] < CACHE_T:
            keep = torch.cat([history[:, :, -1:], keep], dim=2)
        y = self.time_conv(x, history)
        cache.slots[i] = keep
        b, c2, t, h, w = y.shape
        # channels [0, C) are the earlier frame, [C, 2C) the later one: interleave them along time (t → 2t)
        return y.view(b, 2, c2 // 2, t, h, w).permute(0, 2, 3, 1, 4, 5).reshape(b, c2 // 2, 2 * t, h, w)

    def _time_down(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        assert self.time_conv is not None
        i = cache.take()
        history = cache.slots[i]
        if history is None:  # first chunk (1 frame): passed through, its last frame remembered
            cache.slots[i] = x[:, :, -1:].clone()
            return x
        keep = x[:, :, -1:].clone()
        x = self.time_conv(torch.cat([history[:, :, -1:], x], dim=2))  # stride 2: 1 + 4 → 2, 1 + 2 → 1 frames
        cache.slots[i] = keep
        return x


def _apply(layer: nn.Module, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
    if isinstance(layer, ResidualBlock | Resample):
        return layer(x, cache)
    if isinstance(layer, CausalConv3d):
        return cached_conv(layer, x, cache)
    return layer(x)


def _run(seq: nn.Sequential, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
    for layer in seq:
        x = _apply(layer, x, cache)
    return x


class Encoder3d(nn.Module):
    def __init__(self, cfg: WanVAEConfig) -> None:
        super().__init__()
        dims = [cfg.dim * u for u in (1, *cfg.dim_mult)]
        self.conv1 = CausalConv3d(3, dims[0], 3, padding=1)
        layers: list[nn.Module] = []
        for i, (in_dim, out_dim) in enumerate(itertools.pairwise(dims)):
            for _ in range(cfg.num_res_blocks):
                layers.append(ResidualBlock(in_dim, out_dim))
                in_dim = out_dim
            if i != len(cfg.dim_mult) - 1:
                layers.append(Resample(out_dim, "downsample3d" if cfg.temperal_downsample[i] else "downsample2d"))
        self.downsamples = nn.Sequential(*layers)
        c = dims[-1]
        self.middle = nn.Sequential(ResidualBlock(c, c), AttentionBlock(c), ResidualBlock(c, c))
        self.head = nn.Sequential(RMS_norm(c, images=False), nn.SiLU(),
                                  CausalConv3d(c, 2 * LATENT_CHANNELS, 3, padding=1))  # fmt: skip

    def forward(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        """One chunk [B, 3, 1 or 4, H, W] → [B, 32, 1, H/8, W/8] (mu and log-variance)."""
        x = cached_conv(self.conv1, x, cache)
        return _run(self.head, _run(self.middle, _run(self.downsamples, x, cache), cache), cache)


class Decoder3d(nn.Module):
    def __init__(self, cfg: WanVAEConfig) -> None:
        super().__init__()
        dims = [cfg.dim * u for u in (cfg.dim_mult[-1], *cfg.dim_mult[::-1])]
        temperal_upsample = cfg.temperal_downsample[::-1]
        self.conv1 = CausalConv3d(LATENT_CHANNELS, dims[0], 3, padding=1)
        c = dims[0]
        self.middle = nn.Sequential(ResidualBlock(c, c), AttentionBlock(c), ResidualBlock(c, c))
        layers: list[nn.Module] = []
        for i, (in_dim, out_dim) in enumerate(itertools.pairwise(dims)):
            if i > 0:
                in_dim //= 2  # every upsampling Resample halves the channels
            for _ in range(cfg.num_res_blocks + 1):
                layers.append(ResidualBlock(in_dim, out_dim))
                in_dim = out_dim
            if i != len(cfg.dim_mult) - 1:
                layers.append(Resample(out_dim, "upsample3d" if temperal_upsample[i] else "upsample2d"))
        self.upsamples = nn.Sequential(*layers)
        self.head = nn.Sequential(RMS_norm(dims[-1], images=False), nn.SiLU(),
                                  CausalConv3d(dims[-1], 3, 3, padding=1))  # fmt: skip

    def forward(self, x: torch.Tensor, cache: FeatureCache, frame_slice: int | None = None) -> torch.Tensor:
        """One latent frame [B, 16, 1, h, w] → [B, 3, 1 (first call) or 4, 8h, 8w].

        ``frame_slice``: once a temporal upsampling makes more frames than this, the layers after it run on slices of
        that many frames, one slice after the other (the causal cache carries each slice's last frames into the next,
        exactly as between chunks), so the full-resolution stages hold 1 frame instead of 4. Every layer after the
        first temporal upsampling is per frame or causal in time, so the output is the same up to float rounding.
        """
        layers = [self.conv1, *self.middle, *self.upsamples, *self.head]
        return _run_sliced(layers, 0, x, cache, frame_slice)


def _run_sliced(
    layers: list[nn.Module], start: int, x: torch.Tensor, cache: FeatureCache, frame_slice: int | None
) -> torch.Tensor:
    for j in range(start, len(layers)):
        x = _apply(layers[j], x, cache)
        if frame_slice is not None and x.shape[2] > frame_slice and j + 1 < len(layers):
            mark = cache.cursor
            outs = []
            for piece in x.split(frame_slice, dim=2):
                cache.rewind(mark)  # every slice visits the same cache slots, in order
                outs.append(_run_sliced(layers, j + 1, piece, cache, frame_slice))
            return torch.cat(outs, dim=2)
    return x


# --------------------------------------------------------------------------------------------------------------------
# The VAE
# --------------------------------------------------------------------------------------------------------------------


class WanVAE(nn.Module):
    """Encoder + decoder. Latents are normalised: ``(mu - LATENT_MEAN) / LATENT_STD`` per channel."""

    latent_mean: torch.Tensor  # [1, 16, 1, 1, 1] fp32 buffers (not in the state dict)
    latent_inv_std: torch.Tensor

    def __init__(self, cfg: WanVAEConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = cfg or WanVAEConfig()
        self.encoder = Encoder3d(cfg)
        self.conv1 = CausalConv3d(2 * LATENT_CHANNELS, 2 * LATENT_CHANNELS, 1)  # → mu, log_var
        self.conv2 = CausalConv3d(LATENT_CHANNELS, LATENT_CHANNELS, 1)  # applied to z before decoding
        self.decoder = Decoder3d(cfg)
        # 1/std is computed once in fp32 and decoding divides by it, as the official code does (bit parity).
        self.register_buffer("latent_mean", torch.tensor(LATENT_MEAN).view(1, -1, 1, 1, 1), persistent=False)
        self.register_buffer("latent_inv_std", 1.0 / torch.tensor(LATENT_STD).view(1, -1, 1, 1, 1), persistent=False)

    @property
    def dtype(self) -> torch.dtype:
        return self.conv1.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.conv1.weight.device

    # -- per-chunk steps (what a stream runs for each chunk, or each tile of it) ----------------------------------

    def encode_chunk(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        """Frames [B, 3, 1 (first chunk) or 4, H, W] → the normalised latent frame [B, 16, 1, H/8, W/8] float32."""
        mu = self.conv1(self.encoder(x, cache))[:, :LATENT_CHANNELS].float()
        return (mu - self.latent_mean.float()) * self.latent_inv_std.float()

    def decode_chunk(self, z: torch.Tensor, cache: FeatureCache, frame_slice: int | None) -> torch.Tensor:
        """One normalised latent frame [B, 16, 1, h, w] → [B, 3, 1 (first call) or 4, 8h, 8w] float32."""
        z = z.float() / self.latent_inv_std.float() + self.latent_mean.float()
        return self.decoder(self.conv2(z.to(self.dtype)), cache, frame_slice).float()

    # -- the API: streams and whole videos, run chunk by chunk by vae_stream -------------------------------------

    def stream_encoder(self, tiling: Tiling | None = None) -> StreamEncoder:
        """Frames in (any grouping), each latent frame out as soon as its frames are in."""
        from .vae_stream import StreamEncoder  # imported here: vae_stream builds on this module

        return StreamEncoder(self, tiling)

    def stream_decoder(self, tiling: Tiling | None = None, frame_slice: int | None = 1) -> StreamDecoder:
        """Latent frames in, pixel frames out. ``frame_slice``: frames the full-resolution stages decode at a time
        (``Decoder3d.forward``); 1 holds a quarter of what None (whole 4-frame chunks) holds, for the same frames."""
        from .vae_stream import StreamDecoder

        return StreamDecoder(self, tiling, frame_slice)

    @torch.no_grad()
    def encode(self, video: torch.Tensor, *, tiling: Tiling | None = None) -> torch.Tensor:
        """video [B, 3, 1+4k, H, W] in [-1, 1] → normalised latents [B, 16, 1+k, H/8, W/8] float32."""
        from .vae_stream import encode_whole

        return encode_whole(self, video, tiling)

    @torch.no_grad()
    def decode(
        self, latents: torch.Tensor, *, tiling: Tiling | None = None, frame_slice: int | None = 1
    ) -> torch.Tensor:
        """latents [B, 16, n, h, w] → video [B, 3, 1+4(n-1), 8h, 8w] float32, clamped to [-1, 1]."""
        return torch.cat(list(self.stream_decoder(tiling, frame_slice).push(latents)), dim=2)


def build_vae(cfg: WanVAEConfig | None = None, *, device: str | torch.device = "meta") -> WanVAE:
    """An unloaded VAE (meta device by default), ready for ``load_state_dict(assign=True)``."""
    with torch.device(device):
        vae = WanVAE(cfg)
    if str(device) == "meta":  # buffers are not in the state dict: give them real values
        vae.latent_mean = torch.tensor(LATENT_MEAN).view(1, -1, 1, 1, 1)
        vae.latent_inv_std = 1.0 / torch.tensor(LATENT_STD).view(1, -1, 1, 1, 1)
    return vae
