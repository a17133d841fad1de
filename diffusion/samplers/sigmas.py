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
from .base import BaseOptions, check_offset, check_steps, spaced_timesteps


def sigma_timesteps(T: int, options: BaseOptions) -> np.ndarray:
    """The descending, possibly fractional timesteps of diffusers' ``EulerDiscreteScheduler`` and
    ``HeunDiscreteScheduler.set_timesteps`` (:func:`spaced_timesteps`, linspace unrounded; float32, as there, so
    the model sees the same values)."""
    o = options
    check_steps(T, o.num_inference_steps)
    ts = spaced_timesteps(T, o.num_inference_steps, o.timestep_spacing, o.steps_offset, round_linspace=False)
    ts = ts.astype(np.float32)
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
