"""What classifier-free guidance costs: a guided request (the class and the null label,
:func:`diffusion.classes.guided`) against an unguided one of the same size (guidance 1: the class only),
measured in the same run, alternating, the median of the repeats; then one model evaluation of each form
the guided halves can take: two calls of n images (what the pipeline does on a CPU) and one batched call
of 2n (what it does on a GPU).

    python -m benchmarks.guidance_cost                  # the bundled conditional model, 64 images, DDIM 20 steps
    python -m benchmarks.guidance_cost -n 16 --steps 50 # the studio's default request size

An unconditional model is measured as its class-conditional twin (the same UNet with a label table of 11
rows): the cost does not depend on the weights. The ratio is what to read; the seconds depend on the CPU.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import time
from pathlib import Path

import torch

from diffusion.classes import ClassInfo, guided
from diffusion.cli import Parser, int_arg
from diffusion.pipeline import DiffusionPipeline, load
from diffusion.unet import UNet, UNetConfig

ROOT = Path(__file__).resolve().parents[1]


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m benchmarks.guidance_cost", description=__doc__,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    cond = ROOT / "checkpoints" / "fashion-mnist-cond"
    p.add_argument("--model", default=str(cond if cond.is_dir() else ROOT / "checkpoints" / "fashion-mnist"))
    p.add_argument("-n", "--num-images", type=int_arg(1), default=64)
    p.add_argument("--steps", type=int_arg(1), default=20)
    p.add_argument("--scale", type=float, default=3.0, help="the guided request's guidance scale")
    p.add_argument("--repeats", type=int_arg(1), default=5)
    return p


def conditional(pipe: DiffusionPipeline) -> DiffusionPipeline:
    """``pipe`` if it is class-conditional, else its twin with a random 10-class label table and a null label."""
    if pipe.classes is not None and pipe.classes.null_label is not None:
        return pipe
    config = UNetConfig.from_dict({**pipe.unet.config.to_dict(), "num_class_embeds": 11})
    unet = UNet(config).eval()
    unet.load_state_dict({**pipe.unet.state_dict(), "class_embedding.weight": unet.class_embedding.weight}, strict=True)
    names = tuple(str(i) for i in range(10))
    return DiffusionPipeline(unet, pipe.scheduler_config, pipe.source, ClassInfo(names, 10, 3.0)).to(pipe.device)


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor() or "unknown CPU"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    pipe = conditional(load(args.model))
    labels = torch.arange(args.num_images) % len(pipe.classes.names)
    options = pipe.sampler_options("ddim", num_inference_steps=args.steps)

    def request(scale: float) -> float:
        start = time.perf_counter()
        pipe.sample("ddim", args.num_images, seed=0, options=options, class_labels=labels, guidance_scale=scale)
        return time.perf_counter() - start

    request(1.0), request(args.scale)  # warm-up: allocations, oneDNN's first reorders
    times: dict[float, list[float]] = {1.0: [], args.scale: []}
    for _ in range(args.repeats):
        for scale in times:
            times[scale].append(request(scale))
    plain, guided_s = (statistics.median(times[s]) for s in (1.0, args.scale))
    print(f"{pipe.source}: {args.num_images} images, DDIM {args.steps} steps, {args.repeats} repeats (median), "
          f"{torch.get_num_threads()} threads, {pipe.device.type}, {cpu_name()}")
    print(f"request, guidance 1 (one pass):        {plain:.3f} s")
    print(f"request, guidance {args.scale:g} (two passes):       {guided_s:.3f} s")
    print(f"guided / unguided request: {guided_s / plain:.2f}x")
    evals = evaluation_forms(pipe, labels, args.scale, 10 * args.repeats)
    print(f"one model evaluation: one pass {1000 * evals['one']:.1f} ms, two calls of n {1000 * evals['two']:.1f} ms "
          f"({evals['two'] / evals['one']:.2f}x), one batched call of 2n {1000 * evals['batched']:.1f} ms "
          f"({evals['batched'] / evals['one']:.2f}x)")
    return 0


def evaluation_forms(pipe: DiffusionPipeline, labels: torch.Tensor, scale: float, repeats: int) -> dict[str, float]:
    """Median seconds of one model evaluation: unguided, guided as two calls of n, guided as one call of 2n."""
    x = pipe.initial_noise(len(labels), 0)
    net, packed = pipe.unet, {}

    def call(x: torch.Tensor, t: float, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), net.frozen_weights(packed):
            return net(x, torch.tensor(t), y)

    null = pipe.classes.null_label
    forms = {"one": lambda: call(x, 500, labels.to(pipe.device)),
             "two": lambda: guided(call, labels, null, scale, batched=False)(x, 500),
             "batched": lambda: guided(call, labels, null, scale, batched=True)(x, 500)}
    times: dict[str, list[float]] = {k: [] for k in forms}
    for f in forms.values():
        f()
    for _ in range(repeats):
        for name, f in forms.items():
            start = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


if __name__ == "__main__":
    raise SystemExit(main())
