"""Step caches (TeaCache, MagCache, EasyCache) on tiny random DiTs: the split forward is the forward, threshold 0 is
the uncached run bit for bit, and each cache's skips equal the published rule recomputed here independently (NumPy,
from the tensors the run saw) — batched CFG deciding as sequential CFG does."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from builders import random_dit, tiny_dit_config

from wan_cli.engine import InputError
from wan_cli.engine import sampling as sampling_mod
from wan_cli.engine.sampling import Conditioning, denoise, denoise_with_record
from wan_cli.engine.stepcache import (
    COND,
    MAGCACHE_RATIOS,
    TEACACHE_COEFFICIENTS,
    TEACACHE_RET_COEFFICIENTS,
    UNCOND,
    CacheSettings,
    check_cache,
    detect_variant,
    make_cache,
    polyval,
)
from wan_cli.engine.transformer import DIT_CONFIGS, WanModel

LATENT = (1, 16, 2, 4, 4)  # 2·2·2 = 8 tokens: each forward takes milliseconds


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny matmuls: one thread is several times faster than two fighting on a small, shared machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def model() -> WanModel:
    return random_dit(tiny_dit_config("t2v"))


def _conds(text_dim: int = 64) -> tuple[Conditioning, Conditioning]:
    g = torch.Generator().manual_seed(3)
    return Conditioning(torch.randn(7, text_dim, generator=g)), Conditioning(torch.randn(5, text_dim, generator=g))


def _run(model: WanModel, cache: str | CacheSettings = "none", *, steps: int = 12, batch: bool = True,
         guidance: float | None = 5.0, **kw: Any) -> tuple[torch.Tensor, Any]:  # fmt: skip
    cond, uncond = _conds()
    noise = torch.randn(LATENT, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return denoise_with_record(model, noise, cond, uncond if guidance is not None else None, steps=steps,
                                   shift=5.0, solver="unipc", guidance=guidance or 1.0, batch=batch, cache=cache,
                                   **kw)  # fmt: skip


def _settings(kind: str, **kw: Any) -> CacheSettings:
    return CacheSettings(kind=kind, variant="t2v-1.3B", **kw)


# -- the split forward ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_type", ["t2v", "i2v", "flf2v"])
def test_split_forward_is_the_forward_bit_for_bit(model_type: str) -> None:
    cfg = tiny_dit_config(model_type)
    m = random_dit(cfg)
    g = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(2, 16, 2, 4, 6, generator=g), torch.randn(2, 9, cfg.text_dim, generator=g)
    clip = torch.randn(2, cfg.clip_tokens, 1280, generator=g) if model_type != "t2v" else None
    y = torch.randn(2, 20, 2, 4, 6, generator=g) if model_type != "t2v" else None
    t = torch.tensor([999, 500])
    with torch.no_grad():
        emb = m.embed(x, t, ctx, clip, y)
        parts = m.final(m.run_blocks(emb.tokens, emb.e0, emb.ctx, emb.rope), emb.e, emb.grid)
        whole = m(x, t, ctx, clip, y)
    assert emb.tokens.shape == (2, 2 * 2 * 3, cfg.dim) and emb.e.shape == (2, cfg.dim)
    assert emb.e0.shape == (2, 6, cfg.dim) and emb.grid == (2, 2, 3)
    assert torch.equal(parts, whole)


# -- threshold 0, larger thresholds ----------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [True, False])
@pytest.mark.parametrize("kind", ["teacache", "magcache", "easycache"])
def test_threshold_zero_is_the_uncached_run_bit_for_bit(model: WanModel, kind: str, batch: bool) -> None:
    plain, none_record = _run(model, batch=batch)
    cached, record = _run(model, _settings(kind, threshold=0.0, warmup_steps=1), batch=batch)
    assert none_record is None
    assert torch.equal(cached, plain)
    assert record.skipped_steps == [] and record.forwards == record.forwards_without_cache == 2 * 12
    noise = torch.randn(LATENT, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():  # denoise keeps its return type: the latents alone
        again = denoise(model, noise, *_conds(), steps=12, shift=5.0, solver="unipc", guidance=5.0, batch=batch,
                        cache=kind, cache_threshold=0.0) if kind == "easycache" else plain  # fmt: skip
    assert torch.equal(again, plain)


@pytest.mark.parametrize(
    ("kind", "extra", "thresholds"),
    [
        ("teacache", {"coefficients": (1.0, 0.0), "warmup_steps": 1}, (0.0, 0.05, 0.5, 5.0)),  # raw relative L1
        ("magcache", {}, (0.0, 0.05, 0.12, 0.5)),
        ("easycache", {"warmup_steps": 2}, (0.0, 0.05, 0.5, 5.0)),
    ],
)
def test_larger_thresholds_run_fewer_forwards(model: WanModel, kind: str, extra: dict[str, Any],
                                              thresholds: tuple[float, ...]) -> None:  # fmt: skip
    counts = [_run(model, _settings(kind, threshold=thr, **extra), steps=16)[1].forwards for thr in thresholds]
    assert counts[0] == 32 and counts[-1] < counts[0], counts
    assert all(a >= b for a, b in itertools.pairwise(counts)), counts


# -- TeaCache against the published rule ---------------------------------------------------------------------------


def _capture_embeds(model: WanModel, monkeypatch: pytest.MonkeyPatch, name: str = "e0") -> list[np.ndarray]:
    seen: list[np.ndarray] = []
    real = model.embed

    def spy(*a: Any, **k: Any) -> Any:
        emb = real(*a, **k)
        seen.append(getattr(emb, name)[0].double().numpy().copy())  # every call's first row (cond, or uncond alone)
        return emb

    monkeypatch.setattr(model, "embed", spy)
    return seen


def _teacache_reference(mods: list[np.ndarray], coeffs: tuple[float, ...], thr: float, warm: int,
                        last: bool = False) -> list[int]:  # fmt: skip
    """TeaCache4Wan2.1: the first ``warm`` steps (and without use_ret_steps the ``last``) compute; otherwise
    Σ poly(|Δm|₁ / |m_prev|₁) < thr skips, m = e0 (use_ret_steps) or e."""
    poly, acc, skipped = np.poly1d(coeffs), 0.0, []
    for i, m in enumerate(mods):
        if i < warm or (last and i == len(mods) - 1):
            acc = 0.0
        else:
            prev = mods[i - 1]
            acc += poly(np.abs(m - prev).mean() / np.abs(prev).mean())
            if acc < thr:
                skipped.append(i)
            else:
                acc = 0.0
    return skipped


# The tiny model's relative L1 of e0 between steps is 0.3–0.5, far above a real Wan's: the published polynomial is
# negative there (every step after warm-up skips, as the published rule says); the identity gives a mixed pattern.
@pytest.mark.parametrize(("coeffs", "thr"), [(TEACACHE_RET_COEFFICIENTS["t2v-1.3B"], 0.3), ((1.0, 0.0), 1.0)],
                         ids=["published", "identity"])  # fmt: skip
@pytest.mark.parametrize("batch", [True, False])
def test_teacache_skips_follow_the_published_rule(
    model: WanModel, monkeypatch: pytest.MonkeyPatch, coeffs: tuple[float, ...], thr: float, batch: bool
) -> None:
    seen = _capture_embeds(model, monkeypatch)
    _, record = _run(model, _settings("teacache", threshold=thr, warmup_steps=2, coefficients=coeffs), steps=20,
                     batch=batch)  # fmt: skip
    mods = seen if batch else seen[0::2]  # sequential: the cond call's e0 (uncond's is the same: it depends on t)
    expected = _teacache_reference(mods, coeffs, thr, 2)
    assert coeffs[0] != 1.0 or 0 < len(expected) < 18  # the identity: some steps skip, some compute
    assert record.skipped(COND) == record.skipped(UNCOND) == expected
    assert record.forwards == 2 * (20 - len(expected))


def test_teacache_without_retention_steps_compares_e(model: WanModel, monkeypatch: pytest.MonkeyPatch) -> None:
    """use_ret_steps off: e (not e0) is compared, only the first step is warm-up, the last step always computes."""
    seen = _capture_embeds(model, monkeypatch, "e")
    settings = _settings("teacache", threshold=2.1, coefficients=(1.0, 0.0), teacache_ret_steps=False)
    _, record = _run(model, settings, steps=12)
    expected = _teacache_reference(seen, (1.0, 0.0), 2.1, 1, last=True)  # 2.1: step 11 would skip
    assert 0 < len(expected) < 10 and 11 not in expected
    assert record.skipped(COND) == expected


def test_teacache_polynomials_as_published() -> None:
    assert TEACACHE_RET_COEFFICIENTS["t2v-1.3B"][0] == -5.21862437e04
    assert TEACACHE_RET_COEFFICIENTS["i2v-14B-720P"][-1] == -4.17769401e-02
    assert TEACACHE_COEFFICIENTS["t2v-14B"] == (-5784.54975374, 5449.50911966, -1811.16591783, 256.27178429,
                                                -13.02252404)  # fmt: skip
    for table in (TEACACHE_COEFFICIENTS, TEACACHE_RET_COEFFICIENTS):
        for coeffs in table.values():
            for x in np.linspace(0, 0.5, 11):
                assert polyval(coeffs, float(x)) == pytest.approx(np.poly1d(coeffs)(x), rel=1e-12, abs=1e-9)


# -- MagCache against the published table ----------------------------------------------------------------------------


def _magcache_reference(table: tuple[float, ...], steps: int, thr: float, k: int, retention: float) -> list[list[int]]:
    """MagCache4Wan2.1's rule on its interleaved table (pad [1, 1]; np.round nearest resampling per branch)."""
    ratios = np.array([1.0, 1.0, *table])
    if len(ratios) != 2 * steps:

        def interp(src: np.ndarray) -> np.ndarray:
            if steps == 1:
                return src[-1:]
            return src[np.round(np.arange(steps) * ((len(src) - 1) / (steps - 1))).astype(int)]

        ratios = np.stack([interp(ratios[0::2]), interp(ratios[1::2])], axis=1).reshape(-1)
    ratio, run, err, skipped = [1.0, 1.0], [0, 0], [0.0, 0.0], [[], []]
    for cnt in range(2 * steps):
        b = cnt % 2
        if cnt < int(2 * steps * retention):
            continue
        ratio[b] *= ratios[cnt]
        run[b] += 1
        err[b] += abs(1 - ratio[b])
        if err[b] < thr and run[b] <= k:
            skipped[b].append(cnt // 2)
        else:
            ratio[b], run[b], err[b] = 1.0, 0, 0.0
    return skipped


@pytest.mark.parametrize(("variant", "steps", "thr", "k"), [
    ("t2v-14B", 50, 0.12, 2), ("t2v-1.3B", 50, 0.12, 4), ("t2v-14B", 30, 0.24, 6),
    ("i2v-14B-480P", 40, 0.24, 6), ("i2v-14B-720P", 13, 0.12, 2),
])  # fmt: skip
def test_magcache_skips_follow_the_published_table(model: WanModel, variant: str, steps: int, thr: float,
                                                   k: int) -> None:  # fmt: skip
    table = MAGCACHE_RATIOS[variant]
    assert len(table) + 2 == 2 * (50 if variant.startswith("t2v") else 40)  # calibrated at the official step counts
    settings = CacheSettings(kind="magcache", variant=variant, threshold=thr, magcache_k=k)
    _, record = _run(model, settings, steps=steps)
    cond, uncond = _magcache_reference(table, steps, thr, k, 0.2)
    assert cond and record.skipped(COND) == cond and record.skipped(UNCOND) == uncond


def test_magcache_tables_as_published() -> None:
    assert MAGCACHE_RATIOS["t2v-14B"][:2] == (1.02504, 1.03017)
    assert MAGCACHE_RATIOS["t2v-14B"][-2:] == (0.86111, 0.86189)
    assert MAGCACHE_RATIOS["t2v-1.3B"][-2:] == (0.81838, 0.81939)
    assert MAGCACHE_RATIOS["i2v-14B-480P"][:2] == (0.98783, 0.98993)
    assert MAGCACHE_RATIOS["i2v-14B-720P"][-2:] == (0.8679, 0.86768)


# -- EasyCache -------------------------------------------------------------------------------------------------------


def test_easycache_mechanics(model: WanModel, monkeypatch: pytest.MonkeyPatch) -> None:
    """Skips follow k·mean|Δx| / mean|v| accumulated (k = mean|Δv| / mean|Δx| over the last two computed cond
    steps), uncond follows cond, and a skipped step's velocity is x + (v − x) of the last computed one."""
    xs: list[torch.Tensor] = []
    outs: list[torch.Tensor] = []
    real_step, real_forward = sampling_mod.step, model.forward

    def step_spy(state: Any, i: int, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        xs.append(x.clone())
        return real_step(state, i, x, v)

    def forward_spy(*a: Any, **k: Any) -> torch.Tensor:
        out = real_forward(*a, **k)
        outs.append(out[0:1].clone())
        return out

    monkeypatch.setattr(sampling_mod, "step", step_spy)
    monkeypatch.setattr(model, "forward", forward_spy)
    steps, thr, warm = 20, 0.3, 3
    _, record = _run(model, CacheSettings(kind="easycache", threshold=thr, warmup_steps=warm), steps=steps)

    def mean_abs(t: torch.Tensor) -> float:
        return float(np.abs(t.double().numpy()).mean())

    expected, acc, rate, anchor, last, computed = [], 0.0, None, None, None, iter(outs)
    for i, x in enumerate(xs):
        skip = False
        if i < warm or i >= steps - 1:
            acc = 0.0
        elif rate is not None and last is not None:
            acc += rate * mean_abs(x - xs[i - 1]) / mean_abs(last)
            skip = acc < thr
            acc = acc if skip else 0.0
        if skip:
            expected.append(i)
            continue
        out = next(computed)
        if last is not None and anchor is not None:
            rate = mean_abs(out - last) / mean_abs(x - anchor)
        anchor, last = x, out
    assert expected and record.skipped(COND) == record.skipped(UNCOND) == expected
    assert all(s < steps - 1 and s >= warm for s in expected)
    assert len(outs) == steps - len(expected)


def test_easycache_reuses_the_transformation_vector(model: WanModel) -> None:
    cache = make_cache(model.config, CacheSettings(kind="easycache", threshold=1e9, warmup_steps=2), 5, LATENT)
    assert cache is not None
    from wan_cli.engine.stepcache import cached_forward

    cond, _ = _conds()
    ctx = cond.context[None]
    xs = [torch.randn(LATENT, generator=torch.Generator().manual_seed(s)) for s in range(4)]
    with torch.no_grad():
        outs = [cached_forward(model, cache, x, torch.tensor([900 - 100 * i]), ctx, None, None, step=i,
                               branches=(COND,)) for i, x in enumerate(xs)]  # fmt: skip
        v2 = model(xs[1], torch.tensor([800]), ctx)
    assert cache.record.skipped(COND) == [2, 3]
    assert torch.equal(outs[1], v2)
    assert torch.equal(outs[2], xs[2] + (v2 - xs[1])) and torch.equal(outs[3], xs[3] + (v2 - xs[1]))


# -- CFG batching, no guidance ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "extra"), [
    ("teacache", {"coefficients": (1.0, 0.0), "threshold": 0.5, "warmup_steps": 1}),
    ("magcache", {"threshold": 0.3, "magcache_k": 3}),  # 13 steps: retention 5 calls, so cond and uncond disagree
    ("easycache", {"threshold": 0.5, "warmup_steps": 2}),
])  # fmt: skip
def test_batched_and_sequential_cfg_decide_alike(model: WanModel, kind: str, extra: dict[str, Any]) -> None:
    a, rec_b = _run(model, _settings(kind, **extra), steps=13, batch=True)
    b, rec_s = _run(model, _settings(kind, **extra), steps=13, batch=False)
    assert rec_b.skipped_steps or rec_b.skipped(COND)
    assert sorted(rec_b.decisions) == sorted(rec_s.decisions)
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)
    if kind == "magcache":
        assert rec_b.skipped(COND) != rec_b.skipped(UNCOND)  # the partly-batched path ran


