"""The Sample tab (``/sample`` in the API) and the Denoising tab that replays its last run: layout and events."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import gradio as gr

import diffusion

from .class_controls import class_picker, guidance_slider, picker_update, slider_update
from .handlers import NO_RUN, Studio
from .options import OptionControls
from .settings import MAX_IMAGES, STATE_TTL_S
from .widgets import PRIVATE, keep_in_range, run_and_stop_buttons
from .wiring import Runner

DICE_JS = "() => Math.floor(Math.random() * 2147483647)"


@dataclass
class SampleTab:
    """What the rest of the app updates: the sampler controls, the class controls, seed and count."""

    opts: OptionControls
    class_label: gr.Dropdown
    guidance: gr.Slider
    seed: gr.Number
    n: gr.Slider
    traj: gr.State  # the last run's trajectory, for the Denoising tab
    run: Any  # the sampling event: the Denoising tab shows its trajectory on success

    def model_outputs(self) -> list[Any]:
        return [*self.opts.outputs(), self.class_label, self.guidance]

    def model_updates(self, pipe: diffusion.DiffusionPipeline, sampler: str) -> list[Any]:
        """For a newly chosen model: its scheduler's defaults, its classes (or none) and guidance."""
        return [*self.opts.updates(pipe, sampler, only_model_fields=True), picker_update(pipe), slider_update(pipe)]


def show_download_with(download: gr.DownloadButton) -> Callable[[Any], None]:
    """The download button shows only while there is a grid to download: after a run that made one."""

    def listen(run: Any) -> None:
        run.success(lambda: gr.DownloadButton(visible=True), None, download, queue=False, **PRIVATE)
        run.failure(lambda: gr.DownloadButton(visible=False), None, download, queue=False, **PRIVATE)

    return listen


def sample_tab(studio: Studio, pipe: diffusion.DiffusionPipeline | None, runner: Runner) -> SampleTab:
    """Build the Sample tab, wired by ``runner`` (``/sample``); :func:`denoising_tab` shows the run's
    trajectory."""
    with gr.Tab("Sample", id="sample"):
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                opts = OptionControls(pipe, "ddim")
                class_label = class_picker(pipe, "s_class")
                guidance = guidance_slider(pipe, "s_guidance")
                with gr.Row(equal_height=True):
                    seed = gr.Number(0, label="Seed", scale=3, step=1)
                    dice = gr.Button("Random seed", scale=1, min_width=60)
                n = gr.Slider(1, MAX_IMAGES, value=16, step=1, label="Number of images", elem_id="s_n",
                              info="per class with 'one of each'")
                keep_in_range(n, "Number of images")
                go, stop = run_and_stop_buttons("Generate")
            with gr.Column(scale=2):
                info = gr.Markdown(
                    "Press **Generate**: predicted-x0 previews stream in while it samples.", elem_id="s-info",
                    label="Result",
                )
                progress = gr.Markdown("", elem_id="s-progress", min_height=44)  # the progress bar shows here
                image = gr.Image(
                    elem_classes="studio-picture", label="Samples (previews while it runs)", type="filepath",
                    format="png", elem_id="preview", interactive=False, height=460, buttons=["fullscreen"],
                )
                download = gr.DownloadButton(  # shown once there is a grid to download
                    "Download the PNG grid (each pixel an n×n block: see the factor above)", value=None,
                    elem_id="s-download", size="sm", visible=False,
                )
        traj = gr.State(None, time_to_live=STATE_TTL_S)

    dice.click(None, None, seed, js=DICE_JS, **PRIVATE)
    run = runner.wire(
        go, stop, studio.sample, [image, download, info, traj],
        dict(sampler=opts.sampler, seed=seed, num_images=n, class_label=class_label, guidance_scale=guidance,
             **opts.kwargs()),
        progress, info, after=show_download_with(download),
        api_name="sample",
        api_description="Sample images with a sampler of the library from the seed's noise; a class-conditional "
        "model draws class_label (an index, a name, or 'all' for a row per class) at guidance_scale. Returns the "
        "grid as shown, the PNG grid at its original size, and a line about the run.",
    )

    return SampleTab(opts, class_label, guidance, seed, n, traj, run)


