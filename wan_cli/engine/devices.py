"""Device and dtype names → what torch runs on: one rule for every command.

- :func:`resolve_device`: ``auto`` → ``cuda`` if torch sees one, else ``mps``, else ``cpu``; an explicit device is
  checked to exist, so that a missing GPU is one clear error before any model is loaded.
- :func:`resolve_dtype`: ``auto`` → bf16 on accelerators (half the memory of fp32, the range of fp32: Wan's DiT
  overflows fp16), fp32 on the CPU (where bf16 matmuls are slow); or ``bf16`` / ``fp16`` / ``fp32`` as asked.
"""

from __future__ import annotations

import torch

from .errors import InputError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
DEVICE_HINT = "use auto, cuda, cpu or mps"


def resolve_device(name: str | None = "auto") -> str:
    """``auto`` (or None), ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` → a device torch has, e.g. ``"cuda"``."""
    if name is None or name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if torch.backends.mps.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"unknown device {name!r}", hint=DEVICE_HINT) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            hint = "use --device cpu, or install a CUDA build of torch (`make install TORCH=torch`)"
            raise InputError("CUDA was asked for, but torch sees no CUDA device", hint=hint)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(f"{name}: torch sees {torch.cuda.device_count()} CUDA device(s)", hint="use --device cuda")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise InputError("MPS was asked for, but torch sees no Apple GPU", hint="use --device cpu")
    elif device.type != "cpu":
        raise InputError(f"unsupported device {name!r}", hint=DEVICE_HINT)
    return name


def resolve_dtype(name: str | None, device: str | torch.device) -> torch.dtype:
    """``auto`` (or None) → bf16 on cuda/mps, fp32 on the CPU; ``bf16`` / ``fp16`` / ``fp32`` → that dtype."""
    if name is None or name == "auto":
        return torch.float32 if torch.device(device).type == "cpu" else torch.bfloat16
    if name not in DTYPES:
        raise InputError(f"unknown dtype {name!r}", hint="use auto, bf16, fp16 or fp32")
    return DTYPES[name]
