"""Small pieces of the page the tabs share: an upload box that hands over the file unopened, a slider that says
when a typed value is out of range, and a run button that cannot queue a second run behind its first."""

from __future__ import annotations

from typing import Any

import gradio as gr

PRIVATE = dict(api_visibility="private")


def image_upload(**kwargs: Any) -> gr.Image:
    """An image upload box whose file reaches the handler as its path, unopened. ``gr.Image`` would open it
    first and convert it to RGB: a 16-bit grey PNG turns white, and a damaged file or one declaring 10^10
    pixels fails with a bare "Error" before :func:`studio.explore.read_upload` can say why. Only this box's
    ``preprocess`` is replaced (a subclass would make Gradio write a ``.pyi`` beside this file)."""
    box = gr.Image(type="filepath", image_mode=None, sources=["upload"], **kwargs)
    default = box.preprocess

    def preprocess(payload: Any) -> str | None:
        return str(payload.path) if payload is not None and payload.path is not None else default(payload)

    box.preprocess = preprocess  # type: ignore[method-assign]
    return box


def keep_in_range(slider: gr.Slider, label: str) -> None:
    """The page clamps a slider to its range but its number box keeps what was typed (1000 images shown, 64
    made; 0 steps shown, 1 run): a value typed outside the range is said, and the box set to what will run.
    Its raw value is read (``preprocess=False``: a number, nothing else) so that Gradio's own range check
    does not fail first (with a traceback in the log). The range is the slider's as built; a run checks the
    model's own limits again."""

    def check(value: Any) -> Any:
        try:
            number = float(value)
        except (TypeError, ValueError):
            return gr.skip()
        low, high = slider.minimum, slider.maximum
        if low <= number <= high:
            return gr.skip()
        used = min(max(number, low), high)
        gr.Warning(f"{label} runs from {low:g} to {high:g}: {number:g} is not used, {used:g} is.", title="Out of range")
        return used

    slider.change(  # queued (the toast needs the queue), beside the samplers: it never waits for them
        check,
        slider,
        slider,
        preprocess=False,
        show_progress="hidden",
        concurrency_id="range",
        concurrency_limit=None,
        api_visibility="private",
    )


def busy_while_running(button: gr.Button, fetch: Any, run: Any, stop: gr.Button) -> None:
    """``button`` is off from its click until its run ends (done, refused, failed to load the model, or
    stopped), so that a second click cannot queue a duplicate run behind the first. ``fetch`` is the click's
    model-loading event, ``run`` the sampling event chained on it, ``stop`` the tab's Stop button."""

    def on() -> gr.Button:
        return gr.Button(interactive=True)

    button.click(lambda: gr.Button(interactive=False), None, button, queue=False, **PRIVATE)
    fetch.failure(on, None, button, queue=False, **PRIVATE)
    run.then(on, None, button, queue=False, **PRIVATE)
    stop.click(on, None, button, queue=False, **PRIVATE)
