"""Input images as the models take them: an RGB tensor in [-1, 1], read with Pillow.

The official rule (``wan21-architecture.md`` §3.1): PIL ``convert("RGB")`` → uint8 / 255 → (x − 0.5) / 0.5.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .errors import InputError


def load_image(image: str | Path | torch.Tensor) -> torch.Tensor:
    """An RGB image as [3, H, W] float32 in [-1, 1] (PIL → uint8/255 → (x − 0.5)/0.5, as the official code)."""
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise InputError(f"an image tensor must be [3, H, W], got {tuple(image.shape)}")
        return image.float()
    from PIL import Image, UnidentifiedImageError

    path = Path(image).expanduser()
    try:
        with Image.open(path) as im:
            if getattr(im, "n_frames", 1) > 1:
                raise InputError(f"{path} is animated ({im.n_frames} frames)", hint="pass a single still image")
            rgb = im.convert("RGB")
    except FileNotFoundError as exc:
        raise InputError(f"{path} does not exist", hint="check the image path") from exc
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(f"{path} is not a readable image", hint="use a PNG, JPEG or WebP file") from exc
    t = torch.from_numpy(np.asarray(rgb, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0
    return (t - 0.5) / 0.5
