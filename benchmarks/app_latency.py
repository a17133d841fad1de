"""The studio against the library on the same work, in one run: what the server adds around the sampler.

For each request (the studio's defaults: Compare, DDPM-1000 against DDIM-50 on 4 images; Sample, 16
images of DDIM-50; Explore's Consistency, one x_T of 4 images decoded at 10, 20, 50 and 100 DDIM steps):

  * library: ``pipe.sample`` for the same work in this process's main thread, as a script runs it (the
    baseline: run just before each studio request, while the server idles; ratios are the median of the
    pairs' ratios, so that the machine's slower minutes hit both sides);
  * studio, its figure: the time the result line (Compare: its table) reports, what the visitor is told;
  * studio, click to result: from submitting through ``gradio_client`` to the result arriving;
  * first preview: from submitting to the first streamed picture.

Then Stop (a DDPM-1000 Sample cancelled after its first preview: the seconds from the cancel to the
server's log line "stopped at step N of 1000"), and two visitors at once (each visitor's click to result
against its share of the machine: twice the library's time).

    python -m benchmarks.app_latency                  # starts `python app.py` itself (compiled UNet if built)
    python -m benchmarks.app_latency --no-compile     # both sides eager (COMPILE=0)

The server and this process use the same torch thread count (``CPU_CORES``, else the machine's cores).
Prints a line per measurement, the ratios, and a JSON summary at the end. Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = "checkpoints/fashion-mnist"
TARGETS = {"studio_figure": 1.15, "click_to_result": 1.3, "first_preview_s": 1.0, "two_visitors": 1.3}
# The studio's default requests (the UI's defaults; the API's are the same) and the library's same work.
REQUESTS: dict[str, dict[str, Any]] = {
    "compare": dict(api_name="/compare"),
    "sample": dict(api_name="/sample"),
    "explore": dict(api_name="/consistency", seed=0, num_images=4, counts=[10, 20, 50, 100]),
}


def library_work(pipe: Any) -> dict[str, Callable[[], Any]]:
    """The same work as :data:`REQUESTS`, through the library's one sampling loop."""
    noise = pipe.initial_noise(4, 0)
    return {
        "compare": lambda: (
            pipe.sample("ddpm", n=4, seed=0, num_inference_steps=1000),
            pipe.sample("ddim", n=4, seed=0, num_inference_steps=50, eta=0.0),
        ),
        "sample": lambda: pipe.sample("ddim", n=16, seed=0, num_inference_steps=50, eta=0.0),
        "explore": lambda: [
            pipe.sample("ddim", noise=noise, num_inference_steps=k, eta=0.0) for k in (10, 20, 50, 100)
        ],
    }


