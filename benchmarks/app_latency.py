"""Latency of the studio as a client sees it (gradio_client against a running app).

Measures, for the Sample endpoint with DDIM (default 16 images, 50 steps, eta 0):
  * first preview: from submitting the request to the first streamed x0 preview arriving;
  * result: from submitting to the finished images arriving.
Targets on a 2-core CPU with the bundled model: first preview <= 1 s, 16-image DDIM-50 result <= 5 s.

    python benchmarks/app_latency.py                          # starts `python app.py` itself
    python benchmarks/app_latency.py --model /path/to/model   # ... with another default model
    python benchmarks/app_latency.py --url http://127.0.0.1:7860/   # an app already running

Prints one line per repeat and a JSON summary (medians) at the end.
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


def start_app(model: str | None, cores: str | None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    if cores:
        env["CPU_CORES"] = cores
    cmd = [sys.executable, str(ROOT / "app.py"), "--port", str(port), "--host", "127.0.0.1"]
    if model:
        cmd += ["--model", model]
    log = tempfile.NamedTemporaryFile("w+", prefix="app_latency_", suffix=".log", delete=False)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    proc.log_path = log.name  # type: ignore[attr-defined]
    return proc, f"http://127.0.0.1:{port}/"


def measure(client, images: int, steps: int, seed: int, timeout: float) -> tuple[float, float, int, float]:
    """(seconds to the first preview, seconds to the result, number of streamed updates, seconds the
    server spent in the sampler, read from the result's info line)."""
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
    info = job.result()[3]
    total = time.perf_counter() - t0
    outputs = job.outputs()
    sampler_s = float(re.search(r"([0-9.]+) s \(", info).group(1))
    return (first if first is not None else total), total, len(outputs), sampler_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="an app already running (otherwise `python app.py` is started)")
    parser.add_argument("--model", help="default model of the started app (default: the bundled checkpoint)")
    parser.add_argument("--cores", help="CPU_CORES for the started app (default: the app's own detection)")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=120, help="seconds allowed per request")
    args = parser.parse_args()

    from gradio_client import Client

    proc = None
    url = args.url
    if url is None:
        proc, url = start_app(args.model, args.cores)
    try:
        wait_ready(url, proc, 180)
        client = Client(url, verbose=False)
        measure(client, 1, 2, 0, args.timeout)  # warm-up: first call pays for lazy initialisation
        firsts, totals, samplers = [], [], []
        for r in range(args.repeats):
            first, total, updates, sampler_s = measure(client, args.images, args.steps, r, args.timeout)
            firsts.append(first)
            totals.append(total)
            samplers.append(sampler_s)
            print(f"run {r + 1}: first preview {first:.3f} s, {args.images}-image DDIM-{args.steps} result {total:.3f} s "
                  f"({updates} streamed updates; {sampler_s:.2f} s of it in the sampler)", flush=True)
        client.close()
        summary = {"url": url, "model": args.model or "app default", "images": args.images, "steps": args.steps,
                   "first_preview_s": round(statistics.median(firsts), 3), "result_s": round(statistics.median(totals), 3),
                   "sampler_s": round(statistics.median(samplers), 3),
                   "first_preview_target_s": TARGET_FIRST_PREVIEW_S, "result_target_s": TARGET_RESULT_S,
                   "first_preview_ok": statistics.median(firsts) <= TARGET_FIRST_PREVIEW_S,
                   "result_ok": statistics.median(totals) <= TARGET_RESULT_S,
                   "cpu_count": os.cpu_count(), "load_average_1min": round(os.getloadavg()[0], 2)}
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
