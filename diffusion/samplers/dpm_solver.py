"""DPM-Solver++ multistep (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
Probabilistic Models", Algorithm 2: DPM-Solver++(2M))."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Literal

import torch

from ..schedule import NoiseSchedule, to_x0_eps
from .base import DiffusersSpacing, ModelFn, Step, TimestepListOptions, randn_like, register
from .multistep import log_snr, multistep_order, multistep_plan
from .noise_levels import NoiseLevelOptions
from .sigmas import final_sigma


@dataclass(frozen=True)
class DPMSolverOptions(NoiseLevelOptions, TimestepListOptions):
    """Defaults are diffusers' ``DPMSolverMultistepScheduler`` (DPM-Solver++(2M), midpoint, linspace
    spacing, first-order last step to sigma 0) with 20 steps: the number diffusers' documentation and
    its users pick for this scheduler (its pipelines default to 50 for every scheduler). No clipping
    or thresholding: that scheduler does not clip, and thresholding is refused with the checkpoint.
    ``algorithm_type="sde-dpmsolver++"``: the stochastic variant (noise from the sampler's generator)."""

    num_inference_steps: int = 20
    timestep_spacing: DiffusersSpacing = "linspace"
    algorithm_type: Literal["dpmsolver++", "sde-dpmsolver++"] = "dpmsolver++"
    solver_order: Literal[1, 2, 3] = 2
    solver_type: Literal["midpoint", "heun"] = "midpoint"
    lower_order_final: bool = True
    euler_at_final: bool = False
    final_sigmas_type: Literal["zero", "sigma_min"] = "zero"

    @property
    def stochastic(self) -> bool:
        return self.algorithm_type == "sde-dpmsolver++"


def dpm_solver_plan(schedule: NoiseSchedule, options: DPMSolverOptions) -> tuple[list[int], list[float]]:
    """diffusers' ``DPMSolverMultistepScheduler.set_timesteps`` (:func:`multistep_plan`; Karras timesteps are
    rounded except for "squaredcos_cap_v2" betas, as there)."""
    return multistep_plan(schedule, options, round_karras=schedule.beta_schedule != "squaredcos_cap_v2")


def dpm_solver_timesteps(schedule: NoiseSchedule, options: DPMSolverOptions) -> list[int]:
    """One model evaluation per step, at the timesteps of :func:`dpm_solver_plan`."""
    return dpm_solver_plan(schedule, options)[0]


@register(
    "dpm-solver++",
    DPMSolverOptions,
    "DPM-Solver++(2M) (Lu et al. 2022): 2nd-order multistep ODE solver (or SDE: algorithm_type), "
    "1 evaluation per step, 20 steps",
    dpm_solver_timesteps,
    refuses={
        "use_lu_lambdas": False,
        "use_flow_sigmas": False,
        "use_dynamic_shifting": False,
        "lambda_min_clipped": -math.inf,
    },
)
def dpm_solver(
    model: ModelFn,
    x: torch.Tensor,
    schedule: NoiseSchedule,
    options: DPMSolverOptions,
    generator: torch.Generator | None = None,
) -> Iterator[Step]:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2; orders 1 and 3 as diffusers), and with
    ``algorithm_type="sde-dpmsolver++"`` its stochastic counterpart SDE-DPM-Solver++(2M) (the same paper's
    multistep solver of the diffusion SDE), as diffusers' ``DPMSolverMultistepScheduler``: the same seed gives
    the same images (the SDE's noise comes from ``generator`` after x_T's, one draw per step, as there).

    It integrates the data prediction x_theta over lambda = log(alpha_t / sigma_t) with alpha_t = sqrt(abar_t),
    sigma_t = sqrt(1 - abar_t); the first step is first order (DDIM), and so is the last when it lands on
    sigma = 0 (``final_sigmas_type="zero"``: the step's result is x_theta itself, the limit of the updates as
    sigma_t -> 0) or the run is short (``lower_order_final``, under 15 steps).
    """
    o = options
    ts, ratios = dpm_solver_plan(schedule, o)
    # (1) sigma_t / alpha_t at each step (the spacing's, or Karras / exponential / beta sigmas), then the point
    #     the last step reaches (0: the data).
    alpha, sigma, lam = log_snr(ratios + [final_sigma(schedule, o.final_sigmas_type)])
    sde = o.algorithm_type == "sde-dpmsolver++"
    x0s: list[torch.Tensor] = []  # data predictions of the steps so far, the newest last
    n = len(ts)
    for i, t in enumerate(ts):
        # (2) The data prediction x_theta(x_t, t) from the model output (Ho et al. 2020, eq. 15, for epsilon).
        x0 = to_x0_eps(o.prediction_type, model(x, t), x, alpha[i] ** 2)[0]
        x0s = (x0s + [x0])[-3:]
        # (3) The SDE's noise z ~ N(0, I), drawn at every step (the last too), in float32 as diffusers draws it.
        z = randn_like(x.to(torch.float32), generator).to(x.dtype) if sde else None
        # (4) The order: 1 on the first step and on a last step to sigma = 0 or of a short run; up to solver_order.
        order = multistep_order(o.solver_order, o.lower_order_final, i, n,
                                o.euler_at_final or o.final_sigmas_type == "zero")
        x_prev = x0 if sigma[i + 1] == 0 else dpm_update(o, x, x0s, lam[i - order + 1: i + 2], alpha[i + 1],
                                                         sigma[i + 1], sigma[i], z)
        yield Step(i, t, ts[i + 1] if i + 1 < n else -1, x, x0, x_prev)
        x = x_prev


def dpm_update(o: DPMSolverOptions, x: torch.Tensor, x0s: list[torch.Tensor], lam: list[float], a_t: float,
               s_t: float, s_s: float, z: torch.Tensor | None) -> torch.Tensor:
    """One DPM-Solver++ step of order ``len(lam) - 1`` from x_s to x_t (sigma_t > 0): ``x0s`` the data predictions
    so far (newest last), ``lam`` lambda at the steps they came from and at t."""
    order = len(lam) - 1
    h = lam[-1] - lam[-2]
    # (5) D0 = x_theta_i and, from order 2, its divided differences over lambda: r_k = h_{i-k} / h,
    #     D1 = (x_theta_i - x_theta_{i-1}) / r0 (Algorithm 2), and for order 3 D1 extrapolated, D2.
    x0, d1, d2 = x0s[-1], None, None
    if order == 2:
        d1 = (1.0 / ((lam[1] - lam[0]) / h)) * (x0s[-1] - x0s[-2])
    elif order == 3:
        r0, r1 = (lam[2] - lam[1]) / h, (lam[1] - lam[0]) / h
        d1_0, d1_1 = (1.0 / r0) * (x0s[-1] - x0s[-2]), (1.0 / r1) * (x0s[-2] - x0s[-3])
        d1, d2 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1), (1.0 / (r0 + r1)) * (d1_0 - d1_1)
    midpoint = order == 2 and o.solver_type == "midpoint"
    if z is None:
        # (6) ODE: x_t = (sigma_t / sigma_s) x_s - alpha_t (e^{-h} - 1) D0 (DPM-Solver++1 = DDIM), plus for
        #     2M -alpha_t (e^{-h} - 1) D1 / 2 (midpoint) or alpha_t ((e^{-h} - 1) / h + 1) D1 ("heun"; 3M too),
        #     and for 3M -alpha_t ((e^{-h} - 1 + h) / h^2 - 1/2) D2.
        phi = math.expm1(-h)  # e^{-h} - 1
        x_prev = (s_t / s_s) * x - (a_t * phi) * x0
        if d1 is not None:
            x_prev = x_prev + (-0.5 * (a_t * phi) if midpoint else a_t * (phi / h + 1.0)) * d1
        if d2 is not None:
            x_prev = x_prev - (a_t * ((phi + h) / h**2 - 0.5)) * d2
        return x_prev
    # (7) SDE: x_t = (sigma_t / sigma_s) e^{-h} x_s + alpha_t (1 - e^{-2h}) D0 + sigma_t sqrt(1 - e^{-2h}) z,
    #     plus for 2M alpha_t (1 - e^{-2h}) D1 / 2 (midpoint) or alpha_t ((1 - e^{-2h}) / (-2h) + 1) D1
    #     ("heun"; 3M too), and for 3M alpha_t ((1 - e^{-2h} - 2h) / (2h)^2 - 1/2) D2.
    psi = -math.expm1(-2 * h)  # 1 - e^{-2h}
    x_prev = (s_t / s_s * math.exp(-h)) * x + (a_t * psi) * x0
    if d1 is not None:
        x_prev = x_prev + (0.5 * (a_t * psi) if midpoint else a_t * (psi / (-2 * h) + 1.0)) * d1
    if d2 is not None:
        x_prev = x_prev + (a_t * ((psi - 2 * h) / (2 * h) ** 2 - 0.5)) * d2
    return x_prev + (s_t * math.sqrt(psi)) * z
