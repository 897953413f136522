"""The engine's VAE round trip (``encode_video`` / ``decode_latents``) and the device rules, without the CLI.

References are computed apart from the code under test: the VAE's whole-video ``encode``/``decode``, the
quantisation written out here, ffprobe for the files.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from builders import random_vae, rel_err, tiny_vae_config, write_comfy_vae
from ffprobe import probe

from wan_cli.engine import (
    InputError,
    StreamEncoder,
    WanVAE,
    decode_latents,
    encode_video,
    resolve_device,
    resolve_dtype,
)
from wan_cli.engine.latents import load_latents, save_latents
from wan_cli.engine.transcode import _host_chunks
from wan_cli.engine.video import VideoReader, VideoWriter, read_metadata, to_rgb24


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[WanVAE, Path]:
    vae = random_vae(tiny_vae_config(), seed=3)
    return vae, write_comfy_vae(vae, tmp_path_factory.mktemp("vae") / "vae.safetensors", torch.float32)


def gradient_video(path: Path, frames: int, w: int = 32, h: int = 32) -> Path:
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    with VideoWriter(path, w, h, 16) as writer:
        for k in range(frames):
            writer.write(torch.stack([torch.sin(3 * xs + 0.2 * k), torch.cos(2 * ys), xs * ys])[:, None] * 0.8)
    return path


def reference_rgb24(x: torch.Tensor) -> np.ndarray:
    """[3, T, H, W] in [-1, 1] → uint8 [T, H, W, 3], as the writer has always quantised (written out again here)."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).numpy()


# -- video → latents -------------------------------------------------------------------------------------------------


