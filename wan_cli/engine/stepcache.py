"""Training-free step caches for the DiT: TeaCache, MagCache and EasyCache (facts, sources: ``docs/step-caches.md``).

Each predicts, step by step, whether the DiT's output would barely change, and if so reuses what the last computed
step left instead of running the network:
- TeaCache: the relative L1 change of the time modulation (e0, or e), rescaled by a per-model polynomial, summed
  until it reaches the threshold; reuses the block stack's residual (tokens after the blocks − before).
- MagCache: a published per-step table of residual-magnitude ratios; the accumulated |1 − Π ratio| against the
  threshold, at most K skips in a row; reuses the block stack's residual.
- EasyCache: runtime-adaptive, no table: the last measured transformation rate k = ‖Δv‖ / ‖Δx‖ times the input
  change; skips the whole DiT and reuses v − x.

cond and uncond keep their own state, as the published scripts do (they call the model cond first, then uncond,
and tell the branches apart by call parity). Steps and branches are explicit here instead of a call counter, so a
batched CFG forward (B = 2) makes per-row decisions equal to the sequential ones: rows that must compute go through
the block stack together, the others reuse their residual. All state lives in a ``StepCache`` made per denoise call.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch

from .errors import InputError
from .request import CACHES, check_cache
from .transformer import WanDiTConfig, WanModel, a_model

CACHE_KINDS = CACHES  # ("none", "teacache", "magcache", "easycache"), declared with the request's other choices
VARIANTS = ("t2v-1.3B", "t2v-14B", "i2v-14B-480P", "i2v-14B-720P")  # the calibrated checkpoints
COND, UNCOND = 0, 1  # branch indices (the published scripts' even / odd forward calls)
BRANCH_NAMES = ("cond", "uncond")
# I2V 480P vs 720P are separate checkpoints of one architecture; the scripts pick the table by the checkpoint folder
# name. We pick by the run's pixel area: above this (between 832×480 = 399,360 and 1280×720 = 921,600) → 720P.
I2V_720P_MIN_AREA = 600_000

# -- TeaCache: ali-vilab/TeaCache TeaCache4Wan2.1/teacache_generate.py (read in its copies zhajingjing/cse585 and
# spawner1145/TeaCache; the same numbers in ComfyUI-TeaCache nodes.py). np.poly1d coefficients, highest power first.
TEACACHE_COEFFICIENTS: Mapping[str, tuple[float, ...]] = MappingProxyType({  # use_ret_steps off: compares e
    "t2v-1.3B": (2.39676752e03, -1.31110545e03, 2.01331979e02, -8.29855975e00, 1.37887774e-01),
    "t2v-14B": (-5784.54975374, 5449.50911966, -1811.16591783, 256.27178429, -13.02252404),
    "i2v-14B-480P": (-3.02331670e02, 2.23948934e02, -5.25463970e01, 5.87348440e00, -2.01973289e-01),
    "i2v-14B-720P": (-114.36346466, 65.26524496, -18.82220707, 4.91518089, -0.23412683),
})  # fmt: skip
TEACACHE_RET_COEFFICIENTS: Mapping[str, tuple[float, ...]] = MappingProxyType({  # use_ret_steps on: compares e0
    "t2v-1.3B": (-5.21862437e04, 9.23041404e03, -5.28275948e02, 1.36987616e01, -4.99875664e-02),
    "t2v-14B": (-3.03318725e05, 4.90537029e04, -2.65530556e03, 5.87365115e01, -3.15583525e-01),
    "i2v-14B-480P": (2.57151496e05, -3.54229917e04, 1.40286849e03, -1.35890334e01, 1.32517977e-01),
    "i2v-14B-720P": (8.10705460e03, 2.13393892e03, -3.72934672e02, 1.66203073e01, -4.17769401e-02),
})  # fmt: skip
# Default thresholds: TeaCache4Wan2.1/README.md, the use_ret_steps table's "Slow" column (its "Fast" column: 0.10,
# 0.20, 0.30, 0.30) and the usage commands without retention steps.
TEACACHE_RET_THRESHOLDS = MappingProxyType({"t2v-1.3B": 0.05, "t2v-14B": 0.10, "i2v-14B-480P": 0.20,
                                            "i2v-14B-720P": 0.20})  # fmt: skip
TEACACHE_THRESHOLDS = MappingProxyType({"t2v-1.3B": 0.08, "t2v-14B": 0.2, "i2v-14B-480P": 0.26, "i2v-14B-720P": 0.3})
TEACACHE_RET_WARMUP = 5  # use_ret_steps: the first 5 steps always compute, none at the end
TEACACHE_WARMUP = 1  # otherwise: the first and the last step always compute

# -- MagCache: Zehong-Ma/MagCache MagCache4Wan2.1/magcache_generate.py. Interleaved cond, uncond per step; the script
# prepends [1.0, 1.0] for the first step (kept out of the tables, added by `mag_ratios`). T2V: 50 steps, I2V: 40.
MAGCACHE_RATIOS: Mapping[str, tuple[float, ...]] = MappingProxyType({
    "t2v-14B": (
        1.02504, 1.03017, 1.00025, 1.00251, 0.9985, 0.99962, 0.99779, 0.99771, 0.9966, 0.99658, 0.99482, 0.99476,
        0.99467, 0.99451, 0.99664, 0.99656, 0.99434, 0.99431, 0.99533, 0.99545, 0.99468, 0.99465, 0.99438, 0.99434,
        0.99516, 0.99517, 0.99384, 0.9938, 0.99404, 0.99401, 0.99517, 0.99516, 0.99409, 0.99408, 0.99428, 0.99426,
        0.99347, 0.99343, 0.99418, 0.99416, 0.99271, 0.99269, 0.99313, 0.99311, 0.99215, 0.99215, 0.99218, 0.99215,
        0.99216, 0.99217, 0.99163, 0.99161, 0.99138, 0.99135, 0.98982, 0.9898, 0.98996, 0.98995, 0.9887, 0.98866,
        0.98772, 0.9877, 0.98767, 0.98765, 0.98573, 0.9857, 0.98501, 0.98498, 0.9838, 0.98376, 0.98177, 0.98173,
        0.98037, 0.98035, 0.97678, 0.97677, 0.97546, 0.97543, 0.97184, 0.97183, 0.96711, 0.96708, 0.96349, 0.96345,
        0.95629, 0.95625, 0.94926, 0.94929, 0.93964, 0.93961, 0.92511, 0.92504, 0.90693, 0.90678, 0.8796, 0.87945,
        0.86111, 0.86189,
    ),
    "t2v-1.3B": (
        1.0124, 1.02213, 1.00166, 1.0041, 0.99791, 1.00061, 0.99682, 0.99762, 0.99634, 0.99685, 0.99567, 0.99586,
        0.99416, 0.99422, 0.99578, 0.99575, 0.9957, 0.99563, 0.99511, 0.99506, 0.99535, 0.99531, 0.99552, 0.99549,
        0.99541, 0.99539, 0.9954, 0.99536, 0.99489, 0.99485, 0.99518, 0.99514, 0.99484, 0.99478, 0.99481, 0.99479,
        0.99415, 0.99413, 0.99419, 0.99416, 0.99396, 0.99393, 0.99388, 0.99386, 0.99349, 0.99349, 0.99309, 0.99304,
        0.9927, 0.9927, 0.99228, 0.99226, 0.99171, 0.9917, 0.99137, 0.99135, 0.99068, 0.99063, 0.99005, 0.99003,
        0.98944, 0.98942, 0.98849, 0.98849, 0.98758, 0.98757, 0.98644, 0.98643, 0.98504, 0.98503, 0.9836, 0.98359,
        0.98202, 0.98201, 0.97977, 0.97978, 0.97717, 0.97718, 0.9741, 0.97411, 0.97003, 0.97002, 0.96538, 0.96541,
        0.9593, 0.95933, 0.95086, 0.95089, 0.94013, 0.94019, 0.92402, 0.92414, 0.90241, 0.9026, 0.86821, 0.86868,
        0.81838, 0.81939,
    ),
    "i2v-14B-480P": (
        0.98783, 0.98993, 0.97559, 0.97593, 0.98311, 0.98319, 0.98202, 0.98225, 0.9888, 0.98878, 0.98762, 0.98759,
        0.98957, 0.98971, 0.99052, 0.99043, 0.99383, 0.99384, 0.98857, 0.9886, 0.99065, 0.99068, 0.98845, 0.98847,
        0.99057, 0.99057, 0.98957, 0.98961, 0.98601, 0.9861, 0.98823, 0.98823, 0.98756, 0.98759, 0.98808, 0.98814,
        0.98721, 0.98724, 0.98571, 0.98572, 0.98543, 0.98544, 0.98157, 0.98165, 0.98411, 0.98413, 0.97952, 0.97953,
        0.98149, 0.9815, 0.9774, 0.97742, 0.97825, 0.97826, 0.97355, 0.97361, 0.97085, 0.97087, 0.97056, 0.97055,
        0.96588, 0.96587, 0.96113, 0.96124, 0.9567, 0.95681, 0.94961, 0.94969, 0.93973, 0.93988, 0.93217, 0.93224,
        0.91878, 0.91896, 0.90955, 0.90954, 0.92617, 0.92616,
    ),
    "i2v-14B-720P": (
        0.99428, 0.99498, 0.98588, 0.98621, 0.98273, 0.98281, 0.99018, 0.99023, 0.98911, 0.98917, 0.98646, 0.98652,
        0.99454, 0.99456, 0.9891, 0.98909, 0.99124, 0.99127, 0.99102, 0.99103, 0.99215, 0.99212, 0.99515, 0.99515,
        0.99576, 0.99572, 0.99068, 0.99072, 0.99097, 0.99097, 0.99166, 0.99169, 0.99041, 0.99042, 0.99201, 0.99198,
        0.99101, 0.99101, 0.98599, 0.98603, 0.98845, 0.98844, 0.98848, 0.98851, 0.98862, 0.98857, 0.98718, 0.98719,
        0.98497, 0.98497, 0.98264, 0.98263, 0.98389, 0.98393, 0.97938, 0.9794, 0.97535, 0.97536, 0.97498, 0.97499,
        0.973, 0.97301, 0.96827, 0.96828, 0.96261, 0.96263, 0.95335, 0.9534, 0.94649, 0.94655, 0.93397, 0.93414,
        0.91636, 0.9165, 0.89088, 0.89109, 0.8679, 0.86768,
    ),
})  # fmt: skip
MAGCACHE_THRESHOLD, MAGCACHE_K, MAGCACHE_RETENTION = 0.12, 2, 0.2  # the script's argparse defaults

# -- EasyCache: H-EmbodVis/EasyCache EasyCache4Wan2.1 (its easycache_generate.py read in the copy oagrawal/Wan2.1;
# the rule matches EasyCache4Wan2.2/easycache_generate.py). Threshold default 0.05; the first 10 steps and the last
# one always compute.
EASYCACHE_THRESHOLD, EASYCACHE_WARMUP = 0.05, 10


@dataclass(frozen=True)
class CacheSettings:
    """One cache choice; every None means the published default for the detected variant."""

    kind: str = "none"  # a CACHE_KINDS name
    threshold: float | None = None
    variant: str | None = None  # a VARIANTS name; None: from the model config and the run's resolution
    teacache_ret_steps: bool = True  # TeaCache's use_ret_steps mode: compare e0, the first 5 steps compute
    warmup_steps: int | None = None  # steps always computed first (TeaCache 5 or 1, EasyCache 10)
    magcache_k: int = MAGCACHE_K  # most consecutive skips per branch
    retention_ratio: float = MAGCACHE_RETENTION  # MagCache: this share of the forward calls always computes
    coefficients: tuple[float, ...] | None = None  # a TeaCache polynomial (highest power first) instead of the table
    mag_ratios: tuple[float, ...] | None = None  # MagCache interleaved ratios (without the leading pad) instead


def detect_variant(cfg: WanDiTConfig, latent_shape: Sequence[int]) -> str:
    """The calibrated checkpoint a model is: its width and type, and for I2V the run's pixel area (see above)."""
    if cfg.model_type == "t2v" and cfg.dim in (1536, 5120):
        return "t2v-1.3B" if cfg.dim == 1536 else "t2v-14B"
    if cfg.model_type == "i2v" and cfg.dim == 5120:
        area = latent_shape[-2] * 8 * latent_shape[-1] * 8
        return "i2v-14B-720P" if area > I2V_720P_MIN_AREA else "i2v-14B-480P"
    raise InputError(f"TeaCache and MagCache publish no calibration for {a_model(cfg.model_type)} of width {cfg.dim}",
                     hint="use --cache easycache (it needs no calibration)")  # fmt: skip


