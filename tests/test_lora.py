"""LoRAs: the three key formats against diffusers' ``load_lora_weights`` (its own converters are the reference),
merged == run time, fp8 weights at run time, strictness, the image branch of a T2V LoRA on I2V, and batch reuse."""

from __future__ import annotations

import copy
import logging
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from builders import random_dit, rel_err, tiny_dit_config, to_diffusers_dit, write_diffusers_pipeline
from safetensors.torch import save_file
from test_transformer import _inputs, _reference

from wan_cli.engine import GenerationRequest, InputError, Pipeline
from wan_cli.engine.layers import Linear
from wan_cli.engine.lora import LoraSpec, apply, parse_lora, read_lora
from wan_cli.engine.prepare import quantize_fp8_
from wan_cli.engine.transformer import WanModel

RANK = 4
# The Linear layers of a block that LoRA trainers target (musubi's set: attention and FFN), by official name.
BLOCK_LINEARS = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q", "cross_attn.k",
                 "cross_attn.v", "cross_attn.o", "ffn.0", "ffn.2")  # fmt: skip


def _linears(model: WanModel, image: bool = True) -> list[str]:
    names = [f"blocks.{i}.{n}" for i in range(len(model.blocks)) for n in BLOCK_LINEARS]
    if image and model.config.model_type != "t2v":
        names += [f"blocks.{i}.cross_attn.{n}" for i in range(len(model.blocks)) for n in ("k_img", "v_img")]
    return names


def random_lora(
    model: WanModel,
    *,
    seed: int = 0,
    alpha: float | None = 2.0,
    image: bool = True,
    down: str = "lora_down",
    up: str = "lora_up",
    bias: bool = True,
) -> dict[str, torch.Tensor]:
    """An official-name LoRA (ComfyUI/Kijai/lightx2v layout) over every block Linear, with bias deltas (.diff_b)."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    for name in _linears(model, image):
        lin = model.get_submodule(name)
        assert isinstance(lin, Linear)
        sd[f"diffusion_model.{name}.{down}.weight"] = torch.randn(RANK, lin.in_features, generator=g) * 0.05
        sd[f"diffusion_model.{name}.{up}.weight"] = torch.randn(lin.out_features, RANK, generator=g) * 0.05
        if alpha is not None:
            sd[f"diffusion_model.{name}.alpha"] = torch.tensor(alpha)
        if bias:  # on every targeted layer: PEFT's lora_bias is all or nothing
            sd[f"diffusion_model.{name}.diff_b"] = torch.randn(lin.out_features, generator=g) * 0.05
    return sd


def to_musubi(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """kohya / musubi-tuner naming: lora_unet_ + the module path with underscores (musubi writes .alpha always)."""
    out = {}
    for key, t in sd.items():
        module = key.removeprefix("diffusion_model.")
        for suffix in (".lora_down.weight", ".lora_up.weight", ".alpha"):
            if module.endswith(suffix):
                out["lora_unet_" + module.removesuffix(suffix).replace(".", "_") + suffix] = t
    return out


def _save(sd: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> Path:
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path), metadata=metadata)
    return path


def _ours(model: WanModel, path: Path, strength: float = 1.0, merge: bool = True, strict: bool = True) -> WanModel:
    ours = copy.deepcopy(model)
    lora, _ = read_lora(LoraSpec(str(path), strength), ours, strict=strict)
    apply(ours, [lora], (LoraSpec(str(path), strength),), merge=merge)
    return ours


def _theirs(model: WanModel, path: Path, strength: float = 1.0):  # type: ignore[no-untyped-def]
    from diffusers import WanPipeline

    ref = to_diffusers_dit(model)
    pipe = WanPipeline(tokenizer=None, text_encoder=None, transformer=ref, vae=None, scheduler=None)
    pipe.load_lora_weights(str(path), adapter_name="x")
    pipe.set_adapters(["x"], [strength])
    return ref


def _forward(model: WanModel, inp: dict[str, torch.Tensor | None]) -> torch.Tensor:
    with torch.no_grad():
        return model(**inp)  # type: ignore[arg-type]


# -- parsing ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "path", "strength"), [
    ("a.safetensors", "a.safetensors", 1.0), ("a.safetensors:0.8", "a.safetensors", 0.8),
    ("dir/x:y.safetensors", "dir/x:y.safetensors", 1.0), ("C:\\loras\\a.safetensors", "C:\\loras\\a.safetensors", 1.0),
    ("a.safetensors:-1", "a.safetensors", -1.0),
])  # fmt: skip
def test_parse_lora(text: str, path: str, strength: float) -> None:
    assert parse_lora(text) == LoraSpec(path, strength)


def test_parse_lora_refuses_non_finite_strengths() -> None:
    with pytest.raises(InputError, match="finite"):
        parse_lora("a.safetensors:nan")


# -- parity with diffusers' loaders ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "model_type"),
    [
        ("comfyui", "t2v"),
        ("comfyui_AB", "i2v"),
        ("musubi", "t2v"),
        ("musubi", "i2v"),
        ("diffusers", "t2v"),
        ("diffusers", "i2v"),
    ],
)
def test_formats_match_diffusers_load_lora_weights(fmt: str, model_type: str, tmp_path: Path) -> None:
    """Each format through diffusers' own converter (PEFT adapters, strength 0.7) and through ours (merged): the DiT
    outputs agree within 1e-4. The diffusers-format file is written by diffusers' converter, not by our table."""
    from diffusers import WanPipeline

    cfg = tiny_dit_config(model_type)
    model = random_dit(cfg, seed=5)
    keys = ("lora_A", "lora_B") if fmt == "comfyui_AB" else ("lora_down", "lora_up")
    sd = random_lora(model, seed=6, down=keys[0], up=keys[1])
    if fmt == "musubi":
        sd = to_musubi({k: v for k, v in sd.items() if not k.endswith("diff_b")})  # musubi has no bias deltas
    if fmt == "diffusers":
        sd = WanPipeline.lora_state_dict(sd)  # diffusers' converter writes its own names
        assert isinstance(sd, dict) and next(iter(sd)).startswith("transformer.blocks.")
    path = _save(sd, tmp_path / "lora.safetensors")
    inp = _inputs(cfg, b=1, grid=(2, 4, 4))
    base = _forward(model, inp)
    ours = _forward(_ours(model, path, 0.7), inp)
    theirs = _reference(_theirs(model, path, 0.7), cfg, inp)
    assert rel_err(ours, base) > 1e-3  # the LoRA changes the output
    assert rel_err(ours, theirs) < 1e-4


