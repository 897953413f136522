"""The memory policy: the memory modes, choosing one, refusing what cannot fit, the model cache, the host allocator.

Memory modes (``--offload``), from the most memory to the least:
- ``none``: every model stays on the device for the whole run (fastest for batches).
- ``model``: each model visits the device for its phase and goes back to CPU memory after it, the official
  ``--offload_model``; the UMT5 encoder, the largest model of a 1.3B run (11 GB in bf16), streams its blocks; CFG
  runs cond and uncond one after the other.
- ``blocks``: as ``model``, and the DiT's blocks stream too: only two blocks' weights are on the device at a time, the
  next one copied on a side stream while the current one computes (``offload.BlockStreamer``).

What a finished phase's models do (:class:`ModelCache`): ``keep`` (stay loaded), ``offload`` (back to the CPU) or
``release`` (freed, reloaded when needed).
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import nn

from .offload import BlockStreamer, move_except, stream_blocks

Offload = Literal["none", "model", "blocks"]
OFFLOAD_MODES: tuple[Offload, ...] = ("none", "model", "blocks")

_M_MMAP_THRESHOLD = -3  # mallopt parameter number in glibc's <malloc.h>
MMAP_THRESHOLD_BYTES = 128 * 1024
MemoryPolicy = Literal["keep", "offload", "release"]
log = logging.getLogger("wan_cli.engine.pipeline")  # the pipeline's loads, moves and releases, at DEBUG level


def tune_host_allocator(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Make glibc return large freed buffers to the OS at once; True if applied.

    glibc serves big allocations with mmap (and unmaps them when freed) only until the first big free: then it raises
    its mmap threshold to that size and serves later big tensors from the heap, where freed space is kept and reused
    imperfectly. A streaming loop that allocates and frees the same big activations chunk after chunk then shows a
    peak RSS that creeps up (by several percent, depending on allocation order) although live memory is flat.
    Fixing the threshold keeps RSS equal to what is really held. A user's own MALLOC_MMAP_THRESHOLD_ wins.
    """
    if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return False


# --------------------------------------------------------------------------------------------------------------------
# Choosing a mode
# --------------------------------------------------------------------------------------------------------------------

# The other models of a run, as loaded (bf16/fp16/fp32 as the official code runs them): UMT5-XXL encoder (5.7B
# parameters, bf16), CLIP ViT-H/14 (0.63B, fp16), the VAE (127M, fp32).
TEXT_ENCODER_BYTES = 11_400_000_000
OTHER_MODEL_BYTES = 1_300_000_000 + 510_000_000
MARGIN_BYTES = 2 * 2**30  # the VAE's decode activations, the allocator's slack, the CUDA context


def dit_activation_bytes(dim: int, ffn_dim: int, tokens: int, batch: int = 1) -> int:
    """A rough upper bound of a DiT forward's live activations: the fp32 residual stream and norm output, q/k/v and
    attention output in bf16, the FFN's hidden layer before and after its GELU (bf16)."""
    return batch * tokens * (4 * dim * 4 + 2 * ffn_dim * 2)


def free_memory(device: torch.device) -> int:
    """Bytes the device can still give: CUDA's free memory; on Apple silicon (unified memory) Metal's recommended
    working set minus what the driver holds; 0 where it cannot be told (the choice then falls to ``blocks``)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type == "mps":
        return max(0, int(torch.mps.recommended_max_memory()) - int(torch.mps.driver_allocated_memory()))
    return 0


def choose_offload(free: int, dit_bytes: int, dim: int, ffn_dim: int, tokens: int) -> Offload:
    """The fastest mode that fits ``free`` device bytes: everything resident (``none``), one model at a time
    (``model``), or the DiT's blocks streamed (``blocks``)."""
    act = dit_activation_bytes(dim, ffn_dim, tokens, batch=2)
    if free >= dit_bytes + TEXT_ENCODER_BYTES + OTHER_MODEL_BYTES + act + MARGIN_BYTES:
        return "none"
    if free >= dit_bytes + dit_activation_bytes(dim, ffn_dim, tokens) + MARGIN_BYTES:
        return "model"
    return "blocks"


# --------------------------------------------------------------------------------------------------------------------
# Refusing what cannot fit, before anything is allocated
# --------------------------------------------------------------------------------------------------------------------

VAE_FULL_RES_CHANNELS = 96  # the VAE's channels at full resolution (dim · dim_mult[0]): its widest tensors


