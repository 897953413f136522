"""The files users already have, through stand-ins with the published files' key names, dtypes and metadata
(checkpoint-formats.md §4.1-4.6): ComfyUI's I2V set end to end through `wan i2v`, a ComfyUI models/ tree, the
stock open_clip layout, whole folders through `wan inspect`, peers' option names."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from builders import (
    clip_hf_state,
    rel_err,
    tiny_clip,
    write_clip_vision_h,
    write_comfy_tree,
    write_diffusers_pipeline,
    write_official_model,
)
from PIL import Image
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from wan_cli.cli.app import app
from wan_cli.engine import (
    CheckpointError,
    FolderInfo,
    inspect_checkpoint,
    load_image_encoder,
    load_text_encoder,
    load_transformer,
)
from wan_cli.engine.conditioning import preprocess_clip

runner = CliRunner()
TINY = ["--size", "64x32", "--frames", "5", "--steps", "2", "--seed", "3"]


def _penultimate(model, images: torch.Tensor) -> torch.Tensor:  # type: ignore[no-untyped-def]
    with torch.no_grad():
        return model(pixel_values=preprocess_clip(images), output_hidden_states=True).hidden_states[-2]


def _images() -> torch.Tensor:
    return torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0)) * 2 - 1


# -- the CLIP files people have ----------------------------------------------------------------------------------------


def test_clip_vision_h_with_its_position_ids_loads(tmp: Path) -> None:
    model = tiny_clip(seed=4)
    path = write_clip_vision_h(model, tmp / "clip_vision_h.safetensors")
    header = load_file(str(path))
    assert header["vision_model.embeddings.position_ids"].dtype == torch.int64  # as in the published file
    assert header["vision_model.embeddings.position_ids"].shape == (1, 257)
    enc = load_image_encoder(path, dtype=torch.float32)
    want = _penultimate(model.half().float(), _images())  # the file is fp16
    assert rel_err(enc.encode(_images()), want) <= 1e-5


def _hf_to_open_clip(model) -> dict[str, torch.Tensor]:  # type: ignore[no-untyped-def]
    """laion's open_clip ViT-H/14 layout, written independently of the loader's table (the other direction), plus
    a text tower and logit scale to be ignored."""
    names = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "self_attn.out_proj": "attn.out_proj", "mlp.fc1": "mlp.c_fc",
             "mlp.fc2": "mlp.c_proj"}  # fmt: skip
    sd = clip_hf_state(model)
    out = {
        "visual.class_embedding": sd["embeddings.class_embedding"],
        "visual.positional_embedding": sd["embeddings.position_embedding.weight"],
        "visual.conv1.weight": sd["embeddings.patch_embedding.weight"],
        "visual.proj": torch.randn(sd["embeddings.class_embedding"].shape[0], 1024),
        "token_embedding.weight": torch.randn(10, 8), "positional_embedding": torch.randn(77, 8),
        "transformer.resblocks.0.attn.in_proj_weight": torch.randn(24, 8), "ln_final.weight": torch.ones(8),
        "text_projection": torch.randn(8, 8), "logit_scale": torch.tensor(4.6),
    }  # fmt: skip
    for k, v in sd.items():
        if k.startswith(("pre_layrnorm.", "post_layernorm.")):
            out[("visual.ln_pre." if k.startswith("pre") else "visual.ln_post.") + k.split(".")[-1]] = v
        elif m := re.match(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$", k):
            n, mod, kind = m.groups()
            if mod == "self_attn.q_proj":
                qkv = [sd[f"encoder.layers.{n}.self_attn.{x}_proj.{kind}"] for x in "qkv"]
                out[f"visual.transformer.resblocks.{n}.attn.in_proj_{kind}"] = torch.cat(qkv)
            elif mod in names:
                out[f"visual.transformer.resblocks.{n}.{names[mod]}.{kind}"] = v
    return out


def test_stock_open_clip_layout_loads(tmp: Path) -> None:
    model = tiny_clip(seed=5)
    save_file({k: v.contiguous() for k, v in _hf_to_open_clip(model).items()}, str(tmp / "open_clip.safetensors"))
    info = inspect_checkpoint(tmp / "open_clip.safetensors")
    assert (info.kind, info.layout) == ("clip", "open_clip")  # not Wan's official CLIP, not a T5 text encoder
    enc = load_image_encoder(tmp / "open_clip.safetensors", dtype=torch.float32)
    assert rel_err(enc.encode(_images()), _penultimate(model, _images())) <= 1e-5


def test_a_complete_file_with_extra_tensors_is_not_called_incomplete(tmp: Path) -> None:
    model = tiny_clip(seed=6)
    path = write_clip_vision_h(model, tmp / "clip.safetensors")
    state = load_file(str(path))
    state["vision_model.embeddings.something_new"] = torch.zeros(3)
    save_file(state, str(path))
    with pytest.raises(CheckpointError) as err:
        load_image_encoder(path)
    assert "1 unexpected: embeddings.something_new" in err.value.message
    assert "incomplete" not in err.value.hint and "download" not in err.value.hint


# -- ComfyUI's I2V set end to end ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    models = tmp_path_factory.mktemp("ComfyUI") / "models"
    return models, write_comfy_tree(models, "i2v", seed=7)


def _still(path: Path, w: int = 64, h: int = 48, color: tuple[int, int, int] = (200, 40, 40)) -> Path:
    Image.new("RGB", (w, h), color).save(path)
    return path


def test_the_comfyui_i2v_set_runs_with_every_file_named(tree: tuple[Path, dict[str, Path]], tmp: Path) -> None:
    _, files = tree
    out = tmp / "cat.mp4"
    args = ["i2v", str(_still(tmp / "cat.png")), "--prompt", "a cat yawns", "-m", str(files["dit"]),
            "--vae", str(files["vae"]), "--text-encoder", str(files["text_encoder"]),
            "--clip-vision", str(files["image_encoder"]), *TINY, "-o", str(out)]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{out}\n" and out.stat().st_size > 0
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["model"]["files"]["image_encoder"] == str(files["image_encoder"])


def test_the_comfyui_tree_supplies_the_other_files(tree: tuple[Path, dict[str, Path]], tmp: Path) -> None:
    models, files = tree
    out = tmp / "a.mp4"
    args = ["i2v", str(_still(tmp / "a.png")), "--prompt", "a cat", "-m", str(files["dit"]), *TINY, "-o", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["model"]["files"] == {k: str(v) for k, v in files.items()}
    for path in (files["vae"], files["text_encoder"], files["image_encoder"]):
        assert f"using {path}" in result.stderr.replace("\n", "")  # says which file it took
    # the models/ folder itself: its one i2v diffusion model, and the rest beside it
    out2 = tmp / "b.mp4"
    args = ["i2v", str(tmp / "a.png"), "--prompt", "a cat", "-m", str(models), *TINY, "-o", str(out2)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads(out2.with_suffix(".json").read_text())["model"]["files"]["dit"] == str(files["dit"])


def test_several_candidates_are_listed_with_the_flag(tree: tuple[Path, dict[str, Path]], tmp: Path) -> None:
    _, files = tree
    twin = files["text_encoder"].with_name("umt5_xxl_fp16.safetensors")
    twin.write_bytes(files["text_encoder"].read_bytes())
    try:
        args = ["i2v", str(_still(tmp / "a.png")), "--prompt", "a cat", "-m", str(files["dit"]), *TINY,
                "-o", str(tmp / "x.mp4")]  # fmt: skip
        result = runner.invoke(app, args)
        assert result.exit_code == 1, result.output
        err = result.stderr.replace("\n", "")
        assert "several UMT5 text encoders" in err and "umt5_xxl_fp16.safetensors" in err
        assert "--text-encoder" in result.stderr and not (tmp / "x.mp4").exists()
        # the flag settles it
        result = runner.invoke(app, [*args, "--text-encoder", str(twin)])
        assert result.exit_code == 0, result.output
    finally:
        twin.unlink()


def test_a_models_tree_with_no_fitting_vae(tmp: Path) -> None:
    models = tmp / "models"
    files = write_comfy_tree(models, "t2v", seed=8)
    files["vae"].unlink()
    result = runner.invoke(app, ["t2v", "a dog", "-m", str(files["dit"]), *TINY, "-o", str(tmp / "d.mp4")])
    assert result.exit_code == 1
    assert "no Wan 2.1 VAE found" in result.stderr and "--vae" in result.stderr


# -- whole folders through wan inspect --------------------------------------------------------------------------------


def _kinds(info: object) -> list[str]:
    assert isinstance(info, FolderInfo)
    return sorted(c.kind for c in info.components)


def test_inspect_reports_every_component_of_a_folder(tree: tuple[Path, dict[str, Path]], tmp: Path) -> None:
    official = inspect_checkpoint(write_official_model(tmp / "official", "i2v"))
    assert _kinds(official) == ["clip", "dit", "text_encoder", "vae"] and official.layout == "official"  # type: ignore[union-attr]
    assert official.tokenizers == [str(tmp / "official" / "google" / "umt5-xxl")]  # type: ignore[union-attr]
    pipe = inspect_checkpoint(write_diffusers_pipeline(tmp / "pipe", "i2v"))
    assert _kinds(pipe) == ["clip", "dit", "text_encoder", "vae"] and pipe.layout == "diffusers"  # type: ignore[union-attr]
    models, files = tree
    comfy = inspect_checkpoint(models)
    assert _kinds(comfy) == ["clip", "dit", "text_encoder", "vae"] and comfy.layout == "comfyui-models"  # type: ignore[union-attr]
    dit = next(c for c in comfy.components if c.kind == "dit")  # type: ignore[union-attr]
    assert (dit.quantization, dit.config["model_type"]) == ("fp8", "i2v")  # type: ignore[index]
    te = next(c for c in comfy.components if c.kind == "text_encoder")  # type: ignore[union-attr]
    assert te.quantization == "scaled_fp8" and te.tokenizer == "embedded"
    result = runner.invoke(app, ["inspect", str(models)])
    assert result.exit_code == 0, result.output
    for path in files.values():
        assert str(path) in result.stdout
    result = runner.invoke(app, ["inspect", str(models), "--json"])
    assert len(json.loads(result.stdout)["components"]) == 4


# -- a Diffusers DiT file without its config.json -------------------------------------------------------------------


def test_diffusers_dit_without_config_and_unknown_head_width_is_refused(tmp: Path) -> None:
    from builders import random_dit, tiny_dit_config, write_diffusers_dit

    model = random_dit(tiny_dit_config("t2v", dim=192, num_heads=3))  # head width 64: dim // 128 would say 1 head
    write_diffusers_dit(model, tmp / "pipe")
    assert load_transformer(tmp / "pipe").config.num_heads == 3  # with config.json: read from it
    single = tmp / "lonely.safetensors"
    shards = sorted((tmp / "pipe" / "transformer").glob("*.safetensors"))
    save_file({k: v for s in shards for k, v in load_file(str(s)).items()}, str(single))
    with pytest.raises(CheckpointError) as err:
        load_transformer(single)
    assert "attention heads" in err.value.message and "config.json" in err.value.hint


# -- peers' option names ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "ours"),
    [("--sample_steps", "--steps"), ("--frame_num", "--frames"), ("--sample_guide_scale", "--guidance"),
     ("--sample_shift", "--shift"), ("--base_seed", "--seed"), ("--ckpt_dir", "--model"),
     ("--offload_model", "--offload model"), ("--num_inference_steps", "--steps"), ("--guidance_scale", "--guidance"),
     ("--num_frames", "--frames")],
)  # fmt: skip
def test_peer_options_name_wans_option(flag: str, ours: str) -> None:
    result = runner.invoke(app, ["t2v", "a dog", flag, "4"])
    assert result.exit_code == 2
    assert flag in result.stderr and ours in result.stderr.replace("\n", " ")
    assert "Traceback" not in result.output


def test_t5_cpu_flag_is_named_too() -> None:
    result = runner.invoke(app, ["i2v", "x.png", "--prompt", "a", "--t5_cpu"])
    assert result.exit_code == 2 and "--offload model" in result.stderr


def test_flf2v_frames_of_different_sizes_through_the_cli(tmp: Path) -> None:
    folder = write_official_model(tmp / "flf2v", "flf2v", seed=9)
    first, last = _still(tmp / "first.png", 64, 48), _still(tmp / "last.png", 30, 50, (10, 200, 90))
    out = tmp / "bloom.mp4"
    args = ["i2v", str(first), "--last-frame", str(last), "--prompt", "a flower blooms", "-m", str(folder), *TINY,
            "-o", str(out)]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    # the first frame's 4:3 at the area of 64x32 (official rule: wan21-architecture.md §3.1)
    assert json.loads(out.with_suffix(".json").read_text())["size"] == "48x32"


def clip_vision_h_header() -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """The published clip_vision_h.safetensors at full size (checkpoint-formats.md §4.5): ViT-H/14, 32 blocks of
    width 1280 (MLP 5120), fp16, the 1024-wide projection and the int64 position ids."""
    f16, hidden, mlp = torch.float16, 1280, 5120
    head: dict[str, tuple[tuple[int, ...], torch.dtype]] = {
        "vision_model.embeddings.class_embedding": ((hidden,), f16),
        "vision_model.embeddings.patch_embedding.weight": ((hidden, 3, 14, 14), f16),
        "vision_model.embeddings.position_embedding.weight": ((257, hidden), f16),
        "vision_model.embeddings.position_ids": ((1, 257), torch.int64),
        "visual_projection.weight": ((1024, hidden), f16),
    }
    for norm in ("pre_layrnorm", "post_layernorm"):
        head.update({f"vision_model.{norm}.{p}": ((hidden,), f16) for p in ("weight", "bias")})
    for n in range(32):
        base = f"vision_model.encoder.layers.{n}."
        for name, (out, inp) in {"self_attn.q_proj": (hidden, hidden), "self_attn.k_proj": (hidden, hidden),
                                 "self_attn.v_proj": (hidden, hidden), "self_attn.out_proj": (hidden, hidden),
                                 "mlp.fc1": (mlp, hidden), "mlp.fc2": (hidden, mlp)}.items():  # fmt: skip
            head[base + name + ".weight"], head[base + name + ".bias"] = ((out, inp), f16), ((out,), f16)
        for norm in ("layer_norm1", "layer_norm2"):
            head.update({f"{base}{norm}.{p}": ((hidden,), f16) for p in ("weight", "bias")})
    return head


def test_the_full_size_clip_vision_h_header_passes_every_check() -> None:
    """At full size, on the meta device: the stand-in's facts add up to the published file's 1,264,219,396 bytes
    (its JSON header is the rest), and the loader's detection, config and strict key check accept it."""
    from wan_cli.engine.conditioning import plan_image_encoder
    from wan_cli.engine.tensors import TensorSource

    header = clip_vision_h_header()
    data = sum(math.prod(shape) * dtype.itemsize for shape, dtype in header.values())
    assert 0 < 1_264_219_396 - data < 100_000, data  # what is left is the safetensors JSON header
    tensors = {k: torch.empty(shape, dtype=dtype, device="meta") for k, (shape, dtype) in header.items()}

    published = TensorSource([])  # named like the published file
    published.paths = [Path("clip_vision_h.safetensors")]
    _, model, expected = plan_image_encoder(TensorSource.of(tensors, published), None)
    cfg = model.config
    assert (cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size) == (1280, 16, 5120)
    assert (cfg.num_hidden_layers, cfg.image_size, cfg.patch_size) == (31, 224, 14)  # block 32 is never run
    assert len(expected) == 3 + 2 + 2 + 31 * 16  # embeddings, pre/post norms, 31 blocks: position_ids dropped


