"""Streaming video files through the ffmpeg binary bundled with ``imageio-ffmpeg`` (ffprobe is not bundled).

- :class:`VideoWriter` pipes RGB frames into ffmpeg, which writes in one pass: H.264 (libx264), yuv420p (BT.709,
  limited range, tagged so), the settings record as JSON in the MP4 ``comment`` tag (read from an FFMETADATA1
  file, so its size has no limit), moov atom first (``+faststart``, plays in browsers). It encodes into a hidden
  temp file beside the target, renamed onto it only on success; any failure (a full disk, Ctrl-C, SIGTERM) kills
  ffmpeg and deletes every temp file.
- :class:`VideoReader` lets ffmpeg decode (and resize/crop/resample) progressively through
  ``imageio_ffmpeg.read_frames`` and yields ``[3, T, H, W]`` chunks at a constant frame rate, variable-frame-rate
  sources included.
- :func:`read_metadata` returns that JSON record.
- :func:`check_output_path`, :func:`check_not_input`, :func:`check_extension` (from ``outputs.py``): what every
  command checks of an output before any work.

Nothing holds more than one chunk: memory depends on the frame size and chunk length, never on the video length.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import os
from collections.abc import Generator, Iterator
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import torch

from .errors import InputError, WanError
from .ffmpeg import QUIET, FFmpeg, ffmetadata, ffmpeg_exe, parse_ffmetadata, run, summary
from .outputs import check_extension, remove_quietly, temp_beside, write_new_file
from .outputs import check_not_input as check_not_input  # re-exported: the commands check outputs from here
from .outputs import check_output_path as check_output_path

_DISK = "check free disk space"
# yuv420p in BT.709 limited range, and tagged so (players otherwise guess BT.601 for small frames)
_BT709 = (
    "scale=out_color_matrix=bt709:out_range=tv,format=yuv420p,"
    "setparams=colorspace=bt709:color_primaries=bt709:color_trc=bt709"
)

# --------------------------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------------------------


def to_rgb24(chunk: torch.Tensor) -> torch.Tensor:
    """[3, T, H, W] float in [-1, 1] (or [1, 3, T, H, W]) → uint8 [T, H, W, 3] on the same device: what ffmpeg reads.

    Computed in float32 wherever it runs (IEEE add, mul and round-half-even): the same bytes on a GPU and a CPU."""
    x = chunk.detach()
    if x.ndim == 5 and x.shape[0] == 1:  # a StreamDecoder item still has its batch of 1
        x = x[0]
    if x.ndim != 4 or x.shape[0] != 3 or not x.is_floating_point():
        raise InputError(f"video chunks must be float [3, T, H, W], got {x.dtype} {tuple(x.shape)}")
    x = x.to(torch.float32).clamp(-1.0, 1.0).add(1.0).mul(127.5).round().to(torch.uint8)
    return x.permute(1, 2, 3, 0).contiguous()


def _to_uint8(chunk: torch.Tensor | np.ndarray) -> np.ndarray:
    """A float chunk (see :func:`to_rgb24`) or uint8 [T, H, W, 3] → C-contiguous uint8 [T, H, W, 3] on the host."""
    if isinstance(chunk, torch.Tensor):
        return to_rgb24(chunk).cpu().numpy()
    if isinstance(chunk, np.ndarray) and chunk.dtype == np.uint8 and chunk.ndim == 4 and chunk.shape[3] == 3:
        return np.ascontiguousarray(chunk)
    what = f"{chunk.dtype} {chunk.shape}" if isinstance(chunk, np.ndarray) else type(chunk).__name__
    raise InputError(f"cannot write a {what} chunk", hint="pass [3, T, H, W] floats in [-1, 1] or uint8 [T, H, W, 3]")


class VideoWriter:
    """Write an H.264 MP4 chunk by chunk; the target appears only when the ``with`` block ends without error.

    ``metadata`` (JSON-serialisable, any size) becomes the MP4 ``comment`` tag. It is written when ffmpeg opens the
    file (at the first frame), in the same pass as the frames: what is known only later (the decode time) belongs
    in the sidecar, not here. ``fps`` is kept exact (29.97… as 30000/1001). Any exception or BaseException in
    ``write``, in ``close`` or inside the block kills ffmpeg and deletes the temp files; a target that existed
    before is left as it was.

    Not ``imageio_ffmpeg.write_frames``: it cannot say when ffmpeg failed, and never losing work depends on that.
    Its ffmpeg prints to our stderr (the error text cannot go into the message), its exit status is never checked
    (a file that failed at its very end, writing the moov atom on a full disk, would pass for a good one) and the
    process is not exposed. Nor can it take the metadata file: its ``-s``/``-pix_fmt``/``-r`` and ``-vcodec`` come
    before ``input_params`` and after ``-i -``, so an extra ``-i`` in either is handed options that make ffmpeg
    refuse it ("Option video_size not found", "Unknown decoder 'libx264'").
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        width: int,
        height: int,
        fps: float | Fraction = 16,
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
        self._comment = json.dumps(metadata, ensure_ascii=False) if metadata else None  # TypeError now, not later
        self.path = check_output_path(path, force=force)
        check_extension(self.path, ".mp4", "an H.264 MP4 video")
        self.width, self.height, self.force, self.crf, self.preset = width, height, force, crf, preset
        self.rate = Fraction(fps).limit_denominator(1_000_000)  # 30000/1001, not 29.97002997
        self.fps = float(self.rate)
        self._metadata = metadata
        self.frames_written = 0
        self._ff: FFmpeg | None = None
        self._temps: list[Path] = []  # the video, then the metadata file
        self._closed = False

    @property
    def metadata(self) -> dict[str, Any] | None:
        """The record given at open (read-only: ffmpeg writes it with the first frame)."""
        return self._metadata

    def _temp(self) -> Path:
        """A temp name, registered for cleanup before anything creates it."""
        self._temps.append(p := temp_beside(self.path))
        return p

    def _start(self) -> FFmpeg:
        """ffmpeg, writing the temp video: frames from our pipe (input 0), global tags from the metadata file (1)."""
        video = self._temp()
        tags: list[str] = []
        if self._comment is not None:
            try:
                write_new_file(meta := self._temp(), ffmetadata({"comment": self._comment}))
            except OSError as e:
                raise WanError(f"cannot write {self.path}: {e.strerror or e}", hint=_DISK) from e
            tags = ["-f", "ffmetadata", "-i", str(meta), "-map_metadata", "1"]
        rate = f"{self.rate.numerator}/{self.rate.denominator}"
        return FFmpeg([
            *QUIET, "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{self.width}x{self.height}",
            "-framerate", rate, "-i", "pipe:0", *tags, "-map", "0:v:0", "-vf", _BT709,
            "-c:v", "libx264", "-preset", self.preset, "-crf", str(self.crf), "-movflags", "+faststart",
            "-f", "mp4", str(video),
        ])  # fmt: skip

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
                self._ff = self._start()
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
        """Finish: wait for ffmpeg to write the file's end, rename it onto the target."""
        if self._closed:
            return
        try:
            self._finish()
        finally:
            self.abort()  # on success only the metadata file and the spent process are left

    def _finish(self) -> None:
        if (ff := self._ff) is None:
            raise InputError(f"no frames were written to {self.path}", hint="a video needs at least one frame")
        try:
            code = ff.finish()
        except OSError as e:  # the last frames may not have reached ffmpeg: never a video short of frames
            raise self._stopped(e, ff) from e
        if code != 0:  # e.g. the moov atom (the index, the record) did not fit on the disk
            raise WanError(f"ffmpeg failed writing {self.path}: {summary(ff.stderr())}", hint=_DISK)
        if self.path.exists() and not self.force:  # appeared while we were encoding: still never clobber it
            raise InputError(f"{self.path} already exists", hint="pass --force to overwrite it")
        video = self._temps[0]
        try:
            os.replace(video, self.path)
        except OSError as e:
            raise WanError(f"cannot write {self.path}: {e.strerror or e}", hint="check the folder's permissions") from e
        self._temps.remove(video)

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


