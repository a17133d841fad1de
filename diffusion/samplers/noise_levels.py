"""Noise levels chosen in sigma instead of by timestep spacing, as diffusers' ``use_karras_sigmas``,
``use_exponential_sigmas`` and ``use_beta_sigmas``: Karras et al. 2022 ("Elucidating the Design Space of
Diffusion-Based Generative Models", eq. 5, rho = 7), log-uniform sigmas, and the quantiles of a Beta(0.6, 0.6)
distribution (Lee et al. 2024, "Beta Sampling is All You Need"); each sigma is mapped back to the fractional
timestep the model is evaluated at by interpolating t over log sigma (diffusers' ``_sigma_to_t``).

These plans follow diffusers' float32 sigma table (:func:`diffusers_sigmas`), not the float64 one the
samplers otherwise use: the ends of the range and the timestep of each sigma then agree to the last bit, so the
integer timesteps DPM-Solver++ rounds (or truncates) them to are diffusers' too (with float64 sigmas, some step
counts put one evaluation a timestep off, e.g. 895 for 896 with Karras sigmas at 18 steps of linear betas, and
"squaredcos_cap_v2" puts the first at 999 where diffusers truncates 998.99... to 998).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..schedule import NoiseSchedule
from .base import BaseOptions
from .sigmas import init_noise_sigma, sigma_timesteps, sigmas_at, vp_scale

NOISE_LEVEL_OPTIONS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")
RHO = 7.0  # Karras et al. 2022, Sec. 3 and Table 1: the rho of their deterministic sampler
BETA_ALPHA = BETA_BETA = 0.6  # diffusers' _convert_to_beta defaults


@dataclass(frozen=True)
class NoiseLevelOptions(BaseOptions):
    """The sigma options of diffusers' Euler, Heun and DPM-Solver multistep schedulers (their config
    keys); at most one may be true, as there. All false: the sigmas of the timestep spacing."""

    use_karras_sigmas: bool = False
    use_exponential_sigmas: bool = False
    use_beta_sigmas: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        on = [k for k in NOISE_LEVEL_OPTIONS if getattr(self, k)]
        if len(on) > 1:
            raise ValueError(
                f"Only one of {', '.join(NOISE_LEVEL_OPTIONS)} can be true (diffusers refuses more); "
                f"got {' and '.join(on)}."
            )


def uses_noise_levels(options: BaseOptions) -> bool:
    """Whether ``options`` ask for Karras, exponential or beta sigmas (False for samplers without them)."""
    return any(getattr(options, k, False) for k in NOISE_LEVEL_OPTIONS)


def diffusers_sigmas(schedule: NoiseSchedule) -> np.ndarray:
    """sigma(t) = sqrt((1 - abar_t) / abar_t) for t = 0..T-1 in float32 as diffusers' schedulers compute it
    (float32 betas, a float32 cumulative product)."""
    abar = torch.cumprod(1.0 - schedule.betas_float32, dim=0)
    return (((1 - abar) / abar) ** 0.5).numpy()


def convert_sigmas(sigmas: np.ndarray, options: BaseOptions, sigma_min: float | None = None,
                   sigma_max: float | None = None) -> np.ndarray:
    """N = ``num_inference_steps`` descending sigmas from sigma_max to sigma_min (by default the first and last
    of ``sigmas``, the plan's own), spread as the options ask (diffusers' ``_convert_to_karras / _exponential /
    _beta``); ``sigmas`` unchanged when none of them is on."""
    N = options.num_inference_steps
    lo = float(sigmas[-1]) if sigma_min is None else sigma_min
    hi = float(sigmas[0]) if sigma_max is None else sigma_max
    ramp = np.linspace(0, 1, N)
    if getattr(options, "use_karras_sigmas", False):
        # (1) Karras et al. eq. 5:
        #     sigma_i = (sigma_max^(1/rho) + i / (N - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho.
        return (hi ** (1 / RHO) + ramp * (lo ** (1 / RHO) - hi ** (1 / RHO))) ** RHO
    if getattr(options, "use_exponential_sigmas", False):
        # (2) Log-uniform: log sigma_i = log sigma_max + i / (N - 1) (log sigma_min - log sigma_max).
        return np.exp(np.linspace(math.log(hi), math.log(lo), N))
    if getattr(options, "use_beta_sigmas", False):
        # (3) sigma_i = sigma_min + F^-1(1 - i / (N - 1)) (sigma_max - sigma_min), F the Beta(0.6, 0.6) CDF:
        #     dense at both ends of the range (Lee et al. 2024).
        try:
            from scipy.stats import beta
        except ImportError:
            raise ImportError("use_beta_sigmas needs scipy (as in diffusers): pip install scipy") from None
        return lo + beta.ppf(1 - ramp, BETA_ALPHA, BETA_BETA) * (hi - lo)
    return sigmas


def sigma_to_t(schedule: NoiseSchedule, sigmas: np.ndarray) -> np.ndarray:
    """The fractional timestep of each sigma: t linearly interpolated over log sigma(t) between the trained
    timesteps, clamped to 0..T-1 (diffusers' ``_sigma_to_t``, written as there)."""
    log_sigmas = np.log(diffusers_sigmas(schedule))  # float32, as there
    log_sigma = np.log(np.maximum(np.asarray(sigmas, dtype=np.float64), 1e-10))
    # (4) low: the last trained t with log sigma(t) <= log sigma (0 if none), w its distance to t + 1 in log sigma.
    low = np.cumsum(log_sigma - log_sigmas[:, None] >= 0, axis=0).argmax(axis=0).clip(max=len(log_sigmas) - 2)
    w = np.clip((log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[low + 1]), 0, 1)
    return (1 - w) * low + w * (low + 1)


def noise_levels(schedule: NoiseSchedule, options: BaseOptions) -> tuple[np.ndarray, np.ndarray]:
    """The descending timesteps (float32, as the model sees them) and sigmas (float64) of diffusers'
    ``EulerDiscreteScheduler / HeunDiscreteScheduler.set_timesteps`` (without the final sigma): those of the
    timestep spacing or, with a sigma option, N sigmas spread between the spacing's first and last (or
    ``sigma_min`` / ``sigma_max``) and their timesteps."""
    ts = sigma_timesteps(schedule.num_train_timesteps, options)
    if not uses_noise_levels(options):
        return ts, sigmas_at(schedule, ts)
    spaced = np.interp(ts, np.arange(schedule.num_train_timesteps), diffusers_sigmas(schedule))
    sigmas = convert_sigmas(spaced, options, getattr(options, "sigma_min", None), getattr(options, "sigma_max", None))
    return sigma_to_t(schedule, sigmas).astype(np.float32), sigmas



def noise_level_timesteps(schedule: NoiseSchedule, options: BaseOptions) -> list[float]:
    """The timesteps of a one-evaluation-per-step sigma sampler (Euler, Euler ancestral): :func:`noise_levels`'s,
    fractional for the linspace spacing and the sigma options."""
    return [float(t) for t in noise_levels(schedule, options)[0]]

def sigma_start(schedule: NoiseSchedule, options: BaseOptions, x: torch.Tensor, final: float = 0.0
                ) -> tuple[np.ndarray, list[float], torch.Tensor, torch.Tensor]:
    """What Euler, Euler ancestral and Heun start from: the plan's timesteps, its sigmas with ``final`` appended
    (where the last step lands), x_T ~ N(0, I) scaled to x_sigma by diffusers' ``init_noise_sigma`` (sigma_max,
    sqrt(sigma_max^2 + 1) for "leading"), and that x in the variance-preserving scale the model sees."""
    ts, levels = noise_levels(schedule, options)
    sigmas = [float(s) for s in levels] + [final]
    x = x * init_noise_sigma(sigmas, options.timestep_spacing)
    return ts, sigmas, x, x * vp_scale(sigmas[0])
