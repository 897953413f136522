"""Host and device memory: the memory modes, block streaming and the host allocator.

Memory modes (``--offload``), from the most memory to the least:
- ``none``: every model stays on the device for the whole run (fastest for batches).
- ``model``: each model visits the device for its phase and goes back to CPU memory after it, the official
  ``--offload_model``; the UMT5 encoder, the largest model of a 1.3B run (11 GB in bf16), streams its blocks; CFG
  runs cond and uncond one after the other.
- ``blocks``: as ``model``, and the DiT's blocks stream too: only two blocks' weights are on the device at a time, the
  next one copied on a side stream while the current one computes (:class:`BlockStreamer`).
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

Offload = Literal["none", "model", "blocks"]
OFFLOAD_MODES: tuple[Offload, ...] = ("none", "model", "blocks")
_ALIGN = 256  # bytes: every tensor's offset in a slot (any dtype view, and what CUDA kernels like)

_M_MMAP_THRESHOLD = -3  # mallopt parameter number in glibc's <malloc.h>
MMAP_THRESHOLD_BYTES = 128 * 1024


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
# Block streaming
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class _Tensor:
    owner: nn.Module
    name: str
    is_param: bool
    host: torch.Tensor  # the resident copy (pinned when the device is CUDA)
    offset: int  # bytes into the block's slot


def _set(entry: _Tensor, value: torch.Tensor) -> None:
    if entry.is_param:
        entry.owner._parameters[entry.name].data = value  # type: ignore[union-attr]
    else:
        entry.owner._buffers[entry.name] = value


class BlockStreamer:
    """Run a stack of blocks on ``device`` while their weights live in host memory.

    Each block's tensors are packed into one of two device slots (flat byte buffers) just before it runs; while block
    i computes, block i+1 is copied into the other slot on a side stream, ordered by CUDA events (copy after the
    slot's previous user finished; compute after the copy landed). After the last block the first one is fetched
    again, ready for the next denoising step. Device memory for weights: two blocks, whatever the depth. The same
    code runs with a CPU "device" (plain copies), which is how the tests check that results are unchanged.
    """

    def __init__(self, blocks: Iterable[nn.Module], device: str | torch.device) -> None:
        self.device = torch.device(device)
        self.blocks = list(blocks)
        cuda = self.device.type == "cuda"
        self._entries: list[list[_Tensor]] = []
        self._nbytes = 0
        for block in self.blocks:
            entries, offset = [], 0
            for module in block.modules():
                for is_param, table in ((True, module._parameters), (False, module._buffers)):
                    for name, t in table.items():
                        if t is None:
                            continue
                        host = t.detach().to("cpu")
                        host = host.pin_memory() if cuda else host
                        entry = _Tensor(module, name, is_param, host, offset)
                        _set(entry, host)
                        entries.append(entry)
                        offset += -(-host.numel() * host.element_size() // _ALIGN) * _ALIGN
            self._entries.append(entries)
            self._nbytes = max(self._nbytes, offset)
        self._slots: list[torch.Tensor] = []
        self._holder: list[int | None] = [None, None]  # which block each slot holds
        self._next_slot = 0
        self._running: int | None = None  # the slot of the block now computing
        self._copy_stream: Any = torch.cuda.Stream(self.device) if cuda else None
        self._copied: list[Any] = [torch.cuda.Event() for _ in range(2)] if cuda else [None, None]
        self._computed: list[Any] = [torch.cuda.Event() for _ in range(2)] if cuda else [None, None]
        self._used = [False, False]  # whether _computed[s] has been recorded
        self._handles = []
        for i, block in enumerate(self.blocks):
            self._handles.append(block.register_forward_pre_hook(self._pre_hook(i)))
            self._handles.append(block.register_forward_hook(self._post_hook(i)))

    @property
    def slot_bytes(self) -> int:
        """Device bytes per slot (the largest block); two slots are used."""
        return self._nbytes

    def release(self) -> None:
        """Free the device slots (e.g. between phases); they come back on the next forward."""
        if self._copy_stream is not None:
            self._copy_stream.synchronize()  # a prefetch may still be writing into a slot the allocator would reuse
        self._slots = []
        self._holder = [None, None]
        self._used = [False, False]
        self._running = None

    def detach(self) -> None:
        """Remove the hooks; every block's tensors stay in host memory."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.release()

    # -- the copy schedule ---------------------------------------------------------------------------------------------

    def _load(self, i: int, slot: int) -> None:
        """Copy block i into ``slot``, after that slot's previous user finished computing."""
        if not self._slots:
            self._slots = [torch.empty(self._nbytes, dtype=torch.uint8, device=self.device) for _ in range(2)]
        buf = self._slots[slot]
        stream = self._copy_stream
        if stream is not None:
            if self._used[slot]:
                stream.wait_event(self._computed[slot])
            with torch.cuda.stream(stream):
                for e in self._entries[i]:
                    self._view(buf, e).copy_(e.host, non_blocking=True)
            self._copied[slot].record(stream)
        else:
            for e in self._entries[i]:
                self._view(buf, e).copy_(e.host)
        self._holder[slot] = i

    @staticmethod
    def _view(buf: torch.Tensor, e: _Tensor) -> torch.Tensor:
        n = e.host.numel() * e.host.element_size()
        return buf[e.offset : e.offset + n].view(e.host.dtype).view(e.host.shape)

    def _pre_hook(self, i: int) -> Any:
        def hook(module: nn.Module, args: Any) -> None:
            if i in self._holder:
                slot = self._holder.index(i)
            else:  # not prefetched (first forward, or blocks run out of order): fetch it now
                slot = self._free_slot()
                self._load(i, slot)
            if self._copy_stream is not None:
                torch.cuda.current_stream(self.device).wait_event(self._copied[slot])
            buf = self._slots[slot]
            for e in self._entries[i]:
                _set(e, self._view(buf, e))
            self._running = slot
            nxt = (i + 1) % len(self.blocks)
            if nxt not in self._holder:
                self._load(nxt, 1 - slot)

        return hook

    def _free_slot(self) -> int:
        return 0 if self._running is None else 1 - self._running

    def _post_hook(self, i: int) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            slot = self._holder.index(i)
            if self._copy_stream is not None:
                self._computed[slot].record(torch.cuda.current_stream(self.device))
                self._used[slot] = True
            for e in self._entries[i]:
                _set(e, e.host)

        return hook


def movable(model: nn.Module, skip: tuple[nn.Module, ...]) -> list[tuple[nn.Module, str, bool]]:
    """(module, name, is_param) of every tensor of ``model`` not held by ``skip``; a tensor tied into ``skip`` (the
    same object reached through another module) counts as held."""
    held = {id(t) for m in skip for t in (*m.parameters(), *m.buffers())}
    out: list[tuple[nn.Module, str, bool]] = []
    for module in model.modules():
        for is_param, table in ((True, module._parameters), (False, module._buffers)):
            out += [(module, name, is_param) for name, t in table.items() if t is not None and id(t) not in held]
    return out


def move_except(model: nn.Module, device: str | torch.device, skip: tuple[nn.Module, ...]) -> None:
    """Move every parameter and buffer of ``model`` to ``device`` except those held by ``skip`` (streamed stacks,
    host-only tables). Parameters keep their identity (``.data`` is replaced), so ties and hooks survive."""
    for module, name, is_param in movable(model, skip):
        if is_param:
            p = module._parameters[name]
            assert p is not None
            p.data = p.data.to(device)
        else:
            b = module._buffers[name]
            assert b is not None
            module._buffers[name] = b.to(device)


def stream_blocks(
    model: nn.Module, blocks: nn.ModuleList, device: str | torch.device, host_only: tuple[nn.Module, ...] = ()
) -> BlockStreamer:
    """Stream ``blocks`` of ``model`` through ``device`` and move the rest of ``model`` there, except the
    ``host_only`` modules (which stay where they are, e.g. an embedding table looked up on the CPU)."""
    streamer = BlockStreamer(blocks, device)
    move_except(model, device, (blocks, *host_only))
    return streamer


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
