"""Ancestral Euler sampling (Karras et al. 2022's Euler step in sigma with fresh noise at every step, as
k-diffusion's ``sample_euler_ancestral`` with eta = 1)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import torch

from ..schedule import NoiseSchedule
from .base import BaseOptions, DiffusersSpacing, ModelFn, Step, randn_like, register
from .noise_levels import noise_level_timesteps, sigma_start
from .sigmas import denoised, vp_scale


@dataclass(frozen=True)
class EulerAncestralOptions(BaseOptions):
    """Defaults are diffusers' ``EulerAncestralDiscreteScheduler`` (linspace spacing, last sigma 0, the full
    ancestral noise: no eta) with its pipelines' 50 steps. No clipping or sigma options: that scheduler has
    none. ``prediction_type="sample"``, which it refuses, takes the model output as D(x; sigma)."""

    num_inference_steps: int = 50
    timestep_spacing: DiffusersSpacing = "linspace"

    @property
    def stochastic(self) -> bool:
        return True


@register(
    "euler-ancestral",
    EulerAncestralOptions,
    "Euler ancestral (k-diffusion): Euler step down to sigma_down, then fresh noise up to sigma_next, "
    "1 evaluation per step",
    noise_level_timesteps,
)
def euler_ancestral(model: ModelFn, x: torch.Tensor, schedule: NoiseSchedule, options: EulerAncestralOptions,
                    generator: torch.Generator | None = None) -> Iterator[Step]:
    """Ancestral Euler steps, as diffusers' ``EulerAncestralDiscreteScheduler`` (k-diffusion's
    ``sample_euler_ancestral``): each step from sigma to sigma_next splits sigma_next^2 into the part an
    ODE step reaches (sigma_down^2) and fresh noise (sigma_up^2, the DDPM posterior's variance in sigma space:
    DDIM's eta = 1). The noise comes from ``generator`` after x_T's, one draw per step (the last, with
    sigma_up = 0, too), so the same seed gives diffusers' images.

    The model sees the fractional timestep t (``Step.t`` is it rounded) and x_sigma / sqrt(sigma^2 + 1).
    ``x`` is x_T ~ N(0, I); it is scaled to x_sigma here (diffusers' ``init_noise_sigma``).
    """
    o = options
    # (1) The plan's sigmas; x_sigma_0 from x_T (diffusers' init_noise_sigma) and x_t as the model sees it.
    ts, sigmas, x, x_t = sigma_start(schedule, o, x)
    for i, t in enumerate(ts):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        # (2) D(x; sigma) from the model, which sees the variance-preserving input x_sigma / sqrt(sigma^2 + 1).
        out = model(x_t, float(t))
        x0 = denoised(o.prediction_type, out, x, sigma)
        # (3) sigma_up = sqrt(sigma_next^2 (sigma^2 - sigma_next^2) / sigma^2),
        #     sigma_down = sqrt(sigma_next^2 - sigma_up^2).
        sigma_up = math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2)
        sigma_down = math.sqrt(max(sigma_next**2 - sigma_up**2, 0.0))
        # (4) The Euler step to sigma_down with d = (x - D(x; sigma)) / sigma, then noise up to sigma_next.
        d = (x - x0) / sigma
        x = x + d * (sigma_down - sigma) + randn_like(out, generator) * sigma_up
        # (5) Shown in the variance-preserving scale; the last x (sigma_next = 0) as diffusers returns it.
        x_prev = x * vp_scale(sigma_next) if i + 1 < len(ts) else x
        t_prev = round(float(ts[i + 1])) if i + 1 < len(ts) else -1
        yield Step(i, round(float(t)), t_prev, x_t, x0, x_prev)
        x_t = x_prev
