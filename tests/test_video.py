"""Video I/O against independent facts: ffprobe (not the bundled ffmpeg), known pixel values, /proc for processes.

Tolerance: H.264 at crf 17 plus yuv420p (BT.709, limited range) keeps solid colours within a few levels of 255;
we allow 6 levels (0.047 in [-1, 1] units). Colour edges are blurred by the 2×2 chroma subsampling, so pixel checks
stay 4+ pixels away from them.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import imageio_ffmpeg
import numpy as np
import pytest
import torch
from ffprobe import needs_ffprobe, probe

from wan_cli.engine.errors import InputError
from wan_cli.engine.video import VideoReader, VideoWriter, read_metadata

W, H = 64, 48
TOL = 6 / 127.5
# Solid colours as RGB in [-1, 1]; frame k has colour PALETTE[k % 6].
PALETTE = torch.tensor([[1, -1, -1], [-1, 1, -1], [-1, -1, 1], [1, 1, 1], [-1, -1, -1], [0.2, -0.4, 0.6]])


def palette_chunk(start: int, t: int) -> torch.Tensor:
    """[3, t, H, W] float: frames start..start+t-1 of the palette sequence (the VAE decoder's chunk layout)."""
    colours = PALETTE[[(start + i) % len(PALETTE) for i in range(t)]]  # [t, 3]
    return colours.T[:, :, None, None].expand(3, t, H, W).clone()


def decoder_like_chunks(latent_frames: int) -> Iterator[torch.Tensor]:
    """1 frame, then 4 per latent frame: exactly what StreamDecoder / GenerationResult.frames() yield."""
    yield palette_chunk(0, 1)
    for k in range(1, latent_frames):
        yield palette_chunk(1 + 4 * (k - 1), 4)


def ffmpeg_children() -> list[tuple[int, str]]:
    """(pid, state) of this process's ffmpeg children, zombies included (state 'Z'), read from /proc."""
    found = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat_file.read_text()
        except OSError:
            continue
        comm, rest = text[text.index("(") + 1 : text.rindex(")")], text[text.rindex(")") + 2 :].split()
        if int(rest[1]) == os.getpid() and "ffmpeg" in comm:
            found.append((int(stat_file.parent.name), rest[0]))
    return found


linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def write_video(path: Path, frames: int, colours: np.ndarray | None = None) -> None:
    """A uint8 video of `frames` frames, all showing `colours` ([H, W, 3]) or the palette sequence."""
    with VideoWriter(path, W, H) as w:
        for i in range(frames):
            w.write(colours[None] if colours is not None else _u8(palette_chunk(i, 1)))


def _u8(chunk: torch.Tensor) -> np.ndarray:
    return ((chunk.permute(1, 2, 3, 0) + 1) * 127.5).round().to(torch.uint8).numpy()


def ffmpeg(*args: str) -> None:
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", *args], check=True)


# --------------------------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------------------------


@needs_ffprobe
def test_written_file_is_what_ffprobe_says(tmp_path: Path) -> None:
    out = tmp_path / "clip.mp4"
    record = {"prompt": "a corgi = dog; #1 \\ ok\nline two", "seed": 7, "中文": "负面提示",
              "timings": {"load_s": 1.25}, "long": "x" * 20000}  # fmt: skip
    with VideoWriter(out, W, H, fps=16, metadata=record) as w:
        for chunk in decoder_like_chunks(4):
            w.write(chunk)
        assert not out.exists()  # nothing at the target before close
        with pytest.raises(AttributeError):  # ffmpeg wrote it with the first frame: later timings go to the sidecar
            w.metadata = {"timings": {"total_s": 9.0}}  # type: ignore[misc]
    info = probe(out)
    assert (info["codec_name"], info["pix_fmt"], info["width"], info["height"]) == ("h264", "yuv420p", W, H)
    assert info["color_space"] == "bt709"
    assert info["fps"] == 16
    assert info["frames"] == 13 == w.frames_written  # 1 + 4·3
    assert info["faststart"], info["boxes"]
    assert json.loads(info["comment"]) == record
    assert read_metadata(out) == record
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]  # no temp files left
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask  # a normal file, not a 0600 temp file


