"""The causal VAE against diffusers' AutoencoderKLWan, its streaming API, frame-count rules and tiling."""

from __future__ import annotations

import pytest
import torch
from builders import random_vae, rel_err, tiny_vae_config, to_diffusers_vae

from wan_cli.engine import InputError, Tiling, WanVAEConfig, check_frame_count
from wan_cli.engine.vae import LATENT_MEAN, LATENT_STD, FeatureCache, build_vae

FP32_TOL = 1e-5


def _video(t: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, t, h, w, generator=g) * 2 - 1


@pytest.fixture(scope="module")
def real_vae_pair():  # type: ignore[no-untyped-def]
    vae = random_vae(WanVAEConfig(), seed=1)  # the real Wan 2.1 config: 194 tensors, 126.9M parameters
    return vae, to_diffusers_vae(vae)


@pytest.mark.slow
def test_real_config_encode_decode_match_diffusers(real_vae_pair) -> None:  # type: ignore[no-untyped-def]
    """9 frames at 64×64 through the real config; diffusers' latents normalised with its own config stats."""
    vae, ref = real_vae_pair
    video = _video(9, 64, 64)
    mean = torch.tensor(ref.config.latents_mean).view(1, 16, 1, 1, 1)
    inv_std = 1.0 / torch.tensor(ref.config.latents_std).view(1, 16, 1, 1, 1)
    with torch.no_grad():
        lat = vae.encode(video)
        ref_lat = (ref.encode(video).latent_dist.mode() - mean) * inv_std
        assert lat.shape == (1, 16, 3, 8, 8)
        assert rel_err(lat, ref_lat) <= FP32_TOL
        out = vae.decode(lat)
        ref_out = ref.decode(lat / inv_std + mean).sample
    assert out.shape == (1, 3, 9, 64, 64) and out.dtype == torch.float32
    assert rel_err(out, ref_out) <= FP32_TOL
    assert out.min() >= -1 and out.max() <= 1


def test_latent_stats_are_the_official_ones() -> None:
    import inspect

    from diffusers import AutoencoderKLWan

    params = inspect.signature(AutoencoderKLWan.__init__).parameters
    assert list(LATENT_MEAN) == params["latents_mean"].default
    assert list(LATENT_STD) == params["latents_std"].default


def test_streaming_equals_whole_video() -> None:
    vae = random_vae(tiny_vae_config(), seed=2)
    video = _video(13, 32, 48)
    with torch.no_grad():
        whole = vae.encode(video)
        enc = vae.stream_encoder()
        pieces = []
        for a, b in ((0, 2), (2, 3), (3, 10), (10, 13)):  # groupings unrelated to the 1 + 4 + 4 chunking
            pieces += list(enc.push(video[:, :, a:b]))
        enc.close()
        assert [p.shape[2] for p in pieces] == [1, 1, 1, 1]
        assert (torch.cat(pieces, 2) - whole).abs().max() <= 1e-6

        dec = vae.stream_decoder()
        frames = [f for i in range(whole.shape[2]) for f in dec.push(whole[:, :, i : i + 1])]
        assert [f.shape[2] for f in frames] == [1, 4, 4, 4]
        assert (torch.cat(frames, 2) - vae.decode(whole)).abs().max() <= 1e-6


def test_stream_yields_latents_as_soon_as_frames_complete() -> None:
    vae = random_vae(tiny_vae_config())
    enc = vae.stream_encoder()
    video = _video(9, 16, 16)
    with torch.no_grad():
        assert len(list(enc.push(video[:, :, :1]))) == 1  # frame 0 alone makes latent 0
        assert len(list(enc.push(video[:, :, 1:4]))) == 0  # 3 of 4 frames: nothing yet
        assert len(list(enc.push(video[:, :, 4:9]))) == 2  # frames 1-4 and 5-8
    enc.close()


def test_a_new_cache_per_video() -> None:
    """Two videos in a row through fresh streams give the same result as each alone (no state leaks)."""
    vae = random_vae(tiny_vae_config())
    a, b = _video(5, 16, 16, seed=1), _video(5, 16, 16, seed=2)
    with torch.no_grad():
        first = vae.encode(a)
        vae.encode(b)
        assert torch.equal(vae.encode(a), first)
    cache = FeatureCache()
    assert cache.take() == 0 and cache.take() == 1 and len(cache.slots) == 2
    cache.start_chunk()
    assert cache.take() == 0


@pytest.mark.parametrize(("frames", "nearest"), [(10, "9 or 13"), (8, "5 or 9"), (0, "1"), (2, "1 or 5")])
def test_frame_count_errors_name_the_nearest_valid(frames: int, nearest: str) -> None:
    with pytest.raises(InputError) as err:
        check_frame_count(frames)
    assert "1 + 4k" in err.value.message and nearest in err.value.hint


def test_bad_video_inputs_are_rejected() -> None:
    vae = random_vae(tiny_vae_config())
    with pytest.raises(InputError, match="9 or 13"):
        vae.encode(_video(10, 16, 16))
    with pytest.raises(InputError, match="multiple of 8"):
        vae.encode(_video(5, 12, 16))
    with pytest.raises(InputError, match=r"\[B, 16"):
        vae.decode(torch.randn(1, 4, 2, 2, 2))
    enc = vae.stream_encoder()
    with torch.no_grad():
        list(enc.push(_video(3, 16, 16)))
    with pytest.raises(InputError, match="1 or 5"):
        enc.close()


