"""The ffmpeg binary bundled with ``imageio-ffmpeg``: the writer's child process, short calls, FFMETADATA1 text.

Reading goes through ``imageio_ffmpeg.read_frames`` (``video.py``). Writing needs the few things its
``write_frames`` cannot do (see :class:`~wan_cli.engine.video.VideoWriter`), so it keeps one child of its own here:

- :class:`FFmpeg`: the encoder, fed through a pipe, its stderr kept for the error message; killed and reaped on any
  failure.
- :func:`run`: a short call (reading the tags back) whose output is captured.
- :func:`ffmetadata` / :func:`parse_ffmetadata`: ffmpeg's ``;FFMETADATA1`` text, the way to hand ffmpeg tags of any
  size. A tag on the command line (``-metadata comment=…``) is one argument, and Linux caps one argument at 128 KiB
  (MAX_ARG_STRLEN): a long prompt failed with "Argument list too long" after the whole generation.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import tempfile
from typing import IO

from .errors import WanError
from .outputs import close_quietly

QUIET = ("-nostdin", "-hide_banner", "-loglevel", "error")
REINSTALL = "pip install --force-reinstall imageio-ffmpeg"


def ffmpeg_exe() -> str:
    import imageio_ffmpeg  # lazy: only commands that touch videos need it

    try:
        return str(imageio_ffmpeg.get_ffmpeg_exe())
    except RuntimeError as e:  # no bundled binary for this platform and none on PATH
        raise WanError(f"ffmpeg not found: {e}", hint=REINSTALL) from e


def summary(stderr: str | bytes, fallback: str = "unknown ffmpeg error") -> str:
    """ffmpeg's last error line, without its ``[in#0 @ 0x…]`` / ``Error opening input files:`` prefixes."""
    text = stderr.decode("utf-8", "replace") if isinstance(stderr, bytes) else stderr
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and "At least one output file" not in ln]
    last = re.sub(r"^\[[^\]]*\]\s*", "", lines[-1] if lines else fallback)
    return re.sub(r"^Error opening input files?:\s*", "", last)


def run(args: list[str]) -> subprocess.CompletedProcess[bytes]:
    """A short ffmpeg call; ``subprocess.run`` kills and reaps it on any exception, Ctrl-C included."""
    return subprocess.run([ffmpeg_exe(), *args], capture_output=True, check=False)


class FFmpeg:
    """One ffmpeg child fed through its stdin, in its own session: a terminal Ctrl-C reaches only Python, which
    cleans up. Its stderr goes to a temp file (no pipe to drain, no thread); :meth:`stderr` still reads it after
    :meth:`kill`."""

    def __init__(self, args: list[str]) -> None:
        self._err: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 (lives as long as the child)
        self._err_text = ""
        try:
            self.proc = subprocess.Popen(
                [ffmpeg_exe(), *args], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._err,
                start_new_session=True,
            )  # fmt: skip
        except BaseException as e:
            self._err.close()
            if isinstance(e, OSError):
                raise WanError(f"cannot run ffmpeg: {e}", hint=REINSTALL) from e
            raise

    def stderr(self) -> str:
        if self._err.closed:
            return self._err_text
        self._err.seek(0)
        return self._err.read().decode("utf-8", "replace")

    def finish(self) -> int:
        """End our input and wait for ffmpeg to write the file's end (moov, faststart); its exit code.

        A failed close raises (and the caller kills): frames may not have reached ffmpeg, which may still wait."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        return self.proc.wait()

    def kill(self) -> None:
        """Stop now, close the pipe and reap the process (no zombie). Safe to call twice."""
        with contextlib.suppress(OSError):
            if self.proc.poll() is None:
                self.proc.kill()
        if self.proc.stdin is not None:
            close_quietly(self.proc.stdin)
        self.proc.wait()  # prompt after SIGKILL, which cannot be ignored
        if not self._err.closed:
            self._err_text = self.stderr()  # kept for the error message
            self._err.close()


# --------------------------------------------------------------------------------------------------------------------
# FFMETADATA1
# --------------------------------------------------------------------------------------------------------------------


def _escape(s: str) -> str:
    return re.sub(r"([=;#\\\n\r])", r"\\\1", s)


def ffmetadata(tags: dict[str, str]) -> bytes:
    """Global tags as an FFMETADATA1 file (UTF-8), where ``\\`` escapes ``= ; # \\`` and line breaks.

    ffmpeg's reader takes a newline after *any* backslash as escaped, so a value must not end in a backslash; our
    one value is JSON, which always ends in ``}`` (and holds no raw line break: JSON escapes them)."""
    if any(v.endswith("\\") for v in tags.values()):
        raise ValueError("an FFMETADATA1 value cannot end in a backslash (ffmpeg would join it with the next line)")
    lines = [";FFMETADATA1", *(f"{_escape(k)}={_escape(v)}" for k, v in tags.items())]
    return ("\n".join(lines) + "\n").encode("utf-8")


def _unescape(s: str) -> str:
    return re.sub(r"\\(.)", r"\1", s, flags=re.S)


def parse_ffmetadata(text: str) -> dict[str, str]:
    """Global ``key=value`` pairs of ffmpeg's FFMETADATA1 text, where ``\\`` escapes ``=;#\\`` and newlines."""
    out: dict[str, str] = {}
    for line in re.findall(r"(?:\\.|[^\\\n])+", text, re.S):  # logical lines (an escaped newline stays inside)
        if line[0] == "[":  # [STREAM] / [CHAPTER] sections follow the global tags
            break
        kv = re.match(r"((?:\\.|[^\\=])*)=(.*)", line, re.S)
        if kv and line[0] not in ";#":
            out[_unescape(kv[1])] = _unescape(kv[2])
    return out