def test_diffusers_metadata_alpha_scales(tmp_path: Path) -> None:
    """A PEFT LoRA saved with lora_alpha = 2·r in diffusers' metadata doubles the delta (= strength 2, no metadata)."""
    model = random_dit(tiny_dit_config(), seed=1)
    from diffusers import WanPipeline

    sd = WanPipeline.lora_state_dict(random_lora(model, alpha=None))
    meta = {"lora_adapter_metadata": '{"transformer.r": 4, "transformer.lora_alpha": 8}'}
    inp = _inputs(model.config, b=1, grid=(2, 4, 4))
    scaled = _forward(_ours(model, _save(sd, tmp_path / "m.safetensors", meta)), inp)
    strength2 = _forward(_ours(model, _save(sd, tmp_path / "p.safetensors"), 2.0), inp)
    assert rel_err(scaled, strength2) < 1e-6


# -- merged vs run time, quantized weights -----------------------------------------------------------------------------


def test_merged_and_runtime_agree(tmp_path: Path) -> None:
    model = random_dit(tiny_dit_config("i2v"), seed=2)
    path = _save(random_lora(model, seed=3), tmp_path / "l.safetensors")
    inp = _inputs(model.config, b=1, grid=(2, 4, 4))
    merged = _ours(model, path, 0.9, merge=True)
    runtime = _ours(model, path, 0.9, merge=False)
    assert all(not m.lora_adapters for m in merged.modules() if isinstance(m, Linear))
    assert sum(bool(m.lora_adapters) for m in runtime.modules() if isinstance(m, Linear)) == len(_linears(model))
    assert rel_err(_forward(merged, inp), _forward(runtime, inp)) < 1e-5


