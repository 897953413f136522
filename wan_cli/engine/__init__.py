"""The engine: Wan 2.1 networks, checkpoint loading and (later) sampling. The CLI and benchmarks use only this API.

- ``load_transformer(path, *, device, dtype)`` → :class:`WanModel` (the DiT; ``forward(x, timestep, context,
  clip_fea=None, y=None)`` → velocity).
- ``load_vae(path, *, device, dtype)`` → :class:`WanVAE` (``encode``, ``decode``, ``stream_encoder``,
  ``stream_decoder``).
- ``inspect_checkpoint(path)`` → :class:`CheckpointInfo` (what a file or folder holds, without loading it).
"""

from .checkpoints import CheckpointInfo, inspect_checkpoint, load_transformer, load_vae
from .errors import CheckpointError, InputError, WanError
from .transformer import DIT_CONFIGS, WanDiTConfig, WanModel
from .vae import FeatureCache, StreamDecoder, StreamEncoder, Tiling, WanVAE, WanVAEConfig, check_frame_count

__all__ = [
    "DIT_CONFIGS",
    "CheckpointError",
    "CheckpointInfo",
    "FeatureCache",
    "InputError",
    "StreamDecoder",
    "StreamEncoder",
    "Tiling",
    "WanDiTConfig",
    "WanError",
    "WanModel",
    "WanVAE",
    "WanVAEConfig",
    "check_frame_count",
    "inspect_checkpoint",
    "load_transformer",
    "load_vae",
]
