"""The sampling pipeline: validation, the official size/mask/noise rules, end-to-end parity with diffusers'
WanPipeline / WanImageToVideoPipeline built from the same tiny folder, CFG batching and the memory phases."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from builders import random_dit, rel_err, tiny_dit_config, write_comfy_dit, write_diffusers_pipeline

from wan_cli.engine import InputError
from wan_cli.engine.images import i2v_mask, i2v_size, match_last_frame
from wan_cli.engine.pipeline import Pipeline
from wan_cli.engine.request import DEFAULT_NEGATIVE_PROMPTS, GenerationRequest, validate
from wan_cli.engine.sampling import make_noise
from wan_cli.engine.schedulers import SIGMA_MAX

PROMPT = "a dog runs in the park"


# -- rules -------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"width": 830}, "multiples of 16"),
        ({"height": 0}, "multiples of 16"),
        ({"frames": 80}, "1 + 4k"),
        ({"steps": 0}, "at least 1"),
        ({"guidance": -1.0}, ">= 0"),
        ({"guidance": float("nan")}, ">= 0"),
        ({"shift": 0.0}, "> 0"),
        ({"solver": "heun"}, "unknown solver"),
        ({"prompt": "   "}, "empty"),
        ({"task": "i2v"}, "needs an input image"),
        ({"task": "flf2v", "image": torch.zeros(3, 16, 16)}, "last frame"),
        ({"image": torch.zeros(3, 16, 16)}, "t2v takes no image"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_requests_are_refused_before_loading(kwargs: dict, message: str) -> None:  # type: ignore[type-arg]
    req = GenerationRequest(prompt=PROMPT, model="/nonexistent")
    for k, v in kwargs.items():
        setattr(req, k, v)
    with pytest.raises(InputError, match=re.escape(message)):
        validate(req)
    # the pipeline validates first: the missing model is never touched
    with pytest.raises(InputError, match=re.escape(message)):
        Pipeline().generate(req)


def test_wrong_model_for_the_task_is_refused_from_headers(tmp: Path) -> None:
    path = write_comfy_dit(random_dit(tiny_dit_config("t2v")), tmp / "t2v.safetensors")
    req = GenerationRequest(prompt=PROMPT, task="i2v", image=torch.zeros(3, 64, 64), dit=path, model=tmp)
    with pytest.raises(InputError, match="is a t2v model; i2v needs an i2v model"):
        Pipeline().generate(req)


# wan21-architecture.md §3.1: output H×W for input aspects at the 480p and 720p areas
@pytest.mark.parametrize(
    ("image_wh", "area", "expected_hw"),
    [
        ((1280, 720), 399360, (464, 832)),
        ((1920, 1080), 399360, (464, 832)),
        ((720, 1280), 399360, (832, 464)),
        ((640, 480), 399360, (544, 720)),
        ((512, 512), 399360, (624, 624)),
        ((832, 480), 399360, (464, 832)),  # the float quirk: an exact 832×480 input loses 16 rows
        ((480, 832), 399360, (832, 480)),
        ((1280, 720), 921600, (720, 1280)),
        ((720, 1280), 921600, (1280, 720)),
        ((1024, 768), 921600, (816, 1104)),
        ((512, 512), 921600, (960, 960)),
        ((832, 480), 921600, (720, 1248)),
        ((480, 832), 921600, (1248, 720)),
    ],
)
def test_i2v_size_rule(image_wh: tuple[int, int], area: int, expected_hw: tuple[int, int]) -> None:
    w, h = image_wh
    assert i2v_size((h, w), area) == expected_hw


def test_i2v_masks() -> None:
    m = i2v_mask(81, 2, 3, last=False)
    assert m.shape == (4, 21, 2, 3)
    assert (m[:, 0] == 1).all() and (m[:, 1:] == 0).all()
    f = i2v_mask(81, 2, 3, last=True)
    assert (f[:, 0] == 1).all() and (f[:, 1:20] == 0).all()
    assert (f[3, 20] == 1).all() and (f[:3, 20] == 0).all()  # only pixel frame 80 of latent frame 20 is known


def test_last_frame_crop_quirk() -> None:
    """Same size: untouched. Different size: torchvision's centre crop with the box's width and height swapped."""
    first = torch.zeros(3, 40, 60)
    same = torch.randn(3, 40, 60)
    assert match_last_frame(first, same) is same
    last = torch.arange(3 * 20 * 20, dtype=torch.float32).view(3, 20, 20)
    # r = max(60/20, 40/20) = 3; box (round(20·3), round(20·3)) = 60×60 > 20×20: zero-padded by 20 on each side
    out = match_last_frame(first, last)
    assert out.shape == (3, 60, 60)
    assert torch.equal(out[:, 20:40, 20:40], last) and out[:, :20].abs().sum() == 0
    wide = torch.randn(3, 10, 30)  # W₂ = 30, H₂ = 10; r = max(60/30, 40/10) = 4 → box (120, 40) read as (h, w)
    assert match_last_frame(first, wide).shape == (3, 120, 40)


def test_noise_is_a_cpu_generator_draw() -> None:
    a = make_noise(42, 17, 64, 96)
    assert a.shape == (1, 16, 5, 8, 12) and a.dtype == torch.float32 and a.device.type == "cpu"
    g = torch.Generator("cpu").manual_seed(42)
    assert torch.equal(a, torch.randn(1, 16, 5, 8, 12, generator=g))
    assert not torch.equal(a, make_noise(43, 17, 64, 96))


def test_default_negative_prompts_are_verbatim() -> None:
    t2v = DEFAULT_NEGATIVE_PROMPTS["t2v"]
    assert t2v.startswith("色调艳丽，过曝，静态，细节模糊不清，字幕，") and t2v.endswith("三条腿，背景人很多，倒着走")
    assert DEFAULT_NEGATIVE_PROMPTS["i2v"] == "镜头晃动，" + t2v
    assert DEFAULT_NEGATIVE_PROMPTS["flf2v"] == "镜头切换，镜头晃动，" + t2v


# -- end to end against diffusers --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def t2v_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_diffusers_pipeline(tmp_path_factory.mktemp("t2v") / "pipe", "t2v", seed=1)


def _official_sigmas(pipe) -> None:  # type: ignore[no-untyped-def]
    """diffusers builds its own flow grid (σ from 1 − 1e-6, linspace to 1/1000); give it the official unshifted grid
    linspace(σ_max, 0, n + 1)[:-1] instead — its scheduler then applies flow_shift, giving the official σ list."""
    original = pipe.scheduler.set_timesteps

    def set_timesteps(n: int, device=None, **_: object) -> None:  # type: ignore[no-untyped-def]
        original(sigmas=np.linspace(SIGMA_MAX, 0, n + 1)[:-1], device=device)

    pipe.scheduler.set_timesteps = set_timesteps


def test_t2v_matches_diffusers(t2v_folder: Path) -> None:
    from diffusers import WanPipeline

    req = GenerationRequest(prompt=PROMPT, model=t2v_folder, width=96, height=64, frames=5, steps=6, shift=3.0,
                            guidance=5.0, seed=1234, negative_prompt="blurry, static")  # fmt: skip
    ours = Pipeline().generate(req)
    pipe = WanPipeline.from_pretrained(str(t2v_folder))
    pipe.scheduler.register_to_config(flow_shift=req.shift)
    _official_sigmas(pipe)
    with torch.no_grad():
        ref = pipe(prompt=req.prompt, negative_prompt=req.negative_prompt, height=64, width=96, num_frames=5,
                   num_inference_steps=6, guidance_scale=5.0, latents=make_noise(1234, 5, 64, 96),
                   output_type="latent").frames  # fmt: skip
    assert ours.latents.shape == (16, 2, 8, 12)
    err = rel_err(ours.latents, ref[0])
    assert err <= 1e-4, f"t2v final latents: relative error {err:.2e}"


@pytest.mark.slow
@pytest.mark.parametrize("task", ["i2v", "flf2v"])
def test_image_tasks_match_diffusers(task: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    """224×224 inputs at area 224·224: no resize anywhere, so diffusers' PIL/crop preprocessing and the official
    bicubic squash see the same pixels; diffusers computes its own CLIP features with its image processor."""
    from diffusers import WanImageToVideoPipeline
    from PIL import Image

    folder = write_diffusers_pipeline(tmp_path_factory.mktemp(task) / "pipe", task, seed=2)
    rng = np.random.default_rng(0)
    pil = [Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)) for _ in range(2)]
    tensors = [torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float() / 127.5 - 1 for im in pil]
    req = GenerationRequest(prompt=PROMPT, model=folder, task=task, image=tensors[0],  # type: ignore[arg-type]
                            last_image=tensors[1] if task == "flf2v" else None, width=224, height=224, frames=5,
                            steps=4, shift=3.0, guidance=5.0, seed=7, negative_prompt="static")  # fmt: skip
    ours = Pipeline().generate(req)
    assert (ours.request.height, ours.request.width) == (224, 224)
    pipe = WanImageToVideoPipeline.from_pretrained(str(folder))
    pipe.scheduler.register_to_config(flow_shift=req.shift)
    _official_sigmas(pipe)
    with torch.no_grad():
        ref = pipe(image=pil[0], last_image=pil[1] if task == "flf2v" else None, prompt=req.prompt,
                   negative_prompt=req.negative_prompt, height=224, width=224, num_frames=5, num_inference_steps=4,
                   guidance_scale=5.0, latents=make_noise(7, 5, 224, 224), output_type="latent").frames  # fmt: skip
    err = rel_err(ours.latents, ref[0])
    assert err <= 1e-4, f"{task} final latents: relative error {err:.2e}"


def test_batched_and_sequential_cfg_agree(t2v_folder: Path) -> None:
    base = GenerationRequest(prompt=PROMPT, model=t2v_folder, width=64, height=64, frames=5, steps=3, seed=5)
    pipe = Pipeline(policy="keep")
    batched = pipe.generate(GenerationRequest(**{**base.__dict__, "cfg_batch": True}))
    sequential = pipe.generate(GenerationRequest(**{**base.__dict__, "cfg_batch": False}))
    assert rel_err(batched.latents, sequential.latents) <= 1e-5


def test_split_component_files(t2v_folder: Path) -> None:
    """ComfyUI-style: no checkpoint folder, one path per component (here the Diffusers sub-folders)."""
    kw = {"width": 64, "height": 64, "frames": 5, "steps": 2, "seed": 3}
    whole = Pipeline().generate(GenerationRequest(prompt=PROMPT, model=t2v_folder, **kw))  # type: ignore[arg-type]
    split = GenerationRequest(prompt=PROMPT, dit=t2v_folder / "transformer", vae=t2v_folder / "vae",
                              text_encoder=t2v_folder / "text_encoder", tokenizer=t2v_folder / "tokenizer", **kw)  # type: ignore[arg-type]  # fmt: skip
    assert torch.equal(Pipeline().generate(split).latents, whole.latents)
    with pytest.raises(InputError, match="no weights given for: vae"):
        Pipeline().generate(GenerationRequest(prompt=PROMPT, dit=t2v_folder, text_encoder=t2v_folder, **kw))  # type: ignore[arg-type]


def test_result_stream_seed_and_settings(t2v_folder: Path) -> None:
    req = GenerationRequest(prompt=PROMPT, model=t2v_folder, width=64, height=48, frames=9, steps=2)
    seen: list[tuple[str, int, int]] = []
    res = Pipeline().generate(req, progress=lambda phase, done, total: seen.append((phase, done, total)))
    assert seen == [("denoise", 1, 2), ("denoise", 2, 2)]
    assert isinstance(res.seed, int) and 0 <= res.seed < 2**32  # "random" resolved and reported
    assert res.request.negative_prompt == DEFAULT_NEGATIVE_PROMPTS["t2v"]
    chunks = list(res.frames())
    assert [c.shape for c in chunks] == [(3, 1, 48, 64), (3, 4, 48, 64), (3, 4, 48, 64)]
    assert all(c.min() >= -1 and c.max() <= 1 for c in chunks)
    again = Pipeline().generate(GenerationRequest(**{**req.__dict__, "seed": res.seed}))
    assert torch.equal(again.latents, res.latents)  # the reported seed reproduces the video


# -- memory phases -----------------------------------------------------------------------------------------------------


def _events(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage().split(" from ")[0] for r in caplog.records
            if r.name == "wan_cli.engine.pipeline" and not r.getMessage().startswith("loaded")]  # fmt: skip


def test_release_policy_frees_each_phase_before_the_next(t2v_folder: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="wan_cli.engine.pipeline")
    req = GenerationRequest(prompt=PROMPT, model=t2v_folder, width=64, height=64, frames=5, steps=2, seed=1)
    res = Pipeline(policy="release").generate(req)
    list(res.frames())
    assert _events(caplog) == [
        "load text_encoder", "release text_encoder",  # the text encoder is gone before the DiT loads
        "load dit", "release dit",
        "load vae", "release vae",
    ]  # fmt: skip


def test_keep_policy_loads_once_and_encodes_each_prompt_once(
    t2v_folder: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from wan_cli.engine.conditioning import TextEncoder

    calls: list[list[str]] = []
    original = TextEncoder.encode
    monkeypatch.setattr(
        TextEncoder, "encode", lambda self, prompts: calls.append(list(prompts)) or original(self, prompts)
    )
    caplog.set_level(logging.DEBUG, logger="wan_cli.engine.pipeline")
    pipe = Pipeline(policy="keep")
    for seed in (1, 2):
        req = GenerationRequest(prompt=PROMPT, model=t2v_folder, width=64, height=64, frames=5, steps=2, seed=seed)
        list(pipe.generate(req).frames())
    assert _events(caplog) == ["load text_encoder", "load dit", "load vae"]
    assert calls == [[PROMPT, DEFAULT_NEGATIVE_PROMPTS["t2v"]]]


@pytest.mark.slow
def test_image_task_phases(tmp_path_factory: pytest.TempPathFactory, caplog: pytest.LogCaptureFixture) -> None:
    folder = write_diffusers_pipeline(tmp_path_factory.mktemp("phases") / "pipe", "i2v", seed=3)
    caplog.set_level(logging.DEBUG, logger="wan_cli.engine.pipeline")
    req = GenerationRequest(prompt=PROMPT, model=folder, task="i2v", image=torch.zeros(3, 64, 64), width=64,
                            height=64, frames=5, steps=1, seed=1)  # fmt: skip
    list(Pipeline(policy="release").generate(req).frames())
    assert _events(caplog) == [
        "load text_encoder", "release text_encoder", "load image_encoder", "release image_encoder",
        "load vae", "release vae", "load dit", "release dit", "load vae", "release vae",
    ]  # fmt: skip


# -- FLF2V with frames of different sizes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("first_hw", "last_hw", "box_hw", "pad_tb_lr"),
    [
        # r = max(64/40, 48/40) = 1.6 → box (round(40·1.6), round(40·1.6)) = (64, 64): zero-pad 12 on every side
        ((48, 64), (40, 40), (64, 64), (12, 12, 12, 12)),
        # portrait last frame 24×56 (W×H): r = max(64/24, 48/56) = 2.667 → box (64, 149) read as (h 64, w 149)
        ((48, 64), (56, 24), (64, 149), (4, 4, 62, 63)),
    ],
)  # fmt: skip
def test_flf2v_with_frames_of_different_sizes(
    first_hw: tuple[int, int], last_hw: tuple[int, int], box_hw: tuple[int, int], pad_tb_lr: tuple[int, ...],
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """The official rule (wan21-architecture.md §3.3) end to end: the last frame is centre-cropped (here: padded)
    with the swapped box, CLIP sees each frame squashed to 224² on its own, the video size follows the first."""
    from builders import write_official_model

    from wan_cli.engine.conditioning import ImageEncoder

    folder = write_official_model(tmp_path_factory.mktemp("flf") / "m", "flf2v", seed=4)
    g = torch.Generator().manual_seed(0)
    first = torch.rand(3, *first_hw, generator=g) * 2 - 1
    last = torch.rand(3, *last_hw, generator=g) * 2 - 1
    seen: list[list[torch.Tensor]] = []
    original = ImageEncoder.encode
    monkeypatch.setattr(ImageEncoder, "encode", lambda self, ims: seen.append(list(ims)) or original(self, ims))
    req = GenerationRequest(prompt=PROMPT, model=folder, task="flf2v", image=first, last_image=last, width=64,
                            height=48, frames=5, steps=2, seed=3)  # fmt: skip
    result = Pipeline().generate(req)
    frames = torch.cat(list(result.frames()), dim=1)
    assert (result.request.height, result.request.width) == (48, 64) and frames.shape == (3, 5, 48, 64)
    ((clip_first, clip_last),) = seen
    assert torch.equal(clip_first, first)
    top, bottom, left, right = pad_tb_lr
    want = torch.nn.functional.pad(last, (left, right, top, bottom))  # zeros = mid-grey in [-1, 1]
    assert clip_last.shape == (3, *box_hw) and torch.equal(clip_last, want)
