"""Sample a DDPM from the command line.

    python -m diffusion.sample --model google/ddpm-cifar10-32 --sampler ddim --steps 50 --eta 0 -n 16 --out grid.png
    python -m diffusion.sample --model checkpoints/fashion-mnist --sampler ddpm --steps 1000 --process process.png
    python -m diffusion.sample --model checkpoints/fashion-mnist-cond --class-label sneaker --guidance-scale 3
    python -m diffusion.sample --model checkpoints/fashion-mnist-cond --class-label all -n 8 --out classes.png

DDIM latents (Song et al. 2021, Sec. 5.2-5.4), decoded with deterministic DDIM:

    python -m diffusion.sample --model M --mode interpolate --seed 1 --seed-b 2 --frames 9 --out strip.png
    python -m diffusion.sample --model M --mode reconstruct --input images/ --steps 50 --out recon.png
    python -m diffusion.sample --model M --mode consistency --steps 10,20,50,100,1000 -n 8 --out rows.png

Defaults for every option not given are those of the checkpoint's scheduler config, as in diffusers.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

from .cli import (
    MAX_SEED,
    Parser,
    add_class_arguments,
    add_sampler_arguments,
    check_device,
    class_rows,
    int_arg,
    sampler_overrides,
)
from .files import CheckpointError, check_writable
from .images import MAX_INPUT_IMAGES, images_to_tensor, read_images, save_grid, scale_to_unit
from .latent_tasks import consistency, decode_options, interpolation_latents, reconstruct
from .latents import mse_per_dimension
from .pipeline import DiffusionPipeline, load
from .trajectory import Trajectory

MODES = ("sample", "interpolate", "reconstruct", "consistency")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="python -m diffusion.sample", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_sampler_arguments(p, step_lists=True)
    p.add_argument(
        "--mode",
        choices=MODES,
        default="sample",
        help="sample; or explore DDIM latents: interpolate (--seed to --seed-b), reconstruct (--input), "
        "consistency (one x_T at each of --steps)",
    )
    p.add_argument("--seed", type=int_arg(0, MAX_SEED), default=0)
    p.add_argument("--seed-b", type=int_arg(0, MAX_SEED), default=None, help="interpolate: the other end's seed")
    p.add_argument("--frames", type=int_arg(2), default=9, help="interpolate: images in the strip, ends included")
    p.add_argument(
        "--input", default=None, help=f"reconstruct: an image file or a folder of them (at most {MAX_INPUT_IMAGES})"
    )
    p.add_argument("-n", "--num-images", type=int_arg(1), default=16)
    p.add_argument("--batch-size", type=int_arg(1), default=None, help="images per forward pass (default: all)")
    p.add_argument("--out", default="samples.png", help="PNG grid of the samples")
    p.add_argument(
        "--process",
        default=None,
        help="also save the denoising process (x_t and predicted x0) as this PNG; reconstruct: inputs, latents "
        "and reconstructions side by side",
    )
    p.add_argument("--process-frames", type=int_arg(1), default=8)
    add_class_arguments(p)
    p.add_argument("--device", type=check_device, default="cuda" if torch.cuda.is_available() else "cpu")
    return p


def check_outputs(args: argparse.Namespace) -> None:
    """The output files can be written, checked before any model work (ValueError otherwise)."""
    check_writable(args.out, "file")
    if args.process:
        check_writable(args.process, "file")
        if Path(args.process).expanduser().resolve() == Path(args.out).expanduser().resolve():
            raise ValueError(
                f"--process and --out name the same file ({args.out}); give the process picture another name."
            )


def check_mode(args: argparse.Namespace) -> list[int]:
    """The arguments --mode needs and refuses, checked before any model work (ValueError otherwise);
    returns the step counts given (``args.steps`` becomes the first, or None)."""
    steps = args.steps or []
    args.steps = steps[0] if steps else None
    if len(steps) > 1 and args.mode != "consistency":
        raise ValueError(f"--steps takes a list of step counts with --mode consistency only, got {len(steps)} counts.")
    if args.mode == "sample":
        return steps
    if args.sampler != "ddim":
        raise ValueError(f"--mode {args.mode} decodes DDIM latents with the ddim sampler, not {args.sampler!r}.")
    if args.process and args.mode != "reconstruct":
        raise ValueError(f"--process is for --mode sample and reconstruct, not {args.mode}.")
    if args.mode == "interpolate" and args.seed_b is None:
        raise ValueError("--mode interpolate needs --seed-b, the seed of the other end.")
    if args.mode == "reconstruct" and args.input is None:
        raise ValueError("--mode reconstruct needs --input, an image file or a folder of images.")
    if args.mode == "consistency" and not steps:
        raise ValueError("--mode consistency needs --steps, a list of step counts such as 10,20,50,100.")
    if args.class_label is not None and ("," in args.class_label or args.class_label.strip().lower() == "all"):
        raise ValueError(f"--mode {args.mode} decodes under one class: give one --class-label, not a list.")
    return steps


def main(argv: list[str] | None = None) -> int:
    """Sample and save; every expected failure is one ``error:`` line on stderr and exit status 2."""
    args = build_parser().parse_args(argv)
    try:
        steps = check_mode(args)
        options = sampler_overrides(args)
        check_outputs(args)  # before the model work, so that a bad path does not lose it
        inputs = read_images(args.input) if args.mode == "reconstruct" else []
        pipe: DiffusionPipeline = load(args.model, args.revision, local_files_only=args.offline, device=args.device)
        rows = class_rows(pipe, args.class_label)
        labels = dict(class_labels=rows and rows[0], guidance_scale=pipe.guidance(args.guidance_scale))
        if args.mode == "interpolate":
            return _interpolate(args, pipe, decode_options(pipe, **options), labels)
        if args.mode == "reconstruct":
            return _reconstruct(args, pipe, pipe.inversion_options(**options), inputs, labels)
        if args.mode == "consistency":
            return _consistency(args, pipe, options, steps, labels)
        opts = pipe.sampler_options(args.sampler, **options)
        return _sample(args, pipe, opts, rows)
    except (CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
    except (RuntimeError, MemoryError) as e:  # torch.OutOfMemoryError (CUDA) is a RuntimeError, and so is the CPU's
        if not isinstance(e, (torch.OutOfMemoryError, MemoryError)) and "can't allocate memory" not in str(e):
            raise
        batch = args.batch_size or args.num_images
        what = {
            "interpolate": f"{args.frames} frames at once; lower --frames",
            "reconstruct": "the input images at once; give fewer --input images",
        }.get(args.mode, f"{args.num_images} images ({batch} at once); lower -n or --batch-size")
        print(f"error: out of memory on {args.device} for {what}.", file=sys.stderr)
    except OSError as e:  # a full disk while saving, a folder removed meanwhile...
        print(f"error: {e.strerror or e}{f': {e.filename}' if e.filename else ''}", file=sys.stderr)
    except KeyboardInterrupt:
        print("interrupted; nothing was saved.", file=sys.stderr)
        return 130
    return 2


def _sample(args: argparse.Namespace, pipe: DiffusionPipeline, opts: Any, rows: list[int] | None) -> int:
    """-n images from the seed; a class-conditional model's row of -n per asked class, all from the same x_T."""
    print(
        f"{pipe.source}: {sum(p.numel() for p in pipe.unet.parameters()) / 1e6:.1f} M parameters, {args.sampler} {opts}"
    )
    trajectory = None
    if args.process:
        trajectory = Trajectory(opts.num_inference_steps, pipe.schedule, max_frames=args.process_frames, images=4)
    labels: dict[str, Any] = {}
    noise = None
    if rows is not None:
        scale = pipe.guidance(args.guidance_scale)
        print(f"classes: {', '.join(pipe.classes.names[r] for r in rows)}; guidance scale {scale:g}")
        noise = pipe.initial_noise(args.num_images, args.seed).repeat(len(rows), 1, 1, 1)
        labels = dict(class_labels=torch.tensor(rows).repeat_interleave(args.num_images), guidance_scale=scale)
    start = time.perf_counter()
    images = pipe.sample(
        args.sampler,
        args.num_images,
        args.seed,
        noise=noise,
        options=opts,
        batch_size=args.batch_size,
        progress=True,
        trajectory=trajectory,
        **labels,
    )
    save_grid(images, args.out, **({"nrow": args.num_images} if rows and len(rows) > 1 else {}))
    print(f"saved {len(images)} images to {args.out} ({time.perf_counter() - start:.1f} s)")
    if trajectory is not None:
        save_grid(trajectory.process_grid(), args.process, nrow=len(trajectory))
        print(f"saved the denoising process to {args.process}")
    return 0


