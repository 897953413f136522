"""city96's GGUF files through the loaders and the CLI: a quantised DiT that stays quantised in memory and computes
what its dequantised weights compute (reference: gguf-py's numpy dequantisation), the UMT5 GGUF with its embedded
vocabulary, `wan inspect X.gguf`, and `wan t2v -m X.gguf` end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from builders import (
    random_dit,
    random_vae,
    rel_err,
    tiny_dit_config,
    tiny_spiece_model,
    tiny_umt5,
    tiny_vae_config,
    write_comfy_vae,
)
from gguf_builders import spiece_vocab, write_city96_dit, write_city96_umt5
from typer.testing import CliRunner

from wan_cli.cli.app import app
from wan_cli.engine import inspect_checkpoint, load_text_encoder, load_transformer
from wan_cli.engine.layers import Linear
from wan_cli.engine.prepare import FP8_KEYS
from wan_cli.engine.transformer import build_transformer

runner = CliRunner()


def _inputs(cfg, seed: int = 0):  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, cfg.in_dim, 2, 4, 4, generator=g)
    return x, torch.tensor([500.0]), torch.randn(1, 7, cfg.text_dim, generator=g)


@pytest.mark.parametrize(("qtype", "mix"), [("Q4_K", True), ("Q8_0", False), ("Q5_1", False), ("Q3_K", True)])
def test_quantised_dit_stays_quantised_and_matches_its_dequantised_weights(qtype: str, mix: bool, tmp: Path) -> None:
    cfg = tiny_dit_config("t2v")
    path, reference, types = write_city96_dit(random_dit(cfg), tmp / f"wan2.1-t2v-tiny-{qtype}.gguf", qtype, mix=mix)
    loaded = load_transformer(path)
    # the blocks' matmul weights are the file's raw blocks, dequantised per call
    for name, module in loaded.named_modules():
        if isinstance(module, Linear) and FP8_KEYS.match(name + ".weight") and types[name + ".weight"] != "F16":
            assert module.weight.dtype == torch.uint8 and module.weight_qtype == types[name + ".weight"]
    stored = sum(p.numel() * p.element_size() for p in loaded.parameters())
    plain = sum(v.numel() * 4 for v in reference.values())
    assert stored < 0.6 * plain, (stored, plain)
    ref = build_transformer(cfg)
    ref.load_state_dict(reference, strict=True, assign=True)  # what gguf-py decodes the file to, as fp32
    x, t, ctx = _inputs(cfg)
    with torch.no_grad():
        err = rel_err(loaded(x, t, ctx), ref.eval()(x, t, ctx))
    assert err <= 1e-5, err


def test_gguf_with_the_comfyui_prefix_and_i2v(tmp: Path) -> None:
    cfg = tiny_dit_config("i2v")
    path, _, _ = write_city96_dit(random_dit(cfg), tmp / "i2v.gguf", "Q8_0", prefix="model.diffusion_model.")
    assert load_transformer(path, model_type="i2v").config.model_type == "i2v"


def test_wan_inspect_tells_kind_variant_and_quant_types(tmp: Path) -> None:
    path, _, types = write_city96_dit(random_dit(tiny_dit_config("t2v")), tmp / "dit-Q4_K_M.gguf", "Q4_K", mix=True)
    info = inspect_checkpoint(path)
    assert (info.kind, info.layout, info.quantization) == ("dit", "gguf", "gguf")  # type: ignore[union-attr]
    assert info.dtypes == {t: list(types.values()).count(t) for t in set(types.values())}  # type: ignore[union-attr]
    assert {"Q4_K", "Q6_K", "F32"} <= set(info.dtypes)  # type: ignore[union-attr]
    result = runner.invoke(app, ["inspect", str(path)])
    assert result.exit_code == 0, result.output
    assert "dit (gguf)" in result.stdout and "Q4_K" in result.stdout and "safetensors" not in result.output
    result = runner.invoke(app, ["inspect", str(path), "--json"])
    assert json.loads(result.stdout)["config"]["model_type"] == "t2v"


def test_a_file_named_gguf_that_is_not_one(tmp: Path) -> None:
    (tmp / "x.gguf").write_bytes(b"\x00" * 64)
    result = runner.invoke(app, ["inspect", str(tmp / "x.gguf")])
    assert result.exit_code == 1 and "not a GGUF file" in result.stderr and "safetensors file" not in result.stderr


@pytest.fixture(scope="module")
def umt5_gguf(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, torch.nn.Module]:
    root = tmp_path_factory.mktemp("umt5")
    spm = tiny_spiece_model(root / "spm")
    model = tiny_umt5(seed=3)
    path, _ = write_city96_umt5(model, root / "umt5-xxl-encoder-Q8_0.gguf", "Q8_0", vocab=spiece_vocab(spm))
    return path, spm, model


def test_umt5_gguf_loads_with_its_embedded_vocabulary(umt5_gguf: tuple[Path, Path, torch.nn.Module]) -> None:
    import sentencepiece

    path, spm, model = umt5_gguf
    info = inspect_checkpoint(path)
    assert (info.kind, info.layout, info.tokenizer) == ("text_encoder", "gguf", "embedded")  # type: ignore[union-attr]
    enc = load_text_encoder(path, dtype=torch.float32)
    sp = sentencepiece.SentencePieceProcessor(model_file=str(spm))
    for text in ("a dog runs in the park", "镜头晃动，色调艳丽 🐶 zebra", "Ｆｕｌｌ width"):
        assert enc.tokenizer(text)["input_ids"] == [*sp.encode(text), 1], text
    ids = enc.tokenizer(["a dog runs"], return_tensors="pt")
    with torch.no_grad():
        want = model(**ids).last_hidden_state
        got = enc.model(**ids).last_hidden_state
    assert rel_err(got, want) < 2e-2  # Q8_0 weights


def test_t2v_from_gguf_files_end_to_end(umt5_gguf: tuple[Path, Path, torch.nn.Module], tmp: Path) -> None:
    te, _, _ = umt5_gguf
    cfg = tiny_dit_config("t2v")
    dit, _, _ = write_city96_dit(random_dit(cfg), tmp / "wan2.1-t2v-14b-Q4_K_M.gguf", "Q4_K", mix=True)
    vae = write_comfy_vae(random_vae(tiny_vae_config()), tmp / "wan_2.1_vae.safetensors")
    out = tmp / "dog.mp4"
    args = ["t2v", "a dog", "-m", str(dit), "--vae", str(vae), "--text-encoder", str(te), "--size", "64x32",
            "--frames", "5", "--steps", "2", "--seed", "1", "-o", str(out)]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{out}\n" and out.stat().st_size > 0


def test_the_memory_estimate_of_a_gguf_dit_is_what_it_holds(tmp: Path) -> None:
    """`--offload auto` sizes a GGUF DiT by its stored blocks (not as bf16): the estimate from the headers equals
    the bytes of the loaded model's parameters."""
    from wan_cli.engine.checkpoints import gguf_dit_bytes
    from wan_cli.engine.prepare import dit_weight_bytes

    cfg = tiny_dit_config("t2v")
    path, _, _ = write_city96_dit(random_dit(cfg), tmp / "dit.gguf", "Q4_K", mix=True)
    loaded = load_transformer(path, dtype=torch.bfloat16)
    held = sum(p.numel() * p.element_size() for p in loaded.parameters())
    assert gguf_dit_bytes(path, 2) == held < dit_weight_bytes(cfg, 2)  # (tiny: mostly fp32 norms and embeddings)
