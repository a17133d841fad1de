"""The Blocks layout: components and the events that wire them to :class:`studio.handlers.Studio`.

Queues: sampling (Sample, Compare) shares one queue (concurrency id "model", one at a time); loading
and downloading models has its own ("load"), so a slow or failing download never holds the samplers;
pictures of a finished run ("media") and schedule plots ("plots") have theirs."""

from __future__ import annotations

from typing import Any, Callable

import gradio as gr

from diffusion.classes import check_guidance
from diffusion.samplers import SAMPLERS

from .arena import ArenaRuns
from .arena_ui import ArenaTab, arena_tab
from .class_controls import ONE_OF_EACH
from .compare_ui import compare_tab
from .explore import Explore
from .explore_ui import explore_tab
from .handlers import Studio
from .options import OptionControls, check_count
from .sample_ui import denoising_tab, sample_tab
from .settings import MAX_IMAGES, MAX_SEED, MAX_UPLOAD_BYTES
from .widgets import PRIVATE
from .wiring import Runner

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


def build_app(studio: Studio) -> gr.Blocks:
    """The Blocks app over ``studio`` (whose default model is loaded here, if it can be): the model row, then
    one builder per tab (:mod:`studio.sample_ui`, :mod:`studio.compare_ui`, :mod:`studio.explore_ui`)."""
    try:
        pipe = studio.store.get(studio.default_model)
        status = studio.store.describe(pipe, studio.store.name(studio.default_model))
    except gr.Error as e:
        pipe, status = None, f"**The default model could not be loaded**: {e.message}"
        print(f"[studio] {status}")
    model_event = dict(concurrency_id="model", concurrency_limit=1)
    load_event = dict(concurrency_id="load", concurrency_limit=2)

    with gr.Blocks(title="DDPM / DDIM Studio", delete_cache=(900, 3600)) as demo:
        gr.Markdown(
            "# DDPM / DDIM Studio\nSample a denoising diffusion model with any sampler of the library, compare two "
            "samplers from the same starting noise, and watch the denoising step by step."
        )
        with gr.Row(equal_height=True):
            model = gr.Dropdown(
                studio.model_choices(), value=studio.default_model, allow_custom_value=True, scale=2, label="Model",
                info="The bundled models work offline; Hub models download on first use. "
                "Type any diffusers UNet2DModel repo id (owner/name).",
            )
            model_md = gr.Markdown(status, elem_classes="studio-note")
        current = gr.State(studio.default_model)
        with gr.Tabs() as tabs:
            runner = Runner(studio.fetch, model, load_event, model_event, gpu_task)
            sample = sample_tab(studio, pipe, runner)
            compare = compare_tab(studio, pipe, runner)
            denoising_tab(studio, pipe, model, sample)
            explore = explore_tab(Explore(studio), pipe, runner)
            arena = arena_tab(ArenaRuns(studio), runner)

        samplers = [sample.opts.sampler, *compare.samplers()]
        tab_outputs = [*sample.model_outputs(), *compare.model_outputs(), *explore.model_outputs()]

        def model_updates(new: Any, ss: str, sa: str, sb: str) -> list[Any]:
            return [*sample.model_updates(new, ss), *compare.model_updates(new, sa, sb), *explore.model_updates(new)]

        def on_model(choice: str, cur: str, ss: str, sa: str, sb: str) -> list:
            try:
                new = studio.store.get(choice)
            except gr.Error as e:
                name = studio.store.name(cur)  # said once, in the model panel beside the box (no toast as well)
                note = f"**Could not load {str(choice)[:120]}**: {e.message}  \nStill using **{name}**."
                return [gr.update(value=cur), cur, note] + [gr.skip()] * len(tab_outputs)
            described = studio.store.describe(new, studio.store.name(choice))
            return [gr.update(value=choice), choice, described, *model_updates(new, ss, sa, sb)]

        model.input(on_model, [model, current, *samplers], [model, current, model_md, *tab_outputs], **load_event,
                    **PRIVATE)

        def sampler_changed(oc: OptionControls) -> Callable[[str, str], list]:
            return lambda m, s: oc.updates(studio.store.peek(m), s)

        for oc in (sample.opts, compare.a.opts, compare.b.opts):
            oc.sampler.input(sampler_changed(oc), [model, oc.sampler], oc.outputs(), queue=False,
                             show_progress="hidden", **PRIVATE)

        deep_link = deep_link_handler(studio, [model, current, model_md, *tab_outputs], sample, arena, on_model)
        demo.load(deep_link, None, [model, current, model_md, *tab_outputs, sample.seed, sample.n, tabs,
                                    *arena.link_outputs()], show_progress="hidden", **load_event, **PRIVATE)

    demo.queue(max_size=studio.settings.queue_size, default_concurrency_limit=1)
    demo.studio = studio  # type: ignore[attr-defined]  # for tests and scripts
    return demo