def polyval(coefficients: Sequence[float], x: float) -> float:
    """np.poly1d(coefficients)(x), Horner's rule as numpy evaluates it."""
    out = 0.0
    for c in coefficients:
        out = out * x + c
    return out


def nearest_interp(src: Sequence[float], n: int) -> tuple[float, ...]:
    """MagCache's ``nearest_interp``: n samples of src at round(i·(len−1)/(n−1)) (round half to even, as np.round)."""
    if n == 1:
        return (src[-1],)
    scale = (len(src) - 1) / (n - 1)
    return tuple(src[round(i * scale)] for i in range(n))


def mag_ratios(table: Sequence[float], steps: int) -> tuple[float, ...]:
    """The interleaved [cond, uncond] × steps ratios for a run: the table with its [1.0, 1.0] pad, each branch
    resampled by ``nearest_interp`` when the step count is not the calibrated one (as the script does)."""
    padded = (1.0, 1.0, *table)
    if len(padded) == 2 * steps:
        return padded
    cond, uncond = nearest_interp(padded[0::2], steps), nearest_interp(padded[1::2], steps)
    return tuple(r for pair in zip(cond, uncond, strict=True) for r in pair)


@dataclass
class CacheRecord:
    """What a run did, for the sidecar: every (step, branch, computed) decision and the counts."""

    kind: str
    threshold: float
    variant: str | None
    decisions: list[tuple[int, int, bool]] = field(default_factory=list)

    @property
    def forwards(self) -> int:
        """Single-branch passes through the DiT (a batched CFG step that computes counts 2): batching-independent."""
        return sum(computed for _, _, computed in self.decisions)

    @property
    def forwards_without_cache(self) -> int:
        return len(self.decisions)

    def skipped(self, branch: int) -> list[int]:
        return [s for s, b, computed in self.decisions if b == branch and not computed]

    @property
    def skipped_steps(self) -> list[int]:
        """Steps at which no branch ran the network."""
        ran = {s for s, _, computed in self.decisions if computed}
        return sorted({s for s, _, _ in self.decisions} - ran)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "threshold": self.threshold, "variant": self.variant, "forwards": self.forwards,
                "forwards_without_cache": self.forwards_without_cache, "skipped_steps": self.skipped_steps,
                "skipped": {name: self.skipped(b) for b, name in enumerate(BRANCH_NAMES)}}  # fmt: skip


