"""Input images as the models take them (an RGB tensor in [-1, 1], read with Pillow) and the official I2V/FLF2V
rules that turn them into the DiT's conditioning: output size, last-frame crop, mask, conditioning video (§3).

The official rule (``wan21-architecture.md`` §3.1): PIL ``convert("RGB")`` → uint8 / 255 → (x − 0.5) / 0.5. An 8-bit
image without an EXIF orientation tag gives exactly that, bit for bit. Two deliberate deviations (``docs/inputs.md``):

- EXIF orientation is honoured (``ImageOps.exif_transpose``): a phone photo stored landscape with orientation 6 or 8
  is the portrait picture its owner sees. The official code ignores the tag and would animate a sideways frame.
- 16-bit greyscale (modes ``I;16*``, and ``I`` holding 0…65535 as Pillow gives 16-bit PNGs) is scaled by 1/65535;
  ``convert("RGB")`` clips every value above 255 to white.

The pixel count is read from the header and refused above :data:`MAX_PIXELS` before anything is decoded.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .errors import InputError
from .vae import SPATIAL_STRIDE, TEMPORAL_STRIDE

# 64 megapixels (8000 × 8000, ~2.7× a 24 MP photo) decode to 192 MB of RGB and 0.8 GB of float32: far above any
# model size (the largest area is 1280×720), far below a decompression bomb. Pillow's own guard only warns up to
# twice its 89 MP limit, so this one is explicit and checked on the header alone.
MAX_PIXELS = 64_000_000

_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")


@contextmanager
def _own_size_check() -> Iterator[None]:
    """Pillow's bomb check off while the header is read (it would raise or warn, without the size): ours follows."""
    from PIL import Image

    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def _to_unit_rgb(im: Any, path: Path) -> torch.Tensor:
    """[3, H, W] float32 in [0, 1]: 16-bit greyscale by value/65535, everything else through ``convert("RGB")``."""
    if im.mode in _SIXTEEN_BIT or im.mode == "I":
        grey = np.asarray(im)
        if im.mode == "I" and grey.size and (grey.min() < 0 or grey.max() > 65535):
            raise InputError(f"{path} holds 32-bit integer pixels ({grey.min()}…{grey.max()})",
                             hint="save it as an 8- or 16-bit image")  # fmt: skip
        t = torch.from_numpy(grey.astype(np.float32)) / 65535.0
        return t.expand(3, *t.shape).contiguous()
    rgb = im.convert("RGB")
    return torch.from_numpy(np.asarray(rgb, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0


def load_image(image: str | Path | torch.Tensor) -> torch.Tensor:
    """An RGB image as [3, H, W] float32 in [-1, 1] (PIL → uint8/255 → (x − 0.5)/0.5, as the official code), upright
    as its EXIF orientation says; 16-bit greyscale by value/65535."""
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise InputError(f"an image tensor must be [3, H, W], got {tuple(image.shape)}")
        return image.float()
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(image).expanduser()
    try:
        with _own_size_check():
            opened = Image.open(path)  # lazy: the header only
        with opened as im:
            w, h = im.size
            if w * h > MAX_PIXELS:
                raise InputError(f"{path} is {w}x{h} ({w * h / 1e6:.0f} megapixels), over the {MAX_PIXELS / 1e6:.0f} "
                                 "megapixel limit for input images",
                                 hint="pass a smaller image (the model works at 1280x720 at most)")  # fmt: skip
            if getattr(im, "n_frames", 1) > 1:
                raise InputError(f"{path} is animated ({im.n_frames} frames)", hint="pass a single still image")
            im.load()
            upright = ImageOps.exif_transpose(im)  # a copy, turned as its orientation tag says (none: unchanged)
            t = _to_unit_rgb(upright, path)
    except FileNotFoundError as exc:
        raise InputError(f"{path} does not exist", hint="check the image path") from exc
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:  # SyntaxError: Pillow's word for a broken header
        raise InputError(f"{path} is not a readable image", hint="use a PNG, JPEG or WebP file") from exc
    return (t - 0.5) / 0.5


# --------------------------------------------------------------------------------------------------------------------
# The official I2V / FLF2V conditioning rules (wan21-architecture.md §3)
# --------------------------------------------------------------------------------------------------------------------


def i2v_size(image_hw: tuple[int, int], max_area: int) -> tuple[int, int]:
    """Official I2V/FLF2V size rule: the requested area, the input's aspect, multiples of 16 → (height, width).

    Float64 arithmetic exactly as the official code (e.g. an 832×480 input at area 399360 gives 464×832)."""
    h, w = image_hw
    ar = h / w
    lat_h = round(np.sqrt(max_area * ar) // SPATIAL_STRIDE // 2 * 2)
    lat_w = round(np.sqrt(max_area / ar) // SPATIAL_STRIDE // 2 * 2)
    if lat_h < 2 or lat_w < 2:
        raise InputError(f"an image of {w}x{h} gives an empty video at area {max_area}", hint="use a larger size")
    return lat_h * SPATIAL_STRIDE, lat_w * SPATIAL_STRIDE


def _center_crop_like_torchvision(img: torch.Tensor, crop_h: int, crop_w: int) -> torch.Tensor:
    """torchvision's center_crop on [3, H, W]: zero-pad when the box is larger, then crop at the rounded centre."""
    _, h, w = img.shape
    if crop_h > h or crop_w > w:
        dh, dw = max(crop_h - h, 0), max(crop_w - w, 0)
        img = F.pad(img, (dw // 2, (dw + 1) // 2, dh // 2, (dh + 1) // 2))
        _, h, w = img.shape
    top, left = round((h - crop_h) / 2.0), round((w - crop_w) / 2.0)
    return img[:, top : top + crop_h, left : left + crop_w]


def match_last_frame(first: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """FLF2V with differently sized images (official quirk, reproduced): centre-crop the last frame with a box
    (round(W₂·r), round(H₂·r)) that torchvision reads as (height, width), r = max(W₁/W₂, H₁/H₂)."""
    (_, h1, w1), (_, h2, w2) = first.shape, last.shape
    if (h1, w1) == (h2, w2):
        return last
    r = max(w1 / w2, h1 / h2)
    return _center_crop_like_torchvision(last, round(w2 * r), round(h2 * r))


def i2v_mask(frames: int, lat_h: int, lat_w: int, last: bool) -> torch.Tensor:
    """The 4-channel mask [4, F_lat, h, w]: 1 where a pixel frame is given (frame 0; flf2v also the last frame)."""
    msk = torch.ones(1, frames, lat_h, lat_w)
    msk[:, 1 : -1 if last else None] = 0
    msk = torch.cat([msk[:, :1].repeat_interleave(TEMPORAL_STRIDE, dim=1), msk[:, 1:]], dim=1)  # [1, F + 3, h, w]
    return msk.view(1, msk.shape[1] // TEMPORAL_STRIDE, TEMPORAL_STRIDE, lat_h, lat_w).transpose(1, 2)[0]


def conditioning_video(images: list[torch.Tensor], frames: int, height: int, width: int) -> torch.Tensor:
    """[1, 3, F, H, W]: the first image (bicubic to H×W, no clamp), zeros (mid-grey), and for flf2v the last image."""
    resized = [
        F.interpolate(im[None].cpu().float(), size=(height, width), mode="bicubic").unsqueeze(2) for im in images
    ]  # [1, 3, 1, H, W] each, computed in fp32 on the CPU like the official code
    parts = [resized[0], torch.zeros(1, 3, frames - len(images), height, width), *resized[1:]]
    return torch.cat(parts, dim=2)
