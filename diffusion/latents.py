"""x_T as a latent code (Song et al. 2021, "Denoising Diffusion Implicit Models", Sec. 4.3, 5.2-5.4).

DDIM with eta = 0 maps x_T to an image deterministically, so x_T is a latent code: running the same update
backwards (the ODE of eq. 14 integrated towards t = T) encodes a real image into its x_T (:func:`ddim_invert`),
and spherical interpolation between two x_T gives images in between (:func:`slerp`). The maths over a model
function, below the pipeline; :mod:`diffusion.latent_tasks` runs the paper's experiments on a pipeline.
"""

from __future__ import annotations

import math
from typing import Any, Iterator, Sequence

import torch

from .samplers import Step
from .samplers.base import ModelFn, explicit_timesteps, select_timesteps
from .samplers.ddim import DDIMOptions, predict_x0_eps
from .schedule import NoiseSchedule

INVERSION_SPACINGS = ("leading", "trailing")  # what diffusers' DDIMInverseScheduler takes
# Table 2 of the DDIM paper: reconstruction error (per-dimension MSE of images in [0, 1]) on CIFAR-10's test set.
PAPER_TABLE2 = {10: 0.014, 20: 0.0065, 50: 0.0023, 100: 0.0009, 200: 0.0004, 500: 0.0001, 1000: 0.0001}


def check_inversion_options(options: DDIMOptions) -> None:
    """Refuse, with the reason, the DDIM options an encoder cannot honour: eta > 0 (the stochastic
    process has no inverse), spacings diffusers' ``DDIMInverseScheduler`` does not define, and x0
    prediction starting from abar = 1."""
    if options.eta != 0:
        raise ValueError(f"Inversion is deterministic DDIM (eta = 0); got eta={options.eta:g}.")
    if options.timestep_spacing not in INVERSION_SPACINGS:
        raise ValueError(
            f"Inversion takes timestep_spacing {' or '.join(map(repr, INVERSION_SPACINGS))} (as diffusers' "
            f"DDIMInverseScheduler), got {options.timestep_spacing!r}."
        )
    if options.prediction_type == "sample" and options.set_alpha_to_one:
        raise ValueError(
            "Inversion of a sample-predicting model starts at abar = 1, where the implied epsilon "
            "(x - x0) / sqrt(1 - abar) is 0 / 0 (diffusers gives NaN); set set_alpha_to_one=false."
        )