@dataclass
class _Branch:
    """One branch's memory. TeaCache: prev = last modulation; MagCache: ratio/run; EasyCache: prev = last input x,
    anchor = the input at the last computed step, out = its output. residual: block-stack residual [1, L, D] fp32
    (TeaCache, MagCache) or v − x [1, 16, F, H, W] (EasyCache)."""

    acc: float = 0.0
    prev: torch.Tensor | None = None
    residual: torch.Tensor | None = None
    ratio: float = 1.0
    run: int = 0
    anchor: torch.Tensor | None = None
    out: torch.Tensor | None = None


@dataclass
class StepCache:
    """Per-run state (make one per denoise call with :func:`make_cache`)."""

    kind: str
    threshold: float
    steps: int
    record: CacheRecord
    warmup: int = 0
    cutoff: int = 0  # TeaCache / EasyCache: steps ≥ cutoff always compute
    coefficients: tuple[float, ...] = ()
    ret_mode: bool = True
    ratios: tuple[float, ...] = ()
    k: int = MAGCACHE_K
    retained: int = 0  # MagCache: forward calls (2·step + branch) below this always compute
    branches: tuple[_Branch, _Branch] = field(default_factory=lambda: (_Branch(), _Branch()))
    rate: float | None = None  # EasyCache: the last transformation rate k
    pair_compute: bool = True  # EasyCache: this step's cond decision, which uncond follows


