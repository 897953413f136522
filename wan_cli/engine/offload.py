"""Moving weights: block streaming through two device slots, and moving a model except some of its parts.

The mechanics of the memory modes (``memory.py`` holds the policy): with ``--offload model`` the text encoder's
blocks stream, with ``--offload blocks`` the DiT's too (:class:`BlockStreamer`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

_ALIGN = 256  # bytes: every tensor's offset in a slot (any dtype view, and what CUDA kernels like)


# --------------------------------------------------------------------------------------------------------------------
# Block streaming
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class _Tensor:
    owner: nn.Module
    name: str
    is_param: bool
    host: torch.Tensor  # the resident copy: a view into its block's flat host buffer
    offset: int  # bytes into the block's buffer (the same offset in a device slot)


def _set(entry: _Tensor, value: torch.Tensor) -> None:
    if entry.is_param:
        entry.owner._parameters[entry.name].data = value  # type: ignore[union-attr]
    else:
        entry.owner._buffers[entry.name] = value


def _view(buf: torch.Tensor, offset: int, like: torch.Tensor) -> torch.Tensor:
    """The bytes of ``buf`` at ``offset`` seen as a tensor of ``like``'s dtype and shape."""
    n = like.numel() * like.element_size()
    return buf[offset : offset + n].view(like.dtype).view(like.shape)


class BlockStreamer:
    """Run a stack of blocks on ``device`` while their weights live in host memory.

    Each block's tensors are packed into one flat host buffer (pinned when the device is CUDA) with the layout of a
    device slot, so fetching a block is one copy of one buffer, not one per tensor (a DiT block holds ~27). There are
    two device slots: while block i computes, block i+1 is copied into the other slot on a side stream, ordered by
    CUDA events (copy after the slot's previous user finished; compute after the copy landed). After the last block
    the first one is fetched again, ready for the next denoising step. Device memory for weights: two blocks,
    whatever the depth. The same code runs with a CPU "device" (plain copies), which is how the tests check that
    results are unchanged.
    """

    def __init__(self, blocks: Iterable[nn.Module], device: str | torch.device) -> None:
        self.device = torch.device(device)
        self.blocks = list(blocks)
        cuda = self.device.type == "cuda"
        self._entries: list[list[_Tensor]] = []
        self._host: list[torch.Tensor] = []  # one flat uint8 buffer per block
        for block in self.blocks:
            entries, buf = self._pack(block, pin=cuda)
            self._entries.append(entries)
            self._host.append(buf)
        self._nbytes = max((b.numel() for b in self._host), default=0)
        self._slots: list[torch.Tensor] = []
        self._holder: list[int | None] = [None, None]  # which block each slot holds
        self._running: int | None = None  # the slot of the block now computing
        self._copy_stream: Any = torch.cuda.Stream(self.device) if cuda else None
        self._copied: list[Any] = [torch.cuda.Event() for _ in range(2)] if cuda else [None, None]
        self._computed: list[Any] = [torch.cuda.Event() for _ in range(2)] if cuda else [None, None]
        self._used = [False, False]  # whether _computed[s] has been recorded
        self._handles = []
        for i, block in enumerate(self.blocks):
            self._handles.append(block.register_forward_pre_hook(self._pre_hook(i)))
            self._handles.append(block.register_forward_hook(self._post_hook(i)))

    @staticmethod
    def _pack(block: nn.Module, pin: bool) -> tuple[list[_Tensor], torch.Tensor]:
        """Copy every tensor of ``block`` into one flat host buffer and point the module at views of it."""
        found: list[tuple[nn.Module, str, bool, torch.Tensor, int]] = []
        offset = 0
        for module in block.modules():
            for is_param, table in ((True, module._parameters), (False, module._buffers)):
                for name, t in table.items():
                    if t is not None:
                        found.append((module, name, is_param, t.detach(), offset))
                        offset += -(-t.numel() * t.element_size() // _ALIGN) * _ALIGN
        buf = torch.empty(offset, dtype=torch.uint8, pin_memory=pin)
        entries = []
        for module, name, is_param, t, off in found:
            host = _view(buf, off, t)
            host.copy_(t)
            entry = _Tensor(module, name, is_param, host, off)
            _set(entry, host)  # the original tensor is freed once nothing else holds it
            entries.append(entry)
        return entries, buf

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
        dst = self._slots[slot][: self._host[i].numel()]
        stream = self._copy_stream
        if stream is not None:
            if self._used[slot]:
                stream.wait_event(self._computed[slot])
            with torch.cuda.stream(stream):
                dst.copy_(self._host[i], non_blocking=True)  # pinned → device: one DMA per block
            self._copied[slot].record(stream)
        else:
            dst.copy_(self._host[i])
        self._holder[slot] = i

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
                _set(e, _view(buf, e.offset, e.host))
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
