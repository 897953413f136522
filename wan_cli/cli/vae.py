"""`wan encode` and `wan decode`: the VAE round trip between MP4 files and latents files, streamed.

encode: ffmpeg decodes (and resizes/crops) chunk by chunk → the causal VAE's StreamEncoder → each latent frame
straight to disk (LatentsWriter). decode: the file is read one latent frame at a time through the StreamDecoder into
the MP4 writer. Memory does not grow with the video's length.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .. import __version__
from ..engine import InputError
from ..presets import Values, env_values
from .errors import UsageError, run_guarded
from .options import HELP, vae_tiling
from .output import Progress, emit_json, emit_line, show_engine_log, stderr
from .outputs import Outputs, check_not_inputs, check_writable

if TYPE_CHECKING:
    from ..engine import WanVAE

VAE_DTYPES = ("auto", "bf16", "fp16", "fp32")
CHUNK_FRAMES = 16  # frames read from ffmpeg at a time: 4 latent frames; memory ∝ this, not the video length

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


def resolve_device(device: str | None) -> str:
    """--device (or WAN_DEVICE) → the device to run on; a bad value is a usage error."""
    from .plan import pick_device

    try:
        dev = Values.model_validate({"device": device}).device if device else env_values().device
    except Exception:
        raise UsageError(f"invalid value for --device: {device!r}", hint="use auto, cuda, cpu or mps") from None
    return pick_device(dev or "auto")


def check_size(width: int, height: int, frames: int, device: str, vae_tile: int | None, what: str) -> None:
    """Frames too large for the device's memory whatever happens are refused before anything is loaded."""
    from ..engine import check_fits

    check_fits(width, height, frames, device, tile=vae_tile, what=what)


def _load_vae(model: str | None, vae: Path | None, device: str,
              dtype: str | None = None) -> tuple[WanVAE, str, str, str]:  # fmt: skip
    """The VAE on ``device`` in the chosen dtype → (vae, weights path, model label, dtype name)."""
    import torch

    from ..engine import tune_host_allocator

    tune_host_allocator()  # the streaming loops keep a flat RSS (engine/memory.py)

    from ..engine import load_vae
    from ..hub import resolve_model

    env = env_values()
    check_dtype(dtype)
    name = dtype or (env.dtype if env.dtype in VAE_DTYPES else "auto")
    spec = model or env.model or "1.3b-t2v"
    if vae is not None:
        path, label = vae, str(vae)
    else:
        files = resolve_model(spec)
        found = files.vae or files.root or files.dit
        if found is None:
            raise InputError(f"{spec} has no VAE weights", hint="pass the VAE file with --vae PATH")
        path, label = found, files.name or spec
    torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(name, torch.float32)
    loaded = load_vae(path, device=device, dtype=torch_dtype)
    return loaded, str(path), label, str(torch_dtype).removeprefix("torch.")


def check_dtype(dtype: str | None) -> None:
    if dtype is not None and dtype not in VAE_DTYPES:
        hint = "fp8 stores the DiT's weights; the VAE runs in " if dtype == "fp8" else "use "
        raise UsageError(f"invalid value for --dtype: {dtype!r}", hint=hint + "auto, bf16, fp16 or fp32")


def _mode(json_out: bool, quiet: bool) -> bool:
    if json_out and quiet:
        raise UsageError("--json and --quiet cannot be used together", hint="pick one")
    return not (json_out or quiet)


