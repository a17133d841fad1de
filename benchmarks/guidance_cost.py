"""What classifier-free guidance costs: a guided request (the class and the null label in one batched UNet
call per model evaluation, :func:`diffusion.classes.guided`) against an unguided one of the same size
(guidance 1: the class only), measured in the same run, alternating, the median of the repeats.

    python -m benchmarks.guidance_cost                  # the bundled conditional model, 64 images, DDIM 20 steps
    python -m benchmarks.guidance_cost -n 1 --steps 50  # one image: the batched call costs least here

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

from diffusion.classes import ClassInfo
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
    plain, guided = (statistics.median(times[s]) for s in (1.0, args.scale))
    print(f"{pipe.source}: {args.num_images} images, DDIM {args.steps} steps, {args.repeats} repeats (median), "
          f"{torch.get_num_threads()} threads, {cpu_name()}")
    print(f"guidance 1 (one pass):                 {plain:.3f} s")
    print(f"guidance {args.scale:g} (two passes, one call):    {guided:.3f} s")
    print(f"guided / unguided: {guided / plain:.2f}x (the issue's bound: 2.1x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
