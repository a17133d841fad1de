"""PNDM: pseudo numerical methods (Liu et al. 2022, "Pseudo Numerical Methods for Diffusion Models on
Manifolds"): pseudo Runge-Kutta warm-up steps, then pseudo linear multi-step (PLMS) steps."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from ..schedule import NoiseSchedule, to_x0_eps
from .base import BaseOptions, DiffusersSpacing, ModelFn, Step, register, select_timesteps

RK_STEPS = 3  # Runge-Kutta warm-up steps: PLMS then has the 3 earlier outputs its 4th-order formula needs


@dataclass(frozen=True)
class PNDMOptions(BaseOptions):
    """Defaults are diffusers' ``PNDMScheduler`` (Runge-Kutta warm-up, leading spacing, final alpha-bar
    abar_0) with ``PNDMPipeline``'s 50 steps. ``skip_prk_steps=True`` is pure PLMS. No clipping: that
    scheduler has none. ``prediction_type="sample"`` (which diffusers refuses here) is converted to
    epsilon the way diffusers converts v."""

    num_inference_steps: int = 50
    timestep_spacing: DiffusersSpacing = "leading"
    skip_prk_steps: bool = False
    set_alpha_to_one: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.skip_prk_steps and self.num_inference_steps < RK_STEPS + 1:
            raise ValueError(
                f"PNDM's Runge-Kutta warm-up takes {RK_STEPS} steps and needs at least {RK_STEPS + 1} in all, "
                f"got {self.num_inference_steps}; use more steps or skip_prk_steps=True (pure PLMS)."
            )


def pndm_timesteps(schedule: NoiseSchedule, options: PNDMOptions) -> list[int]:
    """diffusers' ``PNDMScheduler.timesteps``, one per model evaluation: with the warm-up, 4 per Runge-Kutta
    step (t, s + h, s + h, s from t to the next s, h = T // N // 2) then one per PLMS step, N + 9 in all;
    without, t_0, t_1, t_1, t_2, ..., N + 1 in all (the first step is a predictor-corrector pair)."""
    o, T = options, schedule.num_train_timesteps
    ts = select_timesteps(T, o.num_inference_steps, o.timestep_spacing, o.steps_offset)
    if o.skip_prk_steps:
        return ts[:1] + ts[1:2] + ts[1:]
    h = T // o.num_inference_steps // 2
    rk = [u for t, s in zip(ts[:RK_STEPS], ts[1:RK_STEPS + 1]) for u in (t, s + h, s + h, s)]
    return rk + ts[RK_STEPS:]


@register("pndm", PNDMOptions, "PNDM (Liu et al. 2022): Runge-Kutta warm-up then 4th-order PLMS, N + 9 evaluations",
          pndm_timesteps)
def pndm(model: ModelFn, x: torch.Tensor, schedule: NoiseSchedule, options: PNDMOptions,
         generator: torch.Generator | None = None) -> Iterator[Step]:
    """PNDM (Liu et al. 2022) as diffusers' ``PNDMScheduler``, so the same seed gives the same images:
    3 pseudo Runge-Kutta steps of 4 evaluations, then PLMS steps of 1 (N + 9 evaluations for N steps);
    with ``skip_prk_steps`` a first predictor-corrector step of 2, then PLMS (N + 1).

    As in diffusers, a PLMS step moves from t to t - T // N whatever the spacing, and the model outputs
    are combined before the conversion of v (or x0) to epsilon.
    """
    o = options
    T = schedule.num_train_timesteps
    N = o.num_inference_steps
    ts = select_timesteps(T, N, o.timestep_spacing, o.steps_offset)
    r, h = T // N, T // N // 2
    final = schedule.final_abar(o.set_alpha_to_one)

    def transfer(x: torch.Tensor, t: int, t_prev: int, out: torch.Tensor) -> torch.Tensor:
        # (1) The transfer part phi(x_t, eps, t, t_prev) (Liu et al. 2022, eq. 9): the DDIM step with the given epsilon,
        #     x_prev = sqrt(a' / a) x - (a' - a) eps / (a sqrt(1 - a') + sqrt(a (1 - a) a')),
        #     a = abar_t, a' = abar_prev.
        a = schedule.alphas_cumprod[t].item()  # t in 0..T-1: "trailing" keeps N timesteps (no t = -1, see base)
        a_prev = schedule.abar(t_prev, final).item()
        eps = to_x0_eps(o.prediction_type, out, x, a)[1]
        denom = a * (1 - a_prev) ** 0.5 + (a * (1 - a) * a_prev) ** 0.5
        return (a_prev / a) ** 0.5 * x - (a_prev - a) * eps / denom

    def x0_at(x: torch.Tensor, t: int, out: torch.Tensor) -> torch.Tensor:
        return to_x0_eps(o.prediction_type, out, x, schedule.alphas_cumprod[t].item())[0]

    ets: list[torch.Tensor] = []  # the model outputs the multistep formula combines, the newest last
    start = 0
    if not o.skip_prk_steps:
        for i in range(RK_STEPS):
            # (2) A pseudo 4th-order Runge-Kutta step from t to s: evaluations at t, s + h (twice) and s,
            #     each from x_t through the transfer part, then x_s = phi(x_t, (e1 + 2 e2 + 2 e3 + e4) / 6, t, s).
            t, s = ts[i], ts[i + 1]
            e1 = model(x, t)
            ets.append(e1)
            e2 = model(transfer(x, t, t - h, e1), s + h)
            e3 = model(transfer(x, t, s + h, e2), s + h)
            e4 = model(transfer(x, t, s, e3), s)
            x_prev = transfer(x, t, s, 1 / 6 * e1 + 1 / 3 * e2 + 1 / 3 * e3 + 1 / 6 * e4)
            yield Step(i, t, s, x, x0_at(x, t, e1), x_prev, evaluations=4)
            x = x_prev
        start = RK_STEPS
    elif len(ts) > 1:
        # (3) Without the warm-up: an Euler predictor to t_1, then the corrector with the mean of both outputs.
        t, s = ts[0], ts[1]
        e0 = model(x, t)
        ets.append(e0)
        e1 = model(transfer(x, t, t - r, e0), s)
        x_prev = transfer(x, s + r, s, (e1 + e0) / 2)
        yield Step(0, t, s, x, x0_at(x, t, e0), x_prev, evaluations=2)
        x = x_prev
        start = 1
    for i in range(start, len(ts)):  # N steps
        # (4) PLMS: the pseudo linear multi-step formula of the last (up to) four outputs,
        #     then the transfer to t - T // N.
        t = ts[i]
        e = model(x, t)
        ets = (ets + [e])[-4:]
        if len(ets) == 1:
            out = e
        elif len(ets) == 2:
            out = (3 * ets[-1] - ets[-2]) / 2
        elif len(ets) == 3:
            out = (23 * ets[-1] - 16 * ets[-2] + 5 * ets[-3]) / 12
        else:
            out = (1 / 24) * (55 * ets[-1] - 59 * ets[-2] + 37 * ets[-3] - 9 * ets[-4])
        x_prev = transfer(x, t, t - r, out)
        yield Step(i, t, t - r, x, x0_at(x, t, e), x_prev)
        x = x_prev
