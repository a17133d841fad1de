"""Sampler options in the studio: discovered from the library's registry (a newly registered sampler
gets controls without changes here), checked by the library, shown as Gradio controls."""

from __future__ import annotations

import dataclasses
import re
import typing
from typing import Any

import gradio as gr

import diffusion
from diffusion.samplers import SAMPLERS, SamplerOptions, get_sampler
from diffusion.typed import coerce

from .errors import refused
from .widgets import keep_in_range

PRIMARY_OPTIONS = ("num_inference_steps", "eta", "variance_type", "timestep_spacing")
HIDDEN_OPTIONS = {
    "prediction_type",  # a property of the trained model: always the checkpoint's value
    "interpolation_type",  # one allowed value: there to refuse configs asking another
    "sigma_min",  # Euler's and UniPC's ends of Karras / exponential / beta sigmas: the checkpoint's
    "sigma_max",
    "disable_corrector",  # UniPC's list of uncorrected steps: the checkpoint's (or --option on the command line)
    "timesteps",  # an explicit list of timesteps: the library's and the command line's (--option timesteps=999,500,0)
}
API_NAMES = {"num_inference_steps": "steps"}
LABELS = {
    "num_inference_steps": "Steps",
    "eta": "eta",
    "variance_type": "Variance type",
    "timestep_spacing": "Timestep selection",
    "steps_offset": "Steps offset",
    "clip_sample": "Clip predicted x0",
    "clip_sample_range": "Clip range",
    "set_alpha_to_one": "Final alpha-bar = 1",
    "use_clipped_model_output": "Use clipped model output",
    "use_karras_sigmas": "Karras sigmas",
    "use_exponential_sigmas": "Exponential sigmas",
    "use_beta_sigmas": "Beta sigmas",
    "algorithm_type": "Algorithm",
    "solver_order": "Solver order",
    "solver_type": "Solver type",
    "predict_x0": "Predict x0 (UniPC's data-prediction form)",
}
INFO = {
    "eta": "0: deterministic DDIM; 1: as noisy as DDPM",
    "variance_type": "fixed_small: posterior variance beta~_t; fixed_large: beta_t",
    "timestep_spacing": "how the visited timesteps are spread over 0..T-1",
    "clip_sample": "clamp the predicted x0 to the data range at every step",
    "use_karras_sigmas": "noise levels of Karras et al. 2022 (rho = 7) instead of the spacing's; "
    "at most one sigma option",
    "use_exponential_sigmas": "log-uniform noise levels instead of the spacing's",
    "use_beta_sigmas": "Beta(0.6, 0.6) quantiles of the noise range (dense at both ends)",
    "algorithm_type": "dpmsolver++: the ODE solver; sde-dpmsolver++: its stochastic (SDE) version",
    "solver_order": "how many past model outputs each multistep update combines",
    "solver_type": "DPM-Solver++: midpoint or heun 2nd-order form; UniPC: bh1 (B(h) = h) or bh2 (B(h) = e^h - 1)",
}


def sampler_fields(sampler: str) -> dict[str, Any]:
    """The options a sampler takes (name -> type hint), minus the model's own (prediction type)."""
    spec = get_sampler(sampler)
    hints = typing.get_type_hints(spec.options)
    return {f.name: hints[f.name] for f in dataclasses.fields(spec.options) if f.name not in HIDDEN_OPTIONS}


def all_option_fields() -> dict[str, Any]:
    """Every option of every registered sampler, the primary ones first."""
    merged: dict[str, Any] = {}
    for name in SAMPLERS:
        for k, hint in sampler_fields(name).items():
            merged.setdefault(k, hint)
    return {
        **{k: merged[k] for k in PRIMARY_OPTIONS if k in merged},
        **{k: v for k, v in merged.items() if k not in PRIMARY_OPTIONS},
    }


def default_options(pipe: diffusion.DiffusionPipeline | None, sampler: str) -> SamplerOptions:
    """A sampler's defaults: the checkpoint's scheduler config when a model is loaded."""
    return pipe.sampler_options(sampler) if pipe is not None else get_sampler(sampler).make_options()