def denoising_tab(studio: Studio, pipe: diffusion.DiffusionPipeline | None, model: gr.Dropdown,
                  sample: SampleTab) -> None:
    """The Denoising tab: the last Sample run's x_t beside its predicted x0, a scrubber with play, the noise
    schedule (planned from the Sample tab's settings until a run shows its own), animations and downloads."""
    opts, traj = sample.opts, sample.traj
    with gr.Tab("Denoising", id="denoising"):
        gr.Markdown(
            "The denoising of the last **Generate** run (up to 16 images): the noisy x_t the model saw and "
            "its predicted clean image x̂₀, at every cached step.",
            elem_classes="studio-note",
        )
        with gr.Row():
            d_xt = gr.Image(elem_classes="studio-picture", label="x_t (noisy input)", type="filepath", format="png",
                            interactive=False, elem_id="frame-xt", height=360)
            d_x0 = gr.Image(elem_classes="studio-picture", label="predicted x̂₀", type="filepath", format="png",
                            interactive=False, elem_id="frame-x0", height=360)
        with gr.Row(equal_height=True):
            d_frame = gr.Slider(0, 1, value=0, step=1, label="Frame (0: the noise x_T)", scale=5, elem_id="d_frame")
            d_play = gr.Button("▶ Play", scale=1, min_width=80)
        d_readout = gr.Markdown(NO_RUN)
        d_timer = gr.Timer(0.2, active=False)
        d_playing = gr.State(False)
        initial = {k: c.value for k, c in opts.kwargs().items()}
        d_plot = gr.Plot(
            label="Noise schedule",
            value=studio.schedule_preview(studio.default_model, "ddim", **initial) if pipe else None,
        )
        with gr.Row(equal_height=True):
            d_gif = gr.Image(elem_classes="studio-picture", label="Animation (GIF)", interactive=False,
                             type="filepath", elem_id="d-gif", height=300)
            d_mp4 = gr.Video(label="Animation (MP4)", format="mp4", interactive=False, elem_id="d-mp4", height=300)
        d_files = gr.File(elem_id="d_files", label="Downloads: GIF, MP4, frames (ZIP of PNGs), trajectory (.npz)",
                          file_count="multiple", interactive=False)


    preview_inputs = dict(model=model, sampler=opts.sampler, **opts.kwargs())
    plot_triggers = [opts.sampler, opts.controls["num_inference_steps"]]
    if "timestep_spacing" in opts.controls:
        plot_triggers.append(opts.controls["timestep_spacing"])
    for comp in plot_triggers:
        comp.change(
            studio.schedule_preview, None, d_plot, inputs_kwargs=preview_inputs, trigger_mode="always_last",
            show_progress="hidden",
            preprocess=False,  # raw values: an out-of-range number is keep_in_range's to say, not an error here
            concurrency_id="plots", concurrency_limit=1, **PRIVATE,
        )

    d_frame.change(studio.show_frame, [d_frame, traj], [d_xt, d_x0, d_readout], queue=False, show_progress="hidden",
                   trigger_mode="always_last", **PRIVATE)
    d_play.click(studio.toggle_play, [d_frame, d_playing, traj], [d_frame, d_timer, d_play, d_playing], queue=False,
                 **PRIVATE)
    d_timer.tick(studio.advance, [d_frame, d_playing, traj], [d_frame, d_timer, d_play, d_playing], queue=False,
                 show_progress="hidden", **PRIVATE)
    sample.run.success(
        studio.show_trajectory, [traj], [d_frame, d_xt, d_x0, d_readout, d_plot, d_gif, d_mp4, d_files],
        concurrency_id="media", concurrency_limit=1, show_progress="minimal", **PRIVATE,
    )