def test_encode_streams_in_fixed_chunks_and_matches_the_whole_video_encode(
    tiny: tuple[WanVAE, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The encoder is fed at most ``chunk_frames`` frames at a time, whatever the length; the file holds what the
    VAE's one-shot encode of the same frames gives, and the record it carries is the one returned."""
    vae, weights = tiny
    seen: list[int] = []
    real_push = StreamEncoder.push

    def spy(self: StreamEncoder, frames: torch.Tensor) -> Iterator[torch.Tensor]:
        seen.append(frames.shape[2])
        return real_push(self, frames)

    monkeypatch.setattr(StreamEncoder, "push", spy)
    video = gradient_video(tmp_path / "long.mp4", 35)
    out = tmp_path / "l.safetensors"
    done = encode_video(video, out, vae=weights, device="cpu", chunk_frames=8, record={"wan_version": "x"})
    assert sum(seen) == 35 and max(seen) == 8 and len(seen) == 5
    assert (done.frames, done.frames_read, done.path) == (33, 35, out)
    lat = load_latents(out)
    assert lat.latents.shape == (16, 9, 4, 4) and (lat.frames, lat.fps, lat.source) == (33, 16.0, str(video))
    assert lat.record == done.record and lat.model == str(weights)
    assert (done.record["vae"], done.record["latent_shape"], done.record["wan_version"]) == (
        str(weights), [16, 9, 4, 4], "x")  # fmt: skip
    assert set(done.record["timings"]) == {"load_s", "encode_s", "total_s"}
    with VideoReader(video, max_frames=33) as reader:
        frames = torch.cat(list(reader.chunks(100)), dim=1)
    monkeypatch.undo()
    want = vae.encode(frames[None])[0]
    assert rel_err(lat.latents, want) <= 1e-5, rel_err(lat.latents, want)


def test_encode_checks_the_input_before_asking_for_the_vae(tiny: tuple[WanVAE, Path], tmp_path: Path) -> None:
    """A callable VAE source is called once, and only when the input has passed: a bad video is reported first
    (the CLI looks models up this way: a bad video is not reported as a missing download)."""
    vae, _ = tiny
    calls: list[int] = []

    def loader() -> WanVAE:
        calls.append(1)
        return vae

    (tmp_path / "notes.mp4").write_text("not a video")
    with pytest.raises(InputError, match="Invalid data"):
        encode_video(tmp_path / "notes.mp4", tmp_path / "a.safetensors", vae=loader)
    with pytest.raises(InputError, match="1 \\+ 4k"):
        encode_video(tmp_path / "notes.mp4", tmp_path / "a.safetensors", vae=loader, frames=6)
    video = gradient_video(tmp_path / "short.mp4", 9)
    with pytest.raises(InputError, match="asks for more"):
        encode_video(video, tmp_path / "a.safetensors", vae=loader, frames=13)
    assert calls == [1]  # the short video: checked only by reading it, with the VAE loaded
    done = encode_video(video, tmp_path / "b.safetensors", vae=loader, size=(16, 16))
    assert calls == [1, 1] and done.record["vae"] is None and done.record["device"] == "cpu"
    assert load_latents(tmp_path / "b.safetensors").latents.shape == (16, 3, 2, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.safetensors", "notes.mp4", "short.mp4"]


# -- latents → video -------------------------------------------------------------------------------------------------


def test_decode_writes_every_frame_once_in_order_bit_exact(
    tiny: tuple[WanVAE, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What reaches the MP4 writer is the VAE's one-shot decode of the file, quantised as written out above: the
    handover one chunk behind loses, repeats or reorders nothing, the last chunk included."""
    vae, weights = tiny
    z = torch.randn(16, 4, 4, 6) * 0.5
    lat = save_latents(tmp_path / "z.safetensors", z, fps=24, source="t2v", model="tiny", record={"seed": 5})
    written: list[np.ndarray] = []
    real_write = VideoWriter.write

    def spy(self: VideoWriter, chunk: torch.Tensor | np.ndarray) -> None:
        assert isinstance(chunk, np.ndarray) and chunk.dtype == np.uint8  # quantised before the host copy
        written.append(chunk.copy())
        real_write(self, chunk)

    monkeypatch.setattr(VideoWriter, "write", spy)
    out = tmp_path / "z.mp4"
    progress: list[tuple[str, int, int]] = []
    done = decode_latents(lat, out, vae=weights, device="cpu", record={"sidecar": "z.json"},
                          progress=lambda *a: progress.append(a))  # fmt: skip
    monkeypatch.undo()
    assert [c.shape[0] for c in written] == [1, 4, 4, 4] and done.frames == 13
    want = reference_rgb24(vae.decode(z[None])[0])
    np.testing.assert_array_equal(np.concatenate(written), want)
    assert progress == [("decode", n, 13) for n in (1, 5, 9, 13)]
    info = probe(out)
    assert (info["frames"], float(info["fps"]), info["width"], info["height"]) == (13, 24.0, 48, 32)
    rec = done.record
    assert (rec["generation"], rec["sidecar"], rec["fps"], rec["vae"]) == ({"seed": 5}, "z.json", 24.0, str(weights))
    assert set(rec["timings"]) == {"load_s", "decode_s", "total_s"}
    assert read_metadata(out) == json.loads(json.dumps({**rec, "timings": {"load_s": rec["timings"]["load_s"]}}))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["z.mp4", "z.safetensors"]  # the sidecar is the caller's


def test_decode_refuses_bad_latents_before_loading(tmp_path: Path) -> None:
    z = torch.zeros(16, 2, 4, 4)
    z[0, 1, 2, 3] = float("nan")
    bad = save_latents(tmp_path / "nan.safetensors", z.nan_to_num(), fps=16, source="t2v", model="m")
    from safetensors.torch import save_file

    save_file({"latents": z}, str(bad))  # the library writer refuses NaN: write it behind its back

    def loader() -> WanVAE:
        raise AssertionError("the VAE was loaded")

    with pytest.raises(InputError, match="NaN"):
        decode_latents(bad, tmp_path / "o.mp4", vae=loader)
    with pytest.raises(InputError, match="fps"):
        decode_latents(bad, tmp_path / "o.mp4", vae=loader, fps=0)
    assert not (tmp_path / "o.mp4").exists()


def test_host_chunks_hand_over_one_behind_and_lose_nothing() -> None:
    """Each chunk is handed over only once the next one's copy has been queued (here: pulled), and the last one
    after the input ends; on the CPU the copy is an ordinary one, equal to the quantised chunk."""
    pulled: list[int] = []

    def chunks() -> Iterator[torch.Tensor]:
        for k in range(3):
            pulled.append(k)
            yield torch.full((1, 3, 1, 2, 2), k / 4)

    handed = []
    for host in _host_chunks(chunks()):
        handed.append((len(pulled), int(host[0, 0, 0, 0])))
        assert host.device.type == "cpu" and host.dtype == torch.uint8 and host.shape == (1, 2, 2, 3)
    assert handed == [(2, 128), (3, 159), (3, 191)]  # round((k/4 + 1) · 127.5), 127.5 to even


def test_to_rgb24_is_the_writers_quantisation() -> None:
    x = torch.rand(3, 5, 6, 8) * 2.4 - 1.2  # out of range on both sides: clamped
    np.testing.assert_array_equal(to_rgb24(x).numpy(), reference_rgb24(x))
    np.testing.assert_array_equal(to_rgb24(x[None]).numpy(), reference_rgb24(x))


# -- devices and dtypes ------------------------------------------------------------------------------------------------


def test_resolve_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == resolve_device(None) == resolve_device("cpu") == "cpu"
    for name, words in (("cuda", "no CUDA device"), ("cuda:0", "no CUDA device"), ("mps", "no Apple GPU"),
                        ("tpu", "device"), ("cpu:banana", "device")):  # fmt: skip
        with pytest.raises(InputError, match=words) as e:
            resolve_device(name)
        assert e.value.hint, name
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto") == resolve_device("mps") == "mps"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == "cuda" and resolve_device("cuda:1") == "cuda:1"
    with pytest.raises(InputError, match="2 CUDA"):
        resolve_device("cuda:2")


def test_resolve_dtype() -> None:
    assert resolve_dtype("auto", "cpu") == resolve_dtype(None, torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", "cuda") == resolve_dtype("auto", "mps") == resolve_dtype("auto", "cuda:1")
    assert resolve_dtype("auto", "cuda") == torch.bfloat16
    assert [resolve_dtype(n, "cpu") for n in ("bf16", "fp16", "fp32")] == [torch.bfloat16, torch.float16,
                                                                           torch.float32]  # fmt: skip
    with pytest.raises(InputError, match="fp8") as e:
        resolve_dtype("fp8", "cuda")
    assert "bf16" in e.value.hint
