"""The DDIM paper's experiments with latent codes, on a pipeline (Song et al. 2021, Sec. 5.2-5.4):
interpolation between the x_T of seeds, one x_T decoded at several step counts, and reconstruction
through DDIM inversion. A class-conditional model decodes (and encodes) under ``class_labels`` at
``guidance_scale``, as :meth:`DiffusionPipeline.sample <diffusion.pipeline.DiffusionPipeline.sample>`."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from .latents import slerp
from .pipeline import DiffusionPipeline
from .samplers.ddim import DDIMOptions


def interpolation_latents(pipe: DiffusionPipeline, seeds: Sequence[int], frames: int) -> torch.Tensor:
    """x_T of each seed (:meth:`DiffusionPipeline.initial_noise`) and ``frames`` slerped latents from each
    to the next, endpoints included once: ((len(seeds) - 1) * (frames - 1) + 1, C, H, W)."""
    if len(seeds) < 2:
        raise ValueError(f"Interpolation needs at least two seeds, got {len(seeds)}.")
    if frames < 2:
        raise ValueError(f"Interpolation needs at least 2 frames (the two ends), got {frames}.")
    ends = [pipe.initial_noise(1, seed)[0] for seed in seeds]
    w = torch.linspace(0, 1, frames, dtype=torch.float64)
    parts = [slerp(a, b, w if i == 0 else w[1:]) for i, (a, b) in enumerate(zip(ends, ends[1:]))]
    return torch.cat(parts)


def decode_options(pipe: DiffusionPipeline, **overrides: Any) -> DDIMOptions:
    """Deterministic DDIM options for this model (its scheduler config, then ``overrides``); eta must be 0."""
    options = pipe.sampler_options("ddim", **overrides)
    if options.eta != 0:
        raise ValueError(f"Latent codes are decoded with deterministic DDIM (eta = 0); got eta={options.eta:g}.")
    return options


def consistency(
    pipe: DiffusionPipeline, noise: torch.Tensor, steps: Sequence[int], *, class_labels: Any = None,
    guidance_scale: float | None = None, **overrides: Any
) -> dict[int, torch.Tensor]:
    """The same x_T (``noise``) decoded with DDIM (eta 0) at each step count (Sec. 5.2, Fig. 5): step
    count -> images in [0, 1]. All counts are checked before the first decoding."""
    if not steps:
        raise ValueError("Give at least one step count.")
    plans = {k: decode_options(pipe, **{**overrides, "num_inference_steps": k}) for k in steps}
    return {k: pipe.sample("ddim", noise=noise, options=options, class_labels=class_labels,
                           guidance_scale=guidance_scale) for k, options in plans.items()}


def reconstruct(pipe: DiffusionPipeline, images: torch.Tensor, options: DDIMOptions,
                batch_size: int | None = None, *, class_labels: Any = None,
                guidance_scale: float | None = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode ``images`` ([0, 1]) to x_T and decode them again with the same DDIM plan (Table 2):
    (latents, reconstructions in [0, 1]). A class-conditional model encodes and decodes under the same
    label and guidance scale (1 unless given: the conditional model's ODE, which inverts best)."""
    labels = dict(class_labels=class_labels, guidance_scale=guidance_scale)
    latents = pipe.invert(images, options=options, batch_size=batch_size, **labels)
    return latents, pipe.sample("ddim", noise=latents, options=options, batch_size=batch_size, **labels)
