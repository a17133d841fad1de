"""What the studio answers to a visitor's mistake: a message that stays (as a toast and in the result line), and one
line in the server log."""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterator

import gradio as gr


def refused(message: str, title: str = "Error") -> gr.Error:
    """A visitor's mistake (a value out of range, an upload that is not an image, an unknown model), to raise:
    the page keeps the message until it is closed (a toast that vanished after 5 s left only a red badge over
    the previous result), and the server log gets one line instead of a traceback, which Gradio keeps for
    real faults (a plain ``gr.Error`` or any other exception)."""
    print(f"[studio] refused: {' '.join(message.split())[:300]}", flush=True)
    return gr.Error(message, title=title, duration=None, print_exception=False)


def shows_refusals(line: int, outputs: int, keep: tuple[int, ...] = ()) -> Callable[[Callable], Callable]:
    """For a generator handler whose outputs are ``outputs`` components with the result line at ``line``: a
    refusal also goes into the result line ("**Not run:** ..."), where it stays until the next run, and the
    pictures of the previous run are cleared (outputs in ``keep`` are left as they are), so that an older
    result never sits under a message about a newer request. Faults are left to Gradio."""

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Iterator[tuple]:
            try:
                yield from fn(*args, **kwargs)
            except gr.Error as e:
                if e.print_exception:  # a fault, not a refusal
                    raise
                said = tuple(
                    f"**Not run:** {e.message}" if i == line else (gr.skip() if i in keep else None)
                    for i in range(outputs)
                )
                yield said
                raise

        return wrapper

    return decorate