def _still_format(p: Path) -> str | None:
    """The still-image format named by the file's first bytes, or None: ffmpeg reads a picture as one frame."""
    try:
        with p.open("rb") as f:
            head = f.read(12)
    except OSError as e:
        raise InputError(f"cannot read {p}: {e.strerror or e}", hint="check the file's permissions") from e
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    return "BMP" if head[:2] == b"BM" and head[6:10] == b"\x00" * 4 else None  # BMP's reserved bytes are zero


def _exact_rate(printed: float) -> Fraction:
    """ffmpeg prints a rate to 2 decimals: 23.98, 29.97, 59.94 are the NTSC rates n·1000/1001 within that precision."""
    rate = Fraction(round(printed * 100), 100)
    ntsc = Fraction(round(rate * Fraction(1001, 1000)) * 1000, 1001)
    return ntsc if rate.denominator != 1 and abs(ntsc - rate) < Fraction(1, 200) else rate


@contextlib.contextmanager
def _size_warning_muted() -> Iterator[None]:
    """imageio-ffmpeg warns whenever the frames differ in size from the source: ours do on purpose (crop, rotation)."""
    log = logging.getLogger("imageio_ffmpeg")

    def keep(record: logging.LogRecord) -> bool:
        return "frame size for reading" not in record.getMessage()

    log.addFilter(keep)
    try:
        yield
    finally:
        log.removeFilter(keep)


