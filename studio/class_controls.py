"""The class picker and guidance slider of a class-conditional model (:mod:`diffusion.classes`), shown only
for such a model, and the labels a request asks for. An unconditional model ignores both controls' values:
they are hidden then, and their last values still travel with every event."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr
import torch

import diffusion
from diffusion.classes import check_guidance
from diffusion.classes import passes as unet_passes

from .errors import refused
from .widgets import keep_in_range

ONE_OF_EACH = "all"  # the picker's value for a row per class (the CLI's --class-label all)
MAX_UI_GUIDANCE = 10.0
GUIDANCE_INFO = (
    "classifier-free guidance: ε = ε_null + s·(ε_class − ε_null). 0: the unconditional model, 1: the "
    "conditional model, above 1: more typical of the class, less varied"
)


def conditional(pipe: diffusion.DiffusionPipeline | None) -> bool:
    """Whether the studio shows class controls for ``pipe`` (a label table with named classes)."""
    return pipe is not None and pipe.classes is not None


def class_choices(pipe: diffusion.DiffusionPipeline | None, one_of_each: bool = True) -> list[tuple[str, str]]:
    if not conditional(pipe):
        return [("0", "0")]
    choices = [(f"{i} · {name}", str(i)) for i, name in enumerate(pipe.classes.names)]
    return choices + ([("One of each (a row per class)", ONE_OF_EACH)] if one_of_each else [])


def class_picker(pipe: diffusion.DiffusionPipeline | None, elem_id: str, label: str = "Class",
                 one_of_each: bool = True, value: str = "0") -> gr.Dropdown:
    return gr.Dropdown(class_choices(pipe, one_of_each), value=value, label=label, elem_id=elem_id,
                       visible=conditional(pipe), info="what the class-conditional model draws")


def guidance_slider(pipe: diffusion.DiffusionPipeline | None, elem_id: str,
                    label: str = "Guidance scale s") -> gr.Slider:
    value = pipe.classes.guidance_scale if conditional(pipe) else 1.0
    slider = gr.Slider(0, MAX_UI_GUIDANCE, value=value, step=0.25, label=label, info=GUIDANCE_INFO,
                       elem_id=elem_id, visible=conditional(pipe))
    keep_in_range(slider, label)
    return slider


def picker_update(pipe: diffusion.DiffusionPipeline | None, one_of_each: bool = True, value: str = "0") -> Any:
    """The picker for a newly chosen model: its classes, or hidden."""
    return gr.update(choices=class_choices(pipe, one_of_each), value=value, visible=conditional(pipe))


def slider_update(pipe: diffusion.DiffusionPipeline | None) -> Any:
    """The slider for a newly chosen model: at its recommended scale, or hidden."""
    return gr.update(value=pipe.classes.guidance_scale if conditional(pipe) else 1.0, visible=conditional(pipe))


@dataclass
class Labels:
    """What a request asks of a class-conditional model: a class per row, and the guidance scale."""

    rows: list[int] | None  # None: an unconditional model (or a conditional one without names)
    scale: float = 1.0

    def per_image(self, n: int) -> torch.Tensor | None:
        """One label per image of ``len(rows) * n`` (a row of ``n`` per class)."""
        return None if self.rows is None else torch.tensor(self.rows).repeat_interleave(n)

    @property
    def passes(self) -> int:
        """UNet passes per model evaluation: 2 when guided (the conditional and the null halves)."""
        return unet_passes(None if self.rows is None else self.scale)

    def words(self, pipe: diffusion.DiffusionPipeline) -> str:
        """" · class Sneaker · guidance 3", or "" for an unconditional model."""
        if self.rows is None:
            return ""
        names = "one of each class" if len(self.rows) > 1 else f"class {pipe.classes.names[self.rows[0]]}"
        return f" · {names} · guidance {self.scale:g}"

    def request(self) -> dict[str, Any]:
        """The pipeline's keyword arguments for one class (the first row)."""
        if self.rows is None:
            return {}
        return {"class_labels": self.rows[0], "guidance_scale": self.scale}


def read_labels(pipe: diffusion.DiffusionPipeline, class_label: Any, guidance_scale: Any,
                one_of_each: bool = True) -> Labels:
    """The class(es) and guidance a request asks for, checked (gr.Error saying what to change); an
    unconditional model's request ignores both."""
    if not conditional(pipe):
        return Labels(None)
    try:
        scale = check_guidance(pipe.classes.guidance_scale if guidance_scale in (None, "") else guidance_scale)
        if str(class_label).strip().lower() == ONE_OF_EACH:
            if not one_of_each:
                raise ValueError("Pick one class here; 'one of each' is for the Sample tab.")
            return Labels(list(range(len(pipe.classes.names))), scale)
        return Labels(pipe.classes.labels(0 if class_label in (None, "") else class_label), scale)
    except ValueError as e:
        raise refused(str(e)) from None
