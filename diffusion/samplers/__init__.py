"""Samplers: plain functions over a model, registered by name (see ``base``)."""

from .base import SAMPLERS, SPACINGS, SamplerOptions, SamplerSpec, Step, get_sampler, randn_like, select_timesteps
from .ddim import DDIMOptions, ddim
from .ddpm import DDPMOptions, ddpm

__all__ = ["SAMPLERS", "SPACINGS", "SamplerOptions", "SamplerSpec", "Step", "get_sampler", "randn_like",
           "select_timesteps", "DDIMOptions", "DDPMOptions", "ddim", "ddpm"]