@needs_ffprobe
def test_metadata_has_no_size_limit(tmp_path: Path) -> None:
    """A 100,000-character prompt (CJK: 3 bytes each in UTF-8) is more than Linux lets one argument hold
    (MAX_ARG_STRLEN, 128 KiB): the record cannot travel on ffmpeg's command line, and must come back exactly."""
    unit = 'a "corgi" = dog; #1 \\ C:\\dir\\ {x}\n中文提示词\r\t '
    prompt = (unit * (100_000 // len(unit) + 1))[:100_000]
    record = {"prompt": prompt, "negative_prompt": "色调艳丽\n\n", "seed": 7, "ends": "slash\\", "only": "=;#\\\n"}
    assert len(json.dumps(record, ensure_ascii=False).encode()) > 128 * 1024
    out = tmp_path / "clip.mp4"
    with VideoWriter(out, W, H, metadata=record) as w:
        for chunk in decoder_like_chunks(2):
            w.write(chunk)
    assert read_metadata(out) == record
    info = probe(out)  # plays: ffprobe decodes every frame
    assert (info["codec_name"], info["frames"], info["faststart"]) == ("h264", 5, True)
    assert json.loads(info["comment"]) == record
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]


def test_round_trip_keeps_colours_and_order(tmp_path: Path) -> None:
    out = tmp_path / "clip.mp4"
    with VideoWriter(out, W, H, metadata={"seed": 1}) as w:
        for chunk in decoder_like_chunks(4):
            w.write(chunk)
    with VideoReader(out) as r:
        frames = torch.cat(list(r.chunks(5)), dim=1)  # [3, 13, H, W]
    expected = torch.cat(list(decoder_like_chunks(4)), dim=1)
    err = (frames - expected).abs()
    assert frames.shape == expected.shape
    assert err.max() < TOL, f"max {err.max() * 127.5:.1f} levels, mean {err.mean() * 127.5:.2f}"


def test_metadata_rejects_what_json_cannot_hold(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        VideoWriter(tmp_path / "a.mp4", W, H, metadata={"path": Path("x")})
    with pytest.raises(TypeError):
        VideoWriter(tmp_path / "a.mp4", W, H, metadata={"t": torch.zeros(1)})
    assert list(tmp_path.iterdir()) == []


@needs_ffprobe
def test_one_ffmpeg_pass_and_an_exact_rate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One ffmpeg child writes frames, record and faststart together (no remux pass), with no argument anywhere
    near Linux's 128 KiB limit; 29.97 fps is stored as 30000/1001, not rounded."""
    started: list[list[str]] = []
    real_popen = subprocess.Popen

    def spy(args: list[str], *a: Any, **kw: Any) -> subprocess.Popen[bytes]:
        started.append([str(x) for x in args])
        return real_popen(args, *a, **kw)

    imageio_ffmpeg.get_ffmpeg_exe()  # its one-time `ffmpeg -version` check, before the spy
    monkeypatch.setattr(subprocess, "Popen", spy)
    out = tmp_path / "ntsc.mp4"
    with VideoWriter(out, W, H, fps=30000 / 1001, metadata={"prompt": "p" * 200_000}) as w:
        for chunk in decoder_like_chunks(3):
            w.write(chunk)
    monkeypatch.undo()
    assert len(started) == 1 and max(len(a) for a in started[0]) < 1000, [a[:80] for a in started[0]]
    info = probe(out)
    assert info["fps"] == Fraction(30000, 1001) and info["frames"] == 9 and info["faststart"]
    assert read_metadata(out) == {"prompt": "p" * 200_000}


@linux_only
@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_error_inside_with_leaves_nothing(tmp_path: Path, error: type[BaseException]) -> None:
    out = tmp_path / "clip.mp4"
    with pytest.raises(error), VideoWriter(out, W, H) as w:
        w.write(palette_chunk(0, 5))
        deadline = time.monotonic() + 10
        while not list(tmp_path.iterdir()) and time.monotonic() < deadline:  # ffmpeg opens it once it has frames
            time.sleep(0.01)
        assert [p.name[:10] for p in tmp_path.iterdir()] == [".clip.mp4."]  # the hidden temp file
        assert len(ffmpeg_children()) == 1
        raise error()
    assert list(tmp_path.iterdir()) == []
    assert ffmpeg_children() == []  # killed and reaped


def test_existing_target_needs_force(tmp_path: Path) -> None:
    out = tmp_path / "clip.mp4"
    out.write_bytes(b"old video")
    with pytest.raises(InputError) as e:
        VideoWriter(out, W, H)
    assert "--force" in e.value.hint
    assert out.read_bytes() == b"old video"
    with VideoWriter(out, W, H, force=True) as w:
        w.write(palette_chunk(0, 1))
    assert out.read_bytes()[4:8] == b"ftyp"
    assert len(list(tmp_path.iterdir())) == 1


def test_close_is_idempotent(tmp_path: Path) -> None:
    with VideoWriter(tmp_path / "a.mp4", W, H) as w:
        w.write(palette_chunk(0, 1))
        w.close()  # early, by hand; the with block's exit must not redo (or undo) it
    assert w.frames_written == 1 and (tmp_path / "a.mp4").stat().st_size > 0
    with pytest.raises(ValueError, match="closed"):
        w.write(palette_chunk(0, 1))


@pytest.mark.parametrize(
    ("make_path", "words"),
    [
        (lambda d: d / "a_file" / "clip.mp4", "is not a directory"),  # fails even as root
        (lambda d: d / "missing" / "clip.mp4", "does not exist"),
        (lambda d: d, "is a directory"),
    ],
)
def test_bad_output_path(tmp_path: Path, make_path: Callable[[Path], Path], words: str) -> None:
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(InputError, match=words) as e:
        VideoWriter(make_path(tmp_path), W, H)
    assert e.value.hint


@pytest.mark.parametrize(("w", "h"), [(63, 48), (64, 0), (-2, 48)])
def test_bad_size(tmp_path: Path, w: int, h: int) -> None:
    with pytest.raises(InputError, match="positive even"):
        VideoWriter(tmp_path / "a.mp4", w, h)


def test_bad_chunks_and_no_frames(tmp_path: Path) -> None:
    out = tmp_path / "a.mp4"
    with pytest.raises(InputError, match="32x48"), VideoWriter(out, W, H) as w:
        w.write(torch.zeros(3, 1, H, 32))
    with pytest.raises(InputError, match="float"), VideoWriter(out, W, H) as w:
        w.write(torch.zeros(3, 1, H, W, dtype=torch.uint8))
    with pytest.raises(InputError, match="no frames"), VideoWriter(out, W, H):
        pass
    assert list(tmp_path.iterdir()) == []


@linux_only
def test_long_video_streams_in_and_out(tmp_path: Path) -> None:
    """320 frames: 2.9 MB of raw RGB. Neither side may hold more than a chunk (tracemalloc sees bytes, bytearrays
    and numpy buffers), and the reader must not pre-read: after one chunk ffmpeg is still blocked on its pipe."""
    out, n_frames, raw = tmp_path / "long.mp4", 320, 320 * W * H * 3
    colours = np.zeros((4, H, W, 3), np.uint8)
    tracemalloc.start()
    try:
        with VideoWriter(out, W, H) as w:
            for i in range(n_frames // 4):
                colours[:] = i  # a slow grey ramp
                w.write(colours)
        _, write_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        with VideoReader(out) as r:
            it = r.chunks(8)
            shapes = [tuple(next(it).shape)]
            assert [s != "Z" for _, s in ffmpeg_children()] == [True]  # alive: blocked on the pipe until we read
            shapes += [tuple(c.shape) for c in it]
        _, read_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert write_peak < raw / 4, f"writer peak {write_peak} B"
    assert read_peak < raw / 4, f"reader peak {read_peak} B"
    assert shapes == [(3, 8, H, W)] * (n_frames // 8)
    assert ffmpeg_children() == []


# --------------------------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def red_blue(tmp_path: Path) -> Path:
    """5 frames, left half red, right half blue."""
    img = np.zeros((H, W, 3), np.uint8)
    img[:, : W // 2, 0] = 255
    img[:, W // 2 :, 2] = 255
    write_video(tmp_path / "rb.mp4", 5, img)
    return tmp_path / "rb.mp4"


def _is(pixel: torch.Tensor, rgb: tuple[float, float, float]) -> bool:
    return bool((pixel - torch.tensor(rgb)).abs().max() < TOL)


RED, BLUE = (1.0, -1.0, -1.0), (-1.0, -1.0, 1.0)


@pytest.mark.parametrize(
    ("size", "red_cols", "blue_cols"),
    [
        ((24, 48), (0, 7), (16, 23)),  # narrower: no scaling, source columns 20..43 kept; the edge lands at 12
        ((32, 16), (0, 11), (20, 31)),  # wider: scaled to 32x24, rows 4..19 kept; the edge stays at 16
        ((32, 32), (0, 11), (21, 31)),  # scaled to 43x32, columns 5..36 kept; the edge lands near 16
    ],
)
def test_size_scales_to_cover_and_centre_crops(
    red_blue: Path, size: tuple[int, int], red_cols: tuple[int, ...], blue_cols: tuple[int, ...]
) -> None:
    with VideoReader(red_blue, size=size) as r:
        assert (r.width, r.height, r.source_width, r.source_height) == (*size, W, H)
        (chunk,) = list(r.chunks(8))
    assert chunk.shape == (3, 5, size[1], size[0])
    for t in range(5):
        for y in (0, size[1] // 2, size[1] - 1):
            for x in red_cols:
                assert _is(chunk[:, t, y, x], RED), (t, y, x, chunk[:, t, y, x])
            for x in blue_cols:
                assert _is(chunk[:, t, y, x], BLUE), (t, y, x, chunk[:, t, y, x])


def test_properties_chunks_and_max_frames(tmp_path: Path) -> None:
    out = tmp_path / "clip.mp4"
    write_video(out, 13)
    with VideoReader(out) as r:
        assert (r.width, r.height, r.fps, r.frame_count) == (W, H, 16.0, 13)
        assert r.duration == pytest.approx(13 / 16, abs=0.02)
        chunks = list(r.chunks(4))
        again = list(r.chunks(13))  # a second pass starts from the first frame
    assert [c.shape[1] for c in chunks] == [4, 4, 4, 1]
    assert all(c.shape[::2] == (3, H) and c.shape[3] == W and c.dtype == torch.float32 for c in chunks)
    assert all(c.is_contiguous() and c.min() >= -1 and c.max() <= 1 for c in chunks)
    assert torch.equal(torch.cat(chunks, dim=1), again[0])
    with VideoReader(out, max_frames=10) as r:
        assert r.frame_count == 10
        limited = list(r.chunks(4))
    assert [c.shape[1] for c in limited] == [4, 4, 2]
    assert torch.equal(torch.cat(limited, dim=1), again[0][:, :10])


def test_fps_resampling_drops_frames(tmp_path: Path) -> None:
    out = tmp_path / "clip.mp4"
    write_video(out, 13)  # 16 fps
    with VideoReader(out, fps=8) as r:
        assert r.fps == 8
        frames = torch.cat(list(r.chunks(16)), dim=1)
    assert frames.shape[1] in (6, 7)
    for t in range(frames.shape[1]):  # every other source frame
        assert _is(frames[:, t, 8, 8], tuple(PALETTE[(2 * t) % len(PALETTE)].tolist())), t


@needs_ffprobe
def test_variable_frame_rate_is_read_at_its_average_rate(tmp_path: Path) -> None:
    """30 frames, the first 10 at 10 fps, then 50 fps: 1.42 s at 19 fps on average (25 or 50 'tbr'). Read frame by
    frame at the recorded fps, it would last 72 / 18.99 = 3.8 s; resampled, the duration and the rate are true."""
    src = tmp_path / "vfr.mp4"
    ffmpeg("-f", "lavfi", "-i", f"testsrc=size={W}x{H}:rate=25", "-frames:v", "30",
           "-vf", "settb=1/1000,setpts='if(lt(N,10),N*0.1,1+(N-10)*0.02)/TB'", "-fps_mode", "vfr",
           "-enc_time_base", "1/1000", "-c:v", "libx264", "-pix_fmt", "yuv420p", str(src))  # fmt: skip
    duration = float(subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", str(src)],
        capture_output=True, text=True, check=True,
    ).stdout)  # fmt: skip
    average = probe(src)["fps"]  # avg_frame_rate, as ffprobe (not the code under test) works it out
    with VideoReader(src) as r:
        n = sum(c.shape[1] for c in r.chunks(8))
        assert r.fps == pytest.approx(float(average), rel=0.01)
        assert r.frame_count is not None and abs(r.frame_count - n) <= 1
    assert abs(n - duration * r.fps) <= 1, (n, duration, r.fps)


def test_ntsc_rates_are_exact(tmp_path: Path) -> None:
    """ffmpeg prints 29.97 for 30000/1001: the reader recognises the broadcast rate rather than resampling to
    2997/100 (one frame repeated every 5 minutes or so)."""
    src = tmp_path / "ntsc.mp4"
    ffmpeg("-f", "lavfi", "-i", f"testsrc=size={W}x{H}:rate=30000/1001", "-frames:v", "12", "-c:v", "libx264",
           "-pix_fmt", "yuv420p", str(src))  # fmt: skip
    with VideoReader(src) as r:
        assert r.fps == 30000 / 1001
        assert sum(c.shape[1] for c in r.chunks(8)) == 12


@linux_only
def test_early_close_kills_ffmpeg(tmp_path: Path) -> None:
    out = tmp_path / "clip.mp4"
    write_video(out, 80)
    r = VideoReader(out)
    it = r.chunks(2)
    next(it)
    assert len(ffmpeg_children()) == 1
    r.close()
    assert ffmpeg_children() == []  # killed and reaped: no zombie
    with VideoReader(out) as r:
        next(r.chunks(2))
    assert ffmpeg_children() == []
    gen = VideoReader(out).chunks(2)
    next(gen)
    gen.close()  # a consumer that stops iterating
    assert ffmpeg_children() == []


def test_reader_errors(tmp_path: Path) -> None:
    cases: dict[str, str] = {}
    (tmp_path / "notes.mp4").write_text("not a video at all\n")
    cases["notes.mp4"] = "Invalid data"
    ffmpeg("-f", "lavfi", "-i", "color=red:size=64x48", "-frames:v", "1", "-f", "image2", str(tmp_path / "img.mp4"))
    cases["img.mp4"] = "still image"  # a PNG renamed .mp4
    ffmpeg("-f", "lavfi", "-i", "sine", "-t", "0.2", str(tmp_path / "audio.m4a"))
    cases["audio.m4a"] = "no video stream"
    ffmpeg("-f", "lavfi", "-i", "color=red:size=64x48", "-frames:v", "0", "-c:v", "libx264", str(tmp_path / "e.mp4"))
    cases["e.mp4"] = "no video stream"  # an empty MP4: no frames, so not even a stream
    cases["missing.mp4"] = "does not exist"
    (tmp_path / "dir.mp4").mkdir()
    cases["dir.mp4"] = "is a directory"
    for name, words in cases.items():
        with pytest.raises(InputError, match=words) as e:
            VideoReader(tmp_path / name)
        assert "\n" not in e.value.message and e.value.hint, name
    with pytest.raises(InputError, match="does not exist"):
        read_metadata(tmp_path / "missing.mp4")
    with pytest.raises(InputError, match="Invalid data"):
        read_metadata(tmp_path / "notes.mp4")


def test_zero_frames_is_an_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty.y4m"  # a stream header and no frames
    empty.write_bytes(b"YUV4MPEG2 W64 H48 F16:1 Ip A1:1 C420jpeg\n")
    with VideoReader(empty) as r, pytest.raises(InputError, match="no frames"):
        list(r.chunks(4))


def test_metadata_absent_or_not_json(tmp_path: Path) -> None:
    plain = tmp_path / "plain.mp4"
    write_video(plain, 1)
    assert read_metadata(plain) == {}
    other = tmp_path / "other.mp4"
    ffmpeg("-i", str(plain), "-c", "copy", "-metadata", "comment=shot on my phone", str(other))
    assert read_metadata(other) == {}
