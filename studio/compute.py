"""One thread for all of the studio's torch work: :func:`on_compute_thread` runs a function, or each step
of a generator, there.

Why: torch's CPU kernels run on GNU OpenMP, which keeps a team of worker threads for every thread that
has started parallel work, and counts them all. Gradio calls handlers from a pool of worker threads, so
with the server's main thread (model loading) and a few pool threads the teams soon hold more threads
than the machine has cores; libgomp then stops spinning at its barriers and sleeps instead, and every
UNet evaluation in the studio ran markedly slower than the same call in a script
(``benchmarks/app_latency.py`` measures both). On one long-lived thread there is one team, as in a script.

Requests still share the thread fairly: a generator gives the thread back at each of its yields.
Calls made on the compute thread itself run inline (no deadlock when one handler calls another).
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator, TypeVar

import torch

T = TypeVar("T")
_DONE = object()


class ComputeThread:
    """A single worker thread, started on first use and kept for the life of the process."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="compute")
        self._ident: int | None = None
        self._pool.submit(self._remember).result()

    def _remember(self) -> None:
        self._ident = threading.get_ident()

    @property
    def ident(self) -> int | None:
        return self._ident

    def is_current(self) -> bool:
        return threading.get_ident() == self._ident

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` on the compute thread, in a copy of the caller's context variables
        (Gradio's progress and request live there) and with the caller's torch thread count; its
        result or its exception."""
        if self.is_current():
            return fn(*args, **kwargs)
        ctx = contextvars.copy_context()
        return self._pool.submit(ctx.run, _with_threads, torch.get_num_threads(), fn, *args, **kwargs).result()

    def iterate(self, gen: Iterator[T]) -> Iterator[T]:
        """Drive ``gen`` on the compute thread, one ``next`` per step; closing this iterator (Gradio's
        Stop) closes ``gen`` there too."""
        if self.is_current():
            yield from gen
            return
        try:
            while (item := self.call(next, gen, _DONE)) is not _DONE:
                yield item  # type: ignore[misc]
        finally:
            self.call(gen.close)


def _with_threads(n: int, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn`` with ``n`` torch threads: torch applies ``set_num_threads`` to the calling thread's OpenMP
    settings only, so a later change made elsewhere (tests, a ``CPU_CORES`` read late) reaches here."""
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return fn(*args, **kwargs)


_thread: tuple[int, ComputeThread] | None = None  # (the process id that made it, the thread)
_lock = threading.Lock()


def compute_thread() -> ComputeThread:
    """The process's compute thread, made on first use; a forked child (ZeroGPU runs requests in one)
    inherits no threads, so it makes its own."""
    global _thread
    with _lock:
        if _thread is None or _thread[0] != os.getpid():
            _thread = (os.getpid(), ComputeThread())
        return _thread[1]


def on_compute_thread(fn: Callable) -> Callable:
    """Decorate a function or generator function so that its body runs on :func:`compute_thread`; the
    signature (which Gradio reads for its inputs and ``gr.Progress``) stays the same."""
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def gen_wrapper(*args: Any, **kwargs: Any) -> Iterator:
            yield from compute_thread().iterate(fn(*args, **kwargs))

        wrapped: Any = gen_wrapper
    else:

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return compute_thread().call(fn, *args, **kwargs)

        wrapped = wrapper
    wrapped.runs_on_compute_thread = True  # for the test that every torch-using event handler has it
    return wrapped
