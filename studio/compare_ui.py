"""The Compare tab: two samplers (or two guidance scales) from the same x_T, side by side (``/compare``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

import diffusion

from .class_controls import class_picker, guidance_slider, picker_update, slider_update
from .handlers import Studio
from .options import OptionControls
from .sample_ui import DICE_JS
from .settings import MAX_IMAGES
from .widgets import PRIVATE, keep_in_range
from .wiring import Runner


@dataclass
class ComparePanel:
    opts: OptionControls
    guidance: gr.Slider
    image: gr.Image


def compare_panel(pipe: diffusion.DiffusionPipeline | None, panel: str, sampler: str) -> ComparePanel:
    """One Compare panel: its sampler controls (prefixed ``a_`` / ``b_``) and guidance scale above its picture."""
    with gr.Column():
        opts = OptionControls(pipe, sampler, f"{panel}_", f"Panel {panel.upper()} sampler")
        guidance = guidance_slider(pipe, f"{panel}_guidance", f"Panel {panel.upper()} guidance scale s")
        image = gr.Image(elem_classes="studio-picture", label=f"Panel {panel.upper()}", type="filepath", format="png",
                         interactive=False, elem_id=f"compare-{panel}", height=360)
    return ComparePanel(opts, guidance, image)


@dataclass
class CompareTab:
    a: ComparePanel
    b: ComparePanel
    class_label: gr.Dropdown

    def samplers(self) -> list[gr.Dropdown]:
        return [self.a.opts.sampler, self.b.opts.sampler]

    def model_outputs(self) -> list[Any]:
        return [*self.a.opts.outputs(), self.a.guidance, *self.b.opts.outputs(), self.b.guidance, self.class_label]

    def model_updates(self, pipe: diffusion.DiffusionPipeline, sampler_a: str, sampler_b: str) -> list[Any]:
        return [*self.a.opts.updates(pipe, sampler_a, only_model_fields=True), slider_update(pipe),
                *self.b.opts.updates(pipe, sampler_b, only_model_fields=True), slider_update(pipe),
                picker_update(pipe, one_of_each=False)]


def compare_tab(studio: Studio, pipe: diffusion.DiffusionPipeline | None, runner: Runner) -> CompareTab:
    """Build the Compare tab, wired by ``runner`` (``/compare``)."""
    with gr.Tab("Compare", id="compare"):
        gr.Markdown(
            "Both panels start from the **same x_T** (drawn from the seed). DDIM with eta 0 is deterministic; "
            "DDPM adds fresh noise at every step, so from the same x_T it ends at a different image (often "
            "another garment), not a noisier copy. With a class-conditional model, both panels draw the same class: "
            "compare two samplers, or one sampler at two guidance scales. Wall time is each panel's run as you "
            "wait it, previews included.",
            elem_classes="studio-note",
        )
        with gr.Row(equal_height=True):
            seed = gr.Number(0, label="Seed", scale=3, step=1)
            dice = gr.Button("Random seed", scale=1, min_width=60)
            n = gr.Slider(1, MAX_IMAGES, value=4, step=1, label="Number of images", scale=3, elem_id="c_n")
            keep_in_range(n, "Number of images")
            class_label = class_picker(pipe, "c_class", one_of_each=False)
            go = gr.Button("Compare", variant="primary", scale=2)
            stop = gr.Button("Stop", variant="stop", scale=1)
        with gr.Row():
            a = compare_panel(pipe, "a", "ddpm")
            b = compare_panel(pipe, "b", "ddim")
        progress = gr.Markdown("", elem_id="c-progress", min_height=44)
        md = gr.Markdown("Press **Compare**.", label="Metrics")
        with gr.Row():
            slider = gr.ImageSlider(label="A ↔ B", type="filepath", format="png", interactive=False, max_height=600)
            diff = gr.Image(elem_classes="studio-picture", label="|A − B| (scaled to its maximum)", type="filepath",
                            format="png", interactive=False, elem_id="diff-map")
        with gr.Accordion("Metrics as JSON", open=False):
            metrics = gr.JSON(label="Metrics")

    dice.click(None, None, seed, js=DICE_JS, **PRIVATE)
    runner.wire(
        go, stop, studio.compare, [a.image, b.image, slider, diff, md, metrics],
        dict(seed=seed, num_images=n, class_label=class_label,
             a_sampler=a.opts.sampler, a_guidance_scale=a.guidance, **a.opts.kwargs(),
             b_sampler=b.opts.sampler, b_guidance_scale=b.guidance, **b.opts.kwargs()),
        progress, md,
        api_name="compare",
        api_description="Two samplers (panel A and panel B options) from the same starting noise; a "
        "class-conditional model draws class_label in both, at a_guidance_scale and b_guidance_scale. Returns both "
        "grids, the pair for a slider, a difference map, the metrics as Markdown and as a dictionary.",
    )
    return CompareTab(a, b, class_label)