@pytest.mark.parametrize("kind", ["teacache", "magcache", "easycache"])
def test_guidance_one_has_only_the_cond_branch(model: WanModel, kind: str) -> None:
    extra = {"coefficients": (1.0, 0.0), "warmup_steps": 1} if kind == "teacache" else {}
    out, record = _run(model, _settings(kind, threshold=0.5, **extra), steps=16, guidance=None)
    assert torch.isfinite(out).all() and record.forwards_without_cache == 16
    assert record.skipped(UNCOND) == [] and record.skipped_steps == record.skipped(COND)
    js = record.to_json()
    assert js["kind"] == kind and js["forwards"] == 16 - len(js["skipped_steps"])
    assert set(js) == {"kind", "threshold", "variant", "forwards", "forwards_without_cache", "skipped_steps", "skipped"}


# -- variants and errors ---------------------------------------------------------------------------------------------


def test_variant_from_the_config_and_the_run_size() -> None:
    assert detect_variant(DIT_CONFIGS["t2v-1.3B"], (1, 16, 21, 60, 104)) == "t2v-1.3B"
    assert detect_variant(DIT_CONFIGS["t2v-14B"], (1, 16, 21, 90, 160)) == "t2v-14B"
    assert detect_variant(DIT_CONFIGS["i2v-14B"], (1, 16, 21, 60, 104)) == "i2v-14B-480P"
    assert detect_variant(DIT_CONFIGS["i2v-14B"], (1, 16, 21, 104, 60)) == "i2v-14B-480P"
    assert detect_variant(DIT_CONFIGS["i2v-14B"], (1, 16, 21, 90, 160)) == "i2v-14B-720P"
    with pytest.raises(InputError, match="no calibration") as e:
        detect_variant(DIT_CONFIGS["flf2v-14B"], (1, 16, 21, 90, 160))
    assert "easycache" in e.value.hint
    cache = make_cache(DIT_CONFIGS["i2v-14B"], CacheSettings(kind="teacache"), 40, (1, 16, 21, 90, 160))
    assert cache is not None and cache.threshold == 0.2 and cache.record.variant == "i2v-14B-720P"


@pytest.mark.parametrize(("kind", "threshold", "message"), [
    ("fastcache", None, "unknown step cache"),
    ("teacache", -0.1, ">= 0"),
    ("magcache", float("nan"), ">= 0"),
    ("easycache", float("inf"), ">= 0"),
    ("none", 0.1, "needs a step cache"),
])  # fmt: skip
def test_bad_settings_are_input_errors_with_a_hint(model: WanModel, kind: str, threshold: float | None,
                                                   message: str) -> None:  # fmt: skip
    with pytest.raises(InputError, match=message) as e:
        check_cache(kind, threshold)
    assert e.value.hint
    with pytest.raises(InputError, match=message):
        _run(model, kind, cache_threshold=threshold, steps=2)


def test_a_tiny_model_has_no_published_calibration(model: WanModel) -> None:
    with pytest.raises(InputError, match="no calibration"):
        _run(model, "teacache", steps=2)
    with pytest.raises(InputError, match="unknown calibration"):
        _run(model, CacheSettings(kind="magcache", variant="t2v-5B"), steps=2)
    _, record = _run(model, "easycache", steps=2)  # needs none
    assert record.forwards == 4
