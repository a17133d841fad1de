"""What diffusers' three multistep solvers share (DPM-Solver++, UniPC, DEIS): the plan of timesteps and sigmas of
their ``set_timesteps``, the log-SNR lambda of each point, and the lower order of the first and last steps.

All three integrate the probability flow ODE in lambda = log(alpha_t / sigma_t), with alpha_t = sqrt(abar_t) and
sigma_t = sqrt(1 - abar_t) (Lu et al. 2022, Sec. 3), reusing the model outputs of the previous steps.
"""

from __future__ import annotations

import math

import numpy as np

from ..schedule import NoiseSchedule
from .base import BaseOptions, check_offset, check_steps, explicit_timesteps, spaced_timesteps
from .noise_levels import convert_sigmas, diffusers_sigmas, sigma_to_t, uses_noise_levels
from .sigmas import sigmas_at


def multistep_plan(schedule: NoiseSchedule, options: BaseOptions, round_karras: bool = True,
                   sigma_range: tuple[float | None, float | None] = (None, None)) -> tuple[list[int], list[float]]:
    """diffusers' ``set_timesteps`` of its multistep schedulers: the timestep of each step's model evaluation
    and its sigma = sigma_t / alpha_t, without the point the last step reaches.

    By spacing, N + 1 points with the last (t = 0) dropped:
    linspace: round(linspace(0, T - 1, N + 1))   leading: arange(N + 1) * (T // (N + 1)) + offset
    trailing: round(arange(T, 0, -T / N)) - 1
    An explicit ``timesteps`` list is taken as it is (with a sigma option it is refused, as diffusers refuses it).
    With a sigma option, N sigmas over the whole trained range (or ``sigma_range``, sigma_min and sigma_max),
    whatever the spacing; the model sees their timesteps rounded (Karras, when ``round_karras``) or truncated
    (diffusers' cast to int64), the update uses the sigmas themselves.
    """
    o, T = options, schedule.num_train_timesteps
    N = o.num_inference_steps
    check_steps(T, N)
    explicit = explicit_timesteps(T, o)
    if explicit is not None:
        if uses_noise_levels(o):
            raise ValueError("An explicit timesteps list cannot be combined with Karras, exponential or beta sigmas "
                             "(they choose the timesteps themselves; diffusers refuses it too): drop one of them.")
        return explicit, [float(s) for s in sigmas_at(schedule, np.array(explicit)).astype(np.float32)]
    if uses_noise_levels(o):
        sigmas = convert_sigmas(diffusers_sigmas(schedule)[::-1], o, *sigma_range)
        t = sigma_to_t(schedule, sigmas)
        if getattr(o, "use_karras_sigmas", False) and round_karras:
            t = t.round()
        return [int(v) for v in t], [float(s) for s in sigmas.astype(np.float32)]
    if o.timestep_spacing == "trailing":
        ts = spaced_timesteps(T, N, "trailing")
    else:  # N + 1 points, the last (t = 0) dropped
        ts = spaced_timesteps(T, N + 1, o.timestep_spacing, o.steps_offset)[:-1]
    ts = [int(t) for t in ts]
    if len(set(ts)) != len(ts):
        raise ValueError(f"{o.timestep_spacing!r} spacing repeats timesteps at {N} steps of T={T}, where a "
                         "multistep solver divides by zero; use fewer steps or another spacing.")
    check_offset(ts[0], T, o.steps_offset)
    return ts, [float(s) for s in sigmas_at(schedule, np.array(ts)).astype(np.float32)]


def log_snr(ratios: list[float]) -> tuple[list[float], list[float], list[float]]:
    """alpha_t = 1 / sqrt(1 + sigma^2), sigma_t = sigma alpha_t and lambda_t = log alpha_t - log sigma_t at each
    sigma = sigma_t / alpha_t of a plan (lambda = inf at sigma = 0, the data)."""
    alpha = [1 / math.sqrt(1 + s * s) for s in ratios]
    sigma = [s * a for s, a in zip(ratios, alpha)]
    lam = [math.log(a) - math.log(s) if s > 0 else math.inf for a, s in zip(alpha, sigma)]
    return alpha, sigma, lam


def multistep_order(solver_order: int, lower_order_final: bool, i: int, n: int, first_order_final: bool = False
                    ) -> int:
    """The order of step ``i`` of ``n`` as DPM-Solver++ and DEIS choose it: 1 on the first step, on the last
    when ``first_order_final`` (DPM-Solver++ landing on sigma = 0) or of a short run (``lower_order_final``,
    under 15 steps); 2 on the second and on a short run's second-to-last; else ``solver_order``."""
    short = lower_order_final and n < 15
    if solver_order == 1 or i < 1 or (i == n - 1 and (short or first_order_final)):
        return 1
    if solver_order == 2 or i < 2 or (i == n - 2 and short):
        return 2
    return 3
