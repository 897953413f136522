"""The one strict loading recipe: a model built on the meta device, filled from a lazy ``Source``.

Every component (DiT, VAE, UMT5, CLIP) goes through :func:`load_strict`: check the file's keys and shapes against
the model (headers only), read each tensor once (dequantising fp8, casting to the storage dtype on the target
device), ``load_state_dict(strict=True, assign=True)``, then give the buffers that are not in the state dict their
place. Nothing is loaded non-strictly; the only file keys skipped are ``layouts.IGNORED_KEYS``, ComfyUI's
``.scale_weight`` companions, and a component's own named ``ignore`` pattern.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch
from torch import nn

from .errors import CheckpointError
from .layouts import SCALE_SUFFIX, check_keys
from .tensors import Source

_FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)

# (model key, file key) → the tensor to assign, or None for the plain read (``materialise``)
Reader = Callable[[str, str], torch.Tensor | None]


def is_fp8(dtype: torch.dtype) -> bool:
    return dtype in _FP8_DTYPES


def materialise(src: Source, file_key: str, target: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """One tensor of ``src`` in ``target`` dtype on ``device``; fp8 (scaled or not) is dequantised through fp32."""
    t = src.get(file_key)
    scale_key = file_key.removesuffix(".weight") + SCALE_SUFFIX
    if scale_key in src:
        t = t.float() * src.get(scale_key).float()  # scaled fp8: W = W_fp8 · scale_weight
    elif t.dtype in _FP8_DTYPES:
        t = t.float()
    return t.to(device=device, dtype=target)


def check_model(
    model: nn.Module,
    src: Source,
    to_file: dict[str, str],
    what: str,
    *,
    ignore: re.Pattern[str] | None = None,
) -> None:
    """``layouts.check_keys`` against ``model``'s own shapes, for the keys in ``to_file`` (model key → file key)."""
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    check_keys(src, {k: shapes[k] for k in to_file}, to_file, what, ignore)


def load_strict(
    model: nn.Module,
    src: Source,
    to_file: dict[str, str],
    what: str,
    *,
    device: torch.device | str,
    dtype: torch.dtype | Callable[[str], torch.dtype],
    ignore: re.Pattern[str] | None = None,
    tied: dict[str, str] | None = None,
    read: Reader | None = None,
) -> None:
    """Fill ``model`` (built on the meta device) from ``src``, all or nothing.

    ``to_file``: model key → file key, for every state-dict key but the ``tied`` ones (alias → the model key whose
    tensor it shares, e.g. UMT5's ``encoder.embed_tokens.weight`` → ``shared.weight``). ``what`` names the model in
    errors. ``dtype``: the storage dtype, or a function of the model key (the DiT keeps some tensors fp32).
    ``ignore``: file keys of this component that are skipped on purpose. ``read``: supplies special tensors (fp8
    storage, GGUF placeholders); None from it means the plain read.
    """
    check_model(model, src, to_file, what, ignore=ignore)
    dev = torch.device(device)
    state: dict[str, torch.Tensor] = {}
    for k, f in to_file.items():  # read and cast one tensor at a time
        t = read(k, f) if read is not None else None
        state[k] = t if t is not None else materialise(src, f, dtype(k) if callable(dtype) else dtype, dev)
    for alias, key in (tied or {}).items():
        state[alias] = state[key]
    model.load_state_dict(state, strict=True, assign=True)
    place_buffers(model, dev)


def place_buffers(model: nn.Module, device: torch.device) -> None:
    """Buffers outside the state dict, after ``assign=True``: real ones (the VAE's latent statistics) move to
    ``device``; ones still on the meta device get their value (transformers' ``position_ids``) or are an error."""
    for name, buf in list(model.named_buffers()):
        owner, _, leaf = name.rpartition(".")
        if buf.device.type == "meta":
            if leaf != "position_ids":
                raise CheckpointError(f"internal: buffer {name} has no value after loading")
            value = torch.arange(buf.shape[-1], device=device).expand(1, -1)  # [1, positions]
        elif buf.device != device:
            value = buf.to(device)
        else:
            continue
        setattr(model.get_submodule(owner), leaf, value)  # keeps the buffer's persistence flag
