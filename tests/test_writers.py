"""The writers never leave a partial file, and an output never replaces one of its inputs.

A full disk is simulated two ways: file objects whose write (and close) raise ENOSPC, and again when the cleanup
closes them; and, for ffmpeg itself, the kernel's file size limit (RLIMIT_FSIZE, with SIGXFSZ ignored so that the
write fails with EFBIG as it would with ENOSPC). After every failure the folder must hold exactly what it held
before, and no ffmpeg child may be left running or unreaped.
"""

from __future__ import annotations

import errno
import math
import os
import pathlib
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import pytest
import torch
from test_video import H, W, ffmpeg_children, linux_only, palette_chunk

from wan_cli.engine.errors import InputError, WanError
from wan_cli.engine.latents import LatentsWriter
from wan_cli.engine.video import VideoWriter, check_not_input


class Terminated(BaseException):
    """What the CLI raises on SIGTERM/SIGHUP: a BaseException, so that no ``except Exception`` swallows it."""


def enospc() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


INTERRUPTS = [KeyboardInterrupt, SystemExit, Terminated]


@dataclass
class Fault:
    """How one file object fails: after ``room`` bytes every write raises ``error()``; with ``fail_close`` every
    close() raises ENOSPC, the cleanup's close included (after closing the real file, as CPython's buffered files
    do when their last flush fails, unless ``stuck``: then the real file stays open)."""

    room: float = math.inf
    fail_close: bool = False
    error: Callable[[], BaseException] = enospc
    stuck: bool = False


class FullDisk:
    """A file object (or pipe) wrapped to fail as its :class:`Fault` says."""

    def __init__(self, f: IO[bytes], fault: Fault) -> None:
        self.f, self.fault, self.written, self.close_calls = f, fault, 0, 0

    def write(self, data: Any) -> int:
        n = memoryview(data).nbytes
        if self.written + n > self.fault.room:
            raise self.fault.error()
        self.written += n
        return self.f.write(data)

    def close(self) -> None:
        self.close_calls += 1
        if not self.fault.stuck:
            self.f.close()
        if self.fault.fail_close:
            raise enospc()

    def __getattr__(self, name: str) -> Any:  # flush, fileno, closed, …
        return getattr(self.f, name)

    def __enter__(self) -> FullDisk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@pytest.fixture
