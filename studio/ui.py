"""The Blocks layout: components and the events that wire them to :class:`studio.handlers.Studio`.

Queues: sampling (Sample, Compare) shares one queue (concurrency id "model", one at a time); loading
and downloading models has its own ("load"), so a slow or failing download never holds the samplers;
pictures of a finished run ("media") and schedule plots ("plots") have theirs."""

from __future__ import annotations

from typing import Any, Callable

import gradio as gr

from diffusion.samplers import SAMPLERS

from .explore import Explore
from .explore_ui import explore_tab
from .handlers import NO_RUN, Studio
from .options import OptionControls, check_count, keep_in_range
from .runs import stopped_note
from .settings import MAX_IMAGES, MAX_SEED, MAX_UPLOAD_BYTES, STATE_TTL_S
from .widgets import busy_while_running

try:  # Hugging Face ZeroGPU: the decorator does nothing elsewhere; the package is absent off Spaces.
    import spaces  # type: ignore[import-not-found]

    gpu_task: Callable[[Callable], Callable] = spaces.GPU(duration=120)
except ImportError:  # pragma: no cover - depends on the environment

    def gpu_task(fn: Callable) -> Callable:
        return fn


CSS = """
.studio-note {font-size: 0.9em; opacity: 0.85}
#preview img, #compare-a img, #compare-b img, #frame-xt img, #frame-x0 img, #diff-map img, #d-gif img,
#i-strip img, #i-gif img, #r-input img, #r-latent img, #r-recon img, #k-grid img {image-rendering: pixelated}
/* a picture's label chip and icon buttons sit above it, never over its first tile */
.studio-picture .image-container {padding-top: 36px}
/* an upload of 28 x 28 pixels fills its box, crisp, instead of showing at its own 28 px */
#r-image img, #i-image-a img, #i-image-b img {width: 100%; height: 100%; object-fit: contain;
  image-rendering: pixelated}
#d-mp4 video {object-fit: contain; padding-top: 36px}
"""
THEME_FONTS = dict(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])


def launch_kwargs() -> dict[str, Any]:
    """What ``launch`` needs besides the address: theme, CSS, state limits (Gradio 6 takes them here)."""
    return dict(
        theme=gr.themes.Soft(**THEME_FONTS), css=CSS, state_session_capacity=64, max_file_size=MAX_UPLOAD_BYTES
    )


def compare_panel(pipe: Any, panel: str, sampler: str) -> tuple[OptionControls, gr.Image]:
    """One Compare panel: its sampler controls (prefixed ``a_`` / ``b_``) above its picture."""
    with gr.Column():
        controls = OptionControls(pipe, sampler, f"{panel}_", f"Panel {panel.upper()} sampler")
        image = gr.Image(
            elem_classes="studio-picture",
            label=f"Panel {panel.upper()}",
            type="filepath",
            format="png",
            interactive=False,
            elem_id=f"compare-{panel}",
            height=360,
        )
    return controls, image


