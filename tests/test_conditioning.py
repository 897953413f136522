"""Text (UMT5) and image (CLIP) encoders: every layout loads to the model it came from; official preprocessing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from builders import (
    CORPUS,
    clip_hf_state,
    clip_to_official,
    rel_err,
    tiny_clip,
    tiny_spiece_model,
    tiny_umt5,
    umt5_hf_to_official,
    write_comfy_t5,
)
from safetensors.torch import save_file

from wan_cli.engine import CheckpointError
from wan_cli.engine.conditioning import (
    CLIP_MEAN,
    CLIP_STD,
    clean_prompt,
    load_image_encoder,
    load_text_encoder,
    load_tokenizer,
    preprocess_clip,
)

PROMPTS = ["a dog runs in the park", "镜头晃动，色调艳丽", "  the quick &amp;amp; brown\n\tfox  "]


def test_clean_prompt_follows_the_official_rule() -> None:
    assert clean_prompt("  the quick &amp;amp; brown\n\tfox  ") == "the quick & brown fox"
    assert clean_prompt("cafÃ©") == "café"  # ftfy repairs mojibake


@pytest.fixture(scope="module")
def spm_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """google/umt5-xxl-like tokenizer folder (tokenizer.json + config), saved by transformers from a tiny spm."""
    root = tmp_path_factory.mktemp("tok")
    spm = tiny_spiece_model(root / "spm")
    folder = root / "umt5-tokenizer"
    load_tokenizer(spm).save_pretrained(str(folder))
    return folder


def _reference_embeddings(model, tokenizer, prompts: list[str]) -> list[torch.Tensor]:  # type: ignore[no-untyped-def]
    """The HF model run directly: tokens padded to 512 with the mask, outputs trimmed to each prompt's length."""
    tok = tokenizer([clean_prompt(p) for p in prompts], padding="max_length", truncation=True, max_length=512,
                    return_tensors="pt")  # fmt: skip
    with torch.no_grad():
        out = model(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"]).last_hidden_state
    return [o[:n] for o, n in zip(out, tok["attention_mask"].sum(1).tolist(), strict=True)]


def _compare(got: list[torch.Tensor], want: list[torch.Tensor], tol: float) -> None:
    assert [g.shape for g in got] == [w.shape for w in want]
    for g, w in zip(got, want, strict=True):
        assert rel_err(g, w) <= tol, rel_err(g, w)


def test_official_t5_pth_loads_to_the_same_encoder(spm_folder: Path, tmp: Path) -> None:
    model = tiny_umt5(seed=1)
    official = {o: v for k, v in model.state_dict().items() if (o := umt5_hf_to_official(k)) is not None}
    assert "token_embedding.weight" in official and "blocks.1.ffn.gate.0.weight" in official
    ckpt = tmp / "Wan2.1-T2V-1.3B"
    (ckpt / "google").mkdir(parents=True)
    torch.save(official, ckpt / "models_t5_umt5-xxl-enc-bf16.pth")
    load_tokenizer(spm_folder).save_pretrained(str(ckpt / "google" / "umt5-xxl"))
    enc = load_text_encoder(ckpt, dtype=torch.float32)  # official folder: tokenizer found in google/umt5-xxl
    got = enc.encode(PROMPTS)
    _compare(got, _reference_embeddings(model, enc.tokenizer, PROMPTS), 1e-5)
    assert got[0].shape[0] == len(enc.tokenizer(clean_prompt(PROMPTS[0]))["input_ids"])  # trimmed, EOS included


def test_diffusers_text_encoder_folder(spm_folder: Path, tmp: Path) -> None:
    model = tiny_umt5(seed=2)
    model.save_pretrained(str(tmp / "pipe" / "text_encoder"))
    load_tokenizer(spm_folder).save_pretrained(str(tmp / "pipe" / "tokenizer"))
    (tmp / "pipe" / "model_index.json").write_text("{}")
    for path in (tmp / "pipe", tmp / "pipe" / "text_encoder"):
        enc = load_text_encoder(path, dtype=torch.float32)
        _compare(enc.encode(PROMPTS), _reference_embeddings(model, enc.tokenizer, PROMPTS), 1e-5)


def test_comfyui_text_encoder_files(spm_folder: Path, tmp: Path) -> None:
    model = tiny_umt5(seed=3)
    spm = tiny_spiece_model(tmp / "spm")
    want = _reference_embeddings(model, load_tokenizer(spm_folder), PROMPTS)
    fp16 = load_text_encoder(write_comfy_t5(model, tmp / "umt5_xxl_fp16.safetensors", spm, "fp16"),
                             dtype=torch.float32)  # fmt: skip
    _compare(fp16.encode(PROMPTS), want, 5e-3)
    fp8 = load_text_encoder(write_comfy_t5(model, tmp / "umt5_xxl_fp8_e4m3fn_scaled.safetensors", spm, "fp8_scaled"),
                            dtype=torch.float32)  # fmt: skip
    errs = [rel_err(g, w) for g, w in zip(fp8.encode(PROMPTS), fp16.encode(PROMPTS), strict=True)]
    assert 1e-4 < max(errs) < 0.1, errs  # fp8 quantisation error: visible, bounded


def test_tokenizer_from_embedded_spiece_model_matches_the_folder(spm_folder: Path, tmp: Path) -> None:
    spm = tiny_spiece_model(tmp / "spm")
    path = write_comfy_t5(tiny_umt5(), tmp / "umt5.safetensors", spm, "fp16")
    embedded = load_text_encoder(path).tokenizer
    folder = load_tokenizer(spm_folder)
    for text in [*CORPUS, *PROMPTS, "unseen words: zebra quartz 1234"]:
        assert embedded(text)["input_ids"] == folder(text)["input_ids"], text
    assert folder("a dog")["input_ids"][-1] == 1  # EOS appended, as the official tokenizer call does


def test_text_encoder_without_tokenizer_is_a_clear_error(tmp: Path) -> None:
    model = tiny_umt5()
    save_file({k: v.contiguous() for k, v in model.state_dict().items() if k != "encoder.embed_tokens.weight"},
              str(tmp / "umt5.safetensors"))  # fmt: skip
    with pytest.raises(CheckpointError) as err:
        load_text_encoder(tmp / "umt5.safetensors")
    assert "no tokenizer" in err.value.message and "--tokenizer" in err.value.hint


# -- CLIP -------------------------------------------------------------------------------------------------------------


def _image(h: int = 224, w: int = 224, seed: int = 0) -> torch.Tensor:
    return torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _penultimate(model, images: torch.Tensor) -> torch.Tensor:  # type: ignore[no-untyped-def]
    with torch.no_grad():
        return model(pixel_values=preprocess_clip(images), output_hidden_states=True).hidden_states[-2]


def test_official_clip_pth_loads_to_the_same_tower(tmp: Path) -> None:
    model = tiny_clip(seed=1)
    torch.save(clip_to_official(model), tmp / "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth")
    enc = load_image_encoder(tmp, dtype=torch.float32)
    images = _image()
    feats = enc.encode(images)
    assert feats.shape == (2, 257, 160)
    assert rel_err(feats, _penultimate(model, images)) <= 1e-5
    assert len(enc.model.encoder.layers) == 2  # the last block is not even built


def test_hf_clip_layouts(tmp: Path) -> None:
    model = tiny_clip(seed=2)
    want = _penultimate(model, _image())
    comfy = {"vision_model." + k: v.half() for k, v in clip_hf_state(model).items()}
    comfy["visual_projection.weight"] = torch.randn(1024, 160).half()
    save_file(comfy, str(tmp / "clip_vision_h.safetensors"))
    model.save_pretrained(str(tmp / "pipe" / "image_encoder"))
    (tmp / "pipe" / "model_index.json").write_text("{}")
    assert rel_err(load_image_encoder(tmp / "pipe", dtype=torch.float32).encode(_image()), want) <= 1e-5
    assert rel_err(load_image_encoder(tmp / "clip_vision_h.safetensors", dtype=torch.float32).encode(_image()),
                   want) < 5e-3  # fmt: skip


def test_clip_preprocessing_is_the_official_squash_not_a_crop() -> None:
    """A square image: equal to HF's CLIPImageProcessor (same mean/std and range mapping). A wide image: the whole
    frame is squashed to 224×224 (official), where HF's processor would crop the centre."""
    from transformers import CLIPImageProcessor

    hf = CLIPImageProcessor(do_resize=True, size={"shortest_edge": 224}, do_center_crop=True,
                            crop_size={"height": 224, "width": 224}, image_mean=list(CLIP_MEAN),
                            image_std=list(CLIP_STD), resample=3)  # fmt: skip
    pixels = torch.randint(0, 256, (224, 224, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    ref = hf(images=pixels.numpy(), return_tensors="pt")["pixel_values"]
    ours = preprocess_clip(pixels.permute(2, 0, 1)[None].float() / 127.5 - 1)
    assert (ours - ref).abs().max() < 1e-5

    wide = -torch.ones(1, 3, 224, 448)
    wide[..., :112] = 1.0  # the left quarter white, the rest black
    ours = preprocess_clip(wide)
    cropped = hf(images=((wide[0].permute(1, 2, 0) + 1) * 127.5).round().to(torch.uint8).numpy(), return_tensors="pt")
    white = (1.0 - CLIP_MEAN[0]) / CLIP_STD[0]
    black = (0.0 - CLIP_MEAN[0]) / CLIP_STD[0]
    assert ours[0, 0, 112, 10].item() == pytest.approx(white, abs=1e-4)  # squashed: the white quarter is kept
    assert ours[0, 0, 112, 100].item() == pytest.approx(black, abs=1e-4)  # ... and ends near column 56
    assert cropped["pixel_values"][0, 0, 112, 10].item() == pytest.approx(black, abs=1e-3)  # a crop drops it


def test_wrong_file_for_the_image_encoder(tmp: Path) -> None:
    save_file({"shared.weight": torch.zeros(4, 2)}, str(tmp / "t5.safetensors"))
    with pytest.raises(CheckpointError, match="UMT5 text encoder, not a CLIP image encoder"):
        load_image_encoder(tmp / "t5.safetensors")
