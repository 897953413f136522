"""`wan encode` / `wan decode`: MP4 → latents → MP4 through the streaming VAE, checked against diffusers'
AutoencoderKLWan (an independent implementation) and ffprobe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from builders import random_vae, rel_err, tiny_vae_config, to_diffusers_vae, write_comfy_vae
from ffprobe import probe
from typer.testing import CliRunner

from wan_cli.cli.app import app
from wan_cli.engine.latents import load_latents
from wan_cli.engine.video import VideoReader, VideoWriter, read_metadata

runner = CliRunner()


@pytest.fixture(scope="module")
def vae_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    vae = random_vae(tiny_vae_config(), seed=7)
    path = write_comfy_vae(vae, tmp_path_factory.mktemp("vae") / "wan_2.1_vae.safetensors", torch.float32)
    return path, to_diffusers_vae(vae)


def moving_video(path: Path, frames: int, w: int = 80, h: int = 48) -> Path:
    """A smooth moving gradient (compresses well, so H.264 keeps it close)."""
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    with VideoWriter(path, w, h, 16) as writer:
        for k in range(frames):
            r, g = torch.sin(3 * xs + 0.2 * k), torch.cos(2 * ys - 0.1 * k)
            writer.write(torch.stack([r, g, (r * g)])[:, None] * 0.8)
    return path


def _diffusers_encode(ref, video: torch.Tensor) -> torch.Tensor:  # type: ignore[no-untyped-def]
    mean = torch.tensor(ref.config.latents_mean).view(1, 16, 1, 1, 1)
    inv_std = 1.0 / torch.tensor(ref.config.latents_std).view(1, 16, 1, 1, 1)
    with torch.no_grad():
        return ((ref.encode(video).latent_dist.mode() - mean) * inv_std)[0]


def test_encode_matches_diffusers_on_the_same_frames(vae_pair, tmp: Path) -> None:  # type: ignore[no-untyped-def]
    vae_path, ref = vae_pair
    video = moving_video(tmp / "in.mp4", 19)
    out = tmp / "lat.safetensors"
    result = runner.invoke(app, ["encode", str(video), "-o", str(out), "--vae", str(vae_path), "--size", "64x32"])
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{out}\n"
    assert "encoded 17 of 19 frames" in result.stderr  # 4k+1: the tail is dropped, and said so
    lat = load_latents(out)
    assert lat.latents.shape == (16, 5, 4, 8) and lat.latents.dtype == torch.float32
    assert (lat.frames, lat.width, lat.height, lat.fps) == (17, 64, 32, 16.0)
    assert lat.source == str(video) and lat.record["frames"] == 17
    with VideoReader(video, size=(64, 32), max_frames=17) as reader:  # the same frames, read whole
        frames = torch.cat(list(reader.chunks(100)), dim=1)
    want = _diffusers_encode(ref, frames[None])
    assert rel_err(lat.latents, want) <= 1e-5, rel_err(lat.latents, want)


def test_encode_passes_its_options_to_the_engine(vae_pair, tmp: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The command at the seam: its flags reach encode_video as arguments, the file is written under a staged name
    and committed, and stdout is the engine's record."""
    from wan_cli.engine import Tiling, Transcoded

    seen: dict[str, object] = {}

    def fake(src, dst, **kw):  # type: ignore[no-untyped-def]
        seen.update(kw, src=src, dst=dst)
        Path(dst).write_bytes(b"latents")
        return Transcoded(path=Path(dst), record={"output": kw["record"]["output"], "frames": 17}, frames=17,
                          frames_read=19)  # fmt: skip

    monkeypatch.setattr("wan_cli.engine.encode_video", fake)
    out = tmp / "l.safetensors"
    args = ["encode", str(tmp / "in.mp4"), "-o", str(out), "--vae", str(vae_pair[0]), "--size", "64x32", "--frames",
            "17", "--vae-tile", "32", "--device", "cpu", "--dtype", "bf16", "--json"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"output": str(out), "frames": 17}
    assert out.read_bytes() == b"latents" and sorted(p.name for p in tmp.iterdir()) == ["l.safetensors"]
    assert (seen["src"], seen["vae"], seen["device"], seen["dtype"]) == (tmp / "in.mp4", vae_pair[0], "cpu",
                                                                          torch.bfloat16)  # fmt: skip
    assert (seen["size"], seen["frames"], seen["tiling"], seen["force"]) == ((64, 32), 17, Tiling(32, 8), True)
    assert seen["model"] == str(vae_pair[0]) and seen["record"]["output"] == str(out)  # type: ignore[index]
    assert Path(str(seen["dst"])).parent == tmp and seen["dst"] != out  # staged, then renamed


