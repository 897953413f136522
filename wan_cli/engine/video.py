"""Streaming video files through the ffmpeg binary bundled with ``imageio-ffmpeg`` (ffprobe is not bundled).

- :class:`VideoWriter` pipes RGB frames into ffmpeg: H.264 (libx264), yuv420p (BT.709, limited range), moov atom
  first (``+faststart``, plays in browsers). It encodes into a hidden temp file beside the target; at close one
  ``-c copy`` remux adds the final metadata (the settings record as JSON in the MP4 ``comment`` tag, handed over as
  an FFMETADATA1 file, so its size has no limit) and does the faststart pass, and only then is the result renamed
  onto the target. Any failure (a full disk, Ctrl-C, SIGTERM) kills ffmpeg and deletes every temp file.
- :class:`VideoReader` lets ffmpeg decode (and resize/crop/resample) progressively and yields ``[3, T, H, W]`` chunks
  at a constant frame rate, variable-frame-rate sources included.
- :func:`read_metadata` returns that JSON record.
- :func:`check_output_path`, :func:`check_not_input`, :func:`check_extension` (from ``outputs.py``): what every
  command checks of an output before any work.

Nothing holds more than one chunk: memory depends on the frame size and chunk length, never on the video length.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Generator
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import numpy as np
import torch

from .errors import InputError, WanError
from .ffmpeg import QUIET, FFmpeg, ffmetadata, parse_ffmetadata, run, summary
from .outputs import check_extension, remove_quietly, temp_beside, write_new_file
from .outputs import check_not_input as check_not_input  # re-exported: the commands check outputs from here
from .outputs import check_output_path as check_output_path

_RGB_OUT = ("-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1")
_DISK = "check free disk space"

# --------------------------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------------------------


def _to_uint8(chunk: torch.Tensor | np.ndarray) -> np.ndarray:
    """[3, T, H, W] float in [-1, 1] (or [1, 3, T, H, W]), or uint8 [T, H, W, 3] → C-contiguous uint8 [T, H, W, 3]."""
    if isinstance(chunk, torch.Tensor):
        x = chunk.detach()
        if x.ndim == 5 and x.shape[0] == 1:  # a StreamDecoder item still has its batch of 1
            x = x[0]
        if x.ndim != 4 or x.shape[0] != 3 or not x.is_floating_point():
            raise InputError(f"video chunks must be float [3, T, H, W], got {x.dtype} {tuple(x.shape)}")
        x = x.to("cpu", torch.float32).clamp(-1.0, 1.0).add(1.0).mul(127.5).round().to(torch.uint8)
        return x.permute(1, 2, 3, 0).contiguous().numpy()
    if isinstance(chunk, np.ndarray) and chunk.dtype == np.uint8 and chunk.ndim == 4 and chunk.shape[3] == 3:
        return np.ascontiguousarray(chunk)
    what = f"{chunk.dtype} {chunk.shape}" if isinstance(chunk, np.ndarray) else type(chunk).__name__
    raise InputError(f"cannot write a {what} chunk", hint="pass [3, T, H, W] floats in [-1, 1] or uint8 [T, H, W, 3]")


class VideoWriter:
    """Write an H.264 MP4 chunk by chunk; the target appears only when the ``with`` block ends without error.

    ``metadata`` (JSON-serialisable, any size) becomes the MP4 ``comment`` tag; it may be replaced until close
    (timings are known only at the end). Any exception or BaseException in ``write``, in ``close`` or inside the
    block kills ffmpeg and deletes the temp files; a target that existed before is left as it was.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        width: int,
        height: int,
        fps: float = 16,
        *,
        force: bool = False,
        metadata: dict[str, Any] | None = None,
        crf: int = 17,  # visually lossless for x264; the VAE's output is the quality ceiling anyway
        preset: str = "medium",
    ) -> None:
        for name, value in (("width", width), ("height", height)):
            if not isinstance(value, int) or value <= 0 or value % 2:  # yuv420p halves the chroma planes
                raise InputError(f"video {name} must be a positive even number, got {value}", hint="e.g. 832x480")
        if not (fps > 0 and math.isfinite(fps)):
            raise InputError(f"fps must be a positive number, got {fps}", hint="Wan 2.1 videos are 16 fps")
        self.path = check_output_path(path, force=force)
        check_extension(self.path, ".mp4", "an H.264 MP4 video")
        self.width, self.height, self.fps, self.force, self.crf, self.preset = width, height, fps, force, crf, preset
        self.frames_written = 0
        self.metadata = metadata
        self._ff: FFmpeg | None = None
        self._temps: list[Path] = []  # first pass, then metadata file and remuxed result
        self._closed = False

    @property
    def metadata(self) -> dict[str, Any] | None:
        return self._metadata

    @metadata.setter
    def metadata(self, value: dict[str, Any] | None) -> None:
        self.set_metadata(value)

    def set_metadata(self, value: dict[str, Any] | None) -> None:
        """Replace the record; serialised now, so that a bad value fails early rather than at close."""
        if value is not None:
            json.dumps(value)  # TypeError for what JSON cannot hold
        self._metadata = value

    def _temp(self) -> Path:
        """A temp name, registered for cleanup before anything creates it."""
        self._temps.append(p := temp_beside(self.path))
        return p

    def _stopped(self, e: OSError, ff: FFmpeg) -> WanError:
        """ffmpeg's own words if it died (disk full: it stopped reading), else the error of our pipe."""
        ff.kill()  # reaped first, so that its last words are in its stderr file
        return WanError(f"ffmpeg stopped writing {self.path}: {summary(ff.stderr(), e.strerror or str(e))}", hint=_DISK)

    def write(self, chunk: torch.Tensor | np.ndarray) -> None:
        """Append frames: [3, T, H, W] float in [-1, 1] (decoder output) or uint8 [T, H, W, 3].

        A writer that raised is aborted: a later write raises, and nothing it wrote is left."""
        if self._closed:
            raise ValueError(f"write to a closed VideoWriter ({self.path})")
        try:
            frames = _to_uint8(chunk)
            if frames.shape[1:3] != (self.height, self.width):
                raise InputError(
                    f"frames are {frames.shape[2]}x{frames.shape[1]}, the video is {self.width}x{self.height}",
                    hint="every chunk must have the size the writer was opened with",
                )
            if self._ff is None:
                self._ff = FFmpeg([
                    *QUIET, "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{self.width}x{self.height}",
                    "-framerate", str(self.fps), "-i", "pipe:0",
                    "-vf", "scale=out_color_matrix=bt709:out_range=tv,format=yuv420p,"
                           "setparams=colorspace=bt709:color_primaries=bt709:color_trc=bt709",  # tag what we made
                    "-c:v", "libx264", "-preset", self.preset, "-crf", str(self.crf), "-f", "mp4", str(self._temp()),
                ], pipe_in=True)  # fmt: skip
            assert self._ff.proc.stdin is not None
            try:
                self._ff.proc.stdin.write(frames.reshape(-1).data)
            except OSError as e:  # ffmpeg died (disk full, …) or the pipe failed
                raise self._stopped(e, self._ff) from e
            self.frames_written += frames.shape[0]
        except BaseException:
            self.abort()
            raise

    def close(self) -> None:
        """Finish: wait for the encoder, remux with the final metadata and faststart, rename onto the target."""
        if self._closed:
            return
        try:
            self._finish()
        finally:
            self.abort()  # on success only the first-pass file, the metadata file and the spent process are left

    def _finish(self) -> None:
        if (ff := self._ff) is None:
            raise InputError(f"no frames were written to {self.path}", hint="a video needs at least one frame")
        try:
            code = ff.finish()
        except OSError as e:  # the last frames may not have reached ffmpeg: never a video short of frames
            raise self._stopped(e, ff) from e
        if code != 0:
            raise WanError(f"ffmpeg failed writing {self.path}: {summary(ff.stderr())}", hint=_DISK)
        tags: list[str] = []
        if self._metadata:
            text = ffmetadata({"comment": json.dumps(self._metadata, ensure_ascii=False)})
            try:
                write_new_file(meta := self._temp(), text)
            except OSError as e:
                raise WanError(f"cannot write {self.path}: {e.strerror or e}", hint=_DISK) from e
            tags = ["-f", "ffmetadata", "-i", str(meta), "-map_metadata", "1"]  # global tags from the file only
        final = self._temp()
        res = run([*QUIET, "-y", "-i", str(self._temps[0]), *tags, "-map", "0", "-c", "copy",
                   "-movflags", "+faststart", "-f", "mp4", str(final)])  # fmt: skip
        if res.returncode != 0:
            raise WanError(f"ffmpeg failed finishing {self.path}: {summary(res.stderr)}", hint=_DISK)
        if self.path.exists() and not self.force:  # appeared while we were encoding: still never clobber it
            raise InputError(f"{self.path} already exists", hint="pass --force to overwrite it")
        try:
            os.replace(final, self.path)
        except OSError as e:
            raise WanError(f"cannot write {self.path}: {e.strerror or e}", hint="check the folder's permissions") from e
        self._temps.remove(final)

    def abort(self) -> None:
        """Kill ffmpeg and delete the temp files; the target is left as it was. Safe to call twice."""
        self._closed = True
        try:
            if self._ff is not None:
                self._ff.kill()
        finally:
            remove_quietly(self._temps)
            self._temps.clear()

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        if et is None:
            self.close()
        else:
            self.abort()


