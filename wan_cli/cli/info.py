"""`wan presets list|show`, `wan inspect` and `wan env`: what the tool will do, what a checkpoint holds, and what
it runs on (for bug reports)."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Annotated, Any

import typer

from .. import __version__
from ..presets import (
    DEFAULTS,
    Settings,
    Values,
    is_preset_file,
    list_presets,
    load_preset,
    preset_files,
    resolve,
    sources,
)
from .errors import run_guarded
from .output import PlainUsage, emit_json, emit_line, stderr

presets_app = typer.Typer(
    help="The settings bundles for each model and size.\n\nExamples:\n\n  wan presets list\n\n"
    '  wan presets show t2v-14b-720p\n\n  wan t2v "a cat" -p my-settings.yaml',
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


@presets_app.command("list", cls=PlainUsage)
def presets_list(json_out: JsonOpt = False) -> None:
    """Every preset: shipped ones and those in $WAN_CLI_HOME/presets/."""

    def collect() -> list[dict[str, Any]]:
        where = preset_files()
        rows = []
        for name in list_presets():
            _, values = load_preset(name)
            rows.append({"name": name, "description": values.description, "file": str(where[name]),
                         **values.model_dump(exclude_none=True, exclude={"description"})})  # fmt: skip
        return rows

    rows = run_guarded(collect, stderr)
    if json_out:
        emit_json({"presets": rows})
        return
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        emit_line(f"{r['name']:<{width}}  {r.get('description') or ''}")


@presets_app.command("show", cls=PlainUsage)
def presets_show(
    name: Annotated[str, typer.Argument(metavar="NAME|FILE", help="A preset name or a YAML file.")],
    json_out: JsonOpt = False,
) -> None:
    """The settings a run with `-p NAME|FILE` starts from, and where each comes from: the built-in default, the
    preset, or the file. A file is layered over the preset of the model it names (else the default model of its
    task), as `wan t2v -p FILE` does; a named preset replaces the model's preset."""

    def collect() -> tuple[str, Values, list[tuple[str, Values]], Settings]:
        preset_name, values = load_preset(name)
        if not is_preset_file(name):
            return preset_name, values, [(f"preset {preset_name}", values)], resolve(values, preset=preset_name)
        from .plan import DEFAULT_MODEL, auto_preset

        task = values.task or "t2v"
        found = auto_preset(values.model or DEFAULT_MODEL[task], task, values.size)
        base_name, base = found if found is not None else (None, Values())
        layers = ([(f"preset {base_name}", base)] if base_name else []) + [(f"file {name}", values)]
        return preset_name, values, layers, resolve(base.model_copy(update={"task": task}), user=(preset_name, values))

    preset_name, values, layers, settings = run_guarded(collect, stderr)
    merged = settings.model_dump()
    merged["size"] = "{}x{}".format(*merged["size"])
    own = set(values.model_dump(exclude_none=True)) - {"description"}
    origin = sources(*layers)
    if json_out:
        emit_json({"name": preset_name, "description": values.description, "values": merged, "set": sorted(own),
                   "sources": origin, "layers": [label for label, _ in layers]})  # fmt: skip
        return
    if values.description:
        emit_line(f"# {preset_name}: {values.description}")
    if len(layers) > 1:
        emit_line(f"# {layers[-1][0]}, over {layers[0][0]}")
    for key, value in merged.items():
        if key == "preset" or (value is None and origin[key] == "default"):
            continue
        shown = "random" if key == "seed" and value is None else value  # seed: -1
        emit_line(f"{key}: {shown}  # {origin[key]}")


def inspect(
    path: Annotated[
        Path,
        typer.Argument(
            metavar="PATH",
            help="A weights file (safetensors, .pth, GGUF), a model folder, a Diffusers pipeline folder or a ComfyUI "
            "models/ folder.",
        ),
    ],
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a summary.")] = False,
) -> None:
    """Tell what a checkpoint holds (DiT / VAE / text encoder / CLIP), its layout, variant, dtypes and quantization,
    without loading it; for a folder, every component in it.

    Examples:

      wan inspect wan2.1_t2v_1.3B_fp8_e4m3fn.safetensors

      wan inspect ~/ComfyUI/models --json
    """
    from ..engine import FolderInfo, inspect_checkpoint  # torch is imported lazily: `wan --help` stays fast

    info = run_guarded(lambda: inspect_checkpoint(path), stderr)
    if json_out:
        emit_json(info.to_dict())
        return
    if not isinstance(info, FolderInfo):
        emit_line(f"{info.path}: {info.kind} ({info.layout or 'unknown layout'})")
        for label, value in _summary(info):
            emit_line(f"  {label:<13} {value}")
        return
    emit_line(f"{info.path}: folder ({info.layout}), {len(info.components)} weights file(s)")
    for c in info.components:
        emit_line(f"  {c.kind:<13} {c.path}")
        for label, value in _summary(c):
            emit_line(f"    {label:<13} {value}")
    for tok in info.tokenizers:
        emit_line(f"  {'tokenizer':<13} {tok}")


