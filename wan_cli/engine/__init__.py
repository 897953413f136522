"""The engine: Wan 2.1 networks, checkpoint loading and sampling. The CLI and benchmarks use only this API.

- ``load_transformer(path, *, device, dtype)`` → :class:`WanModel` (the DiT; ``forward(x, timestep, context,
  clip_fea=None, y=None)`` → velocity).
- ``load_vae(path, *, device, dtype)`` → :class:`WanVAE` (``encode``, ``decode``, ``stream_encoder``,
  ``stream_decoder``).
- ``inspect_checkpoint(path)`` → :class:`CheckpointInfo` for a file, :class:`FolderInfo` (every component) for a
  folder: what it holds, without loading it. ``find_components(path, task, wanted)``: for a diffusion model in a
  ComfyUI ``models/`` tree, the VAE / text encoder / CLIP in its sibling folders.
- ``load_text_encoder`` / ``load_image_encoder`` → UMT5 and CLIP (transformers models) from any layout.
- ``generate(GenerationRequest)`` → :class:`GenerationResult` (latents + a frame stream); a :class:`Pipeline`
  keeps models loaded across a batch.

Names are imported lazily (PEP 562), so importing ``wan_cli.engine.errors`` (as the CLI does for `--help`) does
not pull in torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "checkpoints": ("load_transformer", "load_vae", "peek_transformer_config"),
    "discover": ("CheckpointInfo", "FolderInfo", "find_components", "inspect_checkpoint"),
    "conditioning": ("ImageEncoder", "TextEncoder", "load_image_encoder", "load_text_encoder"),
    "errors": ("CheckpointError", "InputError", "Interrupted", "WanError"),
    "latents": ("LatentsWriter", "iter_latents", "read_latents_info"),
    "layouts": ("Component",),
    "memory": ("check_fits", "tune_host_allocator"),
    "pipeline": ("GenerationRequest", "GenerationResult", "Pipeline", "generate"),
    "transformer": ("DIT_CONFIGS", "WanDiTConfig", "WanModel"),
    "video": ("VideoReader", "VideoWriter"),
    "vae": ("FeatureCache", "StreamDecoder", "StreamEncoder", "Tiling", "WanVAE", "WanVAEConfig", "check_frame_count"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = [
    "DIT_CONFIGS",
    "CheckpointError",
    "CheckpointInfo",
    "Component",
    "FeatureCache",
    "FolderInfo",
    "GenerationRequest",
    "GenerationResult",
    "ImageEncoder",
    "InputError",
    "Interrupted",
    "LatentsWriter",
    "Pipeline",
    "StreamDecoder",
    "StreamEncoder",
    "TextEncoder",
    "Tiling",
    "VideoReader",
    "VideoWriter",
    "WanDiTConfig",
    "WanError",
    "WanModel",
    "WanVAE",
    "WanVAEConfig",
    "check_fits",
    "check_frame_count",
    "find_components",
    "generate",
    "inspect_checkpoint",
    "iter_latents",
    "load_image_encoder",
    "load_text_encoder",
    "load_transformer",
    "load_vae",
    "peek_transformer_config",
    "read_latents_info",
    "tune_host_allocator",
]
assert set(_WHERE) == set(__all__)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)


if TYPE_CHECKING:
    from .checkpoints import load_transformer, load_vae, peek_transformer_config
    from .conditioning import ImageEncoder, TextEncoder, load_image_encoder, load_text_encoder
    from .discover import CheckpointInfo, FolderInfo, find_components, inspect_checkpoint
    from .errors import CheckpointError, InputError, Interrupted, WanError
    from .latents import LatentsWriter, iter_latents, read_latents_info
    from .layouts import Component
    from .memory import check_fits, tune_host_allocator
    from .pipeline import GenerationRequest, GenerationResult, Pipeline, generate
    from .transformer import DIT_CONFIGS, WanDiTConfig, WanModel
    from .vae import FeatureCache, StreamDecoder, StreamEncoder, Tiling, WanVAE, WanVAEConfig, check_frame_count
    from .video import VideoReader, VideoWriter
