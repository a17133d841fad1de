"""Start the studio: ``python app.py`` (or ``diffusion-studio``); ``--help`` lists the switches."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from typing import Sequence

from diffusion.machine import configure_threads

from .compute import compute_thread
from .handlers import Studio
from .settings import BUNDLED_MODEL, Settings
from .ui import build_app, launch


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python app.py", description="DDPM / DDIM Studio (Gradio).")
    p.add_argument(
        "--model", default=None, help=f"default model folder or Hub id (env DEFAULT_MODEL; default {BUNDLED_MODEL})"
    )
    p.add_argument("--allow-local", action="store_true", help="accept any local model folder typed in the Model box")
    p.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME"), help="address to listen on")
    p.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    compile_ = p.add_mutually_exclusive_group()
    compile_.add_argument(
        "--compile",
        action="store_true",
        help="build the default model's ahead-of-time compiled UNet first if it is missing (about a "
        "minute on 2 CPU cores), then serve",
    )
    compile_.add_argument(
        "--no-compile",
        action="store_true",
        help="run models eagerly (env COMPILE=0); by default a compiled package is used where one exists",
    )
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    try:  # the environment's settings, checked before anything starts: one line for a bad value, exit 2
        settings = Settings.from_env(
            default_model=args.model,
            allow_local=args.allow_local or None,
            compile=False if args.no_compile else None,
            build_compiled=args.compile or None,
        )
        threads = configure_threads()
    except ValueError as e:
        print(f"python app.py: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    studio = Studio(settings)
    if settings.compile and settings.build_compiled:
        start = time.perf_counter()
        pipe = studio.store.get(settings.default_model)
        ok = compute_thread().call(pipe.compile, build=True)
        print(f"[studio] compiled UNet {'ready' if ok else 'unavailable: eager'} ({time.perf_counter() - start:.0f} s)")
    demo = build_app(studio)
    pipe = studio.store.peek(settings.default_model)
    mode = "compiled ahead of time" if pipe is not None and pipe.compiled is not None else "eager"
    print(
        f"[studio] torch uses {threads} thread(s); the default model runs {mode}; CPU budget {settings.max_work:,} "
        "pixel-steps"
    )
    # a host stops the server with SIGTERM (Spaces, docker stop): leave as Ctrl+C does, through the cleanup
    signal.signal(signal.SIGTERM, _stop)
    try:
        launch(demo, server_name=args.host, server_port=args.port)
    finally:
        studio.outputs.clear()  # this run's pictures and files; Gradio empties its own upload folder


def _stop(signum: int, frame: object) -> None:
    raise SystemExit(0)