def deep_link_handler(studio: Studio, targets: list[Any], sample: Any, arena: ArenaTab,
                      on_model: Callable[..., list]) -> Callable:
    """The page-load handler of links such as ``?model=checkpoints/fashion-mnist-cond&class=sneaker&guidance=3
    &seed=3&sampler=ddpm&steps=100&eta=0.5&n=4``: it chooses the model (as the Model box does) and pre-fills the
    Sample tab; ``tab=arena&arena={...}`` (:func:`studio.arena.link`) opens the Arena tab with its settings.
    ``targets``: the model box, its state, its note, then every tab's model-dependent controls."""
    model, current, model_md, *tab_outputs = targets

    def deep_link(request: gr.Request) -> list:
        q = dict(request.query_params) if request is not None else {}
        keep = [gr.skip()] * (3 + len(tab_outputs))
        chosen = q.get("model", "").strip()
        out = keep
        if chosen and chosen != studio.default_model:
            out = on_model(chosen, studio.default_model, "ddim", "ddpm", "ddim")
        new = studio.store.peek(out[1] if chosen and out is not keep else studio.default_model)
        ups = dict(zip([model, current, model_md, *tab_outputs], out))
        sampler = q.get("sampler") if q.get("sampler") in SAMPLERS else None
        if sampler:
            ups.update(zip(sample.opts.outputs(), sample.opts.updates(new, sampler)))
            ups[sample.opts.sampler] = gr.update(value=sampler)
        seed_u, n_u = gr.skip(), gr.skip()
        try:
            if "seed" in q:
                seed_u = check_count(q["seed"], "seed", 0, MAX_SEED)
            if "n" in q:
                n_u = check_count(q["n"], "n", 1, MAX_IMAGES)
            for key, name, cast in (("steps", "num_inference_steps", int), ("eta", "eta", float)):
                if key in q and name in sample.opts.controls:
                    control = sample.opts.controls[name]
                    ups[control] = gr.update(**{**as_dict(ups.get(control)), "value": cast(q[key])})
            if new is not None and new.classes is not None:
                if "class" in q:
                    ups[sample.class_label] = gr.update(
                        **{**as_dict(ups.get(sample.class_label)), "value": link_class(new, q["class"])})
                if "guidance" in q:
                    ups[sample.guidance] = gr.update(
                        **{**as_dict(ups.get(sample.guidance)), "value": check_guidance(q["guidance"])})
        except (ValueError, gr.Error):
            gr.Warning("Some link parameters were not understood and were ignored.")
        tab_ids = ("sample", "compare", "denoising", "explore", "arena")
        tab = gr.Tabs(selected=q["tab"]) if q.get("tab") in tab_ids else gr.skip()
        arena_ups = [gr.skip()] * len(arena.link_outputs())
        if "arena" in q:
            try:
                arena_ups = arena.link_updates(q["arena"])
            except (ValueError, TypeError, AttributeError):
                gr.Warning("The link's arena settings were not understood; the Arena tab keeps its own.")
        return ([ups.get(c, gr.skip()) for c in (model, current, model_md, *tab_outputs)] + [seed_u, n_u, tab]
                + arena_ups)

    return deep_link


def as_dict(update: Any) -> dict[str, Any]:
    """A ``gr.update(...)`` as its keyword arguments ({} for a skip or nothing)."""
    return {k: v for k, v in update.items() if k != "__type__"} if isinstance(update, dict) else {}


def link_class(pipe: Any, text: str) -> str:
    """A link's ``class`` (an index, a name or "all") as the picker's value."""
    if text.strip().lower() == ONE_OF_EACH:
        return ONE_OF_EACH
    return str(pipe.classes.label(text))


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