def test_decode_writes_the_decoded_frames(vae_pair, tmp: Path) -> None:  # type: ignore[no-untyped-def]
    vae_path, ref = vae_pair
    video = moving_video(tmp / "in.mp4", 17)
    lat_path = tmp / "lat.safetensors"
    assert runner.invoke(app, ["encode", str(video), "-o", str(lat_path), "--vae", str(vae_path), "--size",
                               "64x32"]).exit_code == 0  # fmt: skip
    out = tmp / "out.mp4"
    result = runner.invoke(app, ["decode", str(lat_path), "-o", str(out), "--vae", str(vae_path), "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    info = probe(out)
    assert (info["codec_name"], info["pix_fmt"], info["width"], info["height"]) == ("h264", "yuv420p", 64, 32)
    assert info["frames"] == 17 and float(info["fps"]) == 16.0
    assert set(record["timings"]) == {"load_s", "decode_s", "total_s"} and record == json.loads(
        out.with_suffix(".json").read_text()
    )
    # the MP4's comment is written when ffmpeg opens the file: the record with the load time only
    assert read_metadata(out) == {**record, "timings": {"load_s": record["timings"]["load_s"]}}
    assert record["source"] == str(lat_path) and record["output"] == str(out)
    lat = load_latents(lat_path)
    mean = torch.tensor(ref.config.latents_mean).view(1, 16, 1, 1, 1)
    std = torch.tensor(ref.config.latents_std).view(1, 16, 1, 1, 1)
    with torch.no_grad():
        want = ref.decode(lat.latents[None] * std + mean).sample[0].clamp(-1, 1)  # [3, 17, 32, 64]
    ref_mp4 = tmp / "ref.mp4"
    with VideoWriter(ref_mp4, 64, 32, 16) as writer:  # diffusers' frames through the same encoder settings
        writer.write(want)
    with VideoReader(out) as a, VideoReader(ref_mp4) as b:
        got, ref_frames = torch.cat(list(a.chunks(100)), dim=1), torch.cat(list(b.chunks(100)), dim=1)
    # Both files went through H.264; their decoders' outputs differ by ~1e-6, so the files must agree far inside the
    # compression error (which is ~0.09 mean on random-weight VAE output: noise-like textures).
    err = (got - ref_frames).abs().mean().item()
    assert got.shape == (3, 17, 32, 64) and err < 0.005, err


def test_decode_finishes_a_generation_and_takes_fps(vae_pair, tmp: Path) -> None:  # type: ignore[no-untyped-def]
    from wan_cli.engine.latents import save_latents

    lat = tmp / "gen.safetensors"
    save_latents(lat, torch.randn(16, 3, 4, 6) * 0.5, fps=16, source="t2v", model="tiny", record={"seed": 5})
    out = tmp / "gen.mp4"
    result = runner.invoke(app, ["decode", str(lat), "-o", str(out), "--vae", str(vae_pair[0]), "--fps", "24", "-q"])
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{out}\n" and result.stderr == ""
    info = probe(out)
    assert info["frames"] == 9 and float(info["fps"]) == 24.0 and (info["width"], info["height"]) == (48, 32)
    assert read_metadata(out)["generation"] == {"seed": 5}


def test_vae_tile_decodes_in_tiles_close_to_whole_frames(vae_pair, tmp: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """--vae-tile runs the streaming decoder tile by tile; the cross-faded result stays close to whole frames."""
    from wan_cli.engine.vae_stream import StreamDecoder

    vae_path, _ = vae_pair
    lat = tmp / "lat.safetensors"
    assert runner.invoke(app, ["encode", str(moving_video(tmp / "in.mp4", 9)), "-o", str(lat), "--vae", str(vae_path),
                               "--size", "64x32", "--vae-tile", "32"]).exit_code == 0  # fmt: skip
    seen = []
    plain_push = StreamDecoder.push

    def spy(self, latents):  # type: ignore[no-untyped-def]
        seen.append(self.tiling)
        yield from plain_push(self, latents)

    monkeypatch.setattr(StreamDecoder, "push", spy)
    outs = {}
    for name, extra in (("whole", []), ("tiled", ["--vae-tile", "32"])):
        out = tmp / f"{name}.mp4"
        result = runner.invoke(app, ["decode", str(lat), "-o", str(out), "--vae", str(vae_path), *extra])
        assert result.exit_code == 0, result.output
        with VideoReader(out) as reader:
            outs[name] = torch.cat(list(reader.chunks(100)), dim=1)
    assert seen[0] is None and seen[-1] is not None and (seen[-1].tile, seen[-1].overlap) == (32, 8)
    assert outs["tiled"].shape == outs["whole"].shape == (3, 9, 32, 64)
    # the MP4 holds the engine's tiled decode (tiling itself is checked in test_vae.py), up to H.264 rounding
    from wan_cli.engine import Tiling

    with torch.no_grad():
        want = random_vae(tiny_vae_config(), seed=7).decode(load_latents(lat).latents[None], tiling=Tiling(32, 8))[0]
    with VideoWriter(tmp / "want.mp4", 64, 32, 16) as writer:  # through the same H.264 settings
        writer.write(want)
    with VideoReader(tmp / "want.mp4") as reader:
        want_mp4 = torch.cat(list(reader.chunks(100)), dim=1)
    assert (outs["tiled"] - want_mp4).abs().mean() < 0.005 < (outs["whole"] - want_mp4).abs().mean()
    bad = runner.invoke(app, ["decode", str(lat), "-o", str(tmp / "x.mp4"), "--vae-tile", "12"])
    assert bad.exit_code == 2 and "--vae-tile" in bad.stderr


def test_encode_and_decode_take_device_and_dtype_like_generation(vae_pair, tmp: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """--dtype bf16 runs the VAE in bf16 (close to fp32, not equal); WAN_DTYPE is its twin (its fp8, a DiT
    setting, means auto here); --dtype fp8 is a usage error."""
    vae_path, _ = vae_pair
    video = moving_video(tmp / "in.mp4", 9)
    lats = {}
    for name, extra in (("fp32", []), ("bf16", ["--dtype", "bf16", "--device", "cpu"])):
        out = tmp / f"{name}.safetensors"
        result = runner.invoke(app, ["encode", str(video), "-o", str(out), "--vae", str(vae_path), "--size", "64x32",
                                     "--json", *extra])  # fmt: skip
        assert result.exit_code == 0, result.output
        record = json.loads(result.stdout)
        assert (record["dtype"], record["device"]) == ({"fp32": "float32", "bf16": "bfloat16"}[name], "cpu")
        lats[name] = load_latents(out).latents
    err = rel_err(lats["bf16"], lats["fp32"])
    assert 0 < err < 0.05, err
    monkeypatch.setenv("WAN_DTYPE", "bf16")
    result = runner.invoke(app, ["decode", str(tmp / "fp32.safetensors"), "-o", str(tmp / "a.mp4"), "--vae",
                                 str(vae_path), "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["dtype"] == "bfloat16"
    monkeypatch.setenv("WAN_DTYPE", "fp8")
    result = runner.invoke(app, ["decode", str(tmp / "fp32.safetensors"), "-o", str(tmp / "b.mp4"), "--vae",
                                 str(vae_path), "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["dtype"] == "float32"
    bad = runner.invoke(app, ["decode", str(tmp / "fp32.safetensors"), "-o", str(tmp / "c.mp4"), "--dtype", "fp8"])
    assert bad.exit_code == 2 and "--dtype" in bad.stderr and not (tmp / "c.mp4").exists()