# --------------------------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------------------------


def _check_input(path: str | os.PathLike[str]) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise InputError(f"{p} does not exist", hint="check the path of the input video")
    if p.is_dir():
        raise InputError(f"{p} is a directory, not a video", hint="pass a video file, e.g. clip.mp4")
    return p


def _exact_rate(printed: Fraction) -> Fraction:
    """ffmpeg prints a rate to 2 decimals: 23.98, 29.97, 59.94 are the NTSC rates n·1000/1001 within that precision."""
    ntsc = Fraction(round(printed * Fraction(1001, 1000)) * 1000, 1001)
    return ntsc if printed.denominator != 1 and abs(ntsc - printed) < Fraction(1, 200) else printed


def _probe(p: Path) -> tuple[int, int, Fraction, float | None]:
    """(width, height, fps, duration or None) of the first video stream, parsed from ``ffmpeg -i`` (no ffprobe).

    The rate is the stream's average (``fps``: frames ÷ duration), else its nominal one (``tbr``), else 16."""
    err = run(["-nostdin", "-hide_banner", "-i", str(p)]).stderr.decode("utf-8", "replace")
    fmt = re.search(r"^Input #0, (.+?), from ", err, re.M)
    if fmt is None:
        raise InputError(f"cannot read {p}: {summary(err)}", hint="pass a video ffmpeg can open (mp4, mov, webm, …)")
    if fmt[1] in ("image2", "image2pipe") or fmt[1].endswith("_pipe"):  # png_pipe, jpeg_pipe, …
        raise InputError(f"{p} is a still image ({fmt[1]}), not a video", hint="pass a video file")
    lines = err.splitlines()
    i = next((i for i, ln in enumerate(lines) if re.search(r"Stream #\d+:\d+.*: Video: (?!.*attached pic)", ln)), None)
    size = re.search(r", (\d+)x(\d+)(?=[, \[]|$)", lines[i]) if i is not None else None
    if i is None or size is None:
        raise InputError(f"{p} has no video stream", hint="pass a file that contains video, not only audio")
    w, h = int(size[1]), int(size[2])
    rate = re.search(r", ([\d.]+)(k?) (?:fps|tbr)", lines[i])
    fps = _exact_rate(Fraction(rate[1]) * (1000 if rate[2] else 1)) if rate else Fraction(16)
    for ln in lines[i + 1 :]:  # this stream's side data: ffmpeg auto-rotates, so ±90° swaps the sides
        if "Stream #" in ln:
            break
        rot = re.search(r"rotation of (-?[\d.]+) degrees", ln)
        if rot and round(float(rot[1])) % 180 == 90:
            w, h = h, w
    dur = re.search(r"Duration: (\d+):(\d+):([\d.]+)", err)
    return w, h, fps, int(dur[1]) * 3600 + int(dur[2]) * 60 + float(dur[3]) if dur else None


