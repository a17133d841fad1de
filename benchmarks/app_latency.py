"""Latency of the studio as a client sees it (gradio_client against a running app).

Measures, for the Sample endpoint with DDIM (default 16 images, 50 steps, eta 0):
  * first preview: from submitting the request to the first streamed x0 preview arriving;
  * result: from submitting to the result message arriving, and to its images fetched (the client does
    not download files itself; the benchmark fetches the picture and the PNG grid in parallel, as a
    browser does);
  * result over sampler: the result time over the seconds the server spent in the sampler itself (the
    baseline of the same run: what the studio adds around the library).
Targets on a 2-core CPU with the bundled model: first preview <= 1 s, 16-image DDIM-50 result <= 5 s.

    python -m benchmarks.app_latency                          # starts `python app.py` itself
    python -m benchmarks.app_latency --model /path/to/model   # ... with another default model
    python -m benchmarks.app_latency --no-compile             # ... eager only (COMPILE=0)
    python -m benchmarks.app_latency --url http://127.0.0.1:7860/   # an app already running

The server uses the model's ahead-of-time compiled UNet where one was built (``python -m
diffusion.compiled MODEL``; ``scripts/setup.sh`` builds the bundled model's) and runs eagerly otherwise;
each line says which path served it. The first request is measured as soon as the server answers, then
``--repeats`` more.

Prints one line per request and a JSON summary (medians of the repeats) at the end.
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

ROOT = Path(__file__).resolve().parents[1]
TARGET_FIRST_PREVIEW_S = 1.0
TARGET_RESULT_S = 5.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen | None, timeout: float) -> None:
    """Poll /gradio_api/info: "Running on local URL" prints before the server answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = Path(proc.log_path).read_text()[-3000:]  # type: ignore[attr-defined]
            raise SystemExit(f"the app exited with code {proc.returncode} before serving:\n{tail}")
        try:
            with urllib.request.urlopen(url.rstrip("/") + "/gradio_api/info", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"no app answered at {url} within {timeout:.0f} s")


def start_app(model: str | None, cores: str | None, compile: bool) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    if cores:
        env["CPU_CORES"] = cores
    if not compile:
        env["COMPILE"] = "0"
    cmd = [sys.executable, str(ROOT / "app.py"), "--port", str(port), "--host", "127.0.0.1"]
    if model:
        cmd += ["--model", model]
    log = tempfile.NamedTemporaryFile("w+", prefix="app_latency_", suffix=".log", delete=False)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    proc.log_path = log.name  # type: ignore[attr-defined]
    return proc, f"http://127.0.0.1:{port}/"


def file_urls(value) -> list[str]:
    """Every file URL in an endpoint's output (the client was made with ``download_files=False``)."""
    if isinstance(value, dict):
        return (
            [value["url"]] if isinstance(value.get("url"), str) else [u for v in value.values() for u in file_urls(v)]
        )
    if isinstance(value, (list, tuple)):
        return [u for v in value for u in file_urls(v)]
    return []


def fetch_all(urls: list[str]) -> int:
    """Fetch the files in parallel, as a browser does: total bytes."""

    def get(url: str) -> int:
        with urllib.request.urlopen(url, timeout=30) as r:
            return len(r.read())

    with ThreadPoolExecutor(8) as pool:
        return sum(pool.map(get, urls))


def measure(client, images: int, steps: int, seed: int, timeout: float) -> dict:
    """One request: seconds to the first preview, to the result message, and to the result's files
    fetched; the number of streamed updates; the seconds the server spent in the sampler (from the
    result's info line) and the path that served it."""
    t0 = time.perf_counter()
    job = client.submit(sampler="ddim", steps=steps, eta=0.0, num_images=images, seed=seed, api_name="/sample")
    first = None
    deadline = t0 + timeout
    while not job.done():
        if first is None and job.outputs():
            first = time.perf_counter() - t0
        if time.perf_counter() > deadline:
            job.cancel()
            raise SystemExit(f"no result within {timeout:.0f} s")
        time.sleep(0.01)  # 10 ms resolution; polling faster steals CPU from the app on a 2-core machine
    result = job.result()
    total = time.perf_counter() - t0
    info = next(v for v in result if isinstance(v, str) and "model evaluations" in v)
    size = fetch_all(file_urls([v for v in result if v is not info]))  # the picture and the PNG grid
    with_files = time.perf_counter() - t0
    sampler_s = float(re.search(r"([0-9.]+) s \(", info).group(1))
    mode = "compiled" if info.rstrip().endswith("compiled") else "eager"
    return {
        "first_preview_s": first if first is not None else total,
        "result_s": total,
        "with_files_s": with_files,
        "bytes": size,
        "updates": len(job.outputs()),
        "sampler_s": sampler_s,
        "mode": mode,
    }


def describe(m: dict, images: int, steps: int) -> str:
    return (
        f"first preview {m['first_preview_s']:.3f} s, {images}-image DDIM-{steps} result {m['result_s']:.3f} s, "
        f"its {m['bytes'] // 1024} KiB of images fetched {m['with_files_s']:.3f} s ({m['updates']} streamed updates; "
        f"{m['sampler_s']:.2f} s in the sampler; {m['mode']})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="an app already running (otherwise `python app.py` is started)")
    parser.add_argument("--model", help="default model of the started app (default: the bundled checkpoint)")
    parser.add_argument("--cores", help="CPU_CORES for the started app (default: the app's own detection)")
    parser.add_argument("--no-compile", action="store_true", help="start the app with COMPILE=0 (eager only)")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=120, help="seconds allowed per request")
    args = parser.parse_args()

    from gradio_client import Client

    proc = None
    url = args.url
    if url is None:
        proc, url = start_app(args.model, args.cores, not args.no_compile)
    try:
        t_start = time.perf_counter()
        wait_ready(url, proc, 180)
        client = Client(url, verbose=False, download_files=False)
        ready_after = time.perf_counter() - t_start
        print(f"server ready after {ready_after:.1f} s", flush=True)
        m = measure(client, args.images, args.steps, 100, args.timeout)
        first_request = {k: round(v, 3) if isinstance(v, float) else v for k, v in m.items()}
        print("first request: " + describe(m, args.images, args.steps), flush=True)
        runs = []
        for r in range(args.repeats):
            runs.append(measure(client, args.images, args.steps, r, args.timeout))
            print(f"run {r + 1}: " + describe(runs[-1], args.images, args.steps), flush=True)
        client.close()
        med = {
            k: statistics.median(m[k] for m in runs)
            for k in ("first_preview_s", "result_s", "with_files_s", "sampler_s")
        }
        summary = {
            "url": url,
            "model": args.model or "app default",
            "images": args.images,
            "steps": args.steps,
            "first_request": first_request,
            "ready_after_s": round(ready_after, 1),
            "modes": sorted({m["mode"] for m in runs}),
            **{k: round(v, 3) for k, v in med.items()},
            # the baseline of the same runs: the sampler's own time on the server
            "result_over_sampler": round(med["result_s"] / med["sampler_s"], 3),
            "first_preview_target_s": TARGET_FIRST_PREVIEW_S,
            "result_target_s": TARGET_RESULT_S,
            "first_preview_ok": med["first_preview_s"] <= TARGET_FIRST_PREVIEW_S,
            "result_ok": med["with_files_s"] <= TARGET_RESULT_S,
            "cpu_count": os.cpu_count(),
            "load_average_1min": round(os.getloadavg()[0], 2),
        }
        print(json.dumps(summary))
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
            Path(proc.log_path).unlink(missing_ok=True)  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
