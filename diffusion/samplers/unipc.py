"""UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of Diffusion
Models"): the multistep predictor UniP and, after each model evaluation, the corrector UniC, which reuses that
evaluation, so that a step still costs one model call."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Literal

import numpy as np
import torch

from ..schedule import NoiseSchedule, to_x0_eps
from .base import DiffusersSpacing, ModelFn, Step, TimestepListOptions, register, whole_numbers
from .multistep import log_snr, multistep_plan
from .noise_levels import NoiseLevelOptions
from .sigmas import final_sigma

# solver_type values diffusers' UniPC reads as "bh2" (a DPM-Solver or DEIS config given to UniPC.from_config)
OTHER_SOLVER_TYPES = ("midpoint", "heun", "logrho")


@dataclass(frozen=True)
class UniPCOptions(NoiseLevelOptions, TimestepListOptions):
    """Defaults are diffusers' ``UniPCMultistepScheduler`` (UniPC-2 with B(h) = e^h - 1, "bh2", the data
    prediction, linspace spacing, the last step first order and to sigma = 0) with 20 steps, as DPM-Solver++.
    "bh1" (B(h) = h) is the paper's choice for unconditional sampling at very few steps.
    ``disable_corrector``: steps (0-based) whose result is not corrected; ``predict_x0=False`` runs the noise
    prediction form (UniPC with epsilon), which cannot land on sigma = 0 (``final_sigmas_type="sigma_min"``)."""

    num_inference_steps: int = 20
    timestep_spacing: DiffusersSpacing = "linspace"
    solver_order: Literal[1, 2, 3] = 2
    solver_type: Literal["bh1", "bh2"] = "bh2"
    predict_x0: bool = True
    lower_order_final: bool = True
    disable_corrector: tuple[int, ...] = ()
    final_sigmas_type: Literal["zero", "sigma_min"] = "zero"
    sigma_min: float | None = None
    sigma_max: float | None = None

    def __post_init__(self) -> None:
        if self.solver_type in OTHER_SOLVER_TYPES:  # as diffusers' __init__ does
            object.__setattr__(self, "solver_type", "bh2")
        object.__setattr__(self, "disable_corrector", _step_list(self.disable_corrector))
        super().__post_init__()
        if not self.predict_x0 and self.final_sigmas_type == "zero":
            raise ValueError("UniPC with predict_x0=false cannot land on sigma = 0 (its update multiplies 0 by "
                             "infinity there; diffusers returns NaN): set final_sigmas_type='sigma_min'.")
        if not self.lower_order_final and self.solver_order > 1 and self.final_sigmas_type == "zero":
            raise ValueError("UniPC with lower_order_final=false takes a higher-order last step to sigma = 0, which "
                             "divides by zero (diffusers returns NaN): keep lower_order_final=true, or set "
                             "final_sigmas_type='sigma_min'.")


def _step_list(value: object) -> tuple[int, ...]:
    """``disable_corrector`` from a config's list, a CLI's "0,1" or a tuple: whole step indices >= 0."""
    steps = whole_numbers(value)
    if steps is None:
        raise ValueError(f"disable_corrector must list step indices (whole numbers from 0), e.g. [0, 1]; "
                         f"got {value!r}.")
    return steps


def unipc_plan(schedule: NoiseSchedule, options: UniPCOptions) -> tuple[list[int], list[float]]:
    """diffusers' ``UniPCMultistepScheduler.set_timesteps`` (:func:`multistep_plan`, Karras timesteps rounded)."""
    return multistep_plan(schedule, options, sigma_range=(options.sigma_min, options.sigma_max))


def unipc_timesteps(schedule: NoiseSchedule, options: UniPCOptions) -> list[int]:
    """One model evaluation per step, at the timesteps of :func:`unipc_plan`."""
    return unipc_plan(schedule, options)[0]


