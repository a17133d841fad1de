"""Small pieces of the page the tabs share: an upload box that hands over the file unopened, a slider that says
when a typed value is out of range, the run and Stop buttons, the progress box and result line, a result picture."""

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


def run_and_stop_buttons(label: str) -> tuple[gr.Button, gr.Button]:
    """A tab's run button and its Stop, side by side."""
    with gr.Row():
        return gr.Button(label, variant="primary"), gr.Button("Stop", variant="stop")


def progress_and_result(prefix: str, text: str) -> tuple[gr.Markdown, gr.Markdown]:
    """Where a run's progress bar shows (``{prefix}-progress``), and the result line below it
    (``{prefix}-info``: what ran, or why it was refused, or where Stop stopped it)."""
    progress = gr.Markdown("", elem_id=f"{prefix}-progress", min_height=44)
    return progress, gr.Markdown(text, elem_id=f"{prefix}-info", label="Result")


def result_picture(label: str, elem_id: str, **kwargs: Any) -> gr.Image:
    """A picture a run makes: shown at the page's picture size, downloadable as the PNG made, full screen."""
    return gr.Image(elem_classes="studio-picture", label=label, type="filepath", format="png", interactive=False,
                    elem_id=elem_id, buttons=["download", "fullscreen"], **kwargs)
