"""Solvers: the official timestep rule (golden values), update-for-update parity with diffusers' schedulers fed the
same sigmas, and convergence on velocity fields with known exact solutions."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from wan_cli.engine.schedulers import SIGMA_MAX, SOLVERS, make_schedule, new_state, step


def test_golden_timesteps_50_steps_shift_5() -> None:
    """wan21-architecture.md §6.2: 999, 995, 991, 987, 982, … 302, 241, 172, 92; σ₀ = 0.99980, last σ = 0.09251."""
    s = make_schedule(50, 5.0, "unipc")
    assert s.timesteps[:5].tolist() == [999, 995, 991, 987, 982]
    assert s.timesteps[-4:].tolist() == [302, 241, 172, 92]
    assert s.sigmas[0].item() == pytest.approx(0.99980, abs=5e-6)
    assert s.sigmas[-2].item() == pytest.approx(0.09251, abs=5e-6)
    assert s.sigmas[-1].item() == 0.0 and s.sigmas.dtype == torch.float32 and len(s.sigmas) == 51
    assert SIGMA_MAX == 0.9990000128746033


def test_golden_timesteps_40_steps_shift_3() -> None:
    s = make_schedule(40, 3.0, "unipc")
    assert s.timesteps[:3].tolist() == [999, 991, 982]
    assert s.timesteps[-3:].tolist() == [195, 136, 71]


def test_dpmpp_grid_starts_at_1000() -> None:
    s = make_schedule(50, 5.0, "dpm++")
    assert s.timesteps[0].item() == 1000 and s.sigmas[0].item() == 1.0


def test_diffusers_default_grid_differs_but_official_sigmas_match_it() -> None:
    """diffusers' own flow grid gives 999/900/750/500 for 4 steps at shift 3 (official: 999/899/749/499); passing
    the official unshifted grid through set_timesteps(sigmas=…) reproduces the official sigmas and timesteps."""
    from diffusers import UniPCMultistepScheduler

    ref = _diffusers_unipc(3.0)
    ref.set_timesteps(4)
    assert ref.timesteps.tolist() == [999, 900, 750, 500]
    ours = make_schedule(4, 3.0)
    assert ours.timesteps.tolist() == [999, 899, 749, 499]
    ref.set_timesteps(sigmas=np.linspace(SIGMA_MAX, 0, 5)[:-1])
    assert torch.equal(ref.timesteps, ours.timesteps) and torch.equal(ref.sigmas, ours.sigmas)
    assert isinstance(ref, UniPCMultistepScheduler)


def _diffusers_unipc(shift: float):  # type: ignore[no-untyped-def]
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift, solver_order=2,
        solver_type="bh2", predict_x0=True, lower_order_final=True, final_sigmas_type="zero",
        num_train_timesteps=1000,
    )  # fmt: skip


@pytest.mark.parametrize(("steps", "shift"), [(50, 5.0), (7, 3.0), (2, 16.0), (1, 5.0)])
def test_unipc_matches_diffusers(steps: int, shift: float) -> None:
    ref = _diffusers_unipc(shift)
    ref.set_timesteps(sigmas=np.linspace(SIGMA_MAX, 0, steps + 1)[:-1])
    _run_both(make_schedule(steps, shift, "unipc"), "unipc", ref)


@pytest.mark.parametrize(("steps", "shift"), [(50, 5.0), (7, 3.0), (2, 16.0), (1, 5.0)])
def test_dpmpp_matches_diffusers(steps: int, shift: float) -> None:
    """diffusers' DPMSolverMultistepScheduler takes no sigma list: its sigmas/timesteps are set to the official ones."""
    from diffusers import DPMSolverMultistepScheduler

    ref = DPMSolverMultistepScheduler(
        num_train_timesteps=1000, solver_order=2, prediction_type="flow_prediction", use_flow_sigmas=True,
        flow_shift=1.0, algorithm_type="dpmsolver++", solver_type="midpoint", lower_order_final=True,
        final_sigmas_type="zero",
    )  # fmt: skip
    ours = make_schedule(steps, shift, "dpm++")
    ref.set_timesteps(steps)
    ref.sigmas, ref.timesteps = ours.sigmas.clone(), ours.timesteps.clone()
    _run_both(ours, "dpm++", ref)


def _run_both(schedule, solver: str, ref) -> None:  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, 3, 4, 4, generator=g)
    x_ref = x.clone()
    state = new_state(schedule, solver)  # type: ignore[arg-type]
    for i, t in enumerate(schedule.timesteps):
        v = torch.randn(x.shape, generator=g)
        x = step(state, i, x, v)
        x_ref = ref.step(v, t, x_ref, return_dict=False)[0]
        err = ((x - x_ref).abs().max() / x_ref.abs().max()).item()
        assert err <= 1e-6, f"{solver} step {i}: {err:.2e}"
    assert torch.isfinite(x).all()


# -- exact solutions --------------------------------------------------------------------------------------------------