def _summary(info: Any) -> list[tuple[str, str]]:
    """The lines `wan inspect` prints for one component (a CheckpointInfo)."""
    rows = [("layout", info.layout or "unknown")] if info.kind == "unknown" else []
    if info.variant:
        rows.append(("variant", info.variant))
    dtypes = ", ".join(f"{k} ×{v}" for k, v in sorted(info.dtypes.items()))
    rows += [("tensors", f"{info.tensors} ({info.parameters:,} parameters)"), ("dtypes", dtypes),
             ("quantization", info.quantization), ("files", str(len(info.files)))]  # fmt: skip
    if info.tokenizer:
        rows.append(("tokenizer", info.tokenizer))
    return rows


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def environment() -> dict[str, Any]:
    from ..paths import hf_cache, wan_home

    info: dict[str, Any] = {
        "wan": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": {
            d: _version(d)
            for d in (
                "torch",
                "transformers",
                "safetensors",
                "huggingface_hub",
                "imageio-ffmpeg",
                "typer",
                "pydantic",
                "diffusers",
            )
        },
    }
    try:
        import imageio_ffmpeg

        info["ffmpeg"] = {"path": imageio_ffmpeg.get_ffmpeg_exe(), "version": imageio_ffmpeg.get_ffmpeg_version()}
    except Exception as exc:  # a broken ffmpeg is exactly what a bug report needs to show
        info["ffmpeg"] = {"error": str(exc)}
    import torch

    devices: list[dict[str, Any]] = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            devices.append({"device": f"cuda:{i}", "name": p.name, "memory_gb": round(p.total_memory / 2**30, 1),
                            "capability": f"{p.major}.{p.minor}"})  # fmt: skip
    if torch.backends.mps.is_available():
        devices.append({"device": "mps", "name": "Apple GPU"})
    devices.append(
        {"device": "cpu", "name": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}
    )
    info["torch"] = {"version": torch.__version__, "cuda": torch.version.cuda, "devices": devices}
    info["paths"] = {"hf_cache": str(hf_cache()), "wan_home": str(wan_home())}
    shown = {}
    for key in sorted(os.environ):
        if key.startswith(("WAN_", "HF_", "HUGGINGFACE_")):
            secret = "TOKEN" in key
            shown[key] = "(set)" if secret else os.environ[key]
    info["env"] = shown
    info["defaults"] = DEFAULTS.model_dump(exclude_none=True)
    return info


def env(json_out: JsonOpt = False) -> None:
    """Versions, devices, cache paths and WAN_/HF_ variables — paste this into bug reports (tokens are masked).

    Example: wan env --json
    """
    info = run_guarded(environment, stderr)
    if json_out:
        emit_json(info)
        return
    emit_line(f"wan {info['wan']}  python {info['python']}  {info['platform']}")
    emit_line("packages: " + ", ".join(f"{k} {v}" for k, v in info["packages"].items() if v))
    ff = info["ffmpeg"]
    emit_line(f"ffmpeg: {ff.get('version', '?')} ({ff.get('path', ff.get('error'))})")
    t = info["torch"]
    emit_line(f"torch {t['version']} (CUDA {t['cuda'] or 'none'})")
    for d in t["devices"]:
        extra = f", {d['memory_gb']} GiB, sm {d['capability']}" if "memory_gb" in d else ""
        emit_line(f"  {d['device']}: {d['name']}{extra}")
    emit_line(f"HF cache: {info['paths']['hf_cache']}")
    emit_line(f"wan home: {info['paths']['wan_home']}")
    for k, v in info["env"].items():
        emit_line(f"  {k}={v}")
