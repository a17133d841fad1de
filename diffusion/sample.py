"""Sample a DDPM from the command line.

    python -m diffusion.sample --model google/ddpm-cifar10-32 --sampler ddim --steps 50 --eta 0 --seed 0 -n 16 --out grid.png
    python -m diffusion.sample --model checkpoints/fashion-mnist --sampler ddpm --steps 1000 --process process.png

Defaults for every option not given are those of the checkpoint's scheduler config, as in diffusers.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from .hub import CheckpointError, load
from .images import save_grid
from .pipeline import DiffusionPipeline, to_unit
from .samplers import SAMPLERS, SPACINGS, Step


def process_grid(steps: list[Step], frames: int = 8, rows: int = 4) -> torch.Tensor:
    """The denoising process as images in [0, 1]: for each of ``rows`` samples, a row of x_t and a
    row of predicted x0 at ``frames`` evenly spaced steps (the last step's x_prev at the end)."""
    picks = sorted({round(i * (len(steps) - 1) / max(frames - 1, 1)) for i in range(frames)})
    out = []
    for r in range(min(rows, steps[0].x_t.shape[0])):
        out += [to_unit(steps[i].x_t[r]) for i in picks] + [to_unit(steps[-1].x_prev[r])]
        out += [to_unit(steps[i].pred_x0[r]) for i in picks] + [to_unit(steps[-1].x_prev[r])]
    return torch.stack(out)


def parse_value(text: str) -> Any:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def add_sampler_arguments(p: argparse.ArgumentParser, model_required: bool = True) -> None:
    """--model, --sampler and the sampler options (shared with ``training.evaluate``)."""
    p.add_argument("--model", required=model_required, help="a model folder (diffusers layout) or a Hugging Face Hub repo id")
    p.add_argument("--revision", default=None, help="Hub branch, tag or commit to pin")
    p.add_argument("--offline", action="store_true", help="use only the local Hub cache")
    p.add_argument("--sampler", default="ddim", choices=sorted(SAMPLERS))
    p.add_argument("--steps", type=int, default=None, help="number of sampling steps (default: the sampler's: DDPM 1000, DDIM 50)")
    p.add_argument("--eta", type=float, default=None, help="DDIM noise scale: 0 deterministic, 1 DDPM-like")
    p.add_argument("--variance-type", choices=["fixed_small", "fixed_large"], default=None, help="DDPM posterior variance")
    p.add_argument("--spacing", choices=SPACINGS, default=None, help="timestep selection")
    clip = p.add_mutually_exclusive_group()
    clip.add_argument("--clip", dest="clip_sample", action="store_true", default=None, help="clip predicted x0 to [-1, 1]")
    clip.add_argument("--no-clip", dest="clip_sample", action="store_false", help="do not clip predicted x0")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="any other sampler option, e.g. use_clipped_model_output=true")


def sampler_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The sampler options given on the command line (None: the checkpoint's or the sampler's default)."""
    options: dict[str, Any] = {"num_inference_steps": args.steps, "eta": args.eta, "variance_type": args.variance_type,
                               "timestep_spacing": args.spacing, "clip_sample": args.clip_sample}
    for item in args.option:
        if "=" not in item:
            raise ValueError(f"--option wants KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        options[key.replace("-", "_")] = parse_value(value)
    return options


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m diffusion.sample", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_sampler_arguments(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-n", "--num-images", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=None, help="images per forward pass (default: all)")
    p.add_argument("--out", default="samples.png", help="PNG grid of the samples")
    p.add_argument("--process", default=None, help="also save the denoising process (x_t and predicted x0) as this PNG")
    p.add_argument("--process-frames", type=int, default=8)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        options = sampler_overrides(args)
        if args.num_images < 1:
            raise ValueError("-n must be at least 1.")
        pipe: DiffusionPipeline = load(args.model, args.revision, local_files_only=args.offline, device=args.device)
        opts = pipe.sampler_options(args.sampler, **options)
    except (CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{pipe.source}: {sum(p.numel() for p in pipe.unet.parameters()) / 1e6:.1f} M parameters, {args.sampler} {opts}")
    generator = torch.Generator("cpu").manual_seed(args.seed)
    x = pipe.initial_noise(args.num_images, args.seed, generator)
    batch = args.batch_size or args.num_images
    finals, trace = [], []
    start = time.perf_counter()
    with tqdm(total=opts.num_inference_steps * -(-args.num_images // batch), desc=args.sampler, unit="step") as bar:
        for b in range(0, args.num_images, batch):
            steps = []
            for step in pipe.denoise(args.sampler, noise=x[b:b + batch], generator=generator, options=opts):
                steps.append(step if args.process and b == 0 else None)
                bar.update(1)
            finals.append(to_unit(step.x_prev))
            if args.process and b == 0:
                trace = steps
    images = torch.cat(finals)
    save_grid(images, args.out)
    print(f"saved {args.num_images} images to {args.out} ({time.perf_counter() - start:.1f} s)")
    if args.process:
        frames = process_grid(trace, args.process_frames)
        save_grid(frames, args.process, nrow=len(frames) // (2 * min(4, args.num_images)))
        print(f"saved the denoising process to {args.process}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
