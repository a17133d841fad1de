"""How every tab's run button and Stop are wired (:class:`Runner`): model loading, then the work in one queue,
the button off while it runs, Stop that cancels and says where it stopped."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import gradio as gr

from .runs import stopped_note
from .widgets import PRIVATE


@dataclass
class Runner:
    """How every tab's run button is wired, the same way in each: the click loads the model in the "load"
    queue (``fetch``); the work, chained on its success, runs in the "model" queue one at a time, through
    ``gpu_task`` (ZeroGPU on Spaces), with its progress bar shown in the tab's progress box; the button is off
    while it runs (:func:`busy_while_running`)."""

    fetch: Callable[[str], Any]
    model: gr.Dropdown
    load_event: dict[str, Any]
    model_event: dict[str, Any]
    gpu_task: Callable[[Callable], Callable]

    def wire(self, go: gr.Button, stop: gr.Button, fn: Callable, outputs: list[Any], inputs: dict[str, Any],
             progress: gr.Markdown, note: gr.Markdown, api_name: str | None = None,
             api_description: str | None = None,
             after: Callable[[Any], Any] | None = None) -> Any:
        """``go`` runs ``fn(model=..., **inputs)`` into ``outputs`` (an ``api_name`` makes it a named API endpoint);
        ``stop`` cancels it at once (outside the queue), and the result line ``note``, if it showed the run going,
        says where it stopped (:func:`studio.runs.stopped_note`). ``after(run)`` adds the tab's own listeners to the
        work's event (Sample's download button). Returns the work's event."""
        fetch = go.click(self.fetch, [self.model], None, show_progress="minimal", **self.load_event, **PRIVATE)
        api = {"api_name": api_name, "api_description": api_description} if api_name else PRIVATE
        run = fetch.success(self.gpu_task(fn), None, outputs, inputs_kwargs={"model": self.model, **inputs},
                            show_progress_on=[progress], **self.model_event, **api)
        if after is not None:  # before Stop's and the button's listeners, the order the tabs always had: with a
            after(run)  # .failure listener after them, a queued run Stop cancels showed a bare "Error" more often
        stop.click(stopped_note, [note], [note], cancels=[fetch, run], queue=False, **PRIVATE)
        busy_while_running(go, fetch, run, stop)
        return run


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