@pytest.mark.parametrize("frame_slice", [None, 1, 2, 3])
def test_frame_sliced_decode_matches_diffusers(frame_slice: int | None) -> None:
    """Decoding the full-resolution stages a slice of frames at a time (the memory saver) is the same decoder."""
    vae = random_vae(tiny_vae_config(), seed=5)
    ref = to_diffusers_vae(vae)
    lat = torch.randn(1, 16, 4, 4, 6, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        out = vae.decode(lat, frame_slice=frame_slice)
        ref_out = ref.decode(lat / vae.latent_inv_std + vae.latent_mean).sample
    assert out.shape == (1, 3, 13, 32, 48)
    assert rel_err(out, ref_out) <= FP32_TOL


def test_decode_clamps_to_unit_range() -> None:
    vae = random_vae(tiny_vae_config())
    with torch.no_grad():
        out = vae.decode(torch.randn(1, 16, 2, 4, 4) * 50)
    assert out.min() >= -1 and out.max() <= 1 and (out.abs() == 1).any()


def _pointwise_vae() -> torch.nn.Module:
    """A VAE whose every spatial kernel is 1×1 (centre tap only) and whose attention is off: spatially local."""
    vae = random_vae(tiny_vae_config(), seed=4)
    with torch.no_grad():
        for name, p in vae.named_parameters():
            if name.endswith("weight") and p.ndim >= 4 and p.shape[-1] == 3:
                centre = torch.zeros_like(p)
                centre[..., 1, 1] = p[..., 1, 1] * 3
                p.copy_(centre)
            if "middle.1.proj" in name:
                p.zero_()
    return vae


def test_tiling_is_exact_for_a_spatially_local_network() -> None:
    """With no spatial mixing, tiles (own caches, cross-faded overlaps) must reproduce the untiled result."""
    vae = _pointwise_vae()
    lat = torch.randn(1, 16, 3, 12, 20)
    video = _video(9, 96, 160)
    tiling = Tiling(tile=64, overlap=32)
    with torch.no_grad():
        assert rel_err(vae.decode(lat, tiling=tiling), vae.decode(lat)) < 1e-5
        assert rel_err(vae.encode(video, tiling=tiling), vae.encode(video)) < 1e-5


def test_tiled_close_to_untiled_with_random_weights() -> None:
    """Real networks mix pixels within a receptive field wider than the overlap, so tiling is an approximation;
    with random weights (attention off: it is frame-global) and 192/64 px tiles it stays within 8% (decode) and
    3% (encode) of the untiled result, and both improve as tiles grow."""
    vae = random_vae(tiny_vae_config(), seed=0)
    with torch.no_grad():
        for name, p in vae.named_parameters():
            if "middle.1.proj" in name:
                p.zero_()
        lat = torch.randn(1, 16, 1, 32, 32)  # one latent frame → one 256×256 frame
        full = vae.decode(lat)
        video = full
        lat_full = vae.encode(video)
        errs = []
        for tile in (128, 192):
            tiling = Tiling(tile=tile, overlap=64)
            errs.append((rel_err(vae.decode(lat, tiling=tiling), full),
                         rel_err(vae.encode(video, tiling=tiling), lat_full)))  # fmt: skip
    assert errs[1][0] < 0.08 and errs[1][1] < 0.03, errs
    assert errs[1][0] < errs[0][0] and errs[1][1] < errs[0][1], errs


def test_bad_tiling_is_rejected() -> None:
    with pytest.raises(InputError):
        Tiling(tile=100, overlap=10)
    with pytest.raises(InputError):
        Tiling(tile=64, overlap=64)


def test_meta_build_has_the_official_keys() -> None:
    vae = build_vae()
    state = vae.state_dict()
    assert len(state) == 194
    assert sum(v.numel() for v in state.values()) == 126_892_531
    expected = {
        "encoder.conv1.weight": (96, 3, 3, 3, 3), "encoder.downsamples.0.residual.0.gamma": (96, 1, 1, 1),
        "encoder.downsamples.2.resample.1.weight": (96, 96, 3, 3),
        "encoder.downsamples.3.shortcut.weight": (192, 96, 1, 1, 1),
        "encoder.downsamples.5.time_conv.weight": (192, 192, 3, 1, 1),
        "encoder.downsamples.8.time_conv.weight": (384, 384, 3, 1, 1),
        "encoder.middle.1.norm.gamma": (384, 1, 1), "encoder.middle.1.to_qkv.weight": (1152, 384, 1, 1),
        "encoder.head.2.weight": (32, 384, 3, 3, 3), "conv1.weight": (32, 32, 1, 1, 1),
        "conv2.weight": (16, 16, 1, 1, 1), "decoder.conv1.weight": (384, 16, 3, 3, 3),
        "decoder.upsamples.3.time_conv.weight": (768, 384, 3, 1, 1),
        "decoder.upsamples.3.resample.1.weight": (192, 384, 3, 3),
        "decoder.upsamples.4.shortcut.weight": (384, 192, 1, 1, 1),
        "decoder.upsamples.11.resample.1.weight": (96, 192, 3, 3), "decoder.head.2.weight": (3, 96, 3, 3, 3),
    }  # fmt: skip
    for key, shape in expected.items():
        assert tuple(state[key].shape) == shape, key
    assert sum(k.startswith("encoder.") for k in state) == 84
    assert sum(k.startswith("decoder.") for k in state) == 106
