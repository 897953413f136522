"""The latents file: round trip through the real loader, and one real broken file per error."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from wan_cli.engine.errors import InputError
from wan_cli.engine.latents import FORMAT, load_latents, save_latents

RECORD = {"prompt": "a corgi; on = a beach\n", "seed": 42, "negative_prompt": "色调艳丽"}


def latents(f: int = 3, h: int = 6, w: int = 8) -> torch.Tensor:
    return torch.randn(16, f, h, w)


def write(path: Path, x: torch.Tensor) -> Path:
    save_latents(path, x, fps=16, source="clip.mp4", model="Wan2.1-T2V-1.3B", record=RECORD)
    return path


def test_round_trip(tmp_path: Path) -> None:
    x = latents()
    path = write(tmp_path / "a.safetensors", x)
    lf = load_latents(path)
    assert torch.equal(lf.latents, x) and lf.latents.dtype == torch.float32
    assert (lf.fps, lf.frames, lf.width, lf.height) == (16.0, 9, 64, 48)  # 4·(3−1)+1 frames, 8× the latent size
    assert (lf.source, lf.model, lf.record) == ("clip.mp4", "Wan2.1-T2V-1.3B", RECORD)
    with safe_open(str(path), framework="pt") as f:  # the format as documented, read without our loader
        assert list(f.keys()) == ["latents"]
        meta = f.metadata()
    assert meta == lf.metadata
    assert {k: meta[k] for k in ("format", "fps", "frames", "width", "height")} == {
        "format": FORMAT, "fps": "16", "frames": "9", "width": "64", "height": "48",
    }  # fmt: skip
    assert json.loads(meta["record"]) == RECORD
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors"]


def test_fractional_fps_and_no_record(tmp_path: Path) -> None:
    save_latents(tmp_path / "a.st", latents(1), fps=29.97, source="t2v", model="m")
    lf = load_latents(tmp_path / "a.st")
    assert (lf.fps, lf.frames, lf.record) == (29.97, 1, {})
    assert "record" not in lf.metadata


def test_half_precision_is_upcast(tmp_path: Path) -> None:
    x = latents()
    for dtype in (torch.float16, torch.bfloat16):
        save_file({"latents": x.to(dtype)}, str(tmp_path / "h.st"))  # no metadata either: defaults
        lf = load_latents(tmp_path / "h.st")
        assert lf.latents.dtype == torch.float32
        assert torch.equal(lf.latents, x.to(dtype).float())
        assert (lf.fps, lf.frames, lf.width, lf.height, lf.source, lf.record) == (16.0, 9, 64, 48, "", {})


def test_save_writes_float32(tmp_path: Path) -> None:
    save_latents(tmp_path / "a.st", latents().half(), fps=16, source="t2v", model="m")
    with safe_open(str(tmp_path / "a.st"), framework="pt") as f:
        assert f.get_tensor("latents").dtype == torch.float32


def test_force(tmp_path: Path) -> None:
    path = write(tmp_path / "a.st", latents())
    before = path.read_bytes()
    with pytest.raises(InputError, match="already exists") as e:
        write(path, latents())
    assert "--force" in e.value.hint
    assert path.read_bytes() == before
    x = latents(2)
    save_latents(path, x, fps=16, source="t2v", model="m", force=True)
    assert torch.equal(load_latents(path).latents, x)


def test_failed_save_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail_after_writing(tensors: dict[str, torch.Tensor], filename: str, metadata: dict[str, str]) -> None:
        Path(filename).write_bytes(b"half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("safetensors.torch.save_file", fail_after_writing)
    with pytest.raises(InputError, match="No space left"):
        write(tmp_path / "a.st", latents())
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("x", "words"),
    [
        (torch.randn(4, 3, 6, 8), r"shape \[4, 3, 6, 8\], expected \[16, F, H/8, W/8\]"),
        (torch.randn(1, 16, 3, 6, 8), "shape"),
        (torch.zeros(16, 3, 6, 8, dtype=torch.int64), "int64"),
        (torch.full((16, 3, 6, 8), float("nan")), "2304 NaN"),
    ],
)
def test_save_rejects_bad_tensors(tmp_path: Path, x: torch.Tensor, words: str) -> None:
    with pytest.raises(InputError, match=words):
        write(tmp_path / "a.st", x)
    assert list(tmp_path.iterdir()) == []


def test_save_rejects_bad_paths(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="not a directory"):
        write(tmp_path / "file" / "a.st", latents())
    with pytest.raises(InputError, match="fps"):
        save_latents(tmp_path / "a.st", latents(), fps=0, source="", model="")


def _broken_files(tmp_path: Path) -> dict[str, tuple[bytes, str]]:
    """name → (file bytes, words the error must contain)."""
    good = write(tmp_path / "good.st", latents()).read_bytes()
    x = latents()
    x[0, 0, 0, :3] = float("nan")
    x[1, 1, 1, 1] = float("inf")
    tensors = {
        "nan.st": ({"latents": x}, "3 NaN and 1 infinite"),
        "ints.st": ({"latents": torch.ones(16, 3, 6, 8, dtype=torch.int32)}, "int32"),
        "rank.st": ({"latents": torch.randn(1, 16, 3, 6, 8)}, r"expected \[16, F, H/8, W/8\]"),
        "channels.st": ({"latents": torch.randn(4, 3, 6, 8)}, r"shape \[4, 3, 6, 8\]"),
        "model.st": ({"blocks.0.weight": torch.randn(2), "head.bias": torch.randn(2)}, "blocks.0.weight, head.bias"),
    }
    files = {name: ((tmp_path / name), words) for name, (_, words) in tensors.items()}
    for name, (t, _) in tensors.items():
        save_file(t, str(files[name][0]))
    out = {name: (path.read_bytes(), words) for name, (path, words) in files.items()}
    out["truncated.st"] = (good[: len(good) - 100], "not a readable safetensors file")
    out["header_only.st"] = (good[:20], "not a readable safetensors file")
    out["random.st"] = (os.urandom(4096), "not a readable safetensors file")
    out["empty.st"] = (b"", "not a readable safetensors file")
    out["text.st"] = (b"latents = [1, 2, 3]\n", "not a readable safetensors file")
    return out


def test_load_errors(tmp_path: Path) -> None:
    for name, (data, words) in _broken_files(tmp_path).items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(InputError, match=words) as e:
            load_latents(tmp_path / name)
        assert "\n" not in e.value.message and e.value.hint, name
    with pytest.raises(InputError, match="does not exist"):
        load_latents(tmp_path / "missing.st")
    with pytest.raises(InputError, match="is a directory"):
        load_latents(tmp_path)


def test_load_rejects_inconsistent_metadata(tmp_path: Path) -> None:
    x = latents()
    save_file({"latents": x}, str(tmp_path / "a.st"), metadata={"frames": "81", "fps": "16"})
    with pytest.raises(InputError, match="frames=81"):
        load_latents(tmp_path / "a.st")
    save_file({"latents": x}, str(tmp_path / "b.st"), metadata={"fps": "fast"})
    with pytest.raises(InputError, match="fps='fast'"):
        load_latents(tmp_path / "b.st")
    save_file({"latents": x}, str(tmp_path / "c.st"), metadata={"record": "{not json"})
    with pytest.raises(InputError, match="not valid JSON"):
        load_latents(tmp_path / "c.st")
    save_file({"latents": x}, str(tmp_path / "d.st"), metadata={"format": "wan-latents/2"})
    with pytest.raises(InputError, match="wan-latents/2"):
        load_latents(tmp_path / "d.st")


# -- streaming: LatentsWriter / read_latents_info / iter_latents ------------------------------------------------------


def test_streamed_file_equals_the_library_writer(tmp_path: Path) -> None:
    """Frames appended one at a time make the same tensor and metadata as safetensors' own save_file
    (through save_latents), read back by safetensors itself."""
    from safetensors import safe_open

    from wan_cli.engine.latents import LatentsWriter

    x = torch.randn(16, 6, 5, 7)
    with LatentsWriter(tmp_path / "s.safetensors") as w:
        for i in range(x.shape[1]):
            w.append(x[:, i].to(torch.bfloat16) if i == 2 else x[:, i])  # any float dtype is stored as float32
        w.finish(fps=24, source="v.mp4", model="m", record={"a": 1})
    save_latents(tmp_path / "l.safetensors", torch.cat([x[:, :2], x[:, 2:3].bfloat16().float(), x[:, 3:]], 1),
                 fps=24, source="v.mp4", model="m", record={"a": 1})  # fmt: skip
    with safe_open(str(tmp_path / "s.safetensors"), "pt") as a, safe_open(str(tmp_path / "l.safetensors"), "pt") as b:
        assert a.metadata() == b.metadata()
        assert torch.equal(a.get_tensor("latents"), b.get_tensor("latents"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["l.safetensors", "s.safetensors"]  # no temp files left


def test_iter_latents_reads_frame_slices_in_order(tmp_path: Path) -> None:
    from wan_cli.engine.latents import iter_latents, read_latents_info

    x = torch.randn(16, 5, 4, 6)
    save_latents(tmp_path / "l.safetensors", x, fps=16, source="t2v", model="m", record={"seed": 3})
    info = read_latents_info(tmp_path / "l.safetensors")
    assert info.shape == (16, 5, 4, 6) and (info.frames, info.width, info.height) == (17, 48, 32)
    assert info.record == {"seed": 3}
    chunks = list(iter_latents(info, chunk=2))
    assert [c.shape[1] for c in chunks] == [2, 2, 1]
    assert torch.equal(torch.cat(chunks, dim=1), x)


def test_iter_latents_reports_nan_where_met(tmp_path: Path) -> None:
    from wan_cli.engine.latents import iter_latents, read_latents_info

    x = torch.zeros(16, 4, 2, 2)
    x[3, 2, 1, 1] = float("nan")
    save_file({"latents": x}, str(tmp_path / "l.safetensors"))
    info = read_latents_info(tmp_path / "l.safetensors")  # the header is fine
    with pytest.raises(InputError, match=r"latent frames 2–2\) contains 1 NaN"):
        list(iter_latents(info))


def test_writer_failure_leaves_nothing(tmp_path: Path) -> None:
    from wan_cli.engine.latents import LatentsWriter

    bad = torch.zeros(16, 3, 3)
    bad[0, 0, 0] = float("inf")
    with pytest.raises(InputError, match="NaN/infinite"), LatentsWriter(tmp_path / "x.safetensors") as w:
        w.append(torch.zeros(16, 3, 3))
        w.append(bad)
    assert list(tmp_path.iterdir()) == []


def test_writer_memory_does_not_grow_with_frames(tmp_path: Path) -> None:
    """400 frames of 64 KB (26 MB) through the writer: numpy's buffers (traced by tracemalloc) stay far below that."""
    import tracemalloc

    from wan_cli.engine.latents import LatentsWriter

    frame = torch.randn(16, 32, 32)
    tracemalloc.start()
    try:
        with LatentsWriter(tmp_path / "big.safetensors") as w:
            for _ in range(400):
                w.append(frame)
            w.finish(fps=16, source="x", model="m")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 26e6 / 4, peak
    assert (tmp_path / "big.safetensors").stat().st_size > 400 * 16 * 32 * 32 * 4
