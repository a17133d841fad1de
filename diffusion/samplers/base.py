"""What every sampler shares: the step record, the options base class, timestep selection, the registry.

A sampler is a plain function ``sampler(model, x, schedule, options, generator) -> Iterator[Step]``
(the k-diffusion convention): it starts from x_T = ``x`` and yields one :class:`Step` per update,
so callers can show, record or stop the denoising at any point. The last step's ``x_prev`` is the sample.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Literal, Protocol

import numpy as np
import torch

from ..schedule import PREDICTIONS, NoiseSchedule, Prediction

Spacing = Literal["leading", "linspace", "trailing", "quad"]
SPACINGS = typing.get_args(Spacing)
ModelFn = Callable[[torch.Tensor, int], torch.Tensor]  # (x_t, t) -> model output


@dataclass
class Step:
    """One update x_t -> x_prev. ``pred_x0`` is the model's estimate of the clean image at ``t``."""

    index: int  # 0-based position in the loop
    t: int  # the timestep the model was evaluated at
    t_prev: int  # the timestep reached (-1: the data)
    x_t: torch.Tensor
    pred_x0: torch.Tensor
    x_prev: torch.Tensor
    evaluations: int = 1  # model evaluations this step spent


@dataclass(frozen=True)
class SamplerOptions:
    """Options every sampler takes. Field names follow diffusers' scheduler configs, so values from a
    checkpoint's ``scheduler_config.json`` fill them directly."""

    num_inference_steps: int = 50
    timestep_spacing: Spacing = "leading"
    steps_offset: int = 0
    prediction_type: Prediction = "epsilon"
    clip_sample: bool = True
    clip_sample_range: float = 1.0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            allowed = typing.get_args(f.type) if typing.get_origin(f.type) is Literal else None
            if isinstance(f.type, str):  # postponed annotations: resolve through the module's names
                hint = typing.get_type_hints(type(self))[f.name]
                allowed = typing.get_args(hint) if typing.get_origin(hint) is Literal else None
            if allowed and value not in allowed:
                raise ValueError(f"{type(self).__name__}: {f.name}={value!r} is not one of {', '.join(map(repr, allowed))}.")
        if not isinstance(self.num_inference_steps, (int, np.integer)) or self.num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be a positive integer, got {self.num_inference_steps!r}.")
        if self.clip_sample_range <= 0:
            raise ValueError(f"clip_sample_range must be positive, got {self.clip_sample_range}.")

    def replace(self, **changes: Any) -> "SamplerOptions":
        return dataclasses.replace(self, **changes)


class Sampler(Protocol):
    def __call__(self, model: ModelFn, x: torch.Tensor, schedule: NoiseSchedule, options: Any,
                 generator: torch.Generator | None = None) -> Iterator[Step]: ...


def select_timesteps(T: int, steps: int, spacing: Spacing = "leading", offset: int = 0) -> list[int]:
    """The descending timesteps a sampler visits (diffusers' ``set_timesteps``; Ho et al. 2020's
    respacing in Nichol & Dhariwal 2021, Sec. 4; "quad" is the DDIM paper's, Song et al. 2021, App. D.2).

    leading:  arange(K) * (T // K) + offset      linspace: round(linspace(0, T - 1, K))
    trailing: round(arange(T, 0, -T / K)) - 1   quad:     floor(linspace(0, sqrt(0.8 T), K) ** 2)
    """
    if not 1 <= steps <= T:
        raise ValueError(f"The number of steps must be between 1 and {T} (the model's training timesteps), got {steps}.")
    if spacing == "leading":
        ts = np.arange(steps) * (T // steps) + offset
    elif spacing == "linspace":
        ts = np.linspace(0, T - 1, steps).round()
    elif spacing == "trailing":
        ts = np.round(np.arange(T, 0, -T / steps)).astype(np.int64)[::-1] - 1
    elif spacing == "quad":
        ts = np.floor(np.linspace(0, math.sqrt(T * 0.8), steps) ** 2)
        if len(np.unique(ts)) != steps:
            most = max(k for k in range(1, steps) if len(np.unique(np.floor(np.linspace(0, math.sqrt(T * 0.8), k) ** 2))) == k)
            raise ValueError(f"'quad' spacing repeats timesteps for {steps} steps of T={T}; use at most {most} steps or another spacing.")
    else:
        raise ValueError(f"Unknown timestep spacing {spacing!r}; choose one of {', '.join(SPACINGS)}.")
    ts = [int(t) for t in ts[::-1]]
    if ts[0] >= T:
        raise ValueError(f"steps_offset={offset} pushes the first timestep to {ts[0]}, past the last trained timestep {T - 1}.")
    return ts


def randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Noise drawn on the generator's device and moved to x's (as diffusers' ``randn_tensor``), so a
    CPU generator gives the same numbers whatever device the model is on."""
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)


def clip_x0(x0: torch.Tensor, options: SamplerOptions) -> torch.Tensor:
    return x0.clamp(-options.clip_sample_range, options.clip_sample_range) if options.clip_sample else x0


@dataclass(frozen=True)
class SamplerSpec:
    """A registered sampler: its function, its options class and a one-line description."""

    name: str
    fn: Sampler
    options: type[SamplerOptions]
    description: str

    def make_options(self, **values: Any) -> SamplerOptions:
        """Build options, refusing names this sampler does not take (with the list of those it does)."""
        names = [f.name for f in dataclasses.fields(self.options)]
        unknown = [k for k in values if k not in names]
        if unknown:
            raise ValueError(f"Sampler {self.name!r} has no option {', '.join(map(repr, unknown))}; its options are: {', '.join(names)}.")
        return self.options(**values)


SAMPLERS: dict[str, SamplerSpec] = {}


def register(name: str, options: type[SamplerOptions], description: str) -> Callable[[Sampler], Sampler]:
    """Decorator adding a sampler to :data:`SAMPLERS` (the CLI and the studio list what is there)."""

    def wrap(fn: Sampler) -> Sampler:
        SAMPLERS[name] = SamplerSpec(name, fn, options, description)
        return fn

    return wrap


def get_sampler(name: str) -> SamplerSpec:
    try:
        return SAMPLERS[name]
    except KeyError:
        raise ValueError(f"Unknown sampler {name!r}; available: {', '.join(SAMPLERS)}.") from None


__all__ = ["Step", "SamplerOptions", "SamplerSpec", "SAMPLERS", "SPACINGS", "PREDICTIONS", "ModelFn",
           "select_timesteps", "randn_like", "clip_x0", "register", "get_sampler"]