def _finish(record: dict[str, Any], json_out: bool, human: bool, what: str) -> None:
    if json_out:
        emit_json(record)
    else:
        emit_line(record["output"])
    if human:
        stderr.print(f"{what} {record['output']} in {record['timings']['total_s']:.1f} s", markup=False)


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
    from ..engine import LatentsWriter, VideoReader, check_frame_count

    human = _mode(json_out, quiet)
    tiling = vae_tiling(vae_tile)
    check_dtype(dtype)
    wh = None
    if size is not None:
        try:
            wh = Values.model_validate({"size": size}).size
        except Exception as exc:
            raise UsageError(f"invalid value for --size: {size!r}", hint="e.g. 832x480 (multiples of 16)") from exc
    if frames is not None:
        try:
            check_frame_count(frames)
        except InputError as exc:
            raise UsageError(f"invalid value for --frames: {exc.message}", hint=exc.hint) from None
    if output.suffix.lower() != ".safetensors":
        raise UsageError(f"-o {str(output)!r} must end in .safetensors (latents are not a video)",
                         hint=f"e.g. {output.with_suffix('.safetensors').name}")  # fmt: skip
    check_writable([output], force)
    check_not_inputs([output], [video, vae])
    t0 = time.perf_counter()
    with VideoReader(video, max_frames=frames) as probe_only:
        src_w, src_h = probe_only.source_width, probe_only.source_height
    if wh is None:
        wh = (src_w // 16 * 16, src_h // 16 * 16)
        if 0 in wh:
            raise InputError(f"{video} is {src_w}x{src_h}: too small", hint="the VAE needs at least 16x16 frames")
    dev = resolve_device(device)
    check_size(wh[0], wh[1], frames or 1, dev, vae_tile, f"encoding {video.name}")
    model_vae, vae_path, label, dtype_name = _load_vae(model, vae, dev, dtype)
    t_load = time.perf_counter() - t0
    t1 = time.perf_counter()
    encoder = model_vae.stream_encoder(tiling)
    with Outputs([output], force) as out:  # the latents file appears only when complete
        with LatentsWriter(out.staged(output), force=True) as sink, \
                VideoReader(video, size=wh, max_frames=frames) as reader, \
                Progress(human and stderr.is_terminal) as ui:  # fmt: skip
            ui.phase("encode", total=reader.frame_count)
            for chunk in reader.chunks(CHUNK_FRAMES):  # [3, T, H, W]
                for z in encoder.push(chunk[None]):  # [1, 16, 1, h, w]: to disk at once, never accumulated
                    sink.append(z[0, :, 0])
                ui.update("encode", encoder.frames_in, reader.frame_count or encoder.frames_in)
            if encoder.frames_in == 0:
                raise InputError(f"{video} has no frames", hint="pass a non-empty video")
            used = 1 + 4 * (sink.count - 1)
            if frames is not None and used < frames:
                raise InputError(f"{video} has only {encoder.frames_in} frames; --frames {frames} asks for more",
                                 hint=f"use --frames {used} or leave --frames out")  # fmt: skip
            timings = {"load_s": round(t_load, 3), "encode_s": round(time.perf_counter() - t1, 3),
                       "total_s": round(time.perf_counter() - t0, 3)}  # fmt: skip
            h, w = sink.frame_shape or (0, 0)
            record: dict[str, Any] = {
                "output": str(output), "source": str(video), "model": label, "vae": vae_path,
                "device": str(model_vae.latent_mean.device), "dtype": dtype_name, "frames": used, "width": wh[0],
                "height": wh[1], "fps": reader.fps,
                "latent_shape": [16, sink.count, h, w], "wan_version": __version__,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "timings": timings,
            }  # fmt: skip
            sink.finish(fps=reader.fps, source=str(video), model=label, record=record)
        out.commit()
    if used < encoder.frames_in and human:
        stderr.print(f"note: encoded {used} of {encoder.frames_in} frames (Wan videos have 4k+1 frames)")
    _finish(record, json_out, human, "wrote")


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
    from ..engine import VideoWriter, iter_latents, read_latents_info
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
    t0 = time.perf_counter()
    lat = read_latents_info(path)  # the header only: latent frames are read one at a time below
    dev = resolve_device(device)
    check_size(lat.width, lat.height, lat.frames, dev, vae_tile, f"decoding {path.name}")
    for _ in iter_latents(lat, chunk=8):  # a quick pass for NaN/Inf before any model is loaded (memory: 8 frames)
        pass
    model_vae, vae_path, label, dtype_name = _load_vae(model, vae, dev, dtype)
    t_load = time.perf_counter() - t0
    rate = fps if fps is not None else lat.fps
    record: dict[str, Any] = {
        "output": str(output), "source": str(path), "model": label, "vae": vae_path,
        "device": str(model_vae.latent_mean.device), "dtype": dtype_name, "frames": lat.frames,
        "width": lat.width, "height": lat.height, "fps": rate, "generation": lat.record or None,
        "wan_version": __version__, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }  # fmt: skip
    t1 = time.perf_counter()
    decoder = model_vae.stream_decoder(tiling)
    record["sidecar"] = str(sidecar)
    with Outputs([output, sidecar], force) as out:  # the MP4 and its sidecar appear together, or neither
        with VideoWriter(out.staged(output), lat.width, lat.height, rate, force=True, metadata=record) as writer, \
                Progress(human and stderr.is_terminal) as ui:  # fmt: skip
            ui.phase("decode", total=lat.frames)
            for z in iter_latents(lat):  # [16, 1, h, w]
                for chunk in decoder.push(z[None]):
                    writer.write(chunk[0].cpu())
                    ui.update("decode", writer.frames_written, lat.frames)
            record["timings"] = {"load_s": round(t_load, 3), "decode_s": round(time.perf_counter() - t1, 3),
                                 "total_s": round(time.perf_counter() - t0, 3)}  # fmt: skip
            writer.set_metadata(record)
        write_json_atomic(out.staged(sidecar), record)
        out.commit()
    _finish(record, json_out, human, "wrote")