def test_runtime_lora_on_fp8_weights(tmp_path: Path) -> None:
    """fp8 blocks keep their fp8 weights and take the LoRA beside them: equal to the dequantised float model with the
    LoRA merged. Merging into fp8 is refused."""
    model = random_dit(tiny_dit_config(), seed=4)
    path = _save(random_lora(model, seed=5), tmp_path / "l.safetensors")
    fp8 = quantize_fp8_(copy.deepcopy(model), torch.float32)
    dequant = copy.deepcopy(fp8)
    for m in dequant.modules():  # the float model the fp8 one computes: W = q · scale
        if isinstance(m, Linear) and not m.plain:
            w = m.weight.float() * m.weight_scale
            m._buffers["weight_scale"] = None
            m._compute_dtype = None
            m.weight = torch.nn.Parameter(w, requires_grad=False)
    inp = _inputs(model.config, b=1, grid=(2, 4, 4))
    out = _forward(_ours(fp8, path, merge=False), inp)
    assert fp8.blocks[0].self_attn.q.weight.dtype == torch.float8_e4m3fn
    assert rel_err(out, _forward(_ours(dequant, path, merge=True), inp)) < 1e-5
    with pytest.raises(InputError, match="quantized"):
        _ours(fp8, path, merge=True)


def test_runtime_lora_through_fused_qkv(tmp_path: Path) -> None:
    """A resident DiT computes q/k/v with one GEMM (prepare.fuse_qkv_): run-time adapters and merged deltas (written
    in place into the views of the fused weight) reach it too."""
    model = random_dit(tiny_dit_config(), seed=6)
    path = _save(random_lora(model, seed=7), tmp_path / "l.safetensors")
    spec = LoraSpec(str(path))
    inp = _inputs(model.config, b=1, grid=(2, 4, 4))
    plain = _forward(_ours(model, path, merge=False), inp)
    for merge in (False, True):
        fused = copy.deepcopy(model)  # (deepcopy clones parameters: fuse after copying)
        with torch.no_grad():
            for block in fused.blocks:
                block.self_attn.fuse_qkv()
        lora, _ = read_lora(spec, fused)
        apply(fused, [lora], (spec,), merge=merge)
        assert fused.blocks[0].self_attn.qkv_weight is not None
        assert rel_err(_forward(fused, inp), plain) < 1e-5


# -- what is changed, and what is not ----------------------------------------------------------------------------------


def test_diffs_on_norms_modulation_and_biases_are_applied_and_removed_exactly(tmp_path: Path) -> None:
    """ComfyUI semantics: W += strength·diff for norm weights (.diff), biases (.diff_b) and lightx2v's .diff_m on a
    block's modulation; run-time removal restores every parameter bit-exactly."""
    model = random_dit(tiny_dit_config(), seed=8)
    g = torch.Generator().manual_seed(9)
    norm = torch.randn(model.config.dim, generator=g)
    mod = torch.randn(1, 6, model.config.dim, generator=g)
    bias = torch.randn(model.config.dim, generator=g)
    sd = {"diffusion_model.blocks.0.norm3.diff": norm, "diffusion_model.blocks.1.diff_m": mod,
          "diffusion_model.blocks.0.self_attn.o.diff_b": bias}  # fmt: skip
    path = _save(sd, tmp_path / "d.safetensors")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ours = copy.deepcopy(model)
    lora, _ = read_lora(LoraSpec(str(path), 0.5), ours)
    applied = apply(ours, [lora], (LoraSpec(str(path), 0.5),), merge=False)
    after = ours.state_dict()
    torch.testing.assert_close(after["blocks.0.norm3.weight"], before["blocks.0.norm3.weight"] + 0.5 * norm)
    torch.testing.assert_close(after["blocks.1.modulation"], before["blocks.1.modulation"] + 0.5 * mod)
    torch.testing.assert_close(after["blocks.0.self_attn.o.bias"], before["blocks.0.self_attn.o.bias"] + 0.5 * bias)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"blocks.0.norm3.weight", "blocks.1.modulation", "blocks.0.self_attn.o.bias"}
    applied.remove(ours)
    assert all(torch.equal(before[k], v) for k, v in ours.state_dict().items())


