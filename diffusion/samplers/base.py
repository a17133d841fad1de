"""What every sampler shares: the step record, the options base class, timestep selection, the registry.

A sampler is a plain function ``sampler(model, x, schedule, options, generator) -> Iterator[Step]``
(the k-diffusion convention): it starts from x_T = ``x`` and yields one :class:`Step` per update,
so callers can show, record or stop the denoising at any point. The last step's ``x_prev`` is the sample.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import typing
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Literal, Protocol

import numpy as np
import torch

from ..schedule import PREDICTIONS, NoiseSchedule, Prediction
from ..typed import Range, coerce

Spacing = Literal["leading", "linspace", "trailing", "quad"]
SPACINGS = typing.get_args(Spacing)
DiffusersSpacing = Literal["leading", "linspace", "trailing"]  # what diffusers' schedulers other than DDPM/DDIM take
# (x_t, t) -> model output. t is fractional for the samplers that evaluate between the trained timesteps
# (Euler, Heun), as diffusers' UNet2DModel and our UNet accept.
ModelFn = Callable[[torch.Tensor, float], torch.Tensor]


@dataclass
class Step:
    """One update x_t -> x_prev. ``pred_x0`` is the model's estimate of the clean image at ``t``.

    ``x_t`` and ``x_prev`` are in the variance-preserving scale x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps
    whatever the sampler integrates (the sigma-space samplers, Euler and Heun, divide their
    x_sigma by sqrt(sigma^2 + 1)), so every sampler's steps display alike.
    """

    index: int  # 0-based position in the loop
    t: int  # the timestep of the step's first model evaluation (Euler, Heun: rounded from a fractional one)
    t_prev: int  # the timestep reached (negative: the data)
    x_t: torch.Tensor
    pred_x0: torch.Tensor
    x_prev: torch.Tensor
    evaluations: int = 1  # model evaluations this step spent (Heun: 2, PNDM's Runge-Kutta steps: 4)


# The ranges of numeric options, by field name, whichever sampler takes them; a sampler's option that is
# not here still has its type checked, and a float must be finite. An option that needs a range adds it here.
OPTION_RANGES: dict[str, Range] = {
    "num_inference_steps": Range(1),  # at most T: check_steps
    "steps_offset": Range(0, lambda T: T - 1, why="every timestep must stay in 0..T-1"),
    "eta": Range(0, 1, why="0: deterministic DDIM, 1: as noisy as DDPM"),
    "clip_sample_range": Range(0, open_low=True),
    "sigma_min": Range(0, open_low=True),  # or None: the plan's own
    "sigma_max": Range(0, open_low=True),
}


def check_option(owner: str, name: str, hint: Any, value: Any) -> Any:
    """``value`` for the option ``name`` of type ``hint``, coerced by :func:`diffusion.typed.coerce`
    (numpy scalars to Python, a whole float to int, text to its type), or ValueError saying what is
    wrong: a wrong type, a NaN or infinite float, a value outside :data:`OPTION_RANGES` or the hint's ``Literal``."""
    value = coerce(name, hint, value, owner)
    if name in OPTION_RANGES and isinstance(value, (int, float)) and not isinstance(value, bool):
        OPTION_RANGES[name].check(name, value)
    return value


def check_options(options: "BaseOptions", T: int) -> None:
    """The ranges of :data:`OPTION_RANGES` that depend on the model's T (``steps_offset`` <= T - 1)."""
    for name, value in dataclasses.asdict(options).items():
        if name in OPTION_RANGES and isinstance(value, (int, float)) and not isinstance(value, bool):
            OPTION_RANGES[name].check(name, value, T)


def check_timesteps(name: str, timesteps: list[float], T: int) -> None:
    """Every timestep a sampler's options make it visit is one the model was trained on (0..T-1)."""
    bad = [t for t in timesteps if not 0 <= t <= T - 1]
    if bad:
        raise ValueError(f"These options make the {name!r} sampler evaluate the model at t = {bad[0]:g}, outside "
                         f"its trained timesteps 0..{T - 1}; change steps_offset, the spacing or the number of steps.")


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