def build_app(studio: Studio) -> gr.Blocks:
    """The Blocks app over ``studio`` (whose default model is loaded here, if it can be)."""
    try:
        pipe = studio.store.get(studio.default_model)
        status = studio.store.describe(pipe, studio.store.name(studio.default_model))
    except gr.Error as e:
        pipe, status = None, f"**The default model could not be loaded**: {e.message}"
        print(f"[studio] {status}")
    model_event = dict(concurrency_id="model", concurrency_limit=1)
    load_event = dict(concurrency_id="load", concurrency_limit=2)
    private = dict(api_visibility="private")

    with gr.Blocks(title="DDPM / DDIM Studio", delete_cache=(900, 3600)) as demo:
        gr.Markdown(
            "# DDPM / DDIM Studio\nSample a denoising diffusion model with any sampler of the library, compare two "
            "samplers from the same starting noise, and watch the denoising step by step."
        )
        with gr.Row(equal_height=True):
            model = gr.Dropdown(
                studio.model_choices(),
                value=studio.default_model,
                allow_custom_value=True,
                scale=2,
                label="Model",
                info="The bundled model works offline; Hub models download on first use. "
                "Type any diffusers UNet2DModel repo id (owner/name).",
            )
            model_md = gr.Markdown(status, elem_classes="studio-note")
        current = gr.State(studio.default_model)

        with gr.Tabs():
            with gr.Tab("Sample", id="sample"):
                with gr.Row():
                    with gr.Column(scale=1, min_width=300):
                        s_opts = OptionControls(pipe, "ddim")
                        with gr.Row(equal_height=True):
                            s_seed = gr.Number(0, label="Seed", scale=3, step=1)
                            s_dice = gr.Button("Random seed", scale=1, min_width=60)
                        s_n = gr.Slider(1, MAX_IMAGES, value=16, step=1, label="Number of images", elem_id="s_n")
                        keep_in_range(s_n, "Number of images")
                        with gr.Row():
                            s_go = gr.Button("Generate", variant="primary")
                            s_stop = gr.Button("Stop", variant="stop")
                    with gr.Column(scale=2):
                        s_info = gr.Markdown(
                            "Press **Generate**: predicted-x0 previews stream in while it samples.",
                            elem_id="s-info",
                            label="Result",
                        )
                        s_progress = gr.Markdown("", elem_id="s-progress", min_height=44)  # the progress bar shows here
                        s_image = gr.Image(
                            elem_classes="studio-picture",
                            label="Samples (previews while it runs)",
                            type="filepath",
                            format="png",
                            elem_id="preview",
                            interactive=False,
                            height=460,
                            buttons=["fullscreen"],
                        )
                        s_download = gr.DownloadButton(  # shown once there is a grid to download
                            "Download the PNG grid (each pixel an n×n block: see the factor above)",
                            value=None,
                            elem_id="s-download",
                            size="sm",
                            visible=False,
                        )
                traj = gr.State(None, time_to_live=STATE_TTL_S)

            with gr.Tab("Compare", id="compare"):
                gr.Markdown(
                    "Both panels start from the **same x_T** (drawn from the seed). DDIM with eta 0 is deterministic; "
                    "DDPM adds fresh noise at every step, so from the same x_T it ends at a different image (often "
                    "another garment), not a noisier copy. Wall time is each panel's run as you wait it, previews "
                    "included.",
                    elem_classes="studio-note",
                )
                with gr.Row(equal_height=True):
                    c_seed = gr.Number(0, label="Seed", scale=3, step=1)
                    c_dice = gr.Button("Random seed", scale=1, min_width=60)
                    c_n = gr.Slider(1, MAX_IMAGES, value=4, step=1, label="Number of images", scale=3, elem_id="c_n")
                    keep_in_range(c_n, "Number of images")
                    c_go = gr.Button("Compare", variant="primary", scale=2)
                    c_stop = gr.Button("Stop", variant="stop", scale=1)
                with gr.Row():
                    a_opts, c_img_a = compare_panel(pipe, "a", "ddpm")
                    b_opts, c_img_b = compare_panel(pipe, "b", "ddim")
                c_progress = gr.Markdown("", elem_id="c-progress", min_height=44)
                c_md = gr.Markdown("Press **Compare**.", label="Metrics")
                with gr.Row():
                    c_slider = gr.ImageSlider(
                        label="A ↔ B", type="filepath", format="png", interactive=False, max_height=600
                    )
                    c_diff = gr.Image(
                        elem_classes="studio-picture",
                        label="|A − B| (scaled to its maximum)",
                        type="filepath",
                        format="png",
                        interactive=False,
                        elem_id="diff-map",
                    )
                with gr.Accordion("Metrics as JSON", open=False):
                    c_json = gr.JSON(label="Metrics")

            with gr.Tab("Denoising", id="denoising"):
                gr.Markdown(
                    "The denoising of the last **Generate** run (up to 16 images): the noisy x_t the model saw and "
                    "its predicted clean image x̂₀, at every cached step.",
                    elem_classes="studio-note",
                )
                with gr.Row():
                    d_xt = gr.Image(
                        elem_classes="studio-picture",
                        label="x_t (noisy input)",
                        type="filepath",
                        format="png",
                        interactive=False,
                        elem_id="frame-xt",
                        height=360,
                    )
                    d_x0 = gr.Image(
                        elem_classes="studio-picture",
                        label="predicted x̂₀",
                        type="filepath",
                        format="png",
                        interactive=False,
                        elem_id="frame-x0",
                        height=360,
                    )
                with gr.Row(equal_height=True):
                    d_frame = gr.Slider(
                        0, 1, value=0, step=1, label="Frame (0: the noise x_T)", scale=5, elem_id="d_frame"
                    )
                    d_play = gr.Button("▶ Play", scale=1, min_width=80)
                d_readout = gr.Markdown(NO_RUN)
                d_timer = gr.Timer(0.2, active=False)
                d_playing = gr.State(False)
                initial = {k: c.value for k, c in s_opts.kwargs().items()}
                d_plot = gr.Plot(
                    label="Noise schedule",
                    value=studio.schedule_preview(studio.default_model, "ddim", **initial) if pipe else None,
                )
                with gr.Row(equal_height=True):
                    d_gif = gr.Image(
                        elem_classes="studio-picture",
                        label="Animation (GIF)", interactive=False, type="filepath", elem_id="d-gif", height=300
                    )
                    d_mp4 = gr.Video(
                        label="Animation (MP4)", format="mp4", interactive=False, elem_id="d-mp4", height=300
                    )
                d_files = gr.File(
                    elem_id="d_files",
                    label="Downloads: GIF, MP4, frames (ZIP of PNGs), trajectory (.npz)",
                    file_count="multiple",
                    interactive=False,
                )

            explore_tab(Explore(studio), model, load_event, model_event, gpu_task)

        dice_js = "() => Math.floor(Math.random() * 2147483647)"
        s_dice.click(None, None, s_seed, js=dice_js, **private)
        c_dice.click(None, None, c_seed, js=dice_js, **private)

        def on_model(choice: str, cur: str, ss: str, sa: str, sb: str) -> list:
            n_out = len(s_opts.outputs()) + len(a_opts.outputs()) + len(b_opts.outputs())
            try:
                new = studio.store.get(choice)
            except gr.Error as e:
                name = studio.store.name(cur)  # said once, in the model panel beside the box (no toast as well)
                return [
                    gr.update(value=cur),
                    cur,
                    f"**Could not load {str(choice)[:120]}**: {e.message}  \nStill using **{name}**.",
                ] + [gr.skip()] * n_out
            return (
                [gr.update(value=choice), choice, studio.store.describe(new, studio.store.name(choice))]
                + s_opts.updates(new, ss, only_model_fields=True)
                + a_opts.updates(new, sa, only_model_fields=True)
                + b_opts.updates(new, sb, only_model_fields=True)
            )

        model.input(
            on_model,
            [model, current, s_opts.sampler, a_opts.sampler, b_opts.sampler],
            [model, current, model_md, *s_opts.outputs(), *a_opts.outputs(), *b_opts.outputs()],
            **load_event,
            **private,
        )

        def sampler_changed(oc: OptionControls) -> Callable[[str, str], list]:
            return lambda m, s: oc.updates(studio.store.peek(m), s)

        for oc in (s_opts, a_opts, b_opts):
            oc.sampler.input(
                sampler_changed(oc), [model, oc.sampler], oc.outputs(), queue=False, show_progress="hidden", **private
            )

        preview_inputs = dict(model=model, sampler=s_opts.sampler, **s_opts.kwargs())
        plot_triggers = [s_opts.sampler, s_opts.controls["num_inference_steps"]]
        if "timestep_spacing" in s_opts.controls:
            plot_triggers.append(s_opts.controls["timestep_spacing"])
        for comp in plot_triggers:
            comp.change(
                studio.schedule_preview,
                None,
                d_plot,
                inputs_kwargs=preview_inputs,
                trigger_mode="always_last",
                show_progress="hidden",
                preprocess=False,  # raw values: an out-of-range number is keep_in_range's to say, not an error here
                concurrency_id="plots",
                concurrency_limit=1,
                **private,
            )

        s_fetch = s_go.click(studio.fetch, [model], None, show_progress="minimal", **load_event, **private)
        sample_event = s_fetch.success(
            gpu_task(studio.sample),
            None,
            [s_image, s_download, s_info, traj],
            inputs_kwargs=dict(model=model, sampler=s_opts.sampler, seed=s_seed, num_images=s_n, **s_opts.kwargs()),
            api_name="sample",
            api_description="Sample images with a sampler of the library from the seed's noise. Returns the grid "
            "as shown, the PNG grid at its original size, and a line about the run.",
            show_progress_on=[s_progress],
            **model_event,
        )
        sample_event.success(
            studio.show_trajectory,
            [traj],
            [d_frame, d_xt, d_x0, d_readout, d_plot, d_gif, d_mp4, d_files],
            concurrency_id="media",
            concurrency_limit=1,
            show_progress="minimal",
            **private,
        )
        # the download button shows only while there is a grid to download
        sample_event.success(lambda: gr.DownloadButton(visible=True), None, s_download, queue=False, **private)
        sample_event.failure(lambda: gr.DownloadButton(visible=False), None, s_download, queue=False, **private)
        s_stop.click(stopped_note, [s_info], [s_info], cancels=[s_fetch, sample_event], queue=False, **private)
        busy_while_running(s_go, s_fetch, sample_event, s_stop)

        c_fetch = c_go.click(studio.fetch, [model], None, show_progress="minimal", **load_event, **private)
        compare_event = c_fetch.success(
            gpu_task(studio.compare),
            None,
            [c_img_a, c_img_b, c_slider, c_diff, c_md, c_json],
            inputs_kwargs=dict(
                model=model,
                seed=c_seed,
                num_images=c_n,
                a_sampler=a_opts.sampler,
                **a_opts.kwargs(),
                b_sampler=b_opts.sampler,
                **b_opts.kwargs(),
            ),
            api_name="compare",
            api_description="Two samplers (panel A and panel B options) from the same starting noise. Returns both "
            "grids, the pair for a slider, a difference map, the metrics as Markdown and as a dictionary.",
            show_progress_on=[c_progress],
            **model_event,
        )
        c_stop.click(stopped_note, [c_md], [c_md], cancels=[c_fetch, compare_event], queue=False, **private)
        busy_while_running(c_go, c_fetch, compare_event, c_stop)

        d_frame.change(
            studio.show_frame,
            [d_frame, traj],
            [d_xt, d_x0, d_readout],
            queue=False,
            show_progress="hidden",
            trigger_mode="always_last",
            **private,
        )
        d_play.click(
            studio.toggle_play,
            [d_frame, d_playing, traj],
            [d_frame, d_timer, d_play, d_playing],
            queue=False,
            **private,
        )
        d_timer.tick(
            studio.advance,
            [d_frame, d_playing, traj],
            [d_frame, d_timer, d_play, d_playing],
            queue=False,
            show_progress="hidden",
            **private,
        )

        def deep_link(request: gr.Request) -> list:
            """``?seed=3&sampler=ddpm&steps=100&eta=0.5&n=4`` pre-fills the Sample tab."""
            q = dict(request.query_params) if request is not None else {}
            seed_u, n_u = gr.update(), gr.update()
            sampler = q.get("sampler") if q.get("sampler") in SAMPLERS else None
            controls = (
                s_opts.updates(studio.store.peek(studio.default_model), sampler)
                if sampler
                else [gr.update() for _ in s_opts.outputs()]
            )
            if sampler:
                controls[0]["value"] = sampler
            names = list(s_opts.controls)
            try:
                if "seed" in q:
                    seed_u = check_count(q["seed"], "seed", 0, MAX_SEED)
                if "n" in q:
                    n_u = check_count(q["n"], "n", 1, MAX_IMAGES)
                for key, name, cast in (("steps", "num_inference_steps", int), ("eta", "eta", float)):
                    if key in q and name in names:
                        controls[1 + names.index(name)]["value"] = cast(q[key])
            except (ValueError, gr.Error):
                gr.Warning("Some link parameters were not understood and were ignored.")
            return [seed_u, n_u, *controls]

        demo.load(deep_link, None, [s_seed, s_n, *s_opts.outputs()], queue=False, show_progress="hidden", **private)

    demo.queue(max_size=studio.settings.queue_size, default_concurrency_limit=1)
    demo.studio = studio  # type: ignore[attr-defined]  # for tests and scripts
    return demo


def launch(demo: gr.Blocks, attempts: int = 3, **kwargs: Any) -> tuple[Any, str, str]:
    """``demo.launch`` with :func:`launch_kwargs`, retried when Gradio's start-up check of its own page
    times out (it allows 3 s, which a loaded CPU can exceed on the first render)."""
    for attempt in range(attempts):
        try:
            return demo.launch(**{**launch_kwargs(), **kwargs})
        except ValueError as e:
            if "localhost is not accessible" not in str(e) or attempt == attempts - 1:
                raise
            demo.close()
            print(f"[studio] the server did not answer its start-up check in time; retrying ({attempt + 2}/{attempts})")
    raise AssertionError("unreachable")