def _read_full(stream: IO[bytes], view: memoryview) -> int:
    """Fill ``view`` from the pipe; fewer bytes only at the end of the stream."""
    got = 0
    while got < len(view) and (n := stream.readinto(view[got:])):  # type: ignore[attr-defined]
        got += n
    return got


class VideoReader:
    """Decode a video progressively: ``chunks(n)`` yields float32 [3, T ≤ n, H, W] in [-1, 1].

    ``size=(W, H)`` scales to cover and centre-crops to exactly W×H inside ffmpeg; ``max_frames`` stops early. Close
    it (or use ``with``) to kill ffmpeg.

    Frames always come at the constant rate ``self.fps``: ``fps`` if given, else the stream's *average* rate
    (frames ÷ duration; 29.97 read as 30000/1001). ffmpeg's fps filter picks, for each tick of that clock, the frame
    shown at that time (repeating or dropping frames), so a variable-frame-rate clip (phones, screen recordings)
    keeps its duration and the recorded fps is true; read frame by frame, 1.4 s of such a clip lasted 3.8 s. The
    average rather than the nominal rate (``tbr``, for VFR often the finest timestamp step: 50, 90, 1000) because
    it keeps about the source's number of frames: none invented or dropped on average. For a constant-rate source
    the two are equal and every frame comes out once.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        size: tuple[int, int] | None = None,
        max_frames: int | None = None,
        fps: float | None = None,
    ) -> None:
        self.path = _check_input(path)
        if size is not None and not (len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
            raise InputError(f"bad frame size {size}", hint="give a positive width and height, e.g. 832x480")
        if max_frames is not None and max_frames < 1:
            raise InputError(f"max_frames must be at least 1, got {max_frames}")
        if fps is not None and not (fps > 0 and math.isfinite(fps)):
            raise InputError(f"fps must be a positive number, got {fps}", hint="Wan 2.1 videos are 16 fps")
        self.source_width, self.source_height, source_fps, self.duration = _probe(self.path)
        self.width, self.height = size if size is not None else (self.source_width, self.source_height)
        self._rate = Fraction(fps).limit_denominator(1_000_000) if fps is not None else source_fps
        self.fps = float(self._rate)
        self.size, self.max_frames = size, max_frames
        self._ff: FFmpeg | None = None

    @property
    def frame_count(self) -> int | None:
        """Frames expected (duration × fps, capped by ``max_frames``); None when the container gives no duration."""
        if self.duration is None:
            return self.max_frames
        n = max(1, round(self.duration * self.fps))
        return n if self.max_frames is None else min(n, self.max_frames)

    def _args(self) -> list[str]:
        vf = [f"fps=fps={self._rate.numerator}/{self._rate.denominator}"]  # constant rate, whatever the source
        if self.size is not None:  # cover, then crop (centred by default); square pixels from here on
            w, h = self.size
            vf += [f"scale={w}:{h}:force_original_aspect_ratio=increase:flags=lanczos", f"crop={w}:{h}", "setsar=1"]
        limit = ["-frames:v", str(self.max_frames)] if self.max_frames is not None else []
        return [*QUIET, "-i", str(self.path), "-map", "0:V:0", "-vf", ",".join(vf), *limit, *_RGB_OUT]

    def chunks(self, n: int = 16) -> Generator[torch.Tensor, None, None]:
        """Yield [3, T, H, W] float32 chunks, T ≤ n; each call starts again from the first frame.

        Stopping early is fine: ``close()`` on the generator (or on the reader) kills ffmpeg."""
        if n < 1:
            raise InputError(f"chunk length must be at least 1, got {n}")
        self.close()
        self._ff = ff = FFmpeg(self._args(), pipe_out=True)
        assert ff.proc.stdout is not None
        frame_bytes = self.width * self.height * 3
        buf = bytearray(n * frame_bytes)  # reused for every chunk: the float conversion copies
        total = 0
        try:
            while want := n if self.max_frames is None else min(n, self.max_frames - total):
                t = _read_full(ff.proc.stdout, memoryview(buf)[: want * frame_bytes]) // frame_bytes
                if t:
                    total += t
                    rgb = torch.from_numpy(np.frombuffer(buf, np.uint8, t * frame_bytes)).view(t, self.height, -1, 3)
                    x = rgb.permute(3, 0, 1, 2).to(torch.float32, memory_format=torch.contiguous_format)
                    yield x.div_(127.5).sub_(1.0)  # [3, t, H, W] in [-1, 1]
                if t < want:
                    break
            # all frames read (ffmpeg stops by itself at max_frames): did it end cleanly?
            if ff.finish() != 0:
                raise InputError(f"cannot decode {self.path}: {summary(ff.stderr())}", hint="is the file complete?")
            if total == 0:
                raise InputError(f"{self.path} contains no frames", hint="pass a video with at least one frame")
        finally:
            self.close()

    def close(self) -> None:
        if self._ff is not None:
            self._ff.kill()
            self._ff = None

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


# --------------------------------------------------------------------------------------------------------------------
# Metadata
# --------------------------------------------------------------------------------------------------------------------


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON record in the MP4 ``comment`` tag; {} if there is none (or it is not a JSON object)."""
    p = _check_input(path)
    res = run([*QUIET, "-i", str(p), "-f", "ffmetadata", "pipe:1"])
    if res.returncode != 0:
        raise InputError(f"cannot read {p}: {summary(res.stderr)}", hint="pass a video file")
    comment = parse_ffmetadata(res.stdout.decode("utf-8", "replace")).get("comment", "")
    try:
        record = json.loads(comment) if comment else {}
    except json.JSONDecodeError:
        return {}
    return record if isinstance(record, dict) else {}