def make_cache(cfg: WanDiTConfig, settings: CacheSettings, steps: int, latent_shape: Sequence[int]) -> StepCache | None:
    """Validate the settings and build the state for one run of ``steps`` steps on latents of ``latent_shape``;
    None for ``kind="none"``."""
    s = settings
    check_cache(s.kind, s.threshold)
    if s.kind == "none":
        return None
    if (s.warmup_steps is not None and s.warmup_steps < 0) or s.magcache_k < 0 or not 0 <= s.retention_ratio <= 1:
        raise InputError("cache warm-up steps and K must be >= 0 and the retention ratio in [0, 1]",
                         hint=f"the published values: K {MAGCACHE_K}, retention {MAGCACHE_RETENTION}")  # fmt: skip
    if s.kind == "easycache":
        thr = EASYCACHE_THRESHOLD if s.threshold is None else s.threshold
        warm = EASYCACHE_WARMUP if s.warmup_steps is None else s.warmup_steps
        return StepCache("easycache", thr, steps, CacheRecord("easycache", thr, None), warmup=warm, cutoff=steps - 1)
    calibrated = s.coefficients if s.kind == "teacache" else s.mag_ratios
    if s.variant is not None and s.variant not in VARIANTS:
        raise InputError(f"unknown calibration {s.variant!r}", hint=f"use one of: {', '.join(VARIANTS)}")
    variant = s.variant or (None if calibrated is not None else detect_variant(cfg, latent_shape))
    key = variant or "t2v-1.3B"  # only the default threshold is read from it when the tables are overridden
    if s.kind == "teacache":
        table, thresholds = ((TEACACHE_RET_COEFFICIENTS, TEACACHE_RET_THRESHOLDS) if s.teacache_ret_steps
                             else (TEACACHE_COEFFICIENTS, TEACACHE_THRESHOLDS))  # fmt: skip
        thr = thresholds[key] if s.threshold is None else s.threshold
        warm = s.warmup_steps if s.warmup_steps is not None else (
            TEACACHE_RET_WARMUP if s.teacache_ret_steps else TEACACHE_WARMUP)  # fmt: skip
        return StepCache("teacache", thr, steps, CacheRecord("teacache", thr, variant), warmup=warm,
                         cutoff=steps if s.teacache_ret_steps else steps - 1, ret_mode=s.teacache_ret_steps,
                         coefficients=tuple(calibrated or table[key]))  # fmt: skip
    thr = MAGCACHE_THRESHOLD if s.threshold is None else s.threshold
    ratios = mag_ratios(calibrated or MAGCACHE_RATIOS[key], steps)
    return StepCache("magcache", thr, steps, CacheRecord("magcache", thr, variant), ratios=ratios, k=s.magcache_k,
                     retained=int(2 * steps * s.retention_ratio))  # fmt: skip