def split_options(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """UI / API keyword values -> option names (``steps`` -> ``num_inference_steps``; ``a_eta`` -> ``eta``
    with ``prefix="a_"``)."""
    inverse = {v: k for k, v in API_NAMES.items()}
    out = {}
    for k, v in values.items():
        if prefix:
            if not k.startswith(prefix):
                continue
            k = k[len(prefix) :]
        out[inverse.get(k, k)] = v
    return out


def make_options(pipe: diffusion.DiffusionPipeline, sampler: str | None, values: dict[str, Any]) -> SamplerOptions:
    """Checked sampler options from UI / API values (``values`` may hold other samplers' options: they
    are ignored; None means the model's default). Raises ``gr.Error`` saying what to change."""
    if sampler not in SAMPLERS:
        raise refused(f"Unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}.")
    fields = sampler_fields(sampler)
    chosen = {k: v for k, v in values.items() if k in fields and v is not None}
    try:  # types, ranges and the timesteps this model's T allows: diffusion.samplers.base / diffusion.typed
        return pipe.sampler_options(sampler, **chosen)
    except ValueError as e:
        raise refused(in_ui_words(str(e))) from None


def in_ui_words(message: str) -> str:
    """A library message with the option names a visitor sees ("Steps", not ``num_inference_steps``)."""
    for name, label in LABELS.items():
        message = re.sub(rf"(?<![\w.]){name}(?!\w)", label, message)
    return message[:1].upper() + message[1:]


def check_count(value: Any, label: str, low: int, high: int) -> int:
    """A whole number from ``low`` to ``high`` (2.5 images is refused, not rounded), else gr.Error."""
    try:
        n = coerce(label, int, value)
    except ValueError:
        raise refused(f"{label} must be a whole number from {low} to {high}; got {value!r}.") from None
    if not low <= n <= high:
        raise refused(f"{label} must be from {low} to {high}; got {n}.")
    return n


def evaluations(pipe: diffusion.DiffusionPipeline, sampler: str, options: SamplerOptions) -> int:
    """Model evaluations a run will spend: the steps for most samplers, 2N - 1 for Heun, N + 9 for PNDM."""
    return len(get_sampler(sampler).timesteps(pipe.schedule, options))


def starts_too_late(pipe: diffusion.DiffusionPipeline, sampler: str, options: SamplerOptions) -> str:
    """A note when a plan's first model evaluation is below T/2 (one DDIM step with leading spacing is at
    t = 0): the model then never sees the noise it starts from and returns noise. "" for a sound plan."""
    first, T = max(planned_timesteps(pipe, sampler, options)), pipe.schedule.num_train_timesteps
    if first >= T / 2:
        return ""
    return (
        f"{sampler.upper()} with {options.num_inference_steps} step(s) and this timestep selection evaluates the "
        f"model first at t = {first} of {T}: it never sees the noise it starts from, so the result stays noise. "
        "Use more steps or trailing selection."
    )


def planned_timesteps(pipe: diffusion.DiffusionPipeline, sampler: str, options: SamplerOptions) -> list[int]:
    """The timesteps ``sampler`` will evaluate the model at, rounded (a run records the exact ones)."""
    return [round(t) for t in get_sampler(sampler).timesteps(pipe.schedule, options)]


class OptionControls:
    """One sampler dropdown and a control per registered option, shown for the samplers that take it.
    Number controls pass floats (no ``precision``), so 2.5 steps reaches the checks and is refused."""

    def __init__(
        self, pipe: diffusion.DiffusionPipeline | None, sampler: str, prefix: str = "", label: str = "Sampler"
    ) -> None:
        self.prefix = prefix
        self.fields = all_option_fields()
        T = pipe.schedule.num_train_timesteps if pipe is not None else 1000
        self.sampler = gr.Dropdown(
            [(s.upper(), s) for s in SAMPLERS],
            value=sampler,
            label=label,
            info=get_sampler(sampler).description,
            elem_id=f"{prefix or 's_'}sampler",
        )
        defaults = {s: dataclasses.asdict(default_options(pipe, s)) for s in SAMPLERS}
        own = sampler_fields(sampler)
        self.controls: dict[str, gr.components.Component] = {}

        def add(name: str) -> None:
            hint, value = own.get(name, self.fields[name]), self._value(name, sampler, defaults)
            self.controls[name] = self._control(name, hint, value, name in own, T, self._elem_id(name))

        for name in (k for k in self.fields if k in PRIMARY_OPTIONS):
            add(name)
        advanced = [k for k in self.fields if k not in PRIMARY_OPTIONS]
        if advanced:
            with gr.Accordion("Advanced sampler options (defaults: the model's scheduler config)", open=False):
                for name in advanced:
                    add(name)

    def _elem_id(self, name: str) -> str:
        return f"{self.prefix or 's_'}{API_NAMES.get(name, name)}"

    @staticmethod
    def _value(name: str, sampler: str, defaults: dict[str, dict[str, Any]]) -> Any:
        if name in defaults[sampler]:
            return defaults[sampler][name]
        return next(d[name] for d in defaults.values() if name in d)

    @staticmethod
    def _control(name: str, hint: Any, value: Any, visible: bool, T: int, elem_id: str) -> gr.components.Component:
        """A control by the option's type: Literal -> dropdown, bool -> checkbox, int / float -> number."""
        kw = dict(
            label=LABELS.get(name, name.replace("_", " ").capitalize()),
            info=INFO.get(name),
            visible=visible,
            elem_id=elem_id,
        )
        if name == "num_inference_steps":
            steps = gr.Slider(1, T, value=value, step=1, **{**kw, "info": f"1 to {T} (the model's training timesteps)"})
            keep_in_range(steps, "Steps")
            return steps
        if name == "eta":
            eta = gr.Slider(0.0, 1.0, value=value, step=0.05, **kw)
            keep_in_range(eta, "eta")
            return eta
        if typing.get_origin(hint) is typing.Literal:
            return gr.Dropdown(list(typing.get_args(hint)), value=value, **kw)
        if hint is bool:
            return gr.Checkbox(value=value, **kw)
        return gr.Number(value=value, **kw)

    def kwargs(self) -> dict[str, gr.components.Component]:
        """Inputs for an event, by API name (``steps``, ``eta``...; prefixed for the compare panels)."""
        return {f"{self.prefix}{API_NAMES.get(k, k)}": c for k, c in self.controls.items()}

    def outputs(self) -> list[gr.components.Component]:
        return [self.sampler, *self.controls.values()]

    def updates(
        self, pipe: diffusion.DiffusionPipeline | None, sampler: str, *, only_model_fields: bool = False
    ) -> list[Any]:
        """Updates for :meth:`outputs`: visibility by sampler, values from the model's defaults."""
        if sampler not in SAMPLERS:
            return [gr.skip()] * (1 + len(self.controls))
        opts = dataclasses.asdict(default_options(pipe, sampler))
        own = sampler_fields(sampler)
        model_keys = set(pipe.config) | {"set_alpha_to_one"} if pipe is not None else set()
        out: list[Any] = [gr.update(info=get_sampler(sampler).description)]
        for name in self.controls:
            upd: dict[str, Any] = {"visible": name in own}
            if name in own and (not only_model_fields or name in model_keys):
                upd["value"] = opts[name]
            if name in own and typing.get_origin(own[name]) is typing.Literal:  # e.g. no "quad" for DPM-Solver++
                upd["choices"] = list(typing.get_args(own[name]))
            if name == "num_inference_steps" and pipe is not None:
                T = pipe.schedule.num_train_timesteps
                upd.update(maximum=T, info=f"1 to {T} (the model's training timesteps)")
            out.append(gr.update(**upd))
        return out
