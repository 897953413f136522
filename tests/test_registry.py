"""The model table: names and aliases, files per source and precision, sizes, presets."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from wan_cli import registry
from wan_cli.engine.errors import InputError

PRESETS = Path(__file__).parents[1] / "presets"


@pytest.mark.parametrize(
    ("alias", "name"),
    [
        ("1.3b-t2v", "1.3b-t2v"),
        ("t2v-1.3b", "1.3b-t2v"),
        ("wan2.1-t2v-1.3b", "1.3b-t2v"),
        ("1.3b", "1.3b-t2v"),
        ("Wan-AI/Wan2.1-T2V-1.3B", "1.3b-t2v"),
        ("  WAN-AI/WAN2.1-T2V-1.3B-DIFFUSERS ", "1.3b-t2v"),
        ("t2v-14b", "14b-t2v"),
        ("Wan2.1-T2V-14B", "14b-t2v"),
        ("i2v-14b-480p", "14b-i2v-480p"),
        ("Wan-AI/Wan2.1-I2V-14B-720P", "14b-i2v-720p"),
        ("flf2v", "14b-flf2v-720p"),
        ("Wan-AI/Wan2.1-FLF2V-14B-720P-diffusers", "14b-flf2v-720p"),
    ],
)
def test_aliases(alias: str, name: str) -> None:
    assert registry.get(alias).name == name


def test_canonical_names_and_no_ambiguous_alias() -> None:
    assert list(registry.MODELS) == ["1.3b-t2v", "14b-t2v", "14b-i2v-480p", "14b-i2v-720p", "14b-flf2v-720p"]
    for name, spec in registry.MODELS.items():
        assert spec.name == name
        for alias in spec.aliases:
            assert registry.ALIASES[alias] == name, f"alias {alias} of {name} is taken by {registry.ALIASES[alias]}"
    owners: dict[str, set[str]] = {}
    for spec in registry.MODELS.values():
        for key in (spec.name, *spec.aliases, spec.repo, spec.diffusers_repo):
            owners.setdefault(key.lower(), set()).add(spec.name)
    assert {k: v for k, v in owners.items() if len(v) > 1} == {}


@pytest.mark.parametrize(
    ("typo", "meant"), [("t2v-1.4b", "1.3b-t2v"), ("14b-t2b", "14b-t2v"), ("flf2v-72p", "14b-flf2v-720p")]
)
def test_unknown_name_names_the_closest(typo: str, meant: str) -> None:
    with pytest.raises(InputError) as info:
        registry.get(typo)
    assert f"did you mean {meant}?" in info.value.message and "`wan models`" in info.value.hint


def test_unknown_name_without_a_close_one() -> None:
    with pytest.raises(InputError) as info:
        registry.get("stable-diffusion")
    assert "did you mean" not in info.value.message and "`wan models`" in info.value.hint


@pytest.mark.parametrize("name", list(registry.MODELS))
def test_every_variant_has_files_for_its_task(name: str) -> None:
    spec = registry.MODELS[name]
    needed = set(registry.TASK_COMPONENTS[spec.task])
    for source in registry.SOURCES:
        for precision in registry.PRECISIONS:
            try:
                files = spec.files(source, precision)
            except InputError:
                assert precision == "fp8" and (source != "comfy" or name == "1.3b-t2v")
                continue
            components = {f.component for f in files}
            assert needed <= components, (source, precision)
            assert ("image_encoder" in components) == (spec.task != "t2v")
            repos = {f.repo for f in files}
            expected = {"comfy": {registry.COMFY_REPO, spec.repo}, "official": {spec.repo}}
            assert repos == expected.get(source, {spec.diffusers_repo})


def test_comfy_files_follow_the_reference() -> None:
    t2v = {f.component: f for f in registry.MODELS["1.3b-t2v"].files()}
    assert t2v["dit"].pattern == "split_files/diffusion_models/wan2.1_t2v_1.3B_bf16.safetensors"
    assert (t2v["dit"].size, t2v["dit"].approx) == (2_838_104_528, False)
    assert (t2v["text_encoder"].pattern, t2v["text_encoder"].size) == (
        "split_files/text_encoders/umt5_xxl_fp16.safetensors",
        11_366_399_385,
    )
    fp8 = {f.component: f for f in registry.MODELS["14b-i2v-720p"].files("comfy", "fp8")}
    assert fp8["dit"].pattern.endswith("/wan2.1_i2v_720p_14B_fp8_e4m3fn.safetensors")
    assert (fp8["text_encoder"].size, fp8["dit"].size) == (6_735_906_897, 16_400_000_000)
    assert fp8["image_encoder"].pattern == "split_files/clip_vision/clip_vision_h.safetensors"
    flf = {f.component: f for f in registry.MODELS["14b-flf2v-720p"].files("comfy", "bf16")}
    assert flf["dit"].pattern.endswith("/wan2.1_flf2v_720p_14B_fp16.safetensors")


# Sizes stated in /work/shared/reference/checkpoint-formats.md §4.1 and §4.4: exact bytes where it gives them, else
# its rounding (GB or MB, one decimal or none).
REFERENCE_BYTES = {
    "split_files/diffusion_models/wan2.1_t2v_1.3B_bf16.safetensors": 2_838_104_528,
    "split_files/text_encoders/umt5_xxl_fp16.safetensors": 11_366_399_385,
    "split_files/text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors": 6_735_906_897,
    "split_files/clip_vision/clip_vision_h.safetensors": 1_264_219_396,
    "google/umt5-xxl/spiece.model": 4_548_313,
}
REFERENCE_ROUNDED = {  # path → (value as written, unit)
    "split_files/vae/wan_2.1_vae.safetensors": (254, 1e6),  # "254 MB": no decimal
    "split_files/diffusion_models/wan2.1_t2v_14B_bf16.safetensors": (28.6, 1e9),
    "split_files/diffusion_models/wan2.1_t2v_14B_fp8_e4m3fn.safetensors": (14.3, 1e9),
    "split_files/diffusion_models/wan2.1_i2v_480p_14B_bf16.safetensors": (32.8, 1e9),
    "split_files/diffusion_models/wan2.1_i2v_720p_14B_fp8_e4m3fn.safetensors": (16.4, 1e9),
    "split_files/diffusion_models/wan2.1_flf2v_720p_14B_fp16.safetensors": (32.8, 1e9),
    "split_files/diffusion_models/wan2.1_flf2v_720p_14B_fp8_e4m3fn.safetensors": (16.4, 1e9),
}


def test_file_sizes_agree_with_the_reference() -> None:
    files = {f.pattern: f for spec in registry.MODELS.values() for p in ("bf16", "fp8") if spec.comfy_dit(p)
             for f in spec.files("comfy", p)}  # fmt: skip
    assert set(REFERENCE_BYTES) | set(REFERENCE_ROUNDED) <= set(files)
    for path, size in REFERENCE_BYTES.items():
        assert (files[path].size, files[path].approx) == (size, False), path
    for path, (value, unit) in REFERENCE_ROUNDED.items():
        digits = 0 if isinstance(value, int) else 1
        assert files[path].size is not None and round(files[path].size / unit, digits) == value, path


def test_download_sizes_add_up_to_the_reference() -> None:
    """1.3b-t2v from comfy: the DiT, the fp16 T5, the VAE (≈254 MB) and spiece.model as the reference sizes them,
    plus the small tokenizer files it does not size (tokenizer.json is ~17 MB, the others kB)."""
    known = 2_838_104_528 + 11_366_399_385 + 4_548_313
    size = registry.MODELS["1.3b-t2v"].download_size("comfy", "bf16")
    assert size is not None and known + 253_500_000 <= size <= known + 254_500_000 + 25_000_000
    assert not registry.MODELS["1.3b-t2v"].size_is_approx("comfy", "bf16")
    # 14B T2V fp8: DiT 14.3 GB + fp8 T5 + VAE + tokenizer; rounded, so marked "~"
    size = registry.MODELS["14b-t2v"].download_size("comfy", "fp8")
    assert size is not None and abs(size - (14.3e9 + 6_735_906_897 + 254e6)) < 0.1e9
    assert registry.MODELS["14b-t2v"].size_is_approx("comfy", "fp8")


def test_precision_errors() -> None:
    t2v = registry.MODELS["1.3b-t2v"]
    with pytest.raises(InputError, match="no fp8 file") as info:
        t2v.files("comfy", "fp8")
    assert "--precision bf16" in info.value.hint
    with pytest.raises(InputError, match="only in the ComfyUI repack"):
        registry.MODELS["14b-t2v"].files("diffusers", "fp8")
    assert t2v.download_size("comfy", "fp8") is None
    assert registry.MODELS["14b-t2v"].download_size("official") is None  # folder layouts: sizes come from the hub


@pytest.mark.parametrize("name", list(registry.MODELS))
def test_presets_exist_and_agree(name: str) -> None:
    spec = registry.MODELS[name]
    preset = yaml.safe_load((PRESETS / f"{spec.preset}.yaml").read_text())
    assert preset["model"] == name and preset["task"] == spec.task
    w, h = (int(v) for v in str(preset["size"]).split("x"))
    assert (w, h) in spec.sizes
    assert registry.SUPPORTED_SIZES[name] == spec.sizes


def test_every_preset_names_a_known_model() -> None:
    for path in PRESETS.glob("*.yaml"):
        model = yaml.safe_load(path.read_text()).get("model")
        assert model is None or registry.find(model) is not None, path.name
