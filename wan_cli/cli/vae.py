"""`wan encode` and `wan decode`: the VAE round trip between MP4 files and latents files.

Options → the engine's ``encode_video`` / ``decode_latents`` (streamed: memory does not grow with the video's
length) → the output path or the JSON record. Usage errors are caught here, before anything is read.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .. import __version__, registry
from ..engine import InputError
from ..presets import Values, env_values
from .errors import UsageError, run_guarded
from .options import HELP, vae_tiling
from .output import Progress, emit_json, emit_line, show_engine_log, stderr
from .outputs import Outputs, check_not_inputs, check_writable

if TYPE_CHECKING:
    import torch

VAE_DTYPES = ("auto", "bf16", "fp16", "fp32")
DEFAULT_MODEL = "1.3b-t2v"  # all Wan 2.1 models share one VAE

ModelOpt = Annotated[str | None, typer.Option("-m", "--model", metavar="NAME|PATH", show_default=False,
                     help="Whose VAE: a model name, a checkpoint folder, or a VAE file (all Wan 2.1 models share "
                     "one VAE). Default: WAN_MODEL, else 1.3b-t2v.")]  # fmt: skip
VaeOpt = Annotated[Path | None, typer.Option("--vae", metavar="PATH", show_default=False,
                   help="A VAE weights file, overriding the model's.")]  # fmt: skip
DeviceOpt = Annotated[str | None, typer.Option("--device", metavar="auto|cuda|cpu|mps", show_default=False,
                      help="Where to run the VAE. Env: WAN_DEVICE.")]  # fmt: skip
DtypeOpt = Annotated[str | None, typer.Option("--dtype", metavar="auto|bf16|fp16|fp32", show_default=False,
                     help="The VAE's dtype (auto: fp32, as the official code runs it; bf16 halves its memory on a "
                     "GPU). Env: WAN_DTYPE (its fp8, a DiT setting, means auto here).")]  # fmt: skip
ForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite an existing output file.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a JSON record instead of the path.")]
QuietOpt = Annotated[bool, typer.Option("-q", "--quiet", help="Print only the output path; no progress.")]
VerboseOpt = Annotated[bool, typer.Option("-v", "--verbose", help=HELP["verbose"])]
TileOpt = Annotated[int | None, typer.Option("--vae-tile", metavar="PX", show_default=False, help=HELP["vae_tile"])]


# -- options → engine arguments ----------------------------------------------------------------------------------------


def _device(device: str | None) -> str:
    """--device (or WAN_DEVICE) → the device to run on; a bad name is a usage error, a missing GPU an input error."""
    from ..engine import resolve_device

    try:
        name = Values.model_validate({"device": device}).device if device else env_values().device
    except Exception:
        raise UsageError(f"invalid value for --device: {device!r}", hint="use auto, cuda, cpu or mps") from None
    return resolve_device(name or "auto")


def check_dtype(dtype: str | None) -> None:
    if dtype is not None and dtype not in VAE_DTYPES:
        hint = "fp8 stores the DiT's weights; the VAE runs in " if dtype == "fp8" else "use "
        raise UsageError(f"invalid value for --dtype: {dtype!r}", hint=hint + "auto, bf16, fp16 or fp32")


def _dtype(dtype: str | None, device: str) -> torch.dtype:
    """--dtype, else WAN_DTYPE when it names a VAE dtype (its fp8 is the DiT's), else auto: for the VAE that is fp32,
    as the official code runs it, not the DiT's bf16 (a decoded video is the quality ceiling)."""
    import torch

    from ..engine import resolve_dtype

    env = env_values().dtype
    name = dtype or (env if env in VAE_DTYPES else "auto")
    return torch.float32 if name == "auto" else resolve_dtype(name, device)


def _vae_source(model: str | None, vae: Path | None) -> tuple[Any, str]:
    """(where the VAE comes from, the model's name to record). The model is looked up only when the engine asks,
    after it has checked the input: a bad video is reported before a missing download."""
    if vae is not None:
        return vae, str(vae)
    spec = model or env_values().model or DEFAULT_MODEL
    known = None if Path(spec).expanduser().exists() else registry.find(spec)

    def weights() -> Path:
        from ..hub import resolve_model

        files = resolve_model(spec)
        found = files.vae or files.root or files.dit
        if found is None:
            raise InputError(f"{spec} has no VAE weights", hint="pass the VAE file with --vae PATH")
        return found

    return weights, known.name if known is not None else spec


def _mode(json_out: bool, quiet: bool) -> bool:
    if json_out and quiet:
        raise UsageError("--json and --quiet cannot be used together", hint="pick one")
    return not (json_out or quiet)


def _size(size: str | None) -> tuple[int, int] | None:
    if size is None:
        return None
    try:
        return Values.model_validate({"size": size}).size
    except Exception as exc:
        raise UsageError(f"invalid value for --size: {size!r}", hint="e.g. 832x480 (multiples of 16)") from exc


def _frames(frames: int | None) -> None:
    from ..engine import check_frame_count

    if frames is not None:
        try:
            check_frame_count(frames)
        except InputError as exc:
            raise UsageError(f"invalid value for --frames: {exc.message}", hint=exc.hint) from None


def _finish(record: dict[str, Any], json_out: bool, human: bool, what: str) -> None:
    if json_out:
        emit_json(record)
    else:
        emit_line(record["output"])
    if human:
        stderr.print(f"{what} {record['output']} in {record['timings']['total_s']:.1f} s", markup=False)


def _stamp(output: Path, **extra: str) -> dict[str, Any]:
    """The record's fields only the command knows: the final name (the engine writes a staged one), the version."""
    return {"output": str(output), **extra, "wan_version": __version__}


# -- wan encode --------------------------------------------------------------------------------------------------------


def encode(
    video: Annotated[Path, typer.Argument(metavar="VIDEO", help="Any video ffmpeg can read.")],
    output: Annotated[
        Path, typer.Option("-o", "--output", metavar="LAT.safetensors", help="Where to write the latents.")
    ],
    model: ModelOpt = None,
    size: Annotated[
        str | None,
        typer.Option(
            "--size",
            metavar="WxH",
            show_default=False,
            help="Scale to cover and centre-crop to this size (multiples of 16). Default: the video's "
            "size, cropped to multiples of 16.",
        ),
    ] = None,
    frames: Annotated[
        int | None,
        typer.Option(
            "--frames",
            show_default=False,
            help="Encode the first N frames (4n+1). Default: all, down to the nearest 4n+1.",
        ),
    ] = None,
    vae: VaeOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    vae_tile: TileOpt = None,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Video → latents (safetensors, `latents` [16, F, H/8, W/8], normalised).

    Examples:

      wan encode clip.mp4 -o clip.safetensors

      wan encode clip.mp4 -o clip.safetensors --size 832x480 --frames 81
    """
    if verbose:
        show_engine_log()
    run_guarded(lambda: _encode(video, output, model, size, frames, vae, device, force, json_out, quiet, vae_tile,
                                dtype), stderr)  # fmt: skip


def _encode(video: Path, output: Path, model: str | None, size: str | None, frames: int | None, vae: Path | None,
            device: str | None, force: bool, json_out: bool, quiet: bool,
            vae_tile: int | None = None, dtype: str | None = None) -> None:  # fmt: skip
    from ..engine import encode_video, tune_host_allocator

    human = _mode(json_out, quiet)
    tiling = vae_tiling(vae_tile)
    check_dtype(dtype)
    wh = _size(size)
    _frames(frames)
    if output.suffix.lower() != ".safetensors":
        raise UsageError(f"-o {str(output)!r} must end in .safetensors (latents are not a video)",
                         hint=f"e.g. {output.with_suffix('.safetensors').name}")  # fmt: skip
    check_writable([output], force)
    check_not_inputs([output], [video, vae])
    dev = _device(device)
    source, label = _vae_source(model, vae)
    tune_host_allocator()  # the streaming loop keeps a flat RSS (engine/memory.py)
    with Outputs([output], force) as out, Progress(human and stderr.is_terminal) as ui:
        done = encode_video(video, out.staged(output), vae=source, device=dev, dtype=_dtype(dtype, dev), size=wh,
                            frames=frames, tiling=tiling, model=label, force=True, record=_stamp(output),
                            progress=ui.update)  # fmt: skip
        out.commit()  # the latents file appears only when complete
    if done.frames < done.frames_read and human:
        stderr.print(f"note: encoded {done.frames} of {done.frames_read} frames (Wan videos have 4k+1 frames)")
    _finish(done.record, json_out, human, "wrote")


# -- wan decode --------------------------------------------------------------------------------------------------------


def decode(
    latents: Annotated[Path, typer.Argument(metavar="LAT", help="A latents file (`wan encode`, `--save-latents`).")],
    output: Annotated[Path, typer.Option("-o", "--output", metavar="OUT.mp4", help="Where to write the video.")],
    model: ModelOpt = None,
    fps: Annotated[
        float | None,
        typer.Option("--fps", show_default=False, help="Frame rate (default: the one recorded in the file, else 16)."),
    ] = None,
    vae: VaeOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    vae_tile: TileOpt = None,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Latents → MP4 (H.264, yuv420p), decoded and written one latent frame at a time.

    Examples:

      wan decode clip.safetensors -o clip.mp4

      wan t2v "a cat" --save-latents cat.safetensors && wan decode cat.safetensors -o cat-24fps.mp4 --fps 24
    """
    if verbose:
        show_engine_log()
    run_guarded(lambda: _decode(latents, output, model, fps, vae, device, force, json_out, quiet, vae_tile, dtype),
                stderr)  # fmt: skip


def _decode(path: Path, output: Path, model: str | None, fps: float | None, vae: Path | None, device: str | None,
            force: bool, json_out: bool, quiet: bool, vae_tile: int | None = None,
            dtype: str | None = None) -> None:  # fmt: skip
    from ..engine import decode_latents, tune_host_allocator
    from .generate import write_json_atomic

    human = _mode(json_out, quiet)
    tiling = vae_tiling(vae_tile)
    check_dtype(dtype)
    if fps is not None and not fps > 0:
        raise UsageError(f"invalid value for --fps: {fps}", hint="a positive number, e.g. 16")
    if output.suffix.lower() != ".mp4":
        raise UsageError(f"-o {str(output)!r} must end in .mp4", hint=f"e.g. {output.with_suffix('.mp4').name}")
    sidecar = output.with_suffix(".json")
    check_writable([output, sidecar], force)
    check_not_inputs([output, sidecar], [path, vae])
    dev = _device(device)
    source, label = _vae_source(model, vae)
    tune_host_allocator()
    with Outputs([output, sidecar], force) as out, Progress(human and stderr.is_terminal) as ui:
        done = decode_latents(path, out.staged(output), vae=source, device=dev, dtype=_dtype(dtype, dev), fps=fps,
                              tiling=tiling, model=label, force=True, record=_stamp(output, sidecar=str(sidecar)),
                              progress=ui.update)  # fmt: skip
        write_json_atomic(out.staged(sidecar), done.record)  # everything, the decode time included
        out.commit()  # the MP4 and its sidecar appear together, or neither
    _finish(done.record, json_out, human, "wrote")
