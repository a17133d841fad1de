"""Samplers: plain functions over a model, registered by name (see ``base``)."""

from .base import (
    SAMPLERS,
    SPACINGS,
    BaseOptions,
    SamplerOptions,
    SamplerSpec,
    Step,
    get_sampler,
    randn_like,
    select_timesteps,
)
from .ddim import DDIMOptions, ddim
from .ddpm import DDPMOptions, ddpm
from .deis import DEISOptions, deis
from .dpm_solver import DPMSolverOptions, dpm_solver
from .euler import EulerOptions, euler
from .euler_ancestral import EulerAncestralOptions, euler_ancestral
from .heun import HeunOptions, heun
from .pndm import PNDMOptions, pndm
from .unipc import UniPCOptions, unipc

__all__ = [
    "SAMPLERS",
    "SPACINGS",
    "BaseOptions",
    "SamplerOptions",
    "SamplerSpec",
    "Step",
    "get_sampler",
    "randn_like",
    "select_timesteps",
    "DDIMOptions",
    "DDPMOptions",
    "DEISOptions",
    "DPMSolverOptions",
    "EulerOptions",
    "EulerAncestralOptions",
    "HeunOptions",
    "PNDMOptions",
    "UniPCOptions",
    "ddim",
    "ddpm",
    "deis",
    "dpm_solver",
    "euler",
    "euler_ancestral",
    "heun",
    "pndm",
    "unipc",
]
