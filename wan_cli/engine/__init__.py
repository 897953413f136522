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
  keeps models loaded across a batch. ``validate(request)``: every rule of a request, checked before loading.
- LoRAs: ``GenerationRequest(loras=(parse_lora("x.safetensors:0.8"),))``; ``Pipeline(lora_mode=…)``.
- ``run_bench(BenchRequest)`` → :class:`BenchResult`: `wan bench`, timed through the same Pipeline path.

Names are imported lazily (PEP 562), so importing ``wan_cli.engine.errors`` (as the CLI does for `--help`) does
not pull in torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "bench": ("BENCH_MODELS", "BenchRequest", "BenchResult", "latent_shape", "run_bench"),
    "checkpoints": ("load_transformer", "load_vae", "peek_transformer_config"),
    "conditioning": ("ImageEncoder", "TextEncoder", "load_image_encoder", "load_text_encoder"),
    "devices": ("resolve_device", "resolve_dtype"),
    "discover": ("CheckpointInfo", "FolderInfo", "find_components", "inspect_checkpoint"),
    "errors": ("CheckpointError", "InputError", "Interrupted", "WanError"),
    "images": ("load_image",),
    "latents": ("LatentsWriter", "iter_latents", "read_latents_info", "save_latents"),
    "layouts": ("Component",),
    "lora": ("LORA_FORMATS", "LoraSpec", "parse_lora"),
    "memory": ("OFFLOAD_MODES", "Offload", "check_fits", "tune_host_allocator"),
    "outputs": ("check_not_input",),
    "pipeline": ("GenerationResult", "Pipeline", "generate"),
    "request": (
        "ATTENTION_BACKENDS",
        "CACHES",
        "DEFAULT_NEGATIVE_PROMPTS",
        "GenerationRequest",
        "SOLVERS",
        "Solver",
        "TASKS",
        "Task",
        "check_frame_count",
        "check_size",
        "latent_tokens",
        "resolve_seed",
        "validate",
    ),
    "transcode": ("Transcoded", "decode_latents", "encode_video"),
    "transformer": ("DIT_CONFIGS", "WanDiTConfig", "WanModel", "a_model"),
    "vae": ("FeatureCache", "Tiling", "WanVAE", "WanVAEConfig"),
    "vae_stream": ("StreamDecoder", "StreamEncoder"),
    "video": ("VideoReader", "VideoWriter"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = [
    "ATTENTION_BACKENDS",
    "BENCH_MODELS",
    "CACHES",
    "DEFAULT_NEGATIVE_PROMPTS",
    "DIT_CONFIGS",
    "LORA_FORMATS",
    "OFFLOAD_MODES",
    "SOLVERS",
    "TASKS",
    "BenchRequest",
    "BenchResult",
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
    "LoraSpec",
    "Offload",
    "Pipeline",
    "Solver",
    "StreamDecoder",
    "StreamEncoder",
    "Task",
    "TextEncoder",
    "Tiling",
    "Transcoded",
    "VideoReader",
    "VideoWriter",
    "WanDiTConfig",
    "WanError",
    "WanModel",
    "WanVAE",
    "WanVAEConfig",
    "a_model",
    "check_fits",
    "check_frame_count",
    "check_not_input",
    "check_size",
    "decode_latents",
    "encode_video",
    "find_components",
    "generate",
    "inspect_checkpoint",
    "iter_latents",
    "latent_shape",
    "latent_tokens",
    "load_image",
    "load_image_encoder",
    "load_text_encoder",
    "load_transformer",
    "load_vae",
    "parse_lora",
    "peek_transformer_config",
    "read_latents_info",
    "resolve_device",
    "resolve_dtype",
    "resolve_seed",
    "run_bench",
    "save_latents",
    "tune_host_allocator",
    "validate",
]
assert set(_WHERE) == set(__all__)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)


if TYPE_CHECKING:
    from .bench import BENCH_MODELS, BenchRequest, BenchResult, latent_shape, run_bench
    from .checkpoints import load_transformer, load_vae, peek_transformer_config
    from .conditioning import ImageEncoder, TextEncoder, load_image_encoder, load_text_encoder
    from .devices import resolve_device, resolve_dtype
    from .discover import CheckpointInfo, FolderInfo, find_components, inspect_checkpoint
    from .errors import CheckpointError, InputError, Interrupted, WanError
    from .images import load_image
    from .latents import LatentsWriter, iter_latents, read_latents_info, save_latents
    from .layouts import Component
    from .lora import LORA_FORMATS, LoraSpec, parse_lora
    from .memory import OFFLOAD_MODES, Offload, check_fits, tune_host_allocator
    from .outputs import check_not_input
    from .pipeline import GenerationResult, Pipeline, generate
    from .request import (
        ATTENTION_BACKENDS,
        CACHES,
        DEFAULT_NEGATIVE_PROMPTS,
        SOLVERS,
        TASKS,
        GenerationRequest,
        Solver,
        Task,
        check_frame_count,
        check_size,
        latent_tokens,
        resolve_seed,
        validate,
    )
    from .transcode import Transcoded, decode_latents, encode_video
    from .transformer import DIT_CONFIGS, WanDiTConfig, WanModel, a_model
    from .vae import FeatureCache, Tiling, WanVAE, WanVAEConfig
    from .vae_stream import StreamDecoder, StreamEncoder
    from .video import VideoReader, VideoWriter
