"""DDPM and DDIM in PyTorch: a UNet interchangeable with diffusers' UNet2DModel, noise schedules,
samplers that expose every step, and checkpoint I/O for folders and the Hugging Face Hub."""

from .files import CheckpointError
from .pipeline import DiffusionPipeline, load, to_unit
from .samplers import SAMPLERS, Step, get_sampler
from .schedule import NoiseSchedule
from .unet import UNet, UNetConfig

__all__ = ["CheckpointError", "DiffusionPipeline", "NoiseSchedule", "SAMPLERS", "Step", "UNet", "UNetConfig",
           "get_sampler", "load", "to_unit"]
