"""The Explore tab's layout and events (inside :func:`studio.ui.build_app`'s tabs): interpolation,
inversion and reconstruction, consistency across step counts. Named API endpoints ``/interpolate``,
``/reconstruct`` and ``/consistency``, with the same queues, budget, progress and Stop as the other tabs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

import diffusion

from .class_controls import class_picker, guidance_slider, picker_update, slider_update
from .explore import CONSISTENCY_STEPS, MAX_INTERPOLATION_FRAMES, Explore, example_images
from .widgets import (
    PRIVATE,
    image_upload,
    keep_in_range,
    progress_and_result,
    result_picture,
    run_and_stop_buttons,
)
from .wiring import Runner


@dataclass
class ExploreTab:
    """The class controls a model change updates: pickers (hidden for an unconditional model) and sliders."""

    pickers: list[gr.Dropdown]
    sliders: list[gr.Slider]

    def model_outputs(self) -> list[Any]:
        return [*self.pickers, *self.sliders]

    def model_updates(self, pipe: diffusion.DiffusionPipeline) -> list[Any]:
        first = [picker_update(pipe, one_of_each=False) for _ in self.pickers]
        if pipe is not None and pipe.classes is not None:  # Interpolate's class B: another class than A
            first[1] = picker_update(pipe, one_of_each=False, value=str(min(7, len(pipe.classes.names) - 1)))
        return [*first, *[slider_update(pipe) for _ in self.sliders]]


def explore_tab(explore: Explore, pipe: diffusion.DiffusionPipeline | None, runner: Runner) -> ExploreTab:
    """Build the tab and its three sub-tabs, each wired by ``runner`` as Sample and Compare are."""
    with gr.Tab("Explore", id="explore"):
        gr.Markdown(
            "DDIM with eta 0 is deterministic, so the starting noise x_T is a **latent code** (Song et al. 2021, "
            "Sec. 5.3-5.4): interpolate between codes, encode a real image into its code and decode it back, or "
            "decode one code with different numbers of steps.",
            elem_classes="studio-note",
        )
        with gr.Tabs():
            i_classes, i_guidance = interpolate_tab(explore, pipe, runner)
            r_class = reconstruct_tab(explore, pipe, runner)
            k_class, k_guidance = consistency_tab(explore, pipe, runner)
    return ExploreTab([*i_classes, r_class, k_class], [i_guidance, k_guidance])


def interpolate_tab(explore: Explore, pipe: diffusion.DiffusionPipeline | None,
                    runner: Runner) -> tuple[list[gr.Dropdown], gr.Slider]:
    """Slerp between two seeds' x_T (or two images' latents), from class A to class B (``/interpolate``)."""
    class_b = str(min(7, len(pipe.classes.names) - 1)) if pipe is not None and pipe.classes is not None else "0"
    examples = example_images()
    with gr.Tab("Interpolate", id="explore-interpolate"):
        with gr.Row(equal_height=True):
            i_seed_a = gr.Number(0, label="Seed A", step=1)
            i_seed_b = gr.Number(1, label="Seed B", step=1)
            i_frames = gr.Slider(
                2, MAX_INTERPOLATION_FRAMES, value=9, step=1, label="Frames", elem_id="i_frames"
            )
            keep_in_range(i_frames, "Frames")
            i_steps = gr.Slider(1, 1000, value=50, step=1, label="DDIM steps", elem_id="i_steps")
            keep_in_range(i_steps, "DDIM steps")
        with gr.Row(equal_height=True):
            i_class_a = class_picker(pipe, "i_class_a", "Class A", one_of_each=False)
            i_class_b = class_picker(pipe, "i_class_b", "Class B", one_of_each=False, value=class_b)
            i_guidance = guidance_slider(pipe, "i_guidance")
        with gr.Accordion("Or between two images (encoded by DDIM inversion)", open=False):
            with gr.Row():
                i_img_a = image_upload(label="Image A", height=180, elem_id="i-image-a")
                i_img_b = image_upload(label="Image B", height=180, elem_id="i-image-b")
            if examples:
                gr.Examples(
                    [[examples[0], examples[7 % len(examples)]]],
                    [i_img_a, i_img_b],
                    label="Real Fashion-MNIST test images",
                )
        i_go, i_stop = run_and_stop_buttons("Interpolate")
        i_progress, i_info = progress_and_result(
            "i", "Spherical interpolation (slerp) between the two x_T, each frame decoded with DDIM."
        )
        i_strip = result_picture("Interpolation strip", "i-strip")
        i_gif = gr.Image(
            elem_classes="studio-picture",
            label="As an animation (GIF)", type="filepath", interactive=False, elem_id="i-gif", height=220
        )
    runner.wire(
        i_go, i_stop, explore.interpolate, [i_strip, i_gif, i_info],
        dict(seed_a=i_seed_a, seed_b=i_seed_b, frames=i_frames, steps=i_steps, image_a=i_img_a, image_b=i_img_b,
             class_a=i_class_a, class_b=i_class_b, guidance_scale=i_guidance),
        i_progress, i_info,
        api_name="interpolate",
        api_description="Frames decoded with DDIM (eta 0) from noise slerped between two seeds' noise, or between "
        "two images' DDIM latents when both images are given; a class-conditional model goes from class_a to "
        "class_b at guidance_scale. Returns the strip, a GIF and a line about the run.",
    )
    return [i_class_a, i_class_b], i_guidance


def reconstruct_tab(explore: Explore, pipe: diffusion.DiffusionPipeline | None, runner: Runner) -> gr.Dropdown:
    """DDIM inversion and reconstruction of an image, and its error against steps (``/reconstruct``)."""
    examples = example_images()
    with gr.Tab("Invert and reconstruct", id="explore-reconstruct"):
        with gr.Row():
            with gr.Column(scale=1, min_width=260):
                r_image = image_upload(label="An image", height=220, elem_id="r-image")
                if examples:
                    gr.Examples(
                        [[p] for p in examples],
                        [r_image],
                        label="Real Fashion-MNIST test images",
                        examples_per_page=10,
                    )
                r_steps = gr.Slider(1, 1000, value=50, step=1, label="DDIM steps", elem_id="r_steps")
                keep_in_range(r_steps, "DDIM steps")
                r_class = class_picker(pipe, "r_class", "Class (encoded and decoded under it)",
                                       one_of_each=False)
                r_go, r_stop = run_and_stop_buttons("Invert and reconstruct")
            with gr.Column(scale=2):
                r_progress, r_info = progress_and_result(
                    "r", "Encode the image into x_T with DDIM run backwards, then decode x_T."
                )
                with gr.Row():
                    r_input = gr.Image(
                        elem_classes="studio-picture",
                        label="input (model size)", type="filepath", interactive=False, elem_id="r-input"
                    )
                    r_latent = gr.Image(
                        elem_classes="studio-picture",
                        label="x_T (latent)", type="filepath", interactive=False, elem_id="r-latent"
                    )
                    r_recon = gr.Image(
                        elem_classes="studio-picture",
                        label="reconstruction", type="filepath", interactive=False, elem_id="r-recon"
                    )
                r_curve = gr.Button("Error against steps (10, 20, 50, 100)")
                r_plot = gr.Plot(label="Reconstruction error")
                r_table = gr.Markdown("", elem_id="r-table")  # below the plot: its headers fit on a line
    runner.wire(
        r_go, r_stop, explore.reconstruct, [r_input, r_latent, r_recon, r_info],
        dict(image=r_image, steps=r_steps, class_label=r_class), r_progress, r_info,
        api_name="reconstruct",
        api_description="Encode an image into its DDIM latent x_T and decode it back. Returns the input at the "
        "model's size, x_T scaled to [0, 1], the reconstruction and a line with the error.",
    )
    runner.wire(r_curve, r_stop, explore.error_curve, [r_plot, r_table], dict(image=r_image, class_label=r_class),
                r_progress, r_table)
    # the error curve belongs to the image it was measured on: a new image clears it
    r_image.change(lambda: (None, ""), None, [r_plot, r_table], queue=False, show_progress="hidden", **PRIVATE)
    return r_class


def consistency_tab(explore: Explore, pipe: diffusion.DiffusionPipeline | None,
                    runner: Runner) -> tuple[gr.Dropdown, gr.Slider]:
    """One x_T decoded at several step counts (``/consistency``)."""
    with gr.Tab("Consistency", id="explore-consistency"):
        with gr.Row(equal_height=True):
            k_seed = gr.Number(0, label="Seed", step=1)
            k_n = gr.Slider(1, 8, value=4, step=1, label="Number of images", elem_id="k_n")
            keep_in_range(k_n, "Number of images")
            k_counts = gr.CheckboxGroup(
                list(CONSISTENCY_STEPS),
                value=[10, 20, 50, 100],
                label="Step counts (one row each)",
                elem_id="k_counts",
            )
        with gr.Row(equal_height=True):
            k_class = class_picker(pipe, "k_class", one_of_each=False)
            k_guidance = guidance_slider(pipe, "k_guidance")
        k_go, k_stop = run_and_stop_buttons("Decode at each step count")
        k_progress, k_info = progress_and_result(
            "k", "The same x_T decoded with DDIM (eta 0) at each step count: the high-level features stay (Sec. 5.2)."
        )
        k_grid = result_picture("One row per step count", "k-grid")
    runner.wire(
        k_go, k_stop, explore.consistency, [k_grid, k_info],
        dict(seed=k_seed, num_images=k_n, counts=k_counts, class_label=k_class, guidance_scale=k_guidance),
        k_progress, k_info,
        api_name="consistency",
        api_description="One seed's noise decoded with DDIM at several step counts, a row each. Returns the grid "
        "and a line about the run.",
    )
    return k_class, k_guidance