@dataclass(frozen=True)
class BaseOptions:
    """Options every sampler takes. Field names follow diffusers' scheduler configs, so values from a
    checkpoint's ``scheduler_config.json`` fill them directly."""

    num_inference_steps: int = 50
    timestep_spacing: Spacing = "leading"
    steps_offset: int = 0
    prediction_type: Prediction = "epsilon"

    def __post_init__(self) -> None:
        """Check every field against its type hint and :data:`OPTION_RANGES` (see :func:`check_option`),
        storing the normalised value (50.0 -> 50 for an int, numpy scalars -> Python)."""
        for name, hint in _hints(type(self)).items():
            object.__setattr__(self, name, check_option(type(self).__name__, name, hint, getattr(self, name)))

    @property
    def stochastic(self) -> bool:
        """Whether the sampler draws fresh noise as it runs (DDPM, DDIM with eta > 0, SDE solvers): its sample is
        then not the probability-flow ODE's solution for its x_T, however many steps it takes."""
        return False


def whole_numbers(value: Any) -> tuple[int, ...] | None:
    """A list, a tuple or text ("999, 800" or "0 3") of whole numbers from 0, as a tuple; None if it is not one
    (the callers say what they wanted: :func:`timestep_list`, UniPC's ``disable_corrector``)."""
    items = value.replace(",", " ").split() if isinstance(value, str) else value
    try:
        numbers = tuple(int(float(v)) for v in items)
        whole = all(float(v) == int(float(v)) for v in items)
    except (TypeError, ValueError):
        return None
    return numbers if whole and all(n >= 0 for n in numbers) else None


def timestep_list(value: Any) -> tuple[int, ...]:
    """An explicit list of timesteps (:func:`whole_numbers`), strictly descending (each one visited once, noisiest
    first), or ValueError saying what is wrong."""
    ts = whole_numbers(value)
    example = "e.g. timesteps=[999, 800, 600, 400, 200, 0]"
    if not ts:
        raise ValueError(f"timesteps must list whole timesteps from 0 up, {example}; got {value!r}.")
    if any(b >= a for a, b in zip(ts, ts[1:])):
        raise ValueError(f"timesteps must be in strictly descending order (noisiest first), {example}; got {list(ts)}.")
    return ts


@dataclass(frozen=True)
class TimestepListOptions(BaseOptions):
    """``timesteps``: an explicit list instead of the spacing (diffusers' ``set_timesteps(timesteps=[999, 800,
    ...])``, the DDIM paper's hand-picked sub-sequences), checked by :func:`timestep_list`; it sets the number of
    steps, and the spacing and ``steps_offset`` are not used."""

    timesteps: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.timesteps is not None:
            object.__setattr__(self, "timesteps", timestep_list(self.timesteps))
            object.__setattr__(self, "num_inference_steps", len(self.timesteps))
        super().__post_init__()


def explicit_timesteps(T: int, options: BaseOptions) -> list[int] | None:
    """The options' explicit ``timesteps`` checked against the model's T (None: use the spacing)."""
    ts = getattr(options, "timesteps", None)
    if ts is None:
        return None
    if ts[0] > T - 1:
        raise ValueError(f"timesteps start at {ts[0]}, past the model's last trained timestep {T - 1}; "
                         f"list timesteps from {T - 1} down.")
    return list(ts)


def visited_timesteps(T: int, options: BaseOptions) -> list[int]:
    """The descending whole timesteps a DDPM or DDIM run visits: the explicit list, or the spacing's
    (:func:`select_timesteps`)."""
    explicit = explicit_timesteps(T, options)
    if explicit is not None:
        return explicit
    return select_timesteps(T, options.num_inference_steps, options.timestep_spacing, options.steps_offset)


@dataclass(frozen=True)
class SamplerOptions(BaseOptions):
    """:class:`BaseOptions` and the clipping of the predicted x0, for the samplers whose diffusers
    scheduler clips (DDPM, DDIM, Heun); DPM-Solver++, Euler and PNDM have no such option there."""

    clip_sample: bool = True
    clip_sample_range: float = 1.0


