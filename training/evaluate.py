"""Sample a model N times and score the samples: FID and IS with torch-fidelity on Inception-v3, or,
offline, a Frechet distance (FD) and classifier IS on the features of a small Fashion-MNIST classifier.

    # The seed's CIFAR-10 numbers (needs internet: Inception weights and CIFAR-10 are downloaded once):
    python -m training.evaluate --model google/ddpm-cifar10-32 --sampler ddpm -n 50000 --batch-size 1000 \\
        --metric inception --reference cifar10-train --out runs/eval/cifar10-ddpm1000
    # Offline, the bundled model against the Fashion-MNIST test split:
    python -m training.evaluate --model checkpoints/fashion-mnist --sampler ddim --steps 50 -n 10000 \\
        --out runs/eval/ddim50
    # The README's table (every sampler row; resumable: rows already in table.json are kept):
    python -m training.evaluate --table --model checkpoints/fashion-mnist --out runs/eval/table
    # Is DDIM-50 ahead of DDPM-100 beyond the noise? A paired bootstrap over two rows' samples:
    python -m training.evaluate --compare runs/eval/table/ddim-eta0-50 runs/eval/table/ddpm-fixed_small-100 \\
        --out runs/eval/compare
    # A class-conditional model at guidance 0, 1, 2, 3, 5 and 7.5 (DDIM-50, every class in turn, the same noise):
    python -m training.evaluate --guidance --model checkpoints/fashion-mnist-cond --steps 50 -n 2000 \\
        --out runs/eval/guidance
    # The sampler arena: samplers against model evaluations from the same noise (plot, table, CSV in OUT):
    python -m training.evaluate --arena ddim dpm-solver++ unipc deis:solver_order=3 --evaluations 5 10 20 \
        --model checkpoints/fashion-mnist -n 256 --out runs/arena
    # Several GPUs: each process samples its share of the batches, process 0 scores them.
    torchrun --nproc_per_node 8 -m training.evaluate --model ... -n 50000 --out ...

Sample i of batch b (``--batch-size`` B) starts from noise drawn by a generator seeded with seed + b on
the sampling device, so a run is reproducible for a given (seed, B, device type) whatever the number of
processes, and every table row starts from the same noise. Samples are kept as ``samples.npz`` (uint8
(N, H, W, C) under ``arr_0``, the layout of guided-diffusion's evaluator) or PNGs; ``metrics.json`` states N,
the seeds, the weights, the reference and its split next to the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

from diffusion.cli import MAX_SEED, add_sampler_arguments, check_device, int_arg, sampler_overrides
from diffusion.files import CheckpointError, atomic_write, check_writable
from diffusion.pipeline import load

from . import classifier as clf
from .eval_table import GUIDANCE_SCALES, guidance_markdown, markdown_table, run_guidance_table, run_table
from .generation import dist_rank, evaluate
from .metrics import frechet_difference
from .scoring import DEFAULT_CLASSIFIER, Scorer, read_samples_npz, reference_images


def score_images(scorer: Scorer, images: str, n: int, out: Path) -> int:
    """Score existing images (the first ``n``) and write ``out/metrics.json``: e.g. the training split,
    the floor a perfect model would reach against the test split."""
    data = reference_images(images, clf.IMAGE_SHAPE if scorer.metric == "classifier" else None)[:n]
    scorer.check(tuple(data.shape[1:]), len(data))
    row = {"name": f"data:{images}", "images": images, "n": len(data), **scorer.describe(),
           **{k: round(v, 4) for k, v in scorer.score(data.permute(0, 2, 3, 1).numpy()).items()}}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "metrics.json", lambda p: p.write_text(json.dumps(row, indent=2) + "\n"))
    print(json.dumps(row, indent=2))
    return 0


def compare_samples(scorer: Scorer, a: str, b: str, out: Path, rounds: int = 200) -> int:
    """Is the FD gap between two rows real? :func:`frechet_difference` (a paired bootstrap) on the classifier
    features of two rows' samples (``samples.npz`` files, or the row folders that hold them), written to
    ``out/compare.json``. The rows should start from the same noise (same seed, -n and batch size)."""
    if scorer.metric != "classifier":
        raise ValueError("--compare works on the classifier metric's features (--metric classifier).")
    images, paths = [], []
    for given in (a, b):
        path = Path(given) / "samples.npz" if Path(given).is_dir() else Path(given)
        if not path.is_file() or path.suffix != ".npz":
            raise FileNotFoundError(f"--compare: no samples at {path}; give a samples.npz written by "
                                    "training/evaluate.py (--save npz, the default) or the row folder holding it.")
        paths.append(path.resolve())
        images.append(read_samples_npz(path))
    if paths[0] == paths[1]:
        raise ValueError(f"--compare: A and B are the same file ({paths[0]}); give two rows' samples.")
    scorer.check(tuple(images[0].shape[1:]), min(len(images[0]), len(images[1])))
    model, reference, _ = scorer.classifier_reference(features=False)
    fa, fb = (clf.extract(model, x)[0] for x in images)
    result = {"a": a, "b": b, "n": len(fa), "rounds": rounds, **scorer.describe(),
              **frechet_difference(fa, fb, reference["mu"], reference["sigma"], rounds)}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "compare.json", lambda p: p.write_text(json.dumps(result, indent=2) + "\n"))
    print(f"FD {result['fd_a']:.3f} (a) - {result['fd_b']:.3f} (b) = {result['difference']:+.3f}, bootstrap std "
          f"{result['std']:.3f} over {rounds} rounds; a scored lower in {100 * result['p_a_lower']:.0f}% of them, "
          f"b in {100 * result['p_b_lower']:.0f}%, tied in {100 * result['p_tie']:.0f}%")
    return 0


def run_arena(args: argparse.Namespace, pipe: Any, scorer: Scorer | None, out: Path) -> int:
    """``--arena``: the rows of :class:`training.arena.Arena` with a progress bar, each printed as it is scored,
    then the files of :func:`training.arena_report.write`."""
    from tqdm import tqdm

    from . import arena_report
    from .arena import Arena, ArenaSpec, Contender, Tick

    if dist_rank()[1] > 1:
        raise ValueError("--arena runs in one process; start it without torchrun.")
    spec = ArenaSpec(tuple(Contender.parse(c) for c in args.arena), tuple(args.evaluations), args.num_samples,
                     args.seed, args.batch_size, args.guidance_scale, args.rounds, args.reference_steps)
    arena = Arena(pipe, spec, scorer, Path(args.cache))
    with tqdm(total=spec.n * arena.work(), unit="image-eval", unit_scale=True) as bar:
        for event in arena.run():
            if isinstance(event, Tick):
                bar.set_description(event.label[:60], refresh=False)
                bar.update(event.done - bar.n)
            else:
                fd = f" FD={event['fd']:.4f}±{event['fd_std']:.4f}" if "fd" in event else ""
                bar.write(f"{event['label']} @ {event['model_evaluations']} evaluations: RMSE={event['rmse']:.5f}"
                          f"±{event['rmse_std']:.5f}{fd} ({event['seconds']:.1f} s)")
    files = arena_report.write(arena, args.model, out)
    print(arena_report.markdown(arena))
    print("wrote " + ", ".join(str(p) for p in files.values()))
    return 0


# ---------------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training.evaluate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_sampler_arguments(p, model_required=False)
    p.add_argument("-n", "--num-samples", type=int_arg(1), default=10_000)
    p.add_argument(
        "--batch-size", type=int_arg(1), default=500, help="samples per forward pass (part of what fixes the noise)"
    )
    p.add_argument("--seed", type=int_arg(0, MAX_SEED), default=0, help="batch b draws its noise from seed + b")
    p.add_argument("--metric", choices=["classifier", "inception", "none"], default="classifier")
    p.add_argument("--reference", default="", help="what samples are compared with: cifar10-train (Inception), "
                   "fashion-mnist-test (classifier default), fashion-mnist-train, an .npz or a folder of images")
    p.add_argument("--classifier", default=str(DEFAULT_CLASSIFIER), help="the classifier folder (--metric classifier)")
    p.add_argument("--out", required=True, help="folder for samples and metrics.json (table.json with --table)")
    p.add_argument("--save", choices=["npz", "png", "none"], default="npz")
    p.add_argument("--table", action="store_true", help="run every row of the README table instead of one sampler")
    p.add_argument(
        "--rows",
        nargs="*",
        default=None,
        help="with --table: only these rows (names as in table.json, or sampler names)",
    )
    p.add_argument("--n-long", type=int_arg(1), default=2000, help="with --table: samples for the 1000-step rows")
    p.add_argument("--device", type=check_device, default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--score",
        default=None,
        metavar="IMAGES",
        help="score these images instead of sampling (--model is "
        "then ignored): samples.npz from an earlier run, a folder, or a dataset split such as fashion-mnist-train",
    )
    p.add_argument(
        "--compare",
        nargs=2,
        default=None,
        metavar=("A", "B"),
        help="instead of sampling: is FD(A) < FD(B) beyond the noise? A paired bootstrap over two rows' "
        "samples.npz (or their row folders) from the same noise, written to OUT/compare.json",
    )
    p.add_argument("--rounds", type=int_arg(2), default=200,
                   help="with --compare, --guidance and --arena: bootstrap rounds")
    p.add_argument("--guidance", action="store_true",
                   help="a class-conditional model at each --guidance-scales value (rows from the same noise, every "
                   "class in turn), FD compared with guidance 1 by the paired bootstrap: OUT/guidance.json and .md")
    p.add_argument("--guidance-scales", default=",".join(f"{s:g}" for s in GUIDANCE_SCALES),
                   help="with --guidance: the scales, comma-separated")
    p.add_argument("--arena", nargs="+", default=None, metavar="SAMPLER[:KEY=VALUE...]",
                   help="the sampler arena: up to 4 samplers (with options, e.g. unipc:solver_order=3) at each of "
                   "--evaluations, from the same noise; RMSE to the converged ODE solution and, for 28x28 grey "
                   "images, the classifier's FD / precision / recall: OUT/arena.json, .csv, .md, .png, strip.png")
    p.add_argument("--evaluations", nargs="+", type=int_arg(1, 1000), default=[5, 10, 20, 50],
                   help="with --arena: the budgets of model evaluations per sample")
    p.add_argument("--reference-steps", type=int_arg(10, 1000), default=200,
                   help="with --arena: steps of the converged solution (UniPC, order 3, trailing)")
    p.add_argument("--cache", default="runs/arena-cache",
                   help="with --arena: folder of cached converged solutions (per model and noise)")
    p.add_argument("--guidance-scale", type=float, default=None,
                   help="a class-conditional model's guidance for one run (default: its classes.json's)")
    return p


def main(argv: list[str] | None = None) -> int:
    """The ``diffusion-evaluate`` entry point: :func:`run`, then the torchrun process group torn down."""
    try:
        return run(argv)
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def run(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    rank, world = dist_rank()
    device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if args.device == "cuda" and world > 1 else args.device
    if device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        scorer = Scorer(args.metric, args.reference, Path(args.classifier), device)  # type: ignore[arg-type]
        out = check_writable(args.out, "folder")  # before hours of sampling, not after
        if args.score:
            return score_images(scorer, args.score, args.num_samples, out)
        if args.compare:
            return compare_samples(scorer, *args.compare, out, args.rounds)
        if not args.model:
            raise ValueError(
                "--model is required (a model folder or Hub repo id), unless --score scores existing images."
            )
        pipe = load(args.model, args.revision, local_files_only=args.offline, device=device)
        if args.arena:
            return run_arena(args, pipe, scorer if args.metric == "classifier" else None, out)
        scorer.check(pipe.image_shape, min(args.n_long, args.num_samples) if args.table else args.num_samples)
        if args.guidance:
            scales = tuple(float(x) for x in args.guidance_scales.split(","))
            options = pipe.sampler_options(args.sampler, **sampler_overrides(args))
            rows = run_guidance_table(pipe, scorer, out, args.sampler, options, args.num_samples, args.batch_size,
                                      args.seed, scales, args.rounds)
            if rank == 0:
                atomic_write(out / "guidance.md", lambda p: p.write_text(guidance_markdown(rows)))
                print(guidance_markdown(rows))
            return 0
        if args.table:
            given = {k: v for k, v in sampler_overrides(args).items() if v is not None}  # e.g. --no-clip for every row
            rows = run_table(
                pipe, scorer, out, args.n_long, args.num_samples, args.batch_size, args.seed, args.rows, given,
                args.save,
            )
            if rank == 0:
                atomic_write(out / "table.md", lambda p: p.write_text(markdown_table(rows)))
                print(markdown_table(rows))
            return 0
        options = pipe.sampler_options(args.sampler, **sampler_overrides(args))
        row = evaluate(pipe, scorer, args.sampler, options, args.num_samples, args.batch_size, args.seed, out,
                       args.save, guidance_scale=args.guidance_scale)
    except (CheckpointError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if row is not None:
        atomic_write(out / "metrics.json", lambda p: p.write_text(json.dumps(row, indent=2) + "\n"))
        print(json.dumps(row, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
