"""What the studio answers to a visitor's mistake: a message that stays, and one line in the server log."""

from __future__ import annotations

import gradio as gr


def refused(message: str, title: str = "Error") -> gr.Error:
    """A visitor's mistake (a value out of range, an upload that is not an image, an unknown model), to raise:
    the page keeps the message until it is closed (a toast that vanished after 5 s left only a red badge over
    the previous result), and the server log gets one line instead of a traceback, which Gradio keeps for
    real faults (a plain ``gr.Error`` or any other exception)."""
    print(f"[studio] refused: {' '.join(message.split())[:300]}", flush=True)
    return gr.Error(message, title=title, duration=None, print_exception=False)
