"""Euler's method on the probability flow ODE (Karras et al. 2022, Algorithm 2 without churn)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Literal

import torch

from ..schedule import NoiseSchedule
from .base import DiffusersSpacing, ModelFn, Step, register
from .noise_levels import NoiseLevelOptions, noise_level_timesteps, sigma_start
from .sigmas import denoised, final_sigma, vp_scale

FinalSigma = Literal["zero", "sigma_min"]


@dataclass(frozen=True)
class EulerOptions(NoiseLevelOptions):
    """Defaults are diffusers' ``EulerDiscreteScheduler`` (linspace spacing, linear sigma interpolation,
    last sigma 0, no churn) with its pipelines' 50 steps. No clipping: that scheduler has none.
    ``sigma_min`` / ``sigma_max``: the ends of Karras, exponential or beta sigmas (None: the spacing's)."""

    num_inference_steps: int = 50
    timestep_spacing: DiffusersSpacing = "linspace"
    interpolation_type: Literal["linear"] = "linear"
    final_sigmas_type: FinalSigma = "zero"
    sigma_min: float | None = None
    sigma_max: float | None = None



@register("euler", EulerOptions, "Euler (Karras et al. 2022): 1st-order ODE steps in sigma, 1 evaluation per step",
          noise_level_timesteps, refuses={"timestep_type": "discrete"})
def euler(model: ModelFn, x: torch.Tensor, schedule: NoiseSchedule, options: EulerOptions,
          generator: torch.Generator | None = None) -> Iterator[Step]:
    """Euler steps on dx/dsigma = (x - D(x; sigma)) / sigma (Karras et al. 2022, Algorithm 2 with
    S_churn = 0), as diffusers' ``EulerDiscreteScheduler``: the same seed gives the same images.

    The model sees the fractional timestep t (``Step.t`` is it rounded) and x_sigma / sqrt(sigma^2 + 1).
    ``x`` is x_T ~ N(0, I); it is scaled to x_sigma here (diffusers' ``init_noise_sigma``). The sigmas are
    those of the spacing, or Karras, exponential or beta ones (``use_karras_sigmas``...).
    """
    o = options
    # (1) The plan's sigmas; x_sigma_0 from x_T (diffusers' init_noise_sigma) and x_t as the model sees it.
    ts, sigmas, x, x_t = sigma_start(schedule, o, x, final_sigma(schedule, o.final_sigmas_type))
    for i, t in enumerate(ts):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        # (2) D(x; sigma) from the model, which sees the variance-preserving input x_sigma / sqrt(sigma^2 + 1).
        x0 = denoised(o.prediction_type, model(x_t, float(t)), x, sigma)
        # (3) d = (x - D(x; sigma)) / sigma (Algorithm 2, line 7); x_next = x + (sigma_next - sigma) d (line 8).
        d = (x - x0) / sigma
        x = x + d * (sigma_next - sigma)
        # (4) Shown in the variance-preserving scale; the last x as diffusers returns it (x_sigma: the same
        #     for the default last sigma 0, 1.00005 x_t for final_sigmas_type="sigma_min").
        x_prev = x * vp_scale(sigma_next) if i + 1 < len(ts) else x
        t_prev = round(float(ts[i + 1])) if i + 1 < len(ts) else -1
        yield Step(i, round(float(t)), t_prev, x_t, x0, x_prev)
        x_t = x_prev