def least_bytes(width: int, height: int, frames: int, *, dim: int | None = None, ffn_dim: int = 0,
                tile: int | None = None) -> dict[str, int]:  # fmt: skip
    """A lower bound of the memory each phase of one video holds at once beyond the weights: the DiT's activations
    (fp32 residual stream, attention output, FFN hidden layer: ``tokens · (3·dim + ffn_dim) · 4`` bytes) and the VAE's
    at full resolution (input, output and causal cache of one 96-channel fp32 frame, or of one tile with
    ``tile``). Phases run one after another, so a run needs at least the largest."""
    side_h, side_w = (min(tile, height), min(tile, width)) if tile else (height, width)
    need = {"vae": 3 * VAE_FULL_RES_CHANNELS * side_h * side_w * 4}
    if dim is not None:
        tokens = ((frames - 1) // 4 + 1) * (height // 16) * (width // 16)
        need["dit"] = tokens * (3 * dim + ffn_dim) * 4
    return need


def memory_of(device: str | torch.device) -> int | None:
    """Total bytes of the device's memory (the machine's RAM for the CPU); None where it cannot be told."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return int(torch.cuda.get_device_properties(dev).total_memory)
    if dev.type == "cpu" and hasattr(os, "sysconf"):
        try:
            return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError):
            return None
    return None


def check_fits(width: int, height: int, frames: int, device: str | torch.device, *, dim: int | None = None,
               ffn_dim: int = 0, tile: int | None = None, what: str = "this run") -> None:  # fmt: skip
    """Refuse a size that cannot fit on ``device`` whatever the memory mode, with the estimate in the message."""
    need = least_bytes(width, height, frames, dim=dim, ffn_dim=ffn_dim, tile=tile)
    have = memory_of(device)
    phase, peak = max(need.items(), key=lambda kv: kv[1])
    if have is None or peak <= have:
        return
    from .errors import InputError

    parts = {"vae": f"the VAE's frame{' tile' if tile else ''} ~{need['vae'] / 2**30:,.1f} GiB"}
    if "dit" in need:
        parts["dit"] = f"the DiT's activations ~{need['dit'] / 2**30:,.1f} GiB"
    raise InputError(
        f"{what} ({width}x{height}, {frames} frames) needs at least ~{peak / 2**30:,.1f} GiB on {torch.device(device)} "
        f"({', '.join(parts.values())}); it has {have / 2**30:,.1f} GiB",
        hint="use a smaller --size" + (" or --vae-tile 256" if phase == "vae" and not tile else "")
        + (" or fewer --frames" if phase == "dit" else ""),
    )  # fmt: skip


# --------------------------------------------------------------------------------------------------------------------
# The model cache: what each phase loads, and what happens to it when the phase is over
# --------------------------------------------------------------------------------------------------------------------


class ModelCache:
    """Models by (component, path), loaded on first use, treated by ``policy`` when their phase ends (``done``)."""

    def __init__(self, device: torch.device, policy: MemoryPolicy) -> None:
        self.device, self.policy = device, policy
        self._models: dict[tuple[str, str], Any] = {}
        self._streamers: dict[tuple[str, str], tuple[BlockStreamer, nn.Module, tuple[nn.Module, ...]]] = {}
        self.load_s = 0.0  # seconds spent reading weights, over the cache's life (phases report theirs net of it)

    @property
    def load_device(self) -> torch.device:
        """Offloaded models live on the CPU and visit the accelerator for their phase."""
        return torch.device("cpu") if self.policy == "offload" else self.device

    def get(self, component: str, path: str, loader: Callable[[], Any]) -> Any:
        key = (component, path)
        if key not in self._models:
            log.debug("load %s from %s", component, path)
            t0 = time.perf_counter()
            self._models[key] = loader()
            self.load_s += time.perf_counter() - t0
            log.debug("loaded %s in %.2f s", component, time.perf_counter() - t0)
        if self.policy == "offload" and self.device.type != "cpu":
            log.debug("move %s to %s", component, self.device)
            self._move(key, self.device)
        return self._models[key]

    def _move(self, key: tuple[str, str], device: torch.device | str) -> None:
        if key in self._streamers:  # streamed blocks stay in host memory: move the rest
            streamer, root, stay = self._streamers[key]
            move_except(root, device, stay)
            if torch.device(device).type == "cpu":
                streamer.release()
        else:
            self._models[key].to(device)

    def stream(self, key: tuple[str, str], root: nn.Module, blocks: nn.ModuleList,
               host_only: tuple[nn.Module, ...] = ()) -> None:  # fmt: skip
        """Stream ``blocks`` of the model ``root`` through the device; the rest of ``root`` lives on the device
        (except ``host_only`` modules, which stay on the CPU)."""
        log.debug("stream the %d blocks of %s through %s", len(blocks), key[0], self.device)
        self._streamers[key] = (stream_blocks(root, blocks, self.device, host_only), root, (blocks, *host_only))

    def done(self, component: str) -> None:
        """The phase that used ``component`` is over: apply the memory policy."""
        keys = [k for k in self._models if k[0] == component]
        for key in keys:
            if self.policy == "release":
                log.debug("release %s", component)
                if key in self._streamers:
                    self._streamers.pop(key)[0].detach()
                del self._models[key]
            elif self.policy == "offload" and self.device.type != "cpu":
                log.debug("offload %s to cpu", component)
                self._move(key, "cpu")
            elif key in self._streamers:
                self._streamers[key][0].release()  # the slots' device memory goes back for the next phase
        if keys and self.device.type == "cuda":
            torch.cuda.empty_cache()

    def loaded(self, component: str, path: str) -> Any | None:
        """The model loaded for (component, path), or None."""
        return self._models.get((component, path))

    def evict(self, component: str) -> None:
        """Forget every loaded model of ``component`` now, whatever the policy (a merged LoRA set changed)."""
        for key in [k for k in self._models if k[0] == component]:
            if key in self._streamers:
                self._streamers.pop(key)[0].detach()
            del self._models[key]

    def clear(self) -> None:
        for streamer, _, _ in self._streamers.values():
            streamer.detach()
        self._streamers.clear()
        self._models.clear()
