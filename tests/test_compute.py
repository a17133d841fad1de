"""studio/compute.py: the studio's torch work runs on one thread, whoever calls it, and that keeps one
OpenMP team however many of Gradio's worker threads call in."""

from __future__ import annotations

import contextvars
import os
import threading
import time
from pathlib import Path

import pytest
import torch

from studio.compute import compute_thread, on_compute_thread

WHO: contextvars.ContextVar[str] = contextvars.ContextVar("WHO", default="nobody")


@on_compute_thread
def where(x: int) -> tuple[int, int, str]:
    return threading.get_ident(), x * 2, WHO.get()


@on_compute_thread
def steps(n: int, log: list):
    try:
        for i in range(n):
            log.append(threading.get_ident())
            yield i
    finally:
        log.append(("closed", threading.get_ident()))


@on_compute_thread
def fails() -> None:
    raise ValueError("a message for the user")


@on_compute_thread
def nested() -> int:
    return where(1)[0]  # a decorated call from the compute thread runs inline: no deadlock


def in_thread(fn):
    out = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    t.join(30)
    return out[0]


def test_functions_run_on_the_compute_thread_with_the_callers_context():
    ident = compute_thread().ident
    WHO.set("caller")
    assert where(3) == (ident, 6, "caller")
    assert in_thread(lambda: where(4))[:2] == (ident, 8)  # from another thread too
    assert nested() == ident
    with pytest.raises(ValueError, match="a message for the user"):
        fails()


def test_generators_step_on_the_compute_thread_and_close_there():
    ident, log = compute_thread().ident, []
    assert list(steps(3, log)) == [0, 1, 2]
    assert log == [ident] * 3 + [("closed", ident)]
    log.clear()
    gen = steps(100, log)
    assert next(gen) == 0 and next(gen) == 1
    gen.close()  # Gradio's Stop closes the handler's generator
    assert log == [ident, ident, ("closed", ident)]  # no step after the close, and the handler's finally ran


def test_the_compute_thread_uses_the_callers_thread_count():
    before = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            assert on_compute_thread(torch.get_num_threads)() == n
    finally:
        torch.set_num_threads(before)


def os_threads() -> int:
    return len(os.listdir("/proc/self/task"))


def settled_threads() -> int:
    """The thread count once threads of finished work have exited (their OpenMP workers go a moment later)."""
    count, deadline = os_threads(), time.monotonic() + 5
    while time.monotonic() < deadline:
        time.sleep(0.2)
        if (now := os_threads()) == count:
            break
        count = now
    return count


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads through /proc")
def test_callers_from_many_threads_share_one_openmp_team():
    """Torch's parallel work started from a new thread gives that thread an OpenMP team of its own
    (one more OS thread per extra torch thread); through the compute thread it adds none."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    x = torch.randn(4, 64, 64, 64)

    def work() -> float:
        return float((x * 2).sum())  # 1M elements: above ATen's grain size, so it runs in parallel

    try:
        on_compute_thread(work)()  # the compute thread's own team, made once
        for run, extra in ((on_compute_thread(work), 0), (work, 1)):
            release, ready = threading.Event(), threading.Barrier(4)
            start = settled_threads()

            def caller(run=run, release=release, ready=ready):
                torch.set_num_threads(2)
                run()
                ready.wait(30)
                release.wait(30)

            callers = [threading.Thread(target=caller) for _ in range(3)]
            for t in callers:
                t.start()
            ready.wait(30)  # all three callers alive, their work done
            added = os_threads() - start - len(callers)
            release.set()
            for t in callers:
                t.join(30)
            if run is work and added < 3 * extra:
                pytest.skip("this torch build does not give each calling thread an OpenMP team")
            assert added == 3 * extra, (run, added)
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_makes_its_own_compute_thread():
    """ZeroGPU runs requests in a forked process, which inherits no threads: the parent's compute thread
    is not there to take work, so the child must not wait on it."""
    where(0)  # the parent's compute thread exists
    pid = os.fork()
    if pid == 0:  # the child: exit 0 only if a decorated call returns
        try:
            os._exit(0 if where(5)[1] == 10 else 1)
        except BaseException:  # noqa: BLE001
            os._exit(1)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.05)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    pytest.fail("the forked child hung waiting for its parent's compute thread")
