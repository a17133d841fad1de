"""DEIS (Zhang and Chen 2023, "Fast Sampling of Diffusion Models with Exponential Integrator"): the multistep
exponential integrator of the noise prediction with the polynomial extrapolation in log rho ("logrho"), rho =
sigma_t / alpha_t, as diffusers' ``DEISMultistepScheduler``."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Literal

import torch

from ..schedule import NoiseSchedule, to_x0_eps
from .base import DiffusersSpacing, ModelFn, Step, TimestepListOptions, register
from .multistep import log_snr, multistep_order, multistep_plan
from .noise_levels import NoiseLevelOptions, uses_noise_levels
from .sigmas import final_sigma


@dataclass(frozen=True)
class DEISOptions(NoiseLevelOptions, TimestepListOptions):
    """Defaults are diffusers' ``DEISMultistepScheduler`` (2nd-order "logrho" DEIS, linspace spacing, lower
    orders at the end of short runs) with 20 steps, as DPM-Solver++. Its last step lands on sigma at t = 0
    (diffusers has no ``final_sigmas_type`` for DEIS), or with a sigma option stays at the last sigma.
    ``algorithm_type`` and ``solver_type`` have one value each, as there ("dpmsolver++", "midpoint" and the like
    from another scheduler's config are read as these, as diffusers does)."""

    num_inference_steps: int = 20
    timestep_spacing: DiffusersSpacing = "linspace"
    solver_order: Literal[1, 2, 3] = 2
    algorithm_type: Literal["deis"] = "deis"
    solver_type: Literal["logrho"] = "logrho"
    lower_order_final: bool = True

    def __post_init__(self) -> None:
        if self.algorithm_type in ("dpmsolver", "dpmsolver++"):  # as diffusers' __init__ does
            object.__setattr__(self, "algorithm_type", "deis")
        if self.solver_type in ("midpoint", "heun", "bh1", "bh2"):
            object.__setattr__(self, "solver_type", "logrho")
        super().__post_init__()


def deis_plan(schedule: NoiseSchedule, options: DEISOptions) -> tuple[list[int], list[float]]:
    """diffusers' ``DEISMultistepScheduler.set_timesteps`` (:func:`multistep_plan`), then the point the last step
    reaches: sigma at t = 0 for a spacing; the last sigma again with a sigma option (the last step then stays)."""
    ts, sigmas = multistep_plan(schedule, options)
    return ts, sigmas + [sigmas[-1] if uses_noise_levels(options) else final_sigma(schedule, "sigma_min")]


def deis_timesteps(schedule: NoiseSchedule, options: DEISOptions) -> list[int]:
    """One model evaluation per step, at the timesteps of :func:`deis_plan`."""
    return deis_plan(schedule, options)[0]


@register(
    "deis",
    DEISOptions,
    "DEIS (Zhang and Chen 2023): multistep exponential integrator (log-rho), 1 evaluation per step, 20 steps",
    deis_timesteps,
    refuses={"use_flow_sigmas": False, "use_dynamic_shifting": False},
)
def deis(
    model: ModelFn,
    x: torch.Tensor,
    schedule: NoiseSchedule,
    options: DEISOptions,
    generator: torch.Generator | None = None,
) -> Iterator[Step]:
    """DEIS-kM ("logrho", Zhang and Chen 2023, eq. 14 with the polynomial in log rho) as diffusers'
    ``DEISMultistepScheduler``: the noise prediction of the last k steps extrapolated by a Lagrange polynomial
    and integrated exactly in rho. Deterministic: ``generator`` is not used."""
    o = options
    ts, ratios = deis_plan(schedule, o)
    # (1) alpha_t and sigma_t at each step and at the point the last step reaches; rho = sigma_t / alpha_t.
    alpha, sigma, lam = log_snr(ratios)
    n = len(ts)
    ms: list[torch.Tensor] = []  # noise predictions of the steps so far, the newest last
    for i, t in enumerate(ts):
        # (2) The noise prediction, through the data prediction as diffusers converts it.
        x0 = to_x0_eps(o.prediction_type, model(x, t), x, alpha[i] ** 2)[0]
        ms = (ms + [(x - alpha[i] * x0) / sigma[i]])[-3:]
        order = multistep_order(o.solver_order, o.lower_order_final, i, n)
        if order == 1:
            # (3) First order (DDIM): x_t = (alpha_t / alpha_s) x_s - sigma_t (e^h - 1) eps_s, h = lambda_t - lambda_s.
            x_next = (alpha[i + 1] / alpha[i]) * x - (sigma[i + 1] * math.expm1(lam[i + 1] - lam[i])) * ms[-1]
        else:
            # (4) Order k: x_t = alpha_t (x_s / alpha_s + sum_j c_j eps_j), c_j the integral over rho from rho_s to
            #     rho_t of the Lagrange basis polynomial (in log rho) of point j.
            rho = ratios[i - order + 1: i + 2][::-1]  # rho_t, rho_s0, rho_s1, ...
            coefs = deis_coefficients(rho[0], rho[1:])
            x_next = alpha[i + 1] * (x / alpha[i] + sum(c * m for c, m in zip(coefs, ms[::-1])))
        yield Step(i, t, ts[i + 1] if i + 1 < n else -1, x, x0, x_next)
        x = x_next


def deis_coefficients(rho_t: float, rho_s: list[float]) -> list[float]:
    """The weights of the noise predictions at ``rho_s`` (newest first, 2 or 3 of them) for a step to ``rho_t``:
    the integral from rho_s[0] to rho_t of each point's Lagrange basis polynomial in log rho (diffusers' ``ind_fn``)."""
    if len(rho_s) == 2:
        def ind(t: float, b: float, c: float) -> float:
            return t * (-math.log(c) + math.log(t) - 1) / (math.log(b) - math.log(c))

        s0, s1 = rho_s
        return [ind(rho_t, s0, s1) - ind(s0, s0, s1), ind(rho_t, s1, s0) - ind(s0, s1, s0)]

    def ind3(t: float, b: float, c: float, d: float) -> float:
        lt, lc, ld, lb = math.log(t), math.log(c), math.log(d), math.log(b)
        return t * (lc * (ld - lt + 1) - ld * lt + ld + lt**2 - 2 * lt + 2) / ((lb - lc) * (lb - ld))

    s0, s1, s2 = rho_s
    return [ind3(rho_t, s0, s1, s2) - ind3(s0, s0, s1, s2), ind3(rho_t, s1, s2, s0) - ind3(s0, s1, s2, s0),
            ind3(rho_t, s2, s0, s1) - ind3(s0, s2, s0, s1)]