class Sampler(Protocol):
    def __call__(self, model: ModelFn, x: torch.Tensor, schedule: NoiseSchedule, options: Any,
                 generator: torch.Generator | None = None) -> Iterator[Step]: ...


def check_steps(T: int, steps: int) -> None:
    if not 1 <= steps <= T:
        raise ValueError(
            f"The number of steps must be between 1 and {T} (the model's training timesteps), got {steps}."
        )


def check_offset(first: float, T: int, offset: int) -> None:
    if first >= T:
        raise ValueError(
            f"steps_offset={offset} pushes the first timestep to {first:g}, past the last trained timestep {T - 1}."
        )


def trailing_timesteps(T: int, steps: int) -> np.ndarray:
    """The "trailing" spacing's ``steps`` descending timesteps, round(arange(T, 0, -T / K)) - 1, as float.

    diffusers' arange gets a K + 1-th point, t = -1, at some K (61 of T = 1000 is the first) through
    float rounding, and its schedulers then take an extra step at t = -1 (DDPM, DDIM, PNDM read
    alphas_cumprod[-1], the noisiest alpha-bar, there). We keep the K timesteps asked for: K steps, the
    model only ever sees trained timesteps (docs/diffusers-parity.md)."""
    return np.round(np.arange(T, 0, -T / steps))[:steps] - 1


