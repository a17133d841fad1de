"""How fast a sampling request can be on this CPU: the arithmetic floor against what the UNet takes.

    python benchmarks/cpu_floor.py                       # bundled model, 16 images, 50 steps
    python benchmarks/cpu_floor.py --images 4 --steps 20 --model /path/to/model

Measured in one run, so the ratios hold on a noisy machine:
  * the request's arithmetic: images x steps x the UNet's FLOPs per image (``torch.utils.flop_counter``);
  * the CPU's fp32 rate in a large matrix product (MKL, all torch threads): the best it does;
  * the floor: arithmetic / that rate;
  * the convolutions alone, as the pipeline runs them (oneDNN, channels-last, weights reordered once),
    timed layer by layer at the request's batch size, and their rate;
  * one whole eager UNet step (as the pipeline runs it), and the request's time at that speed.

Prints one line per quantity and a JSON summary with the ratios to the floor.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from diffusion import load
from diffusion.machine import unet_flops

ROOT = Path(__file__).resolve().parents[1]


def seconds(fn, reps: int) -> float:
    """Median seconds per call over ``reps`` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_rate(n: int = 2048, reps: int = 10) -> float:
    """fp32 FLOP/s of an n x n matrix product."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / seconds(lambda: a @ b, reps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "checkpoints" / "fashion-mnist"))
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    parser.add_argument("--reps", type=int, default=10)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    pipe = load(args.model).to("cpu")
    unet = pipe.unet.eval().requires_grad_(False)
    x = torch.randn(args.images, *pipe.image_shape)
    t = torch.tensor(500.0)
    flops_step, per_op = unet_flops(unet.config, args.images)  # the studio's work budget counts the same way
    conv_flops = sum(n for op, n in per_op.items() if "convolution" in op)
    request = flops_step * args.steps

    # Every convolution's input, recorded at the request's batch size.
    calls: list[tuple[torch.nn.Conv2d, torch.Tensor]] = []
    hooks = [
        m.register_forward_hook(lambda m, i, o: calls.append((m, i[0].clone())))
        for m in unet.modules()
        if isinstance(m, torch.nn.Conv2d)
    ]
    with torch.no_grad():
        unet(x, t)
    for h in hooks:
        h.remove()

    peak = matmul_rate()
    with torch.no_grad(), unet.frozen_weights({}):
        step = seconds(lambda: unet(x, t), args.reps)
        conv = sum(seconds(lambda m=m, i=i: m(i), args.reps) for m, i in calls)
    peak2 = matmul_rate()  # again after the UNet: the machine may have changed speed meanwhile
    rate = max(peak, peak2)

    print(f"{torch.get_num_threads()} torch threads; {args.images} images x {args.steps} steps")
    print(
        f"UNet: {flops_step / args.images / 1e9:.3f} GFLOP per image and step; the request: {request / 1e9:.0f} GFLOP"
    )
    print(f"fp32 matrix product: {peak / 1e9:.0f} and {peak2 / 1e9:.0f} GFLOP/s -> floor {request / rate:.2f} s")
    print(
        f"convolutions: {conv * 1e3:.1f} ms per step ({conv_flops / conv / 1e9:.0f} GFLOP/s, "
        f"{conv_flops / flops_step:.1%} of the FLOPs) -> {conv * args.steps:.2f} s per request"
    )
    print(
        f"whole eager UNet step: {step * 1e3:.1f} ms -> {step * args.steps:.2f} s per request "
        f"({(step - conv) * 1e3:.1f} ms per step outside the convolutions)"
    )
    print(
        json.dumps(
            {
                "model": args.model,
                "images": args.images,
                "steps": args.steps,
                "threads": torch.get_num_threads(),
                "gflop_per_image_step": round(flops_step / args.images / 1e9, 4),
                "request_gflop": round(request / 1e9, 1),
                "matmul_gflops": round(rate / 1e9, 1),
                "floor_s": round(request / rate, 3),
                "conv_s": round(conv * args.steps, 3),
                "conv_over_floor": round(conv * args.steps / (request / rate), 3),
                "eager_s": round(step * args.steps, 3),
                "eager_over_floor": round(step * args.steps / (request / rate), 3),
            }
        )
    )


if __name__ == "__main__":
    main()