# -- the rules: True = run the network ---------------------------------------------------------------------------------


def _mean_abs(t: torch.Tensor) -> float:
    return t.abs().mean().item()


def _teacache_computes(c: StepCache, step: int, br: _Branch, m: torch.Tensor) -> bool:
    """m: this branch's modulation (e0 [6, D] or e [D]), compared with the last step's whatever was decided."""
    compute = True
    if step < c.warmup or step >= c.cutoff or br.prev is None:
        br.acc = 0.0
    else:
        rel = ((m - br.prev).abs().mean() / br.prev.abs().mean()).item()
        br.acc += polyval(c.coefficients, rel)
        if br.acc < c.threshold and c.threshold > 0:  # 0 never skips, even where the polynomial dips below 0
            compute = False
        else:
            br.acc = 0.0
    br.prev = m
    return compute


def _magcache_computes(c: StepCache, step: int, branch: int, br: _Branch) -> bool:
    call = 2 * step + branch  # the script's forward counter (cond, uncond interleaved)
    if call < c.retained or br.residual is None:
        return True
    br.ratio *= c.ratios[call]  # magnitude ratio between this step and the cached one
    br.run += 1
    br.acc += abs(1 - br.ratio)
    if br.acc < c.threshold and br.run <= c.k:
        return False
    br.acc, br.run, br.ratio = 0.0, 0, 1.0
    return True


def _easycache_decide(c: StepCache, step: int, x: torch.Tensor) -> bool:
    """The cond branch decides for the pair: accumulate k·mean|x − x_prev| / mean|v_last| until the threshold."""
    br = c.branches[COND]
    compute = True
    if step < c.warmup or step >= c.cutoff:
        br.acc = 0.0
    elif br.prev is not None and br.out is not None and c.rate is not None:
        norm = _mean_abs(br.out)
        br.acc += c.rate * _mean_abs(x - br.prev) / norm if norm else math.inf
        if br.acc < c.threshold and c.threshold > 0:
            compute = False
        else:
            br.acc = 0.0
    br.prev = x.clone()
    return compute


