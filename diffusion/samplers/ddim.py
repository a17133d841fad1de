"""DDIM sampling (Song et al. 2021, "Denoising Diffusion Implicit Models", eq. 12)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from ..schedule import NoiseSchedule, to_x0_eps
from .base import ModelFn, SamplerOptions, Step, TimestepListOptions, clip_x0, randn_like, register, visited_timesteps


@dataclass(frozen=True)
class DDIMOptions(SamplerOptions, TimestepListOptions):
    """Defaults are diffusers' ``DDIMScheduler`` with ``DDIMPipeline``'s 50 steps and eta 0; ``timesteps``: an
    explicit sub-sequence (Song et al. 2021, Sec. 4.2: any increasing sub-sequence of 1..T works)."""

    num_inference_steps: int = 50
    eta: float = 0.0
    set_alpha_to_one: bool = True
    use_clipped_model_output: bool = False

    @property
    def stochastic(self) -> bool:
        return self.eta > 0


def predict_x0_eps(out: torch.Tensor, x: torch.Tensor, abar_t: torch.Tensor,
                   options: DDIMOptions) -> tuple[torch.Tensor, torch.Tensor]:
    """The predicted x0 (clipped as the options say) and epsilon at x = x_t (eq. 12's "predicted x0"
    and "direction pointing to x_t"); shared by sampling and inversion (:mod:`diffusion.latents`)."""
    x0, eps = to_x0_eps(options.prediction_type, out, x, abar_t)
    x0 = clip_x0(x0, options)
    if options.use_clipped_model_output:
        eps = (x - abar_t.sqrt().item() * x0) / (1 - abar_t).sqrt().item()
    return x0, eps


@register("ddim", DDIMOptions, "DDIM (Song et al. 2021): eta 0 deterministic, eta 1 close to DDPM")
def ddim(model: ModelFn, x: torch.Tensor, schedule: NoiseSchedule, options: DDIMOptions,
         generator: torch.Generator | None = None) -> Iterator[Step]:
    """DDIM sampling (Song et al. 2021, eq. 12) with sigma_t = eta * sqrt(beta~_t) (eq. 16).

    The previous timestep is ``t - T // K`` for the leading/linspace/trailing spacings, as in
    diffusers' ``DDIMScheduler`` (so the same seed gives the same images), and the next visited
    timestep for "quad" and an explicit ``timesteps`` list, as in the DDIM paper's code.
    """
    o = options
    T = schedule.num_train_timesteps
    ts = visited_timesteps(T, o)
    final = schedule.final_abar(o.set_alpha_to_one)
    for i, t in enumerate(ts):
        if o.timestep_spacing == "quad" or o.timesteps is not None:
            t_prev = ts[i + 1] if i + 1 < len(ts) else -1
        else:
            t_prev = t - T // o.num_inference_steps
        abar_t, abar_prev = schedule.abar(t), schedule.abar(t_prev, final)
        out = model(x, t)
        # (1) "predicted x0" and the epsilon it implies.
        x0, eps = predict_x0_eps(out, x, abar_t, o)
        # (2) sigma_t(eta) = eta * sqrt((1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev)) (eq. 16).
        std = o.eta * ((1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev)).sqrt()
        # (3) x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma^2) eps + sigma z (eq. 12).
        x_prev = abar_prev.sqrt().item() * x0 + (1 - abar_prev - std**2).clamp(min=0).sqrt().item() * eps
        if o.eta > 0:
            x_prev = x_prev + std.item() * randn_like(out, generator)
        yield Step(i, t, t_prev, x, x0, x_prev)
        x = x_prev