@register(
    "unipc",
    UniPCOptions,
    "UniPC (Zhao et al. 2023): multistep predictor-corrector ODE solver, 1 evaluation per step, 20 steps",
    unipc_timesteps,
    refuses={"solver_p": None, "use_flow_sigmas": False, "use_dynamic_shifting": False},
)
def unipc(
    model: ModelFn,
    x: torch.Tensor,
    schedule: NoiseSchedule,
    options: UniPCOptions,
    generator: torch.Generator | None = None,
) -> Iterator[Step]:
    """UniPC-p (Zhao et al. 2023, Algorithm 1 with the corrector of Algorithm 2) as diffusers'
    ``UniPCMultistepScheduler``: at each step the model output at x_i first corrects x_i (UniC, from x_{i-1},
    unless ``disable_corrector`` lists step i - 1), then the predictor UniP takes the corrected x_i to x_{i+1}.
    The order rises by one a step up to ``solver_order`` and, with ``lower_order_final``, falls to reach 1 on
    the last step. Deterministic: ``generator`` is not used.

    A last step to sigma = 0 returns x_theta, the update's limit; diffusers 0.42 returns NaN there with "bh1"
    (its B(h) = h is infinite and multiplies a zero), so it is compared with diffusers at ``final_sigmas_type=
    "sigma_min"``."""
    o = options
    ts, ratios = unipc_plan(schedule, o)
    # (1) alpha, sigma and lambda at each step and at the point the last step reaches.
    alpha, sigma, lam = log_snr(ratios + [final_sigma(schedule, o.final_sigmas_type)])
    n = len(ts)
    ms: list[torch.Tensor] = []  # converted model outputs (x0 or eps) of the steps so far, the newest last
    x_last, order = x, 1
    for i, t in enumerate(ts):
        # (2) The model output as the data prediction x_theta (predict_x0) or the noise prediction eps_theta.
        x0, eps = to_x0_eps(o.prediction_type, model(x, t), x, alpha[i] ** 2)
        m = x0 if o.predict_x0 else eps
        # (3) UniC: x_i corrected with the new output, at the previous step's order (Algorithm 2). The Step keeps
        #     the x the model saw (the previous step's x_prev).
        x_seen = x
        if i > 0 and i - 1 not in o.disable_corrector:
            x = unipc_update(o, x_last, ms, lam[i - order: i + 1], alpha[i], sigma[i], sigma[i - 1], alpha[i - 1],
                             m_t=m)
        ms = (ms + [m])[-o.solver_order:]
        # (4) The order: up to solver_order, one more each step (the warm-up), down to 1 at the end.
        order = min(o.solver_order, n - i) if o.lower_order_final else o.solver_order
        order = min(order, i + 1)
        # (5) UniP: x_i -> x_{i+1}.
        x_last = x
        x_next = unipc_update(o, x, ms, lam[i - order + 1: i + 2], alpha[i + 1], sigma[i + 1], sigma[i], alpha[i])
        yield Step(i, t, ts[i + 1] if i + 1 < n else -1, x_seen, x0, x_next)
        x = x_next


def unipc_update(o: UniPCOptions, x: torch.Tensor, ms: list[torch.Tensor], lam: list[float], a_t: float, s_t: float,
                 s_s: float, a_s: float, m_t: torch.Tensor | None = None) -> torch.Tensor:
    """One UniP step (``m_t`` None) or UniC correction (``m_t``: the output at the point reached) from x_s to x_t.
    ``ms`` the outputs so far, newest (at s) last; ``lam`` lambda at the order's earlier points, at s, at t."""
    h = lam[-1] - lam[-2]
    m0 = ms[-1]
    order = len(lam) - 1
    # (6) r_k = (lambda_{s_k} - lambda_s) / h and D1_k = (m_{s_k} - m_s) / r_k for the k earlier points.
    rks = [(lam[-3 - k] - lam[-2]) / h for k in range(order - 1)]
    d1s = [(ms[-2 - k] - m0) / r for k, r in enumerate(rks)]
    # (7) With hh = -h (data prediction) or h: h phi_1 = e^{hh} - 1, B(h) = hh ("bh1") or e^{hh} - 1 ("bh2"), and the
    #     order conditions R rho = b: R_{k,j} = r_j^(k-1) (r = 1 for the newest point), b_k = h phi_{k+1} k! / B(h).
    hh = -h if o.predict_x0 else h
    h_phi_1 = math.expm1(hh)
    b_h = hh if o.solver_type == "bh1" else math.expm1(hh)
    h_phi_k, factorial, b = h_phi_1 / hh - 1, 1, []
    for k in range(1, order + 1):
        b.append(h_phi_k * factorial / b_h)
        factorial *= k + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    R = np.array([[r ** (k - 1) for r in [*rks, 1.0]] for k in range(1, order + 1)])
    # (8) x_t = (sigma_t / sigma_s) x_s - alpha_t h phi_1 m_s - alpha_t B(h) sum_k rho_k D1_k (data prediction), or
    #     (alpha_t / alpha_s) x_s - sigma_t h phi_1 m_s - sigma_t B(h) sum_k rho_k D1_k (noise prediction).
    if o.predict_x0:
        base, scale = (s_t / s_s) * x - (a_t * h_phi_1) * m0, a_t * b_h
    else:
        base, scale = (a_t / a_s) * x - (s_t * h_phi_1) * m0, s_t * b_h
    if m_t is None:  # UniP: rho from the first order - 1 conditions (1/2 for order 2)
        if not d1s:
            return base
        rhos = [0.5] if order == 2 else list(np.linalg.solve(R[:-1, :-1], np.array(b[:-1])))
        return base - scale * sum(float(r) * d for r, d in zip(rhos, d1s))
    # UniC: rho from all the conditions, the last weighting D1_t = m_t - m_s (1/2 at order 1)
    rhos = [0.5] if order == 1 else list(np.linalg.solve(R, np.array(b)))
    corr = sum((float(r) * d for r, d in zip(rhos[:-1], d1s)), torch.zeros_like(x))
    return base - scale * (corr + float(rhos[-1]) * (m_t - m0))
