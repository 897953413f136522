"""The CUDA code paths (marker ``gpu``; skipped cleanly without CUDA): every installed attention kernel against SDPA,
a streamed DiT against the resident one, fp8 storage against its dequantised weights, run-time LoRAs against merged
ones, and the step caches' mechanics on the device. Run by ``benchmarks/gpu_suite.py`` on a lent GPU."""

from __future__ import annotations

import copy

import pytest
import torch
from builders import random_dit, rel_err, tiny_dit_config
from test_lora import random_lora
from test_transformer import _inputs

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
DEV = torch.device("cuda")


def _on(inp: dict[str, torch.Tensor | None], dtype: torch.dtype | None = None) -> dict[str, torch.Tensor | None]:
    out: dict[str, torch.Tensor | None] = {}
    for k, v in inp.items():
        out[k] = None if v is None else v.to(DEV, dtype if dtype is not None and v.is_floating_point() else v.dtype)
    return out


def _run(model: torch.nn.Module, inp: dict[str, torch.Tensor | None]) -> torch.Tensor:
    with torch.no_grad():
        return model(**inp).float().cpu()  # type: ignore[no-any-return]


@pytest.mark.parametrize("backend", ["cudnn", "flash3", "flash", "sage"])
def test_attention_backends_against_sdpa(backend: str) -> None:
    """Relative error of each installed kernel against SDPA on bf16 inputs of the real head size (128), printed so
    the suite's log records it; bounded by 2e-2 (SageAttention quantises q·k to int8)."""
    from wan_cli.engine.ops import attention, available_backends

    if backend not in available_backends():
        pytest.skip(f"{backend} is not installed here")
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2048, 12, 128, generator=g).to(DEV, torch.bfloat16) for _ in range(3))
    ref = attention(q, k, v, backend="sdpa").float()
    err = rel_err(attention(q, k, v, backend=backend).float().cpu(), ref.cpu())
    print(f"attention {backend}: relative error {err:.2e} against sdpa")
    assert err < 2e-2


def test_streamed_dit_equals_resident() -> None:
    from wan_cli.engine.offload import stream_blocks

    model = random_dit(tiny_dit_config(), seed=1)
    inp = _inputs(model.config, b=1, grid=(2, 8, 8))
    resident = copy.deepcopy(model).to(DEV)
    streamed = copy.deepcopy(model)
    stream_blocks(streamed, streamed.blocks, DEV)
    assert torch.equal(_run(streamed, _on(inp)), _run(resident, _on(inp)))


def test_fp8_against_dequantised_on_cuda() -> None:
    from wan_cli.engine.layers import Linear
    from wan_cli.engine.prepare import quantize_fp8_

    model = random_dit(tiny_dit_config(), seed=2)
    fp8 = quantize_fp8_(copy.deepcopy(model), torch.bfloat16).to(DEV)
    deq = copy.deepcopy(fp8)
    for m in deq.modules():
        if isinstance(m, Linear) and not m.plain:
            w = (m.weight.float() * m.weight_scale).to(torch.bfloat16)
            m._buffers["weight_scale"] = None
            m._compute_dtype = None
            m.weight = torch.nn.Parameter(w, requires_grad=False)
    inp = _on(_inputs(model.config, b=1, grid=(2, 8, 8)))
    assert rel_err(_run(fp8, inp), _run(deq, inp)) < 1e-2


def test_runtime_lora_against_merged_on_cuda(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from safetensors.torch import save_file

    from wan_cli.engine.lora import LoraSpec, apply, read_lora

    model = random_dit(tiny_dit_config(), seed=3).to(DEV)
    path = tmp_path / "l.safetensors"
    save_file(random_lora(model, seed=4), str(path))
    spec = LoraSpec(str(path), 0.8)
    outs = []
    for merge in (True, False):
        m = copy.deepcopy(model)
        apply(m, [read_lora(spec, m)[0]], (spec,), merge=merge, device=DEV)
        outs.append(_run(m, _on(_inputs(model.config, b=1, grid=(2, 8, 8)))))
    assert rel_err(outs[0], outs[1]) < 1e-5


def test_step_cache_threshold_zero_is_exact_on_cuda() -> None:
    from wan_cli.engine.sampling import Conditioning, denoise_with_record, make_noise

    model = random_dit(tiny_dit_config(), seed=5).to(DEV)
    g = torch.Generator().manual_seed(1)
    cond = Conditioning(torch.randn(8, model.config.text_dim, generator=g).to(DEV))
    uncond = Conditioning(torch.randn(8, model.config.text_dim, generator=g).to(DEV))
    noise = make_noise(0, 5, 64, 64).to(DEV)
    kw = dict(steps=4, shift=5.0, solver="unipc", guidance=5.0)
    plain, _ = denoise_with_record(model, noise, cond, uncond, **kw)  # type: ignore[arg-type]
    cached, record = denoise_with_record(model, noise, cond, uncond, cache="easycache", cache_threshold=0.0, **kw)  # type: ignore[arg-type]
    assert record is not None and record.skipped_steps == []
    assert torch.equal(plain, cached)


@pytest.mark.parametrize("offload", ["model", "blocks"])
def test_offload_modes_end_to_end_on_cuda(offload: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A tiny t2v folder through the whole pipeline in each memory mode: the same latents as everything resident
    (fp32, so the only difference could come from the moves themselves)."""
    from builders import write_diffusers_pipeline

    from wan_cli.engine import GenerationRequest, Pipeline

    folder = write_diffusers_pipeline(tmp_path / "pipe", "t2v", seed=1)
    req = GenerationRequest(prompt="a fox", model=folder, width=64, height=64, frames=5, steps=3, seed=7,
                            device="cuda", dtype=torch.float32)  # fmt: skip
    want = Pipeline(device="cuda", dtype=torch.float32, offload="none").generate(req).latents
    got = Pipeline(device="cuda", dtype=torch.float32, offload=offload).generate(req)  # type: ignore[arg-type]
    assert got.offload == offload
    torch.testing.assert_close(got.latents, want, rtol=1e-5, atol=1e-5)
