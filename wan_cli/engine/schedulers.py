"""Flow-matching solvers: UniPC (official default), DPM++ 2M, plain Euler and the step-distilled models' ``lcm``
(x0 prediction, then fresh noise at the next σ), as plain functions over a small state.

Facts: ``wan21-architecture.md`` §6. Convention: x_σ = (1 − σ)·x0 + σ·noise, the DiT predicts v ≈ noise − x0, so the
data prediction is m = x − σ·v. The schedule is built exactly as the official code does (NumPy float64 math, integer
timesteps by truncation, float32 sigmas with a final 0), and every update uses those float32 sigmas.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .request import SOLVERS, Solver

NUM_TRAIN_TIMESTEPS = 1000
# σ_max of the training table, read back from float32 as the official scheduler does: float32(0.999)
SIGMA_MAX = float(np.float32(1 - 1 / NUM_TRAIN_TIMESTEPS))


@dataclass(frozen=True)
class Schedule:
    """sigmas: float32 [steps + 1] (last is 0); timesteps: int64 [steps], what the DiT is given at each step."""

    sigmas: torch.Tensor
    timesteps: torch.Tensor

    @property
    def steps(self) -> int:
        return len(self.timesteps)


def shift_sigmas(sigma: np.ndarray, shift: float) -> np.ndarray:
    """σ' = s·σ / (1 + (s − 1)·σ): spends more steps at high noise for s > 1."""
    return shift * sigma / (1 + (shift - 1) * sigma)


def make_schedule(steps: int, shift: float, solver: Solver = "unipc") -> Schedule:
    """The official sigma grid for ``solver``.

    UniPC (and Euler): linspace(σ_max, 0, steps + 1)[:-1], shifted. DPM++ and lcm: linspace(1, 0, steps + 1)[:steps],
    shifted (so the first timestep is 1000; lcm at 4 steps, shift 5: LightX2V's [1000, 750, 500, 250] list, i.e.
    σ = 1, 0.9375, 0.8333, 0.625). Timesteps are int(σ·1000), truncated, except lcm's (float σ·1000).
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if shift <= 0:
        raise ValueError(f"shift must be positive, got {shift}")
    if solver in ("dpm++", "lcm"):
        sigma = np.linspace(1, 0, steps + 1)[:steps]
    else:
        sigma = np.linspace(SIGMA_MAX, 0, steps + 1).copy()[:-1]
    sigma = shift_sigmas(sigma, shift)
    timesteps = torch.from_numpy(sigma * NUM_TRAIN_TIMESTEPS)
    # LightX2V's distill scheduler feeds σ·1000 unrounded (937.5, 833.3…: docs/distill-facts.md §2); the others truncate
    timesteps = timesteps.float() if solver == "lcm" else timesteps.to(torch.int64)
    sigmas = torch.from_numpy(np.concatenate([sigma, [0.0]]).astype(np.float32))
    return Schedule(sigmas=sigmas, timesteps=timesteps)


@dataclass
class SolverState:
    """What a multistep solver carries from one step to the next."""

    schedule: Schedule
    solver: Solver
    x0: list[torch.Tensor] = field(default_factory=list)  # data predictions m of the last steps, newest last (≤ 2)
    prev_sample: torch.Tensor | None = None  # UniPC: the sample that entered the previous predictor
    prev_order: int = 0  # UniPC: the order that predictor used
    seed: int = 0  # lcm: step i draws its fresh noise from a CPU generator seeded with seed + i + 1


def new_state(schedule: Schedule, solver: Solver, seed: int = 0) -> SolverState:
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}")
    return SolverState(schedule=schedule, solver=solver, seed=seed)


def step(state: SolverState, i: int, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Advance sample x at step i (σ_i → σ_{i+1}) given the velocity v the model predicted there."""
    if state.solver == "unipc":
        return unipc_step(state, i, x, v)
    if state.solver == "dpm++":
        return dpmpp_step(state, i, x, v)
    if state.solver == "lcm":
        return lcm_step(state, i, x, v)
    return euler_step(state.schedule, i, x, v)


# --------------------------------------------------------------------------------------------------------------------


def _lam(sigma: torch.Tensor) -> torch.Tensor:
    """λ = log α − log σ with α = 1 − σ (float32; +inf at σ = 0, −inf at σ = 1)."""
    return torch.log(1 - sigma) - torch.log(sigma)


def _push(state: SolverState, m: torch.Tensor) -> None:
    state.x0 = [*state.x0[-1:], m]