def _easycache_update(c: StepCache, branch: int, x: torch.Tensor, out: torch.Tensor) -> None:
    """After a computed step: the rate k from the last two computed cond steps, and the reusable v − x."""
    br = c.branches[branch]
    if branch == COND:
        if br.out is not None and br.anchor is not None and br.prev is not None:
            d_in = _mean_abs(br.prev - br.anchor)
            c.rate = _mean_abs(out - br.out) / d_in if d_in else math.inf
        br.anchor = br.prev
    br.out = out.clone()
    br.residual = out - x


# -- the forward -------------------------------------------------------------------------------------------------------


def cached_forward(
    model: WanModel,
    cache: StepCache,
    x: torch.Tensor,
    t: torch.Tensor,
    context: torch.Tensor,
    clip_fea: torch.Tensor | None,
    y: torch.Tensor | None,
    *,
    step: int,
    branches: tuple[int, ...],
) -> torch.Tensor:
    """``model(x, t, context, clip_fea, y)`` for rows that are the ``branches`` (COND, UNCOND) of step ``step``,
    running or reusing per the cache's rule. x [n, 16, F, H, W] → velocity [n, 16, F, H, W] fp32. A computed row
    goes through exactly the uncached operations, so a run that never skips equals the uncached run bit for bit."""
    if len(branches) != x.shape[0]:
        raise ValueError(f"{len(branches)} branches for a batch of {x.shape[0]}")
    if cache.kind == "easycache":
        return _easycache_forward(model, cache, x, t, context, clip_fea, y, step, branches)
    emb = model.embed(x, t, context, clip_fea, y)
    compute = []
    for i, b in enumerate(branches):
        br = cache.branches[b]
        if cache.kind == "teacache":
            compute.append(_teacache_computes(cache, step, br, (emb.e0 if cache.ret_mode else emb.e)[i]))
        else:
            compute.append(_magcache_computes(cache, step, b, br))
        cache.record.decisions.append((step, b, compute[-1]))
    rows = [i for i, c in enumerate(compute) if c]
    if len(rows) == len(branches):
        out = model.run_blocks(emb.tokens, emb.e0, emb.ctx, emb.rope)  # [n, L, D] fp32
    else:  # rows that must compute run together; the others add their cached residual
        ran = None
        if rows:
            i = rows[0]  # n ≤ 2, so at most one row computes here
            ran = model.run_blocks(emb.tokens[i : i + 1], emb.e0[i : i + 1], emb.ctx[i : i + 1], emb.rope)
        parts = []
        for i, b in enumerate(branches):
            res = cache.branches[b].residual
            if compute[i] and ran is not None:
                parts.append(ran)
            else:
                assert res is not None  # the rules compute a branch that has no residual yet
                parts.append(emb.tokens[i : i + 1] + res)
        out = torch.cat(parts)
    for i in rows:
        cache.branches[branches[i]].residual = out[i : i + 1] - emb.tokens[i : i + 1]
    return model.final(out, emb.e, emb.grid)


def _easycache_forward(
    model: WanModel,
    cache: StepCache,
    x: torch.Tensor,
    t: torch.Tensor,
    context: torch.Tensor,
    clip_fea: torch.Tensor | None,
    y: torch.Tensor | None,
    step: int,
    branches: tuple[int, ...],
) -> torch.Tensor:
    """EasyCache skips the whole DiT: v = x + (v − x) of the branch's last computed step. The pair computes
    together (a batched forward computes every row), as cond decides for uncond."""
    if COND in branches:
        cache.pair_compute = _easycache_decide(cache, step, x[branches.index(COND)])
    compute = [cache.pair_compute or cache.branches[b].residual is None for b in branches]
    if not any(compute):
        cache.record.decisions.extend((step, b, False) for b in branches)
        return torch.cat([x[i : i + 1] + cache.branches[b].residual for i, b in enumerate(branches)])  # type: ignore[operator]
    out = model(x, t, context, clip_fea, y)
    for i, b in enumerate(branches):
        cache.record.decisions.append((step, b, True))
        _easycache_update(cache, b, x[i : i + 1], out[i : i + 1])
    return out
