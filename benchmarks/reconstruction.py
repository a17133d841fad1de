"""DDIM reconstruction error (Song et al. 2021, Table 2): encode real test images into x_T with the
deterministic DDIM ODE (:meth:`DiffusionPipeline.invert`), decode them with the same plan, and report the
per-dimension MSE in [0, 1] at each step count beside the paper's CIFAR-10 numbers.

    python -m benchmarks.reconstruction                          # checkpoints/fashion-mnist, 64 test images
    python -m benchmarks.reconstruction -n 256 --with-1000
    python -m benchmarks.reconstruction --model google/ddpm-cifar10-32 --dataset cifar10 --download

Fashion-MNIST's test split comes from Debian's copy (``/usr/share/datasets/fashion-mnist``), CIFAR-10's
from torchvision (``--download`` where the internet is reachable; the Hub model too). The first ``-n``
test images are used; the sampler options are the checkpoint's scheduler config's unless given.
"""

from __future__ import annotations

import argparse
import time

import torch

from diffusion.cli import Parser
from diffusion.latent_tasks import reconstruct
from diffusion.latents import PAPER_TABLE2, mse_per_dimension
from diffusion.pipeline import load
from training.data import load_images


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m benchmarks.reconstruction", description=__doc__,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="checkpoints/fashion-mnist")
    p.add_argument("--dataset", default="fashion-mnist", choices=["fashion-mnist", "mnist", "cifar10"])
    p.add_argument("--data-root", default="data")
    p.add_argument("--download", action="store_true", help="let torchvision fetch the test split")
    p.add_argument("-n", "--num-images", type=int, default=64)
    p.add_argument("--steps", default="10,20,50,100", help="comma-separated step counts")
    p.add_argument("--with-1000", action="store_true", help="also 1000 steps (slow: 2000 UNet passes per image)")
    p.add_argument("--spacing", choices=["leading", "trailing"], default=None)
    p.add_argument("--clip", dest="clip_sample", action="store_true", default=None, help="clip predicted x0")
    p.add_argument("--no-clip", dest="clip_sample", action="store_false")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    steps = [int(s) for s in args.steps.split(",")] + ([1000] if args.with_1000 else [])
    pipe = load(args.model, device=args.device)
    channels, size, _ = pipe.image_shape
    data = load_images(args.dataset, args.data_root, split="test", download=args.download)[: args.num_images]
    if data.shape[1:] != (channels, size, size):
        raise SystemExit(f"error: {args.dataset} images are {tuple(data.shape[1:])}; {args.model} takes "
                         f"{(channels, size, size)}.")
    images = data.float().div(255).to(pipe.device)
    overrides = {"timestep_spacing": args.spacing, "clip_sample": args.clip_sample}
    print(f"{pipe.source} on {len(images)} {args.dataset} test images, {torch.get_num_threads()} threads, "
          f"{args.device}")
    rows = []
    for k in steps:
        options = pipe.inversion_options(num_inference_steps=k, **overrides)
        start = time.perf_counter()
        _, recon = reconstruct(pipe, images, options, args.batch_size)
        rows.append((k, mse_per_dimension(recon, images), time.perf_counter() - start, options))
        print(f"  {k} steps: MSE {rows[-1][1]:.5f} ({rows[-1][2]:.0f} s)", flush=True)
    print(f"\nDDIM encode then decode, {options.timestep_spacing} spacing, clip_sample={options.clip_sample}\n")
    print(f"| steps | MSE per dimension ({args.dataset}, N={len(images)}) | paper, CIFAR-10 | wall time (s) |")
    print("|---:|---:|---:|---:|")
    for k, mse, seconds, _ in rows:
        print(f"| {k} | {mse:.5f} | {PAPER_TABLE2.get(k, float('nan')):g} | {seconds:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
