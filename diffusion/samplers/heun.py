"""Heun's 2nd-order method on the probability flow ODE (Karras et al. 2022, Algorithm 1)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from ..schedule import NoiseSchedule
from .base import DiffusersSpacing, ModelFn, SamplerOptions, Step, clip_x0, register
from .noise_levels import NoiseLevelOptions, noise_levels, sigma_start
from .sigmas import denoised, vp_scale


@dataclass(frozen=True)
class HeunOptions(SamplerOptions, NoiseLevelOptions):
    """Defaults are diffusers' ``HeunDiscreteScheduler`` (linspace spacing, no clipping, last sigma 0)
    with its pipelines' 50 steps (99 model evaluations)."""

    num_inference_steps: int = 50
    timestep_spacing: DiffusersSpacing = "linspace"
    clip_sample: bool = False


def heun_timesteps(schedule: NoiseSchedule, options: HeunOptions) -> list[float]:
    """t_0, then t_1, t_1, ..., t_{N-1}, t_{N-1}: 2N - 1 evaluations (the last step is an Euler step)."""
    ts = [float(t) for t in noise_levels(schedule, options)[0]]
    return ts[:1] + [t for t in ts[1:] for _ in range(2)]


@register("heun", HeunOptions, "Heun (Karras et al. 2022): 2nd-order ODE steps in sigma, 2 evaluations per step",
          heun_timesteps)
def heun(model: ModelFn, x: torch.Tensor, schedule: NoiseSchedule, options: HeunOptions,
         generator: torch.Generator | None = None) -> Iterator[Step]:
    """Heun steps on dx/dsigma = (x - D(x; sigma)) / sigma (Karras et al. 2022, Algorithm 1), as
    diffusers' ``HeunDiscreteScheduler``: N steps cost 2N - 1 model evaluations, the last step (to
    sigma = 0) being an Euler step (Algorithm 1, line 7).

    The model sees fractional timesteps (``Step.t`` is the first one, rounded) and x_sigma / sqrt(sigma^2 + 1).
    ``x`` is x_T ~ N(0, I); it is scaled to x_sigma here (diffusers' ``init_noise_sigma``). The sigmas are
    those of the spacing, or Karras, exponential or beta ones (``use_karras_sigmas``...).
    """
    o = options
    # The plan's sigmas; x_sigma_0 from x_T (diffusers' init_noise_sigma) and x_t as the model sees it.
    ts, sigmas, x, x_t = sigma_start(schedule, o, x)
    for i, t in enumerate(ts):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        # (1) D(x_i; sigma_i) and the Euler step: d_i = (x_i - D) / sigma_i,
        #     x' = x_i + (sigma_next - sigma_i) d_i (lines 4-5).
        x0 = clip_x0(denoised(o.prediction_type, model(x_t, float(t)), x, sigma), o)
        d = (x - x0) / sigma
        dt = sigma_next - sigma
        x_euler = x + d * dt
        if i + 1 == len(ts):  # (2) the last step, to sigma = 0, stays an Euler step (line 7).
            x, evaluations = x_euler, 1
        else:
            # (3) The correction at sigma_next: d' = (x' - D(x'; sigma_next)) / sigma_next,
            #     x_next = x_i + (sigma_next - sigma_i) (d_i + d') / 2 (lines 8-10).
            x0_next = clip_x0(denoised(o.prediction_type, model(x_euler * vp_scale(sigma_next), float(ts[i + 1])),
                                       x_euler, sigma_next), o)
            d_next = (x_euler - x0_next) / sigma_next
            x, evaluations = x + (d + d_next) / 2 * dt, 2
        x_prev = x * vp_scale(sigma_next)
        t_prev = round(float(ts[i + 1])) if i + 1 < len(ts) else -1
        yield Step(i, round(float(t)), t_prev, x_t, x0, x_prev, evaluations)
        x_t = x_prev