def euler_step(schedule: Schedule, i: int, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """x_{i+1} = x_i + (σ_{i+1} − σ_i)·v."""
    s = schedule.sigmas
    return (x.float() + (s[i + 1] - s[i]) * v.float()).to(x.dtype)


def lcm_step(state: SolverState, i: int, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """x0 = x_i − σ_i·v; the last step returns x0, the others re-noise it at σ_{i+1} with fresh noise ε:
    x_{i+1} = (1 − σ_{i+1})·x0 + σ_{i+1}·ε (LightX2V's step-distill sampler; ComfyUI's ``lcm`` for flow models).
    ε is drawn on the CPU (float32, seeded with seed + i + 1), like the initial noise: the same video anywhere."""
    s = state.schedule.sigmas
    x0 = x.float() - s[i] * v.float()
    if i + 1 >= state.schedule.steps:
        return x0.to(x.dtype)
    g = torch.Generator("cpu").manual_seed((state.seed + i + 1) % 2**63)
    eps = torch.randn(x.shape, generator=g, dtype=torch.float32).to(x.device)
    return ((1 - s[i + 1]) * x0 + s[i + 1] * eps).to(x.dtype)


def dpmpp_step(state: SolverState, i: int, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """DPM-Solver++ 2M (midpoint), first order at the first step (no history) and the last step (σ → 0)."""
    s = state.schedule.sigmas
    m0 = x - s[i] * v
    _push(state, m0)
    sample = x.float()
    sigma_t, sigma_s0 = s[i + 1], s[i]
    alpha_t = 1 - sigma_t
    h = _lam(sigma_t) - _lam(sigma_s0)
    first_order = i == 0 or i == state.schedule.steps - 1
    if first_order:
        out = (sigma_t / sigma_s0) * sample - (alpha_t * (torch.exp(-h) - 1.0)) * m0
    else:
        h0 = _lam(sigma_s0) - _lam(s[i - 1])
        r0 = h0 / h
        d1 = (1.0 / r0) * (m0 - state.x0[-2])  # σ₀ = 1 makes r0 = ∞ at i = 1, so D1 = 0 there (no NaN)
        out = (
            (sigma_t / sigma_s0) * sample
            - (alpha_t * (torch.exp(-h) - 1.0)) * m0
            - 0.5 * (alpha_t * (torch.exp(-h) - 1.0)) * d1
        )
    return out.to(m0.dtype)


def unipc_step(state: SolverState, i: int, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """UniPC, bh2, order 2, data prediction: corrector (UniC) on the incoming sample, then predictor (UniP).

    Order min(2, steps − i, i + 1): 1 at the first and last step (lower_order_final).
    """
    s = state.schedule.sigmas
    m = x - s[i] * v
    if i > 0 and state.prev_sample is not None:
        x = _unic(state, i, m, x)
    _push(state, m)
    order = min(2, state.schedule.steps - i, i + 1)
    state.prev_sample, state.prev_order = x, order
    return _unip(state, i, x, order)


def _bh2_coefficients(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    hh = -h
    h_phi_1 = torch.expm1(hh)  # e^{-h} − 1
    b_h = torch.expm1(hh)  # bh2: B(h) = e^{-h} − 1 (bh1 would use −h)
    return hh, h_phi_1, b_h


def _unip(state: SolverState, i: int, x: torch.Tensor, order: int) -> torch.Tensor:
    s = state.schedule.sigmas
    sigma_t, sigma_s0 = s[i + 1], s[i]
    alpha_t = 1 - sigma_t
    lam_s0 = _lam(sigma_s0)
    h = _lam(sigma_t) - lam_s0
    _, h_phi_1, b_h = _bh2_coefficients(h)
    m0 = state.x0[-1]
    x_t = sigma_t / sigma_s0 * x - alpha_t * h_phi_1 * m0
    if order == 2:
        r = (_lam(s[i - 1]) - lam_s0) / h
        d1 = (state.x0[-2] - m0) / r
        x_t = x_t - alpha_t * b_h * (0.5 * d1)  # order-2 predictor coefficient fixed at 0.5
    return x_t.to(x.dtype)


def _unic(state: SolverState, i: int, m_t: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
    """Recompute the sample at σ_i from the previous step's input, now that m_i is known."""
    s = state.schedule.sigmas
    sigma_t, sigma_s0 = s[i], s[i - 1]
    alpha_t = 1 - sigma_t
    lam_s0 = _lam(sigma_s0)
    h = _lam(sigma_t) - lam_s0
    hh, h_phi_1, b_h = _bh2_coefficients(h)
    m0 = state.x0[-1]
    x_prev = state.prev_sample
    assert x_prev is not None
    corr = torch.zeros((), dtype=m0.dtype)
    if state.prev_order == 1:
        rho_last = torch.tensor(0.5, dtype=x_t.dtype)
    else:
        r = (_lam(s[i - 2]) - lam_s0) / h
        d1 = (state.x0[-2] - m0) / r
        # ρ solves R·ρ = b, R rows r_k^0 and r_k^1 for r_k = (r, 1); b_k = h_phi_k · k! / B(h)
        h_phi_k1 = h_phi_1 / hh - 1
        h_phi_k2 = h_phi_k1 / hh - 1 / 2
        one = torch.ones((), dtype=r.dtype)
        rmat = torch.stack([torch.stack([one, one]), torch.stack([r, one])])
        b = torch.stack([h_phi_k1 * 1 / b_h, h_phi_k2 * 2 / b_h])
        rho = torch.linalg.solve(rmat, b).to(x_t.dtype)
        corr = rho[0] * d1
        rho_last = rho[-1]
    x_c = sigma_t / sigma_s0 * x_prev - alpha_t * h_phi_1 * m0
    return (x_c - alpha_t * b_h * (corr + rho_last * (m_t - m0))).to(x_prev.dtype)