@pytest.mark.parametrize("component", ["dit", "vae", "text_encoder", "image_encoder"])
def test_every_loader_drops_the_buffers_other_tools_save(component: str, tmp: Path) -> None:
    """position_ids, a scaled-fp8 marker, spiece_model and Diffusers' norm_added_q: beside any component's weights
    they are skipped by name (layouts.IGNORED_KEYS), and the loaded weights are those of the plain file."""
    from builders import write_comfy_model

    from wan_cli.engine import load_vae

    files = write_comfy_model(tmp / "m", "i2v", seed=2)
    path = files[component]
    state = load_file(str(path))
    extra = {
        "embeddings.position_ids": torch.arange(257)[None],
        "scaled_fp8": torch.zeros(0, dtype=torch.float8_e4m3fn),
        "spiece_model": torch.zeros(4, dtype=torch.uint8),
        "blocks.0.attn2.norm_added_q.weight": torch.ones(4),
    }
    prefix = "model.diffusion_model." if component == "dit" else ""
    if component == "text_encoder":
        extra.pop("spiece_model")  # it already has the real one: the tokenizer
    state.update({prefix + k: v for k, v in extra.items()})
    path = tmp / f"with-extras-{path.name}"
    save_file(state, str(path))
    loader = {"dit": load_transformer, "vae": load_vae, "text_encoder": load_text_encoder,
              "image_encoder": load_image_encoder}[component]  # fmt: skip
    with_extras, plain = loader(path), loader(files[component])
    model = getattr(with_extras, "model", with_extras)
    want = getattr(plain, "model", plain).state_dict()
    assert all(torch.equal(v, want[k]) for k, v in model.state_dict().items())