def test_t2v_lora_on_i2v_leaves_the_image_branch(tmp_path: Path) -> None:
    t2v = random_dit(tiny_dit_config("t2v"), seed=1)
    i2v = random_dit(tiny_dit_config("i2v"), seed=1)
    path = _save(random_lora(t2v, seed=2), tmp_path / "t2v.safetensors")
    ours = _ours(i2v, path)
    for i, block in enumerate(ours.blocks):
        for name in ("k_img", "v_img"):
            assert torch.equal(getattr(block.cross_attn, name).weight, getattr(i2v.blocks[i].cross_attn, name).weight)
    assert not torch.equal(ours.blocks[0].cross_attn.k.weight, i2v.blocks[0].cross_attn.k.weight)


def test_unmatched_keys_are_an_error_unless_not_strict(tmp_path: Path) -> None:
    i2v = random_dit(tiny_dit_config("i2v"), seed=1)
    t2v = random_dit(tiny_dit_config("t2v"), seed=1)
    path = _save(random_lora(i2v, seed=2), tmp_path / "i2v.safetensors")
    with pytest.raises(InputError, match=r"match nothing.*k_img") as exc:
        read_lora(LoraSpec(str(path)), t2v)
    assert "--lora-strict off" in (exc.value.hint or "")
    lora, unmatched = read_lora(LoraSpec(str(path)), t2v, strict=False)
    assert len(unmatched) == 4 * 2 * 2  # (down, up, alpha, diff_b) × (k_img, v_img) × 2 blocks
    assert all("_img" in k for k in unmatched) and lora.patches