def _unreadable(p: Path, text: str) -> InputError:
    """The error for a file ffmpeg could not open, from imageio-ffmpeg's message (which ends with ffmpeg's stderr)."""
    if "matches no streams" in text:  # our -map 0:V:0: no video stream besides cover art
        return InputError(f"{p} has no video stream", hint="pass a file that contains video, not only audio")
    return InputError(f"cannot read {p}: {summary(text)}", hint="pass a video ffmpeg can open (mp4, mov, webm, …)")


def _open(p: Path, output_params: list[str]) -> tuple[Generator[bytes, None, None], dict[str, Any]]:
    """ffmpeg decoding the first video stream of ``p`` to RGB24 frames (bytes), and the metadata it yields first:
    ``size`` (of the frames produced: rotation and filters applied), ``fps`` (the stream's average, 2 decimals;
    0 if unknown), ``duration`` (seconds; 0 if unknown)."""
    import imageio_ffmpeg

    ffmpeg_exe()  # a clear error if there is no ffmpeg
    frames = imageio_ffmpeg.read_frames(str(p), output_params=["-map", "0:V:0", *output_params])
    try:
        with _size_warning_muted():
            meta = next(frames)
    except Exception as e:  # OSError "Could not load meta information", or a header it could not parse
        frames.close()
        raise _unreadable(p, str(e)) from None
    except BaseException:
        frames.close()
        raise
    return frames, meta


