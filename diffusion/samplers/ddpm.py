"""DDPM ancestral sampling (Ho et al. 2020, Algorithm 2), respaced to any number of steps."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Literal

import torch

from ..schedule import NoiseSchedule, to_x0_eps
from .base import ModelFn, SamplerOptions, Step, TimestepListOptions, clip_x0, randn_like, register, visited_timesteps

VarianceType = Literal["fixed_small", "fixed_large"]


@dataclass(frozen=True)
class DDPMOptions(SamplerOptions, TimestepListOptions):
    """Defaults are diffusers' ``DDPMScheduler`` with ``DDPMPipeline``'s 1000 steps; ``timesteps``: an explicit
    list, as its ``set_timesteps(timesteps=...)``."""

    num_inference_steps: int = 1000
    variance_type: VarianceType = "fixed_small"

    @property
    def stochastic(self) -> bool:
        return True


@register("ddpm", DDPMOptions, "DDPM ancestral sampling (Ho et al. 2020), fixed-small or fixed-large variance")
def ddpm(model: ModelFn, x: torch.Tensor, schedule: NoiseSchedule, options: DDPMOptions,
         generator: torch.Generator | None = None) -> Iterator[Step]:
    """DDPM ancestral sampling (Ho et al. 2020, Algorithm 2), respaced as in Nichol & Dhariwal 2021."""
    o = options
    ts = visited_timesteps(schedule.num_train_timesteps, o)
    for i, t in enumerate(ts):
        t_prev = ts[i + 1] if i + 1 < len(ts) else -1
        # (1) The respaced chain's own beta: beta'_t = 1 - abar_t / abar_prev.
        abar_t, abar_prev = schedule.abar(t), schedule.abar(t_prev)
        beta = 1 - abar_t / abar_prev
        out = model(x, t)
        # (2) x0 from the model's prediction (eq. 15 for epsilon), clipped to the data range.
        x0 = clip_x0(to_x0_eps(o.prediction_type, out, x, abar_t)[0], o)
        # (3) Posterior mean mu~(x_t, x0) (eq. 7).
        c0 = (abar_prev.sqrt() * beta / (1 - abar_t)).item()
        ct = ((1 - beta).sqrt() * (1 - abar_prev) / (1 - abar_t)).item()
        x_prev = c0 * x0 + ct * x
        # (4) sigma_t^2 = beta~_t (fixed_small, eq. 7) or beta_t (fixed_large); no noise on the last step.
        if t > 0:
            var = beta if o.variance_type == "fixed_large" else ((1 - abar_prev) / (1 - abar_t) * beta).clamp(min=1e-20)
            x_prev = x_prev + var.sqrt().item() * randn_like(out, generator)
        yield Step(i, t, t_prev, x, x0, x_prev)
        x = x_prev