def inversion_timesteps(T: int, options: DDIMOptions) -> list[tuple[int, int]]:
    """(t_from, t_to) of every encoding step, in order: ``t_to`` ascends through the DDIM sampler's
    timesteps (diffusers' ``DDIMInverseScheduler.set_timesteps``: the same plans, reversed) and
    ``t_from = t_to - T // K`` as its ``step`` computes it (negative: the image itself); with an explicit
    ``timesteps`` list, ``t_from`` is the previous listed level, as DDIM samples such a list.

    "trailing" keeps the K timesteps asked for where diffusers' float arange adds a K + 1-th, t = -1
    (K = 61 of T = 1000 is the first): diffusers would evaluate the model at t = -1 and step to
    alphas_cumprod[-1] there (see :func:`diffusion.samplers.base.trailing_timesteps`)."""
    check_inversion_options(options)
    explicit = explicit_timesteps(T, options)
    if explicit is not None:  # an explicit list: each step from the previous visited level, as DDIM samples it
        up = explicit[::-1]
        return [(up[i - 1] if i else -1, t) for i, t in enumerate(up)]
    K = options.num_inference_steps
    ts = select_timesteps(T, K, options.timestep_spacing, options.steps_offset)[::-1]
    return [(max(min(t - T // K, T - 1), -1), t) for t in ts]


def ddim_invert(model: ModelFn, x: torch.Tensor, schedule: NoiseSchedule, options: DDIMOptions) -> Iterator[Step]:
    """Encode ``x`` (model space, [-1, 1]) into x_T, one :class:`Step` per update (``t``: the level of
    ``x_t``, -1 for the image; ``t_prev``: the level reached; the last ``x_prev`` is x_T).

    Each step is DDIM's eq. 12 with sigma = 0 run towards more noise (Sec. 4.3), as diffusers'
    ``DDIMInverseScheduler`` loop does it: the model is evaluated at the step's target timestep on the
    current x (first-order: the exact inverse would need eps at the point being solved for).
    """
    o = options
    final = schedule.final_abar(o.set_alpha_to_one)
    for i, (t_from, t_to) in enumerate(inversion_timesteps(schedule.num_train_timesteps, o)):
        abar_from, abar_to = schedule.abar(t_from, final), schedule.abar(t_to)
        out = model(x, t_to)
        # (1) predicted x0 and epsilon at the current level abar_from.
        x0, eps = predict_x0_eps(out, x, abar_from, o)
        # (2) x_to = sqrt(abar_to) x0 + sqrt(1 - abar_to) eps (eq. 12, sigma = 0, towards t_to > t_from).
        x_next = abar_to.sqrt().item() * x0 + (1 - abar_to).sqrt().item() * eps
        yield Step(i, t_from, t_to, x, x0, x_next)
        x = x_next


def _check_batch(x: Any, shape: tuple[int, int, int], what: str, plural: bool) -> None:
    """``x`` is a non-empty float tensor (n, C, H, W) of image ``shape`` with finite values; ValueError
    saying what differs otherwise (``what``: "The images", "The starting noise")."""
    has, is_ = ("have", "are") if plural else ("has", "is")
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{what} must be a torch.Tensor, got {type(x).__name__}.")
    want = f"(n, {', '.join(map(str, shape))})"
    if x.ndim != 4 or x.shape[0] < 1:
        raise ValueError(f"{what} {has} shape {tuple(x.shape)}; this model takes {want}, n at least 1.")
    if x.shape[1] != shape[0]:
        raise ValueError(f"{what} {has} {x.shape[1]} channel(s); this model takes {shape[0]} ({want}).")
    if tuple(x.shape[2:]) != shape[1:]:
        raise ValueError(f"{what} {is_} {x.shape[2]}x{x.shape[3]}; this model takes {want}.")
    if not x.is_floating_point():
        raise ValueError(f"{what} must be floats{' in [0, 1]' if plural else ''}, got {x.dtype}.")
    if not torch.isfinite(x).all():
        raise ValueError(f"{what} {'contain' if plural else 'contains'} NaN or infinite values.")


def check_images(images: torch.Tensor, shape: tuple[int, int, int]) -> None:
    """``images`` are what the pipeline's ``sample`` returns for a model of image ``shape``:
    a float tensor (n, C, H, W) in [0, 1]; ValueError saying what differs otherwise."""
    _check_batch(images, shape, "The images", plural=True)
    low, high = images.min().item(), images.max().item()
    if low < 0 or high > 1:
        raise ValueError(f"The images must lie in [0, 1] (as sample() returns them), got {low:g} to {high:g}.")


NOISE_LIMIT = 1000.0  # standard normal noise stays within about +-6; DDIM latents of images within a few more


def check_noise(noise: torch.Tensor, shape: tuple[int, int, int]) -> None:
    """``noise`` can start a sampler for a model of image ``shape``: x_T as :meth:`initial_noise` draws it
    or as :meth:`invert` returns it, a float tensor (n, C, H, W) of finite values within
    +-:data:`NOISE_LIMIT`; ValueError saying what differs otherwise."""
    _check_batch(noise, shape, "The starting noise", plural=False)
    peak = noise.abs().max().item()
    if peak > NOISE_LIMIT:
        raise ValueError(
            f"The starting noise reaches {peak:g}; x_T is standard normal noise (within about +-6), so values "
            f"beyond +-{NOISE_LIMIT:g} cannot be a starting point."
        )


def slerp(a: torch.Tensor, b: torch.Tensor, t: float | Sequence[float] | torch.Tensor) -> torch.Tensor:
    """Spherical interpolation of two latents (Song et al. 2021, Sec. 5.4; Shoemake 1985):
    ``sin((1 - t) th) / sin(th) a + sin(t th) / sin(th) b``, ``th = arccos(<a, b> / (|a| |b|))`` over all
    elements. ``t``: a number (result shaped as ``a``) or a 1-D sequence (result (len(t), *a.shape)).

    Parallel latents (th ~ 0) are interpolated linearly (the limit); opposite ones (th ~ pi), and zero
    latents, have no unique great circle and raise ValueError."""
    if a.shape != b.shape:
        raise ValueError(f"slerp needs latents of one shape, got {tuple(a.shape)} and {tuple(b.shape)}.")
    scalar = not isinstance(t, (torch.Tensor, Sequence)) or (isinstance(t, torch.Tensor) and t.ndim == 0)
    w = torch.as_tensor(t, dtype=torch.float64).reshape(-1, *([1] * a.ndim))
    if not torch.isfinite(w).all():
        raise ValueError("slerp's t must be finite.")
    a64, b64 = a.detach().to(torch.float64), b.detach().to(torch.float64)
    na, nb = a64.norm(), b64.norm()
    if na == 0 or nb == 0:
        raise ValueError("slerp of a zero latent: the angle is undefined.")
    # (1) th = arccos(<a, b> / (|a| |b|)), clamped against rounding.
    cos = ((a64 * b64).sum() / (na * nb)).clamp(-1, 1)
    theta = torch.arccos(cos)
    if math.pi - theta.item() < 1e-6:
        raise ValueError("slerp of opposite latents (b = -a): every great circle joins them, so it is undefined.")
    if theta.item() < 1e-6:  # (2) the limit th -> 0: linear interpolation
        out = (1 - w) * a64 + w * b64
    else:  # (3) sin((1 - t) th) / sin(th) a + sin(t th) / sin(th) b
        out = (torch.sin((1 - w) * theta) * a64 + torch.sin(w * theta) * b64) / torch.sin(theta)
    out = out.to(a.dtype)
    return out[0] if scalar else out


def mse_per_dimension(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean squared error per dimension of two image batches in [0, 1] (Table 2's measure)."""
    return (a.double() - b.double()).pow(2).mean().item()