class VideoReader:
    """Decode a video progressively: ``chunks(n)`` yields float32 [3, T ≤ n, H, W] in [-1, 1].

    ``size=(W, H)`` scales to cover and centre-crops to exactly W×H inside ffmpeg; ``max_frames`` stops early. Close
    it (or use ``with``) to stop ffmpeg.

    Frames always come at the constant rate ``self.fps``: ``fps`` if given, else the stream's *average* rate
    (frames ÷ duration; 29.97 read as 30000/1001; 16 when the file gives none). ffmpeg's fps filter picks, for each
    tick of that clock, the frame shown at that time (repeating or dropping frames), so a variable-frame-rate clip
    (phones, screen recordings) keeps its duration and the recorded fps is true; read frame by frame, 1.4 s of such
    a clip lasted 3.8 s. The average rather than the nominal rate (``tbr``, for VFR often the finest timestamp step:
    50, 90, 1000) because it keeps about the source's number of frames: none invented or dropped on average. For a
    constant-rate source the two are equal and every frame comes out once.

    ffmpeg ends a damaged file (a truncated download) at its last good frame with a success status, so a file
    shorter than its header says is read as far as it goes; ``wan encode --frames N`` then says it is short.
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
        if still := _still_format(self.path):
            raise InputError(f"{self.path} is a still image ({still}), not a video", hint="pass a video file")
        probe, meta = _open(self.path, [])
        probe.close()
        self.source_width, self.source_height = (int(v) for v in meta["size"])  # as shown: ffmpeg applies a rotation
        self.duration: float | None = meta["duration"] or None
        source_fps = _exact_rate(meta["fps"]) if meta["fps"] > 0 else Fraction(16)
        self.width: int
        self.height: int
        self.width, self.height = size if size is not None else (self.source_width, self.source_height)
        self._rate = Fraction(fps).limit_denominator(1_000_000) if fps is not None else source_fps
        self.fps = float(self._rate)
        self.size, self.max_frames = size, max_frames
        self._frames: Generator[bytes, None, None] | None = None

    @property
    def frame_count(self) -> int | None:
        """Frames expected (duration × fps, capped by ``max_frames``); None when the container gives no duration."""
        if self.duration is None:
            return self.max_frames
        n = max(1, round(self.duration * self.fps))
        return n if self.max_frames is None else min(n, self.max_frames)

    def _output_params(self) -> list[str]:
        vf = [f"fps=fps={self._rate.numerator}/{self._rate.denominator}"]  # constant rate, whatever the source
        if self.size is not None:  # cover, then crop (centred by default); square pixels from here on
            w, h = self.size
            vf += [f"scale={w}:{h}:force_original_aspect_ratio=increase:flags=lanczos", f"crop={w}:{h}", "setsar=1"]
        limit = ["-frames:v", str(self.max_frames)] if self.max_frames is not None else []
        return ["-vf", ",".join(vf), *limit]

    def chunks(self, n: int = 16) -> Generator[torch.Tensor, None, None]:
        """Yield [3, T, H, W] float32 chunks, T ≤ n; each call starts again from the first frame.

        Stopping early is fine: ``close()`` on the generator (or on the reader) stops ffmpeg."""
        if n < 1:
            raise InputError(f"chunk length must be at least 1, got {n}")
        self.close()
        self._frames, meta = _open(self.path, self._output_params())
        if tuple(meta["size"]) != (self.width, self.height):  # never: our filters make this size
            self.close()
            raise WanError(f"ffmpeg makes {meta['size']} frames of {self.path}, not {self.width}x{self.height}")
        buf = np.empty((n, self.height, self.width, 3), np.uint8)  # reused for every chunk: the float conversion copies
        total = 0
        try:
            while want := n if self.max_frames is None else min(n, self.max_frames - total):
                t = 0
                for t, frame in enumerate(itertools.islice(self._frames, want), 1):  # ffmpeg stops at max_frames
                    buf[t - 1] = np.frombuffer(frame, np.uint8).reshape(self.height, self.width, 3)
                if t:
                    total += t
                    rgb = torch.from_numpy(buf[:t]).permute(3, 0, 1, 2)  # [3, t, H, W] uint8, a view
                    x = rgb.to(torch.float32, memory_format=torch.contiguous_format)
                    yield x.div_(127.5).sub_(1.0)  # in [-1, 1]
                if t < want:
                    break
        except RuntimeError as e:  # imageio-ffmpeg: "Could not read frame …" (the stream ended inside a frame)
            raise InputError(f"cannot decode {self.path}: {summary(str(e))}", hint="is the file complete?") from None
        finally:
            self.close()
        if total == 0:
            raise InputError(f"{self.path} contains no frames", hint="pass a video with at least one frame")

    def close(self) -> None:
        """Stop ffmpeg: imageio-ffmpeg closes its pipes and reaps it."""
        if self._frames is not None:
            self._frames.close()
            self._frames = None

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