def spaced_timesteps(T: int, steps: int, spacing: Spacing = "leading", offset: int = 0,
                     round_linspace: bool = True) -> np.ndarray:
    """The one implementation of timestep spacing: ``steps`` descending timesteps of ``0..T-1`` (diffusers'
    ``set_timesteps``; Ho et al. 2020's respacing in Nichol & Dhariwal 2021, Sec. 4; "quad" is the DDIM paper's,
    Song et al. 2021, App. D.2), as float64. ``round_linspace=False`` keeps linspace's fractional timesteps
    (Euler and Heun evaluate the model there).

    leading:  arange(K) * (T // K) + offset      linspace: round(linspace(0, T - 1, K))
    trailing: round(arange(T, 0, -T / K)) - 1   quad:     floor(linspace(0, sqrt(0.8 T), K) ** 2)

    The caller checks ``steps`` (:func:`check_steps`): DPM-Solver++ spaces K + 1 points for K steps.
    """
    if spacing == "leading":
        ts = np.arange(steps) * (T // steps) + offset
    elif spacing == "linspace":
        ts = np.linspace(0, T - 1, steps)
        ts = ts.round() if round_linspace else ts
    elif spacing == "trailing":
        return trailing_timesteps(T, steps)
    elif spacing == "quad":
        ts = np.floor(np.linspace(0, math.sqrt(T * 0.8), steps) ** 2)
        if len(np.unique(ts)) != steps:
            most = max(
                k for k in range(1, steps) if len(np.unique(np.floor(np.linspace(0, math.sqrt(T * 0.8), k) ** 2))) == k
            )
            raise ValueError(
                f"'quad' spacing repeats timesteps for {steps} steps of T={T}; "
                f"use at most {most} steps or another spacing."
            )
    else:
        raise ValueError(f"Unknown timestep spacing {spacing!r}; choose one of {', '.join(SPACINGS)}.")
    return np.asarray(ts, dtype=np.float64)[::-1].copy()


def select_timesteps(T: int, steps: int, spacing: Spacing = "leading", offset: int = 0) -> list[int]:
    """The descending whole timesteps a DDPM, DDIM or PNDM run visits (:func:`spaced_timesteps`)."""
    check_steps(T, steps)
    ts = [int(t) for t in spaced_timesteps(T, steps, spacing, offset)]
    check_offset(ts[0], T, offset)
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
    """A registered sampler: its function, its options class, a one-line description, for samplers
    that do not evaluate the model once at each of :func:`select_timesteps` their own ``plan``, and the
    scheduler-config keys its diffusers counterpart honours but it does not implement (``refuses``: key
    -> the value that leaves the maths unchanged)."""

    name: str
    fn: Sampler
    options: type[BaseOptions]
    description: str
    plan: Callable[[NoiseSchedule, Any], list[float]] | None = None
    refuses: dict[str, Any] = dataclasses.field(default_factory=dict)

    def check_config(self, config: dict[str, Any]) -> None:
        """Raise ValueError if ``config`` (the keys a model's scheduler config sets) asks for something
        diffusers would do and this sampler would silently not (Lu lambdas, say)."""
        for key, off in self.refuses.items():
            if key in config and config[key] is not None and config[key] != off:
                raise ValueError(
                    f"This model's scheduler config sets {key}={config[key]!r}, which diffusers honours but the "
                    f"{self.name!r} sampler does not implement, so its samples would differ from diffusers'. "
                    f"Pick another sampler, or remove {key!r} from the model's scheduler_config.json."
                )

    def timesteps(self, schedule: NoiseSchedule | int, options: BaseOptions) -> list[float]:
        """The timestep of every model evaluation, in order (diffusers' ``scheduler.timesteps``), for a
        model of this noise schedule: its length is the number of model evaluations. An int T stands for
        the default linear schedule of T timesteps (the same plan unless a Karras, exponential or beta
        sigma option makes the timesteps depend on the betas). Raises ValueError, with the reason, for
        options this schedule cannot take."""
        if not isinstance(schedule, NoiseSchedule):
            schedule = NoiseSchedule.from_config(num_train_timesteps=schedule)
        T = schedule.num_train_timesteps
        check_options(options, T)
        if self.plan is not None:
            ts = self.plan(schedule, options)
        else:
            ts = visited_timesteps(T, options)
        check_timesteps(self.name, ts, T)
        return ts

    def make_options(self, **values: Any) -> BaseOptions:
        """Build options, refusing names this sampler does not take (with the list of those it does)."""
        names = [f.name for f in dataclasses.fields(self.options)]
        unknown = [k for k in values if k not in names]
        if unknown:
            raise ValueError(
                f"Sampler {self.name!r} has no option {', '.join(map(repr, unknown))}; "
                f"its options are: {', '.join(names)}."
            )
        return self.options(**values)


SAMPLERS: dict[str, SamplerSpec] = {}


def register(name: str, options: type[BaseOptions], description: str,
             plan: Callable[[NoiseSchedule, Any], list[float]] | None = None,
             refuses: dict[str, Any] | None = None) -> Callable[[Sampler], Sampler]:
    """Decorator adding a sampler to :data:`SAMPLERS` (the CLI and the studio list what is there).
    ``plan(schedule, options)``: the timestep of every model evaluation (see :meth:`SamplerSpec.timesteps`);
    ``refuses``: see :class:`SamplerSpec`."""

    def wrap(fn: Sampler) -> Sampler:
        SAMPLERS[name] = SamplerSpec(name, fn, options, description, plan, refuses or {})
        return fn

    return wrap


def get_sampler(name: str) -> SamplerSpec:
    try:
        return SAMPLERS[name]
    except KeyError:
        raise ValueError(f"Unknown sampler {name!r}; available: {', '.join(SAMPLERS)}.") from None


__all__ = [
    "Step",
    "BaseOptions",
    "SamplerOptions",
    "SamplerSpec",
    "SAMPLERS",
    "SPACINGS",
    "PREDICTIONS",
    "ModelFn",
    "DiffusersSpacing",
    "Range",
    "OPTION_RANGES",
    "check_option",
    "check_options",
    "check_timesteps",
    "check_steps",
    "check_offset",
    "spaced_timesteps",
    "trailing_timesteps",
    "select_timesteps",
    "whole_numbers",
    "timestep_list",
    "TimestepListOptions",
    "explicit_timesteps",
    "visited_timesteps",
    "randn_like",
    "clip_x0",
    "register",
    "get_sampler",
]