def load_library(model: str, compile: bool) -> tuple[dict[str, Callable[[], Any]], str]:
    """The library's work for each request, warmed up, in this process's main thread (as a script)."""
    import torch

    import diffusion
    from diffusion.machine import configure_threads

    configure_threads()
    pipe = diffusion.load(ROOT / model if (ROOT / model).is_dir() else model)
    pipe.unet.eval().requires_grad_(False)
    mode = "compiled" if compile and pipe.compile() else "eager"
    work = library_work(pipe)
    work["sample"]()  # warm-up (weights reordered, kernels chosen)
    print(f"library: {mode}, {torch.get_num_threads()} torch threads", flush=True)
    return work, mode


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(model: str, compile: bool) -> tuple[subprocess.Popen, str, Path]:
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    if not compile:
        env["COMPILE"] = "0"
    log = Path(tempfile.mkstemp(prefix="app_latency_", suffix=".log")[1])
    cmd = [sys.executable, str(ROOT / "app.py"), "--port", str(port), "--host", "127.0.0.1", "--model", model]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:  # "Running on local URL" prints before the server answers
        if proc.poll() is not None:
            raise SystemExit(f"the app exited with code {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "gradio_api/info", timeout=2):
                return proc, url, log
        except OSError:
            time.sleep(0.3)
    raise SystemExit(f"the app did not answer within 240 s:\n{log.read_text()[-3000:]}")


def server_seconds(name: str, result: tuple) -> float:
    """The time the studio reports for a request: the result line's figure (Compare: both panels')."""
    if name == "compare":
        metrics = result[-1]
        return metrics["a"]["seconds"] + metrics["b"]["seconds"]
    info = next(v for v in result if isinstance(v, str) and re.search(r"[0-9.]+ s\b", v))
    return float(re.findall(r"([0-9.]+) s\b", info)[-1 if name == "explore" else 0])


def request(client: Any, name: str, timeout: float = 600) -> dict[str, float]:
    """One request: first preview, click to result, the studio's own figure."""
    start = time.perf_counter()
    job = client.submit(**REQUESTS[name])
    first = None
    while not job.done():
        if first is None and job.outputs():
            first = time.perf_counter() - start
        if time.perf_counter() - start > timeout:
            job.cancel()
            raise SystemExit(f"{name}: no result within {timeout:.0f} s")
        time.sleep(0.05)  # 50 ms resolution: faster polling steals time slices from the server's 2 torch threads
    result = job.result()
    total = time.perf_counter() - start
    return {"first_preview_s": first if first is not None else total, "click_s": total,
            "figure_s": server_seconds(name, result)}


def stop_latency(client: Any, log: Path) -> tuple[float, str]:
    """Cancel a DDPM-1000 Sample after its first preview: the seconds from the cancel to the server's
    log line saying where the run stopped, and that line."""
    seen = log.read_text().count("stopped at step")
    job = client.submit(api_name="/sample", sampler="ddpm", steps=1000, num_images=4)
    while not job.outputs():
        time.sleep(0.05)
    cancelled = time.perf_counter()
    job.cancel()
    while time.perf_counter() - cancelled < 30:
        lines = [line for line in log.read_text().splitlines() if "stopped at step" in line]
        if len(lines) > seen:
            return time.perf_counter() - cancelled, lines[-1].strip()
        time.sleep(0.01)
    raise SystemExit("the server did not stop the run within 30 s of the cancel")


def two_visitors(url: str) -> list[float]:
    """Two visitors submit the default Sample at once: each one's click to result."""
    from gradio_client import Client

    clients = [Client(url, verbose=False, download_files=False) for _ in range(2)]
    with ThreadPoolExecutor(2) as pool:
        times = list(pool.map(lambda c: request(c, "sample")["click_s"], clients))
    for c in clients:
        c.close()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=BUNDLED, help=f"model folder or Hub id (default {BUNDLED})")
    parser.add_argument("--no-compile", action="store_true", help="both sides eager (the app with COMPILE=0)")
    parser.add_argument("--repeats", type=int, default=3, help="library runs and studio requests of each kind")
    args = parser.parse_args()
    compile = not args.no_compile

    work, mode = load_library(args.model, compile)
    proc, url, log = start_app(args.model, compile)
    pairs: dict[str, list[tuple[float, dict[str, float]]]] = {name: [] for name in REQUESTS}
    try:
        from gradio_client import Client

        client = Client(url, verbose=False, download_files=False)
        client.predict(api_name="/sample", sampler="ddim", steps=2, num_images=1)  # warm-up
        for _ in range(args.repeats):  # interleaved, so that a slower minute of the machine hits both sides
            for name in REQUESTS:
                lib_s = timed(work[name])  # the server idles meanwhile
                pairs[name].append((lib_s, m := request(client, name)))
                print(f"{name}: library {lib_s:.2f} s; studio: first preview {m['first_preview_s']:.2f} s, click to "
                      f"result {m['click_s']:.2f} s, its figure {m['figure_s']:.2f} s", flush=True)
        stop_s, stop_line = stop_latency(client, log)
        print(f"Stop: {stop_line!r} {stop_s:.2f} s after the cancel", flush=True)
        sample_s = timed(work["sample"])
        visitors = two_visitors(url)
        print(f"two visitors at once (default Sample): {visitors[0]:.2f} s and {visitors[1]:.2f} s "
              f"(library alone {sample_s:.2f} s)", flush=True)
        client.close()
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.unlink(missing_ok=True)

    rows = {}
    for name, runs in pairs.items():
        med = {k: statistics.median(m[k] for _, m in runs) for k in ("first_preview_s", "click_s", "figure_s")}
        lib = statistics.median(lib_s for lib_s, _ in runs)
        rows[name] = {  # ratios: the median of each interleaved pair's ratio
            "library_s": round(lib, 3),
            **{k: round(v, 3) for k, v in med.items()},
            "figure_over_library": round(statistics.median(m["figure_s"] / lib_s for lib_s, m in runs), 3),
            "click_over_library": round(statistics.median(m["click_s"] / lib_s for lib_s, m in runs), 3),
        }
        print(f"{name:8s} library {lib:6.2f} s | studio figure {med['figure_s']:6.2f} s "
              f"({rows[name]['figure_over_library']:.2f}x) | click to result {med['click_s']:6.2f} s "
              f"({rows[name]['click_over_library']:.2f}x) | first preview {med['first_preview_s']:.2f} s")
    share = [round(t / (2 * sample_s), 3) for t in visitors]
    print(f"two visitors: {share[0]:.2f}x and {share[1]:.2f}x of their share (twice the library's Sample)")
    summary = {
        "mode": mode,
        "model": args.model,
        "cpu_count": os.cpu_count(),
        "requests": rows,
        "stop_s": round(stop_s, 3),
        "two_visitors_s": [round(t, 3) for t in visitors],
        "two_visitors_over_share": share,
        "targets": TARGETS,
        "met": {
            "studio_figure": all(r["figure_over_library"] <= TARGETS["studio_figure"] for r in rows.values()),
            "click_to_result": all(r["click_over_library"] <= TARGETS["click_to_result"] for r in rows.values()),
            "first_preview_s": all(r["first_preview_s"] <= TARGETS["first_preview_s"] for r in rows.values()),
            "two_visitors": max(share) <= TARGETS["two_visitors"],
        },
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
