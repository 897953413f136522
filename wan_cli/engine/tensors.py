"""Lazy tensor sources over weights files, and the resolution of a user's path to those files.

A source is a name → tensor mapping whose shapes and dtypes are known before any data is read: safetensors files
(memory-mapped by ``safe_open``), pickled ``.pth`` state dicts (``torch.load(weights_only=True, mmap=True)``: never
foreign code), and GGUF files (``gguf.GGUFReader``, see ``gguf.py``). Shards of one model form one source.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import torch

from .errors import CheckpointError

_ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "I64": torch.int64, "I32": torch.int32,
    "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}  # fmt: skip
PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
WEIGHT_SUFFIXES = (".safetensors", ".gguf", *PICKLE_SUFFIXES)


class Source(Protocol):
    """What every loader reads from: names, shapes and dtypes up front, tensors on demand."""

    paths: list[Path]
    metadata: dict[str, str]

    @property
    def name(self) -> str: ...
    def keys(self) -> list[str]: ...
    def __contains__(self, key: object) -> bool: ...
    def __iter__(self) -> Iterator[str]: ...
    def shape(self, key: str) -> tuple[int, ...]: ...
    def dtype(self, key: str) -> torch.dtype: ...
    def get(self, key: str) -> torch.Tensor: ...


class TensorSource:
    """A name → tensor mapping over one file or a set of shards; shapes and dtypes are known before any data is read."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths
        self._where: dict[str, int] = {}
        self._handles: list[Any] = []
        self._meta: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
        self._unknown: dict[str, str] = {}  # tensors in a dtype torch cannot hold → the file's name for it
        self.metadata: dict[str, str] = {}
        for i, p in enumerate(paths):
            if p.suffix in PICKLE_SUFFIXES:
                self._handles.append(_load_pickle(p))
                for k, t in self._handles[-1].items():
                    self._add(k, i, tuple(t.shape), t.dtype, p)
            else:
                h = _open_safetensors(p)
                self._handles.append(h)
                self.metadata.update(h.metadata() or {})
                for k in h.keys():  # noqa: SIM118 - safe_open is not a dict
                    sl = h.get_slice(k)
                    name = sl.get_dtype()
                    if name not in _ST_DTYPES:  # F8_E8M0, F4, U16, C64, …: named, refused if a model needs it
                        self._unknown[k] = name
                    self._add(k, i, tuple(sl.get_shape()), _ST_DTYPES.get(name, torch.uint8), p)

    @classmethod
    def of(cls, tensors: dict[str, torch.Tensor], like: Source) -> TensorSource:
        """A source over tensors derived from ``like`` (renamed, or split views of a mmapped .pth); same file name."""
        out = cls([])
        out.paths, out.metadata = like.paths, like.metadata
        out._handles = [tensors]
        for k, t in tensors.items():
            out._where[k] = 0
            out._meta[k] = (tuple(t.shape), t.dtype)
        return out

    def _add(self, key: str, idx: int, shape: tuple[int, ...], dtype: torch.dtype, path: Path) -> None:
        if key in self._where and self._where[key] != idx:
            raise CheckpointError(f"tensor {key!r} appears in two shards ({self.paths[self._where[key]].name}, "
                                  f"{path.name})", hint="the shard set is inconsistent; download it again")  # fmt: skip
        self._where[key] = idx
        self._meta[key] = (shape, dtype)

    @property
    def name(self) -> str:
        return str(self.paths[0]) if len(self.paths) == 1 else f"{self.paths[0].parent} ({len(self.paths)} shards)"

    def keys(self) -> list[str]:
        return list(self._meta)

    def __contains__(self, key: object) -> bool:
        return key in self._meta

    def __iter__(self) -> Iterator[str]:
        return iter(self._meta)

    def shape(self, key: str) -> tuple[int, ...]:
        return self._meta[key][0]

    def dtype(self, key: str) -> torch.dtype:
        if key in self._unknown:
            raise CheckpointError(f"tensor {key!r} of {self.name} is stored as {self._unknown[key]}, which wan "
                                  "cannot read", hint="use a file in fp32, bf16, fp16 or fp8")  # fmt: skip
        return self._meta[key][1]

    def get(self, key: str) -> torch.Tensor:
        idx = self._where[key]
        h = self._handles[idx]
        try:
            return h[key] if isinstance(h, dict) else h.get_tensor(key)
        except Exception as exc:  # a file cut short after its header was written
            raise CheckpointError(
                f"cannot read tensor {key!r} from {self.paths[idx]}: {exc}",
                hint="the file looks truncated or corrupted; download it again",
            ) from exc


