"""Streaming video files through the ffmpeg binary bundled with ``imageio-ffmpeg`` (ffprobe is not bundled).

- :class:`VideoWriter` pipes RGB frames into ffmpeg: H.264 (libx264), yuv420p (BT.709, limited range), moov atom
  first (``+faststart``, plays in browsers). It encodes into a hidden temp file beside the target; at close a
  ``-c copy`` remux adds the final metadata (the settings record as JSON in the MP4 ``comment`` tag) and does the
  faststart pass, and only then is the result renamed onto the target.
- :class:`VideoReader` lets ffmpeg decode (and resize/crop/resample) progressively and yields ``[3, T, H, W]`` chunks.
- :func:`read_metadata` returns that JSON record.

Nothing holds more than one chunk: memory depends on the frame size and chunk length, never on the video length.
Every ffmpeg child writes its stderr to a temp file (no pipe to drain, no thread) and is killed and reaped on close.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import secrets
import subprocess
import tempfile
from collections.abc import Generator
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import numpy as np
import torch

from .errors import InputError, WanError

_QUIET = ("-nostdin", "-hide_banner", "-loglevel", "error")
_RGB_OUT = ("-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1")


def _ffmpeg() -> str:
    import imageio_ffmpeg  # lazy: only commands that touch videos need it

    try:
        return str(imageio_ffmpeg.get_ffmpeg_exe())
    except RuntimeError as e:  # no bundled binary for this platform and none on PATH
        raise WanError(f"ffmpeg not found: {e}", hint="pip install --force-reinstall imageio-ffmpeg") from e


def _summary(stderr: str | bytes) -> str:
    """ffmpeg's last error line, without its ``[in#0 @ 0x…]`` / ``Error opening input files:`` prefixes."""
    text = stderr.decode("utf-8", "replace") if isinstance(stderr, bytes) else stderr
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and "At least one output file" not in ln]
    last = re.sub(r"^\[[^\]]*\]\s*", "", lines[-1] if lines else "unknown ffmpeg error")
    return re.sub(r"^Error opening input files?:\s*", "", last)


def _run(args: list[str]) -> subprocess.CompletedProcess[bytes]:
    """A short ffmpeg call (probe, remux, metadata); ``subprocess.run`` kills it on any exception, Ctrl-C included."""
    return subprocess.run([_ffmpeg(), *args], capture_output=True, check=False)