def _interpolate(args: argparse.Namespace, pipe: DiffusionPipeline, opts: Any, labels: dict[str, Any]) -> int:
    """One row of --frames images decoded from x_T slerped between the two seeds' (Sec. 5.4)."""
    start = time.perf_counter()
    latents = interpolation_latents(pipe, [args.seed, args.seed_b], args.frames)
    images = pipe.sample("ddim", noise=latents, options=opts, batch_size=args.batch_size, progress=True, **labels)
    save_grid(images, args.out, nrow=args.frames)
    print(f"saved {args.frames} images from seed {args.seed} to {args.seed_b} to {args.out} "
          f"({time.perf_counter() - start:.1f} s)")
    return 0


def _reconstruct(args: argparse.Namespace, pipe: DiffusionPipeline, opts: Any, inputs: list[Any],
                 labels: dict[str, Any]) -> int:
    """Encode the --input images to x_T, decode them again, save the reconstructions (Table 2)."""
    channels, size, _ = pipe.image_shape
    images, notes = images_to_tensor(inputs, channels, size)
    images = images.to(pipe.device)
    if len(set(notes)) == 1 and notes[0]:
        print(f"read the {len(notes)} input image(s): {notes[0]}")
    else:
        for im, note in zip(inputs, notes):
            if note:
                print(f"read {im.info['source']}: {note}")
    start = time.perf_counter()
    if args.guidance_scale is None:  # the conditional model's ODE inverts best: guidance 1 unless asked
        labels = {**labels, "guidance_scale": 1.0}
    latents, recon = reconstruct(pipe, images, opts, args.batch_size, **labels)
    save_grid(recon, args.out)
    print(f"saved {len(recon)} reconstructions to {args.out} ({time.perf_counter() - start:.1f} s)")
    if args.process:
        rows = torch.stack([images.cpu(), scale_to_unit(latents).cpu(), recon.cpu()], 1).flatten(0, 1)
        save_grid(rows, args.process, nrow=3)
        print(f"saved inputs, latents and reconstructions to {args.process}")
    print(f"reconstruction MSE per dimension (images in [0, 1]), {opts.num_inference_steps} steps: "
          f"{mse_per_dimension(recon, images):.6f}")
    return 0


def _consistency(args: argparse.Namespace, pipe: DiffusionPipeline, options: dict[str, Any], steps: list[int],
                 labels: dict[str, Any]) -> int:
    """The seed's x_T decoded at each step count: one row per count (Sec. 5.2, Fig. 5)."""
    start = time.perf_counter()
    rows = consistency(pipe, pipe.initial_noise(args.num_images, args.seed), steps, **labels, **options)
    save_grid(torch.cat([rows[k].cpu() for k in steps]), args.out, nrow=args.num_images)
    print(f"saved {len(steps)} rows ({', '.join(map(str, steps))} steps) of {args.num_images} images to {args.out} "
          f"({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