def open_source(files: list[Path]) -> Source:
    """The right reader for a file list: GGUF, or safetensors / .pth shards."""
    if files and files[0].suffix.lower() == ".gguf":
        if len(files) != 1:
            raise CheckpointError("a GGUF model is one file", hint="pass the .gguf file itself")
        from .gguf import GGUFSource  # the gguf package is imported only for GGUF files

        return GGUFSource(files[0])
    return TensorSource(files)


def _open_safetensors(path: Path) -> Any:
    from safetensors import safe_open

    try:
        handle = safe_open(str(path), framework="pt", device="cpu")
    except Exception as exc:
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({exc})",
            hint="the file looks truncated or corrupted; download it again",
        ) from exc
    return handle  # safe_open checks the header against the file size: a truncated file fails above


def _load_pickle(path: Path) -> dict[str, torch.Tensor]:
    """A .pth state dict through ``torch.load(weights_only=True)``: tensors and plain containers only, never code."""
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "_use_new_zipfile_serialization" not in str(exc):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)  # the legacy format cannot be mmapped
    except Exception as exc:
        text = str(exc)
        code = re.search(r"GLOBAL ([\w.]+)", text)  # what the pickle would have called
        if code is not None:
            raise CheckpointError(
                f"{path} holds pickled code (a call to {code.group(1)}), which wan never runs",
                hint="use the model's .safetensors file, or a plain state-dict .pth",
            ) from exc
        why = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:\n\n|$)", text, re.S)  # torch's reason, whole
        reason = why.group(1) if why else (text.strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(
            f"{path} is not a readable PyTorch weights file ({reason})",
            hint="the file looks truncated or corrupted, or is not a plain state dict; download it again",
        ) from exc
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold a plain dict of tensors", hint="pass a Wan weights file")
    return obj


# --------------------------------------------------------------------------------------------------------------------
# Resolving a user path to files
# --------------------------------------------------------------------------------------------------------------------


def shards_from_index(index: Path) -> list[Path]:
    """The shard files a ``*.index.json`` lists in its ``weight_map`` (every one must be there), sorted by name."""
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except Exception as exc:
        raise CheckpointError(f"{index} is not a valid shard index ({exc})", hint="download it again") from exc
    files = sorted(set(weight_map.values()))
    missing = [f for f in files if not (index.parent / f).is_file()]
    if missing:
        raise CheckpointError(f"{index} lists shards that are missing: {', '.join(missing[:3])}",
                              hint="the download is incomplete; run the download again")  # fmt: skip
    return [index.parent / f for f in files]


def weight_files(path: Path) -> list[Path]:
    """A weights file as a list of itself; a shard index as its shards."""
    return shards_from_index(path) if path.name.endswith(".index.json") else [path]


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except Exception as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is not a JSON object")
    return data


def _config_beside(weights: Path) -> dict[str, Any] | None:
    """A Diffusers/official config.json beside safetensors weights (a .pth or .gguf carries none of its own)."""
    cfg = weights.parent / "config.json"
    return read_json(cfg) if cfg.is_file() and weights.suffix in (".safetensors", ".json") else None


def resolve_files(path: str | Path, component: str, names: tuple[str, ...]) -> tuple[list[Path], dict[str, Any] | None]:
    """Files (one, or shards) and the config.json beside them, for a file, a model folder or a pipeline folder."""
    p = Path(path).expanduser()
    if not p.exists():
        raise CheckpointError(f"{p} does not exist", hint="pass a weights file or a model folder")
    if p.is_file():
        return weight_files(p), _config_beside(p)
    if (p / component).is_dir() and (p / "model_index.json").is_file():
        p = p / component  # a Diffusers pipeline folder
    for name in names:
        f = p / name
        if f.is_file():
            return weight_files(f), _config_beside(f)
    found = sorted(x.name for x in p.iterdir() if x.suffix in (*WEIGHT_SUFFIXES, ".json"))[:6]
    subdirs = sorted(x.name + "/" for x in p.iterdir() if x.is_dir())[:6]
    has = ", ".join(found + subdirs)
    raise CheckpointError(
        f"no {component} weights found in {p}" + (f" (it has: {has})" if has else " (it is empty)"),
        hint=f"expected one of {', '.join(names)}; or pass the weights file itself",
    )