def check_output_path(path: str | os.PathLike[str], *, force: bool) -> Path:
    """Refuse an output we cannot or should not write: a directory, a missing parent, an existing file without force."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise InputError(f"{p} is a directory", hint="give a file name, e.g. out.mp4")
    if not p.parent.is_dir():
        what = "is not a directory" if p.parent.exists() else "does not exist"
        raise InputError(f"cannot write {p}: {p.parent} {what}", hint="create the directory or choose another path")
    if not os.access(p.parent, os.W_OK | os.X_OK):
        raise InputError(f"cannot write to {p.parent}: permission denied", hint="choose a directory you can write to")
    if p.exists() and not force:
        raise InputError(f"{p} already exists", hint="pass --force to overwrite it, or choose another name")
    return p


def temp_beside(target: Path) -> Path:
    """A fresh hidden name ``.NAME.XXXXXXXX.tmp`` beside the target (same filesystem, so the final rename is atomic).

    Only a name: whoever writes it creates it with the usual permissions (``mkstemp`` would make it 0600)."""
    return target.parent / f".{target.name}.{secrets.token_hex(4)}.tmp"


class _FFmpeg:
    """One streaming ffmpeg child, in its own session: a terminal Ctrl-C reaches only Python, which cleans up."""

    def __init__(self, args: list[str], *, pipe_in: bool = False, pipe_out: bool = False) -> None:
        self._err: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 (lives as long as the child)
        pipe, null = subprocess.PIPE, subprocess.DEVNULL
        try:
            self.proc = subprocess.Popen(
                [_ffmpeg(), *args], stdin=pipe if pipe_in else null, stdout=pipe if pipe_out else null,
                stderr=self._err, start_new_session=True,
            )  # fmt: skip
        except BaseException as e:
            self._err.close()
            if isinstance(e, OSError):
                raise WanError(f"cannot run ffmpeg: {e}", hint="pip install --force-reinstall imageio-ffmpeg") from e
            raise

    def stderr(self) -> str:
        self._err.seek(0)
        return self._err.read().decode("utf-8", "replace")

    def finish(self) -> int:
        """End the input (if we feed it) and wait for ffmpeg to exit; its exit code."""
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        return self.proc.wait()

    def kill(self) -> None:
        """Stop now, close the pipes and reap the process (no zombie). Safe to call twice."""
        if self.proc.poll() is None:
            self.proc.kill()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        self.proc.wait()
        self._err.close()


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

    ``metadata`` (JSON-serialisable) becomes the MP4 ``comment`` tag; it may be replaced until close (timings are
    known only at the end). An exception or Ctrl-C inside the block kills ffmpeg and deletes the temp files.
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
        self.width, self.height, self.fps, self.force, self.crf, self.preset = width, height, fps, force, crf, preset
        self.frames_written = 0
        self.metadata = metadata
        self._ff: _FFmpeg | None = None
        self._temps: list[Path] = []  # [first pass, remuxed]
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

    def write(self, chunk: torch.Tensor | np.ndarray) -> None:
        """Append frames: [3, T, H, W] float in [-1, 1] (decoder output) or uint8 [T, H, W, 3]."""
        if self._closed:
            raise ValueError(f"write to a closed VideoWriter ({self.path})")
        frames = _to_uint8(chunk)
        if frames.shape[1:3] != (self.height, self.width):
            raise InputError(
                f"frames are {frames.shape[2]}x{frames.shape[1]}, the video is {self.width}x{self.height}",
                hint="every chunk must have the size the writer was opened with",
            )
        if self._ff is None:
            self._temps.append(temp_beside(self.path))
            self._ff = _FFmpeg([
                *_QUIET, "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{self.width}x{self.height}",
                "-framerate", str(self.fps), "-i", "pipe:0",
                "-vf", "scale=out_color_matrix=bt709:out_range=tv,format=yuv420p,"
                       "setparams=colorspace=bt709:color_primaries=bt709:color_trc=bt709",  # tag what we converted to
                "-c:v", "libx264", "-preset", self.preset, "-crf", str(self.crf), "-f", "mp4", str(self._temps[0]),
            ], pipe_in=True)  # fmt: skip
        assert self._ff.proc.stdin is not None
        try:
            self._ff.proc.stdin.write(frames.reshape(-1).data)
        except OSError as e:  # ffmpeg died (disk full, …): say what it said
            err = self._ff.stderr()
            self.abort()
            raise WanError(f"ffmpeg stopped writing {self.path}: {_summary(err)}", hint="check free disk space") from e
        except BaseException:
            self.abort()
            raise
        self.frames_written += frames.shape[0]

    def close(self) -> None:
        """Finish: wait for the encoder, remux with the final metadata and faststart, rename onto the target."""
        if self._closed:
            return
        try:
            if self._ff is None:
                raise InputError(f"no frames were written to {self.path}", hint="a video needs at least one frame")
            if self._ff.finish() != 0:
                raise WanError(f"ffmpeg failed writing {self.path}: {_summary(self._ff.stderr())}")
            self._temps.append(final := temp_beside(self.path))
            tags = ["-metadata", "comment=" + json.dumps(self._metadata, ensure_ascii=False)] if self._metadata else []
            res = _run([*_QUIET, "-y", "-i", str(self._temps[0]), "-map", "0", "-c", "copy", *tags,
                        "-movflags", "+faststart", "-f", "mp4", str(final)])  # fmt: skip
            if res.returncode != 0:
                raise WanError(f"ffmpeg failed finishing {self.path}: {_summary(res.stderr)}")
            if self.path.exists() and not self.force:  # appeared while we were encoding: still never clobber it
                raise InputError(f"{self.path} already exists", hint="pass --force to overwrite it")
            os.replace(final, self.path)
            self._temps.remove(final)
        finally:
            self.abort()  # on success only the first-pass file and the spent process are left to clean up

    def abort(self) -> None:
        """Kill ffmpeg and delete the temp files; the target is left as it was. Safe to call twice."""
        self._closed = True
        if self._ff is not None:
            self._ff.kill()
        for p in self._temps:
            p.unlink(missing_ok=True)
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


def _probe(p: Path) -> tuple[int, int, float, float | None]:
    """(width, height, fps, duration or None) of the first video stream, parsed from ``ffmpeg -i`` (no ffprobe)."""
    err = _run(["-nostdin", "-hide_banner", "-i", str(p)]).stderr.decode("utf-8", "replace")
    fmt = re.search(r"^Input #0, (.+?), from ", err, re.M)
    if fmt is None:
        raise InputError(f"cannot read {p}: {_summary(err)}", hint="pass a video ffmpeg can open (mp4, mov, webm, …)")
    if fmt[1] in ("image2", "image2pipe") or fmt[1].endswith("_pipe"):  # png_pipe, jpeg_pipe, …
        raise InputError(f"{p} is a still image ({fmt[1]}), not a video", hint="pass a video file")
    lines = err.splitlines()
    i = next((i for i, ln in enumerate(lines) if re.search(r"Stream #\d+:\d+.*: Video: (?!.*attached pic)", ln)), None)
    size = re.search(r", (\d+)x(\d+)(?=[, \[]|$)", lines[i]) if i is not None else None
    if i is None or size is None:
        raise InputError(f"{p} has no video stream", hint="pass a file that contains video, not only audio")
    w, h = int(size[1]), int(size[2])
    rate = re.search(r", ([\d.]+)(k?) (?:fps|tbr)", lines[i])
    fps = float(rate[1]) * (1000 if rate[2] else 1) if rate else 16.0
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

    ``size=(W, H)`` scales to cover and centre-crops to exactly W×H inside ffmpeg; ``fps`` resamples (ffmpeg's fps
    filter, dropping or repeating frames); ``max_frames`` stops early. Close it (or use ``with``) to kill ffmpeg.
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
        self.fps = fps if fps is not None else source_fps
        self.size, self.max_frames, self._resample = size, max_frames, fps
        self._ff: _FFmpeg | None = None

    @property
    def frame_count(self) -> int | None:
        """Frames expected (duration × fps, capped by ``max_frames``); None when the container gives no duration."""
        if self.duration is None:
            return self.max_frames
        n = max(1, round(self.duration * self.fps))
        return n if self.max_frames is None else min(n, self.max_frames)

    def _args(self) -> list[str]:
        vf = [f"fps=fps={self._resample}"] if self._resample is not None else []
        if self.size is not None:  # cover, then crop (centred by default); square pixels from here on
            w, h = self.size
            vf += [f"scale={w}:{h}:force_original_aspect_ratio=increase:flags=lanczos", f"crop={w}:{h}", "setsar=1"]
        limit = ["-frames:v", str(self.max_frames)] if self.max_frames is not None else []
        filters = ["-vf", ",".join(vf)] if vf else []
        return [*_QUIET, "-i", str(self.path), "-map", "0:V:0", *filters, *limit, *_RGB_OUT]

    def chunks(self, n: int = 16) -> Generator[torch.Tensor, None, None]:
        """Yield [3, T, H, W] float32 chunks, T ≤ n; each call starts again from the first frame.

        Stopping early is fine: ``close()`` on the generator (or on the reader) kills ffmpeg."""
        if n < 1:
            raise InputError(f"chunk length must be at least 1, got {n}")
        self.close()
        self._ff = ff = _FFmpeg(self._args(), pipe_out=True)
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
                raise InputError(f"cannot decode {self.path}: {_summary(ff.stderr())}", hint="is the file complete?")
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


def _unescape(s: str) -> str:
    return re.sub(r"\\(.)", r"\1", s, flags=re.S)


def _parse_ffmetadata(text: str) -> dict[str, str]:
    """Global ``key=value`` pairs of ffmpeg's FFMETADATA1 text, where ``\\`` escapes ``=;#\\`` and newlines."""
    out: dict[str, str] = {}
    for line in re.findall(r"(?:\\.|[^\\\n])+", text, re.S):  # logical lines (an escaped newline stays inside)
        if line[0] == "[":  # [STREAM] / [CHAPTER] sections follow the global tags
            break
        kv = re.match(r"((?:\\.|[^\\=])*)=(.*)", line, re.S)
        if kv and line[0] not in ";#":
            out[_unescape(kv[1])] = _unescape(kv[2])
    return out


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON record in the MP4 ``comment`` tag; {} if there is none (or it is not a JSON object)."""
    p = _check_input(path)
    res = _run([*_QUIET, "-i", str(p), "-f", "ffmetadata", "pipe:1"])
    if res.returncode != 0:
        raise InputError(f"cannot read {p}: {_summary(res.stderr)}", hint="pass a video file")
    comment = _parse_ffmetadata(res.stdout.decode("utf-8", "replace")).get("comment", "")
    try:
        record = json.loads(comment) if comment else {}
    except json.JSONDecodeError:
        return {}
    return record if isinstance(record, dict) else {}