def full_disk(monkeypatch: pytest.MonkeyPatch) -> Callable[..., list[FullDisk]]:
    """``full_disk(fault0, fault1, …)``: the n-th hidden temp file opened for writing fails as fault n says."""
    real_open = pathlib.Path.open

    def arm(*faults: Fault) -> list[FullDisk]:
        opened: list[FullDisk] = []

        def faulty_open(self: Path, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
            f = real_open(self, mode, *args, **kwargs)
            hidden_temp = self.name.startswith(".") and self.name.endswith(".tmp") and mode[0] in "wxa"
            if hidden_temp and len(opened) < len(faults):
                opened.append(FullDisk(f, faults[len(opened)]))
                return opened[-1]
            return f

        monkeypatch.setattr(pathlib.Path, "open", faulty_open)
        return opened

    return arm


def listing(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A folder whose only file is ``old.bin``, so a test can check that a failure leaves it exactly as it was."""
    (tmp_path / "old.bin").write_bytes(b"precious")
    return tmp_path


# --------------------------------------------------------------------------------------------------------------------
# LatentsWriter
# --------------------------------------------------------------------------------------------------------------------

FRAME = torch.randn(16, 3, 4)
LATENTS_FAULTS = {  # (raw spill file, safetensors file)
    "append": (Fault(room=0, fail_close=True), Fault()),
    "spill close": (Fault(fail_close=True), Fault()),
    "header": (Fault(), Fault(room=0, fail_close=True)),
    "data": (Fault(), Fault(room=1000, fail_close=True)),
    "final close": (Fault(), Fault(fail_close=True)),
}


def _write_latents(path: Path, *, force: bool = False) -> Path:
    with LatentsWriter(path, force=force) as w:
        for _ in range(3):
            w.append(FRAME)
        return w.finish(fps=16, source="clip.mp4", model="m", record={"seed": 1})


@pytest.mark.parametrize("where", LATENTS_FAULTS)
@pytest.mark.parametrize("replace", [False, True], ids=["new", "replacing"])
def test_latents_writer_full_disk_leaves_nothing(
    folder: Path, full_disk: Callable[..., list[FullDisk]], where: str, replace: bool
) -> None:
    target = folder / ("old.bin" if replace else "lat.safetensors")
    if replace:
        target = target.rename(folder / "lat.safetensors")
    before = listing(folder)
    opened = full_disk(*LATENTS_FAULTS[where])
    with pytest.raises(InputError, match="No space left on device") as e:
        _write_latents(target, force=replace)
    assert "disk space" in e.value.hint
    assert listing(folder) == before
    assert all(f.f.closed for f in opened)  # nothing left open either


@pytest.mark.parametrize("error", INTERRUPTS)
@pytest.mark.parametrize("in_with", [True, False], ids=["with", "bare"])
@pytest.mark.parametrize("where", ["append", "finish"])
def test_latents_writer_interrupted_leaves_nothing(
    folder: Path, full_disk: Callable[..., list[FullDisk]], error: type[BaseException], in_with: bool, where: str
) -> None:
    """Ctrl-C, sys.exit or SIGTERM mid-write: the interrupt itself comes out (not the ENOSPC of the cleanup's close,
    which would turn "Aborted!" into a disk error), and nothing is left, with or without a ``with`` block."""
    before = listing(folder)
    fault = Fault(room=FRAME.numel() * 4 * 2 if where == "append" else 1000, fail_close=True, error=error)
    full_disk(*((fault,) if where == "append" else (Fault(), fault)))
    w = LatentsWriter(folder / "lat.safetensors")
    with pytest.raises(error):
        if in_with:
            with w:
                for _ in range(3):
                    w.append(FRAME)
                w.finish(fps=16, source="x", model="m")
        else:
            for _ in range(3):
                w.append(FRAME)
            w.finish(fps=16, source="x", model="m")
    assert listing(folder) == before


def test_latents_writer_works_when_the_disk_has_room(folder: Path, full_disk: Callable[..., list[FullDisk]]) -> None:
    """The fault harness itself: with room enough, the same writes succeed and only the result is added."""
    full_disk(Fault(), Fault())
    _write_latents(folder / "lat.safetensors")
    assert sorted(listing(folder)) == ["lat.safetensors", "old.bin"]


# --------------------------------------------------------------------------------------------------------------------
# VideoWriter
# --------------------------------------------------------------------------------------------------------------------


def _write_video(path: Path, *, force: bool = False, metadata: dict[str, Any] | None = None, frames: int = 9) -> None:
    with VideoWriter(path, W, H, force=force, metadata=metadata or {"seed": 1}) as w:
        for i in range(frames):
            w.write(palette_chunk(i, 1))


@pytest.fixture
def full_pipe(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Fault], list[FullDisk]]]:
    """``full_pipe(fault)``: the pipe into every streaming ffmpeg child fails as ``fault`` says."""
    pipes: list[FullDisk] = []

    def arm(fault: Fault) -> list[FullDisk]:
        class FullPipePopen(subprocess.Popen):  # type: ignore[type-arg]
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                if self.stdin is not None:
                    pipes.append(FullDisk(self.stdin, fault))
                    self.stdin = pipes[-1]  # type: ignore[assignment]

        monkeypatch.setattr(subprocess, "Popen", FullPipePopen)
        return pipes

    yield arm
    for p in pipes:  # a stuck pipe was never really closed
        p.f.close()


@linux_only
@pytest.mark.parametrize(
    "fault",
    [Fault(room=0, fail_close=True), Fault(room=20000, fail_close=True), Fault(fail_close=True),
     Fault(fail_close=True, stuck=True), *(Fault(room=20000, fail_close=True, error=e) for e in INTERRUPTS)],
    ids=["first write", "later write", "close", "close stuck", *(f"{e.__name__}" for e in INTERRUPTS)],
)  # fmt: skip
@pytest.mark.parametrize("replace", [False, True], ids=["new", "replacing"])
def test_video_writer_pipe_failure_leaves_nothing(
    folder: Path, full_pipe: Callable[[Fault], list[FullDisk]], fault: Fault, replace: bool
) -> None:
    """A failed close of ffmpeg's input means frames may not have reached it: never a video (the old code shrugged
    it off and kept a file that could be short of frames); a stuck one must not hang the writer either."""
    target = (folder / "old.bin").rename(folder / "clip.mp4") if replace else folder / "clip.mp4"
    before = listing(folder)
    full_pipe(fault)
    interrupt = fault.error is not enospc
    with pytest.raises(type(fault.error()) if interrupt else WanError) as e:
        _write_video(target, force=replace)
    if not interrupt:
        assert "No space left on device" in str(e.value)
    assert listing(folder) == before
    assert ffmpeg_children() == []  # killed and reaped


@linux_only
@pytest.mark.parametrize("fault", [Fault(room=0), Fault(room=1000, fail_close=True), Fault(fail_close=True)])
def test_video_writer_metadata_file_failure_leaves_nothing(
    folder: Path, full_disk: Callable[..., list[FullDisk]], fault: Fault
) -> None:
    before = listing(folder)
    full_disk(fault)
    with pytest.raises(WanError, match="No space left on device"):
        _write_video(folder / "clip.mp4", metadata={"prompt": "x" * 5000})
    assert listing(folder) == before
    assert ffmpeg_children() == []


@pytest.fixture
def size_limited_ffmpeg(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """``limit(n)``: from now on ffmpeg may write files of at most n bytes (what a nearly full disk does)."""
    import imageio_ffmpeg

    real = imageio_ffmpeg.get_ffmpeg_exe()
    wrapper = tmp_path_factory.mktemp("bin") / "ffmpeg"

    def limit(n: int) -> None:
        wrapper.write_text(
            f"#!{sys.executable}\nimport os, resource, signal, sys\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG\n"
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({n}, {n}))\n"
            "resource.setrlimit(resource.RLIMIT_CORE, (0, 0))\n"
            f"os.execv({real!r}, [{real!r}, *sys.argv[1:]])\n"
        )
        wrapper.chmod(0o755)
        monkeypatch.setattr(imageio_ffmpeg, "get_ffmpeg_exe", lambda: str(wrapper))

    yield limit


@linux_only
@pytest.mark.parametrize("stage", ["encode", "finish"])
def test_video_writer_ffmpeg_runs_out_of_space(folder: Path, size_limited_ffmpeg: Any, stage: str) -> None:
    """ffmpeg itself cannot write: while encoding (noise does not compress; ffmpeg reports it as it closes the
    file), or at the file's end, where the moov atom with the 120 kB record makes it too big. Its own error is
    reported (the kernel's EFBIG here, ENOSPC on a full disk); nothing is left."""
    before = listing(folder)
    rng = np.random.default_rng(0)
    size_limited_ffmpeg(20_000 if stage == "encode" else 60_000)
    record = {"prompt": "a dog " * 20_000}
    with (
        pytest.raises(WanError, match="File too large") as e,
        VideoWriter(folder / "clip.mp4", W, H, metadata=record) as w,
    ):
        for _ in range(30 if stage == "encode" else 5):
            w.write(rng.integers(0, 256, (1, H, W, 3), np.uint8) if stage == "encode" else palette_chunk(0, 1))
    assert "disk space" in e.value.hint
    assert listing(folder) == before
    assert ffmpeg_children() == []


@linux_only
@pytest.mark.parametrize("error", INTERRUPTS)
def test_video_writer_interrupted_while_ffmpeg_finishes(
    folder: Path, monkeypatch: pytest.MonkeyPatch, error: type[BaseException]
) -> None:
    """The interrupt arrives while close() waits for ffmpeg to write the file's end (the moov atom with the record,
    the faststart move): ffmpeg is killed and reaped, and its half-finished output removed."""
    before = listing(folder)
    waits: list[float | None] = []

    class InterruptedPopen(subprocess.Popen):
        def wait(self, timeout: float | None = None) -> int:
            waits.append(timeout)
            if len(waits) == 1:  # the first wait is close()'s; the cleanup's own wait must work
                raise error()
            return super().wait(timeout)

    monkeypatch.setattr(subprocess, "Popen", InterruptedPopen)
    with pytest.raises(error):
        _write_video(folder / "clip.mp4")
    assert len(waits) >= 2
    assert listing(folder) == before
    assert ffmpeg_children() == []


# --------------------------------------------------------------------------------------------------------------------
# Outputs against inputs, extensions against formats
# --------------------------------------------------------------------------------------------------------------------


def _same_file_cases(d: Path) -> dict[str, tuple[Path, Path]]:
    """name → (output, input) pairs that name one file."""
    (d / "in.mp4").write_bytes(b"input")
    (d / "sub").mkdir()
    (d / "link.mp4").symlink_to(d / "in.mp4")
    os.link(d / "in.mp4", d / "hard.mp4")
    (d / "alias").symlink_to(d)
    return {
        "same path": (d / "in.mp4", d / "in.mp4"),
        "dot-dot": (d / "sub" / ".." / "in.mp4", d / "in.mp4"),
        "symlink output": (d / "link.mp4", d / "in.mp4"),
        "symlink input": (d / "in.mp4", d / "link.mp4"),
        "hard link": (d / "hard.mp4", d / "in.mp4"),
        "symlinked folder": (d / "alias" / "in.mp4", d / "in.mp4"),
        "not yet written": (d / "alias" / "new.mp4", d / "new.mp4"),
    }


@pytest.mark.parametrize(
    "case",
    ["same path", "dot-dot", "symlink output", "symlink input", "hard link", "symlinked folder", "not yet written"],
)
def test_check_not_input_refuses_the_same_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    monkeypatch.chdir(tmp_path)
    output, source = _same_file_cases(tmp_path)[case]
    with pytest.raises(InputError, match="input") as e:
        check_not_input(output, [None, tmp_path / "other.png", source])
    assert str(source) in e.value.message and "--force" in e.value.hint
    assert (tmp_path / "in.mp4").read_bytes() == b"input"


def test_check_not_input_allows_other_files(tmp_path: Path) -> None:
    (tmp_path / "in.mp4").write_bytes(b"input")
    (tmp_path / "copy.mp4").write_bytes(b"input")  # equal contents, another file
    check_not_input(tmp_path / "copy.mp4", [tmp_path / "in.mp4"])
    check_not_input(tmp_path / "out.mp4", [tmp_path / "in.mp4", None, tmp_path / "missing.png"])
    check_not_input("out.mp4", [])


@pytest.mark.parametrize(
    ("make", "name", "expected"),
    [
        (lambda p: VideoWriter(p, W, H), "clip.mov", ".mp4"),
        (lambda p: VideoWriter(p, W, H), "clip", ".mp4"),
        (lambda p: VideoWriter(p, W, H, force=True), "clip.mp4.json", ".mp4"),
        (lambda p: LatentsWriter(p), "lat.pt", ".safetensors"),
        (lambda p: LatentsWriter(p, force=True), "lat.mp4", ".safetensors"),
    ],
)
def test_writers_refuse_the_wrong_extension(
    tmp_path: Path, make: Callable[[Path], object], name: str, expected: str
) -> None:
    with pytest.raises(InputError, match=rf"must end in \{expected}") as e:
        make(tmp_path / name)
    assert expected in e.value.hint
    assert list(tmp_path.iterdir()) == []


def test_writers_accept_upper_case_extensions(tmp_path: Path) -> None:
    _write_video(tmp_path / "CLIP.MP4", frames=1)
    _write_latents(tmp_path / "LAT.SafeTensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["CLIP.MP4", "LAT.SafeTensors"]