@pytest.mark.parametrize(("sd", "message"), [
    ({"diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.zeros(4, 99),
      "diffusion_model.blocks.0.self_attn.q.lora_up.weight": torch.zeros(256, 4)}, "another Wan model size"),
    ({"diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.zeros(4, 256)}, "both LoRA matrices"),
    ({"text_encoder.layer.0.weight": torch.zeros(2)}, "not a Wan LoRA"),
])  # fmt: skip
def test_bad_loras_are_refused(sd: dict[str, torch.Tensor], message: str, tmp_path: Path) -> None:
    model = random_dit(tiny_dit_config(), seed=1)
    with pytest.raises(InputError, match=message):
        read_lora(LoraSpec(str(_save(sd, tmp_path / "bad.safetensors"))), model)


def test_a_pickle_is_not_read(tmp_path: Path) -> None:
    path = tmp_path / "lora.pt"
    torch.save({"a": torch.zeros(1)}, path)
    with pytest.raises(InputError, match="safetensors"):
        read_lora(LoraSpec(str(path)), random_dit(tiny_dit_config(), seed=1))


# -- batches: one load from disk ---------------------------------------------------------------------------------------


def _request(folder: Path, loras: tuple[LoraSpec, ...]) -> GenerationRequest:
    return GenerationRequest(prompt="a fox", model=folder, width=64, height=64, frames=5, steps=3, seed=7,
                             loras=loras)  # fmt: skip


def test_batch_with_several_lora_sets_loads_the_dit_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """keep policy, run time: LoRA a, b, none, a — the DiT is read once, and each video equals a fresh pipeline's
    (run time) and, within rounding, the merged result."""
    folder = write_diffusers_pipeline(tmp_path / "pipe", "t2v", seed=1)
    model = random_dit(tiny_dit_config(), seed=1)  # the folder's DiT has this shape
    a = LoraSpec(str(_save(random_lora(model, seed=1), tmp_path / "a.safetensors")), 1.0)
    b = LoraSpec(str(_save(random_lora(model, seed=2), tmp_path / "b.safetensors")), 0.5)
    pipe = Pipeline(policy="keep", lora_mode="runtime")
    with caplog.at_level(logging.DEBUG, logger="wan_cli.engine"):
        outs = [pipe.generate(_request(folder, s)).latents for s in ((a,), (b,), (), (a,))]
    assert sum("load dit" in r.getMessage() for r in caplog.records) == 1
    assert torch.equal(outs[0], outs[3])
    assert not torch.equal(outs[0], outs[1])
    plain = Pipeline(policy="keep").generate(_request(folder, ())).latents
    assert torch.equal(outs[2], plain)
    alone = Pipeline(policy="keep", lora_mode="runtime").generate(_request(folder, (b,))).latents
    assert torch.equal(outs[1], alone)
    merged = Pipeline(policy="keep", lora_mode="merge").generate(_request(folder, (b,)))
    assert merged.loras[0]["applied"] == "merged" and merged.loras[0]["format"] == "comfyui"
    assert rel_err(merged.latents, outs[1]) < 1e-5


def test_merged_set_change_reloads(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = write_diffusers_pipeline(tmp_path / "pipe", "t2v", seed=1)
    model = random_dit(tiny_dit_config(), seed=1)  # the folder's DiT has this shape
    a = LoraSpec(str(_save(random_lora(model, seed=1), tmp_path / "a.safetensors")))
    pipe = Pipeline(policy="keep")  # auto: merged (float weights, resident)
    with caplog.at_level(logging.DEBUG, logger="wan_cli.engine"):
        with_a = pipe.generate(_request(folder, (a,)))
        without = pipe.generate(_request(folder, ())).latents
    assert with_a.loras[0]["applied"] == "merged"
    assert sum("load dit" in r.getMessage() for r in caplog.records) == 2
    assert torch.equal(without, Pipeline(policy="keep").generate(_request(folder, ())).latents)


def test_t2v_latents_with_a_lora_match_diffusers_pipeline(tmp_path: Path) -> None:
    """End to end: the same folder, noise and official sigmas through diffusers' WanPipeline with load_lora_weights
    (strength 0.6) and through ours → final latents within 1e-4."""
    from diffusers import WanPipeline
    from test_pipeline import _official_sigmas

    from wan_cli.engine.sampling import make_noise

    folder = write_diffusers_pipeline(tmp_path / "pipe", "t2v", seed=1)
    path = _save(random_lora(random_dit(tiny_dit_config(), seed=1), seed=4), tmp_path / "l.safetensors")
    spec = LoraSpec(str(path), 0.6)
    req = GenerationRequest(prompt="a red fox", model=folder, width=96, height=64, frames=5, steps=4, shift=3.0,
                            guidance=5.0, seed=99, negative_prompt="blurry", loras=(spec,))  # fmt: skip
    ours = Pipeline().generate(req).latents
    pipe = WanPipeline.from_pretrained(str(folder))
    pipe.load_lora_weights(str(path), adapter_name="x")
    pipe.set_adapters(["x"], [0.6])
    pipe.scheduler.register_to_config(flow_shift=req.shift)
    _official_sigmas(pipe)
    with torch.no_grad():
        ref = pipe(prompt=req.prompt, negative_prompt=req.negative_prompt, height=64, width=96, num_frames=5,
                   num_inference_steps=4, guidance_scale=5.0, latents=make_noise(99, 5, 64, 96),
                   output_type="latent").frames  # fmt: skip
    plain = Pipeline().generate(replace(req, loras=())).latents
    assert rel_err(ours, plain) > 1e-3
    assert rel_err(ours, ref[0]) <= 1e-4


def test_release_policy_applies_the_loras_to_each_fresh_load(tmp_path: Path) -> None:
    """release frees the DiT after each video: the next load must get the LoRAs again (and a LoRA-free request after
    it none)."""
    folder = write_diffusers_pipeline(tmp_path / "pipe", "t2v", seed=1)
    a = LoraSpec(str(_save(random_lora(random_dit(tiny_dit_config(), seed=1), seed=1), tmp_path / "a.safetensors")))
    pipe = Pipeline(policy="release")
    first, second, bare = (pipe.generate(_request(folder, s)).latents for s in ((a,), (a,), ()))
    assert torch.equal(first, second)
    assert torch.equal(bare, Pipeline(policy="release").generate(_request(folder, ())).latents)
    assert not torch.equal(first, bare)