def test_straight_flow_is_integrated_exactly() -> None:
    """One data point x0: v = (x − x0)/σ, the flow is a straight line and every solver must land on x0."""
    x0 = torch.linspace(-1.5, 2.0, 11, dtype=torch.float64)
    for solver in SOLVERS:
        for steps in (1, 3, 20):
            schedule = make_schedule(steps, 5.0, solver)
            state = new_state(schedule, solver)
            x = torch.randn(11, dtype=torch.float64, generator=torch.Generator().manual_seed(steps))
            for i in range(steps):
                x = step(state, i, x, (x - x0) / schedule.sigmas[i].double())
            assert (x - x0).abs().max() < 1e-5, (solver, steps)


MU, S = 0.7, 0.4  # data ~ N(MU, S²) per coordinate


def _gaussian_velocity(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """E[noise − x0 | x_σ] for x_σ = (1 − σ)·x0 + σ·noise with x0 ~ N(μ, s²), noise ~ N(0, 1)."""
    var = (1 - sigma) ** 2 * S * S + sigma * sigma
    return -MU + (sigma - (1 - sigma) * S * S) / var * (x - (1 - sigma) * MU)


def _gaussian_endpoint(x: torch.Tensor, sigma0: float) -> torch.Tensor:
    """The probability-flow ODE maps x_σ0 to μ + s·z with z its standardised value."""
    z = (x - (1 - sigma0) * MU) / math.sqrt((1 - sigma0) ** 2 * S * S + sigma0 * sigma0)
    return MU + S * z


def _gaussian_error(solver: str, steps: int) -> float:
    schedule = make_schedule(steps, 1.0, solver)  # type: ignore[arg-type]
    state = new_state(schedule, solver)  # type: ignore[arg-type]
    x_start = torch.linspace(-2, 2, 9, dtype=torch.float64)
    x = x_start.clone()
    for i in range(steps):
        x = step(state, i, x, _gaussian_velocity(x, float(schedule.sigmas[i])))
    return (x - _gaussian_endpoint(x_start, float(schedule.sigmas[0]))).abs().max().item()


def test_solvers_converge_at_their_order() -> None:
    """Euler halves its error per doubling of steps (order 1); the second-order multistep solvers gain more than
    8× from 32 to 128 steps (their last step to σ = 0 is first-order by design, so not the full 16×)."""
    euler = [_gaussian_error("euler", n) for n in (32, 64, 128)]
    for a, b in itertools.pairwise(euler):
        assert 1.8 < a / b < 2.2, euler
    for solver in ("dpm++", "unipc"):
        errs = [_gaussian_error(solver, n) for n in (32, 128)]
        assert errs[0] / errs[1] > 8, (solver, errs)
        assert errs[1] < euler[-1] / 10, (solver, errs, euler)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="steps"):
        make_schedule(0, 5.0)
    with pytest.raises(ValueError, match="shift"):
        make_schedule(10, 0.0)
    with pytest.raises(ValueError, match="unknown solver"):
        new_state(make_schedule(4, 5.0), "heun")  # type: ignore[arg-type]


def test_lcm_schedule_is_lightx2vs_distill_list() -> None:
    """LightX2V's 4-step distill: denoising_step_list [1000, 750, 500, 250] with shift 5 gives σ = 1, 0.9375,
    0.8333…, 0.625 and those σ·1000, unrounded, as the timesteps (docs/distill-facts.md §2)."""
    from wan_cli.engine.schedulers import make_schedule

    s = make_schedule(4, 5.0, "lcm")
    torch.testing.assert_close(s.timesteps, torch.tensor([1000.0, 937.5, 2500 / 3, 625.0]), rtol=0, atol=1e-3)
    torch.testing.assert_close(s.sigmas, torch.tensor([1.0, 0.9375, 5 / 6, 0.625, 0.0]), rtol=0, atol=1e-6)


def test_lcm_step_predicts_x0_then_renoises_with_seeded_cpu_noise() -> None:
    """x0 = x − σ_i·v; x_{i+1} = (1 − σ_{i+1})·x0 + σ_{i+1}·ε with ε from a CPU generator seeded seed + i + 1; the last
    step returns x0."""
    from wan_cli.engine.schedulers import make_schedule, new_state, step

    sched = make_schedule(4, 5.0, "lcm")
    state = new_state(sched, "lcm", seed=42)
    g = torch.Generator().manual_seed(0)
    x, v = torch.randn(1, 16, 2, 4, 4, generator=g), torch.randn(1, 16, 2, 4, 4, generator=g)
    eps = torch.randn(x.shape, generator=torch.Generator("cpu").manual_seed(42 + 0 + 1))
    want = (1 - 0.9375) * (x - 1.0 * v) + 0.9375 * eps
    torch.testing.assert_close(step(state, 0, x, v), want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(step(state, 3, x, v), x - 0.625 * v, rtol=1e-6, atol=1e-6)
