"""Input images as the models take them: an RGB tensor in [-1, 1], read with Pillow.

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

from .errors import InputError

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
