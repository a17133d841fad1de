"""The sigma parameterisation of a variance-preserving model (Karras et al. 2022, "Elucidating the Design
Space of Diffusion-Based Generative Models", Table 1, "VP" column), as diffusers' Euler and Heun
schedulers use it.

x_sigma = x_t / sqrt(abar_t) = x0 + sigma eps with sigma = sqrt((1 - abar_t) / abar_t): the probability
flow ODE is then dx/dsigma = (x - D(x; sigma)) / sigma (eq. 3 with s(t) = 1), and the network sees the
VP-scaled input x_sigma / sqrt(sigma^2 + 1) = x_t (c_in in Table 1).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..schedule import NoiseSchedule, Prediction
from .base import BaseOptions, check_offset, check_steps, trailing_timesteps


def sigma_timesteps(T: int, options: BaseOptions) -> np.ndarray:
    """The descending, possibly fractional timesteps of diffusers' ``EulerDiscreteScheduler`` and
    ``HeunDiscreteScheduler.set_timesteps`` (float32, as there, so the model sees the same values).

    linspace: linspace(0, T - 1, N)   leading: arange(N) * (T // N) + offset   trailing: round(arange(T, 0, -T / N)) - 1
    """
    o = options
    N = o.num_inference_steps
    check_steps(T, N)
    if o.timestep_spacing == "linspace":
        ts = np.linspace(0, T - 1, N, dtype=np.float32)[::-1].copy()
    elif o.timestep_spacing == "leading":
        ts = (np.arange(0, N) * (T // N)).round()[::-1].copy().astype(np.float32) + o.steps_offset
    elif o.timestep_spacing == "trailing":
        ts = trailing_timesteps(T, N).astype(np.float32)
    else:
        raise ValueError(f"Timestep spacing {o.timestep_spacing!r} is not one of 'leading', 'linspace', 'trailing'.")
    check_offset(float(ts.max()), T, o.steps_offset)
    return ts


def sigmas_at(schedule: NoiseSchedule, timesteps: np.ndarray) -> np.ndarray:
    """sigma(t) = sqrt((1 - abar_t) / abar_t), linearly interpolated between the trained timesteps
    (diffusers' ``interpolation_type="linear"``; outside 0..T-1 the end values, as ``np.interp``)."""
    a = schedule.alphas_cumprod.numpy()
    return np.interp(np.asarray(timesteps, dtype=np.float64), np.arange(len(a)), np.sqrt((1 - a) / a))


def final_sigma(schedule: NoiseSchedule, kind: str) -> float:
    """Where the last step lands: 0 (the data, ``final_sigmas_type="zero"``) or sigma at t = 0 ("sigma_min")."""
    return 0.0 if kind == "zero" else float(sigmas_at(schedule, np.array([0.0]))[0])


def init_noise_sigma(sigmas: list[float], spacing: str) -> float:
    """What diffusers multiplies x_T ~ N(0, I) by: sqrt(sigma_max^2 + 1) (the exact std of x_sigma at
    sigma_max) for "leading", sigma_max alone for "linspace" and "trailing"."""
    s = max(sigmas)
    return s if spacing in ("linspace", "trailing") else math.sqrt(s * s + 1)


def vp_scale(sigma: float) -> float:
    """1 / sqrt(sigma^2 + 1): from x_sigma to the variance-preserving x_t (c_in of Table 1)."""
    return 1.0 / math.sqrt(sigma * sigma + 1)


def denoised(prediction: Prediction, model_output: torch.Tensor, x: torch.Tensor, sigma: float) -> torch.Tensor:
    """D(x; sigma), the x0 estimate, from the model output of each prediction type at x_sigma = ``x``:

    epsilon: x - sigma eps     sample: the output     v: x / (sigma^2 + 1) - sigma / sqrt(sigma^2 + 1) v
    """
    if prediction == "epsilon":
        return x - sigma * model_output
    if prediction == "sample":
        return model_output
    if prediction == "v_prediction":
        return model_output * (-sigma / math.sqrt(sigma * sigma + 1)) + x / (sigma * sigma + 1)
    raise ValueError(f"Unknown prediction type {prediction!r}; choose one of epsilon, sample, v_prediction.")
