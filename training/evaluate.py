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
import dataclasses
import json
import os
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm import tqdm

from diffusion.files import CheckpointError, atomic_write, check_writable
from diffusion.images import to_uint8
from diffusion.pipeline import DiffusionPipeline, load, to_unit
from diffusion.sample import MAX_SEED, add_sampler_arguments, check_device, int_arg, sampler_overrides
from diffusion.samplers import get_sampler

from . import classifier as clf
from .metrics import (
    blank_fraction,
    feature_statistics,
    frechet_difference,
    frechet_distance,
    inception_score,
    precision_recall,
)

Metric = Literal["classifier", "inception", "none"]
DEFAULT_CLASSIFIER = Path(__file__).resolve().parent.parent / "checkpoints" / "fashion-mnist-classifier"
INCEPTION_FEATURES = 2048


# ---------------------------------------------------------------------------------------------- sampling
def _dist() -> tuple[int, int]:
    """(rank, world size) under torchrun, else (0, 1)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def generate(pipe: DiffusionPipeline, sampler: str, options: Any, n: int, batch_size: int, seed: int,
             rank: int = 0, world: int = 1, progress: bool = True) -> tuple[dict[int, np.ndarray], dict[str, float]]:
    """Batches b = rank, rank + world, ... of the n samples as uint8 (B, H, W, C), and timings.

    Returns ({batch index: images}, {"seconds", "evaluations" (model evaluations per sample)})."""
    batches = [b for b in range(-(-n // batch_size)) if b % world == rank]
    device = pipe.device
    out: dict[int, np.ndarray] = {}
    evaluations = 0
    start = time.perf_counter()
    bar = tqdm(
        total=len(batches), desc=f"{sampler} {options.num_inference_steps} steps", unit="batch", disable=not progress
    )
    for b in batches:
        size = min(batch_size, n - b * batch_size)
        generator = torch.Generator(device).manual_seed(seed + b)
        x = torch.randn((size, *pipe.image_shape), generator=generator, device=device, dtype=pipe.unet.dtype)
        evaluations = 0
        step = None
        for step in pipe.denoise(sampler, noise=x, generator=generator, options=options):
            evaluations += step.evaluations
        out[b] = to_uint8(to_unit(step.x_prev))
        bar.update(1)
    bar.close()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, {"seconds": time.perf_counter() - start, "evaluations": evaluations}


def steps_for_evaluations(pipe: DiffusionPipeline, sampler: str, evaluations: int, **options: Any) -> int:
    """The most steps whose loop spends at most ``evaluations`` model evaluations (Heun spends 2N - 1,
    PNDM's Runge-Kutta warm-up more: the length of :meth:`SamplerSpec.timesteps`)."""
    spec, best = get_sampler(sampler), 0
    for steps in range(1, evaluations + 1):
        try:
            opts = pipe.sampler_options(sampler, **{**options, "num_inference_steps": steps})
        except ValueError:
            continue
        if len(spec.timesteps(pipe.schedule, opts)) <= evaluations:
            best = steps
    if not best:
        raise ValueError(f"{sampler} cannot run on {evaluations} model evaluations.")
    return best


# ------------------------------------------------------------------------------------------------- scoring
@dataclass
class Scorer:
    """What the samples are compared with: the metric, its reference images or statistics, and the features' size."""

    metric: Metric
    reference: str
    classifier_dir: Path = DEFAULT_CLASSIFIER
    device: str = "cpu"
    info: dict[str, Any] = field(default_factory=dict)

    def check(self, shape: tuple[int, ...], n: int) -> None:
        """Refuse, before any sampling, what would give a meaningless or failing score."""
        if self.metric == "none":
            return
        if self.metric == "inception":
            if not self.reference:
                raise ValueError(
                    "Inception FID/IS need --reference: a torch-fidelity dataset (cifar10-train for "
                    "google/ddpm-cifar10-32), a dataset split such as fashion-mnist-test, or a folder of images."
                )
            try:
                import torch_fidelity  # noqa: F401
            except ImportError:
                raise ValueError("--metric inception needs torch-fidelity: pip install -r requirements.txt") from None
            dim = INCEPTION_FEATURES
        else:
            if tuple(shape) != (1, 28, 28):
                raise ValueError(f"The classifier metric scores 1x28x28 Fashion-MNIST-like images; these are "
                                 f"{'x'.join(map(str, shape))}. Use --metric inception with a --reference.")
            _, _, self.info = clf.load(self.classifier_dir)
            if (
                self.reference not in ("", "fashion-mnist-test", "fashion-mnist-train")
                and not Path(self.reference).exists()
            ):
                raise ValueError(f"--reference {self.reference!r} is neither fashion-mnist-test, fashion-mnist-train "
                                 "nor an existing .npz or folder of images.")
            dim = clf.FEATURES
        if n <= dim:
            raise ValueError(f"-n {n} is not more than the feature dimension ({dim}): the covariance of the samples' "
                             f"features would be singular and the Frechet distance meaningless. Use -n 2000 or more "
                             f"(the papers use 50,000).")

    def describe(self) -> dict[str, Any]:
        if self.metric == "classifier":
            ref = self.reference or "fashion-mnist-test"
            return {
                "metric": "Frechet distance and Inception Score on the features/logits of the Fashion-MNIST classifier "
                "(not comparable with Inception FID/IS)",
                "reference": ref,
                "classifier": str(self.classifier_dir),
                "classifier_test_accuracy": self.info.get("test_accuracy"),
            }
        if self.metric == "inception":
            return {"metric": "FID and IS on Inception-v3 (torch-fidelity)", "reference": self.reference}
        return {"metric": "none"}

    def classifier_reference(
        self, features: bool = True
    ) -> tuple[clf.Classifier, dict[str, torch.Tensor], torch.Tensor | None]:
        """The classifier, the reference's feature mean and covariance (cached for the test split) and, with
        ``features`` or where the statistics need them, the reference images' features (else None: the cached
        statistics need no images on disk)."""
        model, reference, _ = clf.load(self.classifier_dir, self.device)
        cached = self.reference in ("", "fashion-mnist-test")
        if cached and not features:
            return model, reference, None
        real = clf.extract(model, _reference_images(self.reference or "fashion-mnist-test"))[0]
        if not cached:
            reference = dict(zip(("mu", "sigma"), feature_statistics(real)))
        return model, reference, real

    def score(self, images: np.ndarray) -> dict[str, float]:
        """Scores of uint8 (N, H, W, C) images."""
        if self.metric == "none":
            return {}
        if self.metric == "inception":
            return inception_metrics(images, self.reference, cuda=self.device.startswith("cuda"))
        model, reference, real = self.classifier_reference()
        pixels = torch.from_numpy(images).permute(0, 3, 1, 2)
        feats, logits = clf.extract(model, pixels)
        mu, sigma = feature_statistics(feats)
        is_mean, is_std = inception_score(logits)
        # Precision/recall compare sets of equal size (Kynkaanniemi et al. 2019):
        # a fixed random subset of the reference.
        if len(real) > len(feats):
            real = real[torch.randperm(len(real), generator=torch.Generator().manual_seed(0))[:len(feats)]]
        precision, recall = precision_recall(feats, real)
        return {"fd": frechet_distance(mu, sigma, reference["mu"], reference["sigma"]), "is": is_mean, "is_std": is_std,
                "precision": precision, "recall": recall, "blank": blank_fraction(pixels)}


def read_samples_npz(path: Path) -> torch.Tensor:
    """uint8 (N, C, H, W) images from an .npz of (N, H, W, C) images under ``arr_0`` (or its only array), as
    :func:`evaluate` writes them and guided-diffusion's evaluator reads them. uint8 is taken as it is, floats in
    [0, 1] are scaled to 0-255 (and said); anything else is refused with the reason (ValueError)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            keys = list(f.keys())
            if "arr_0" not in keys and len(keys) != 1:
                raise ValueError(f"{path} holds {', '.join(keys) or 'no arrays'}; put the images under arr_0 "
                                 "(np.savez(path, images)).")
            x = f["arr_0" if "arr_0" in keys else keys[0]]
    except (OSError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path} is not a readable .npz file ({err}).") from None
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3) or 0 in x.shape:
        raise ValueError(f"{path}: images of shape {x.shape}; expected (N, H, W, C) with C = 1 or 3 and N >= 1.")
    if np.issubdtype(x.dtype, np.floating):
        if not np.isfinite(x).all():
            raise ValueError(f"{path}: the images hold NaN or infinite values; they cannot be scored.")
        if x.min() < 0 or x.max() > 1:
            raise ValueError(f"{path}: float images from {x.min():.4g} to {x.max():.4g}; give uint8 (0-255) or "
                             "floats in [0, 1].")
        print(f"{path}: float images in [0, 1], scaled to 0-255 (as uint8 images are read)")
        x = np.round(x * 255).astype(np.uint8)
    elif x.dtype != np.uint8:
        if x.min() < 0 or x.max() > 255:
            raise ValueError(f"{path}: {x.dtype} images from {x.min()} to {x.max()}; give uint8 (0-255) or "
                             "floats in [0, 1].")
        x = x.astype(np.uint8)
    return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2)


def _reference_images(reference: str) -> torch.Tensor:
    """uint8 (N, C, H, W) images of a dataset split name (``fashion-mnist-test``), an .npz or a folder."""
    from .data import load_images

    path = Path(reference)
    if path.suffix == ".npz":
        return read_samples_npz(path)
    if path.is_dir():
        return load_images("folder", str(path), image_size=28, channels=1)
    name, _, split = reference.rpartition("-")
    return load_images(name, "data", split)


class _Images(torch.utils.data.Dataset):
    """uint8 (N, H, W, C) images as torch-fidelity wants them: (3, H, W) uint8 tensors."""

    def __init__(self, images: np.ndarray | torch.Tensor) -> None:
        t = torch.as_tensor(images)
        self.images = t.permute(0, 3, 1, 2) if t.shape[-1] in (1, 3) else t

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        x = self.images[i]
        return x.expand(3, -1, -1).contiguous() if x.shape[0] == 1 else x


def inception_metrics(images: np.ndarray, reference: str, cuda: bool = False, **kwargs: Any) -> dict[str, float]:
    """FID and IS of uint8 (N, H, W, C) images with torch-fidelity; ``reference`` is a torch-fidelity
    input (a registered dataset such as ``cifar10-train``, whose statistics it caches, or a folder) or
    one of our dataset splits (``fashion-mnist-test``), cached under that name. ``kwargs`` go to
    ``torch_fidelity.calculate_metrics`` (e.g. another ``feature_extractor``)."""
    import torch_fidelity

    registered = reference in torch_fidelity.registry.DATASETS_REGISTRY
    ref: Any = reference if registered or Path(reference).is_dir() else _Images(_reference_images(reference))
    extra = (
        {}
        if registered or isinstance(ref, str)
        else {"cache": True, "input2_cache_name": f"repro-diffusion-{reference}"}
    )
    m = torch_fidelity.calculate_metrics(input1=_Images(images), input2=ref, cuda=cuda, fid=True, isc=True,
                                         verbose=False, **extra, **kwargs)
    return {"fd": m["frechet_inception_distance"], "is": m["inception_score_mean"], "is_std": m["inception_score_std"]}


# ------------------------------------------------------------------------------------------------ one run
def save_samples(images: np.ndarray, out: Path, how: Literal["npz", "png", "none"]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    if how == "npz":
        atomic_write(out / "samples.npz", lambda p: np.savez(open(p, "wb"), arr_0=images))
    elif how == "png":
        from PIL import Image

        folder = out / "samples"
        folder.mkdir(exist_ok=True)
        for i, im in enumerate(images):
            Image.fromarray(im[..., 0] if im.shape[-1] == 1 else im).save(folder / f"{i:06d}.png")


def evaluate(pipe: DiffusionPipeline, scorer: Scorer, sampler: str, options: Any, n: int, batch_size: int, seed: int,
             out: Path | None = None, save: str = "npz", progress: bool = True) -> dict[str, Any] | None:
    """Sample, gather (under torchrun), save and score; the result row on process 0, None elsewhere."""
    rank, world = _dist()
    shards, timing = generate(pipe, sampler, options, n, batch_size, seed, rank, world, progress and rank == 0)
    if world > 1:
        import torch.distributed as dist

        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, shards)
        shards = {b: im for part in gathered for b, im in part.items()}
        times: list[Any] = [None] * world
        dist.all_gather_object(times, timing["seconds"])
        timing["seconds"] = max(times)
        if rank:
            return None
    images = np.concatenate([shards[b] for b in sorted(shards)])
    if out is not None and save != "none":
        save_samples(images, out, save)  # type: ignore[arg-type]
    row = {"sampler": sampler, "options": dataclasses.asdict(options), "n": n, "seed": seed,
           "batch_size": batch_size, "model_evaluations": timing["evaluations"], "seconds": round(timing["seconds"], 2),
           "seconds_per_1000": round(1000 * timing["seconds"] / n, 3), "processes": world,
           "device": torch.cuda.get_device_name(pipe.device) if pipe.device.type == "cuda" else "cpu",
           "weights": pipe.source, **scorer.describe()}
    row.update({k: round(v, 4) for k, v in scorer.score(images).items()})
    return row


# ------------------------------------------------------------------------------------------------ the table
@dataclass(frozen=True)
class Row:
    name: str
    sampler: str
    options: dict[str, Any]
    long: bool = False  # 1000-step rows: fewer samples (--n-long)
    evaluations: int | None = None  # NFE-matched rows: the steps are solved for this budget


def table_rows() -> list[Row]:
    """The README table: DDPM (both variances) and DDIM (eta 0, 1) at 1000/100/50/20/10 steps (Ho et al. 2020,
    Table 1; Song et al. 2021, Table 1), then the fewer-evaluation samplers at 10, 20 and 50 evaluations."""
    rows = []
    for steps in (1000, 100, 50, 20, 10):
        for var in ("fixed_large", "fixed_small"):
            rows.append(
                Row(f"ddpm-{var}-{steps}", "ddpm", {"num_inference_steps": steps, "variance_type": var}, steps == 1000)
            )
        for eta in (0.0, 1.0):
            rows.append(
                Row(f"ddim-eta{eta:g}-{steps}", "ddim", {"num_inference_steps": steps, "eta": eta}, steps == 1000)
            )
    for sampler in ("dpm-solver++", "pndm", "euler", "heun"):
        for nfe in (10, 20, 50):
            # PNDM as PLMS (skip_prk_steps): its Runge-Kutta warm-up alone spends 12 evaluations.
            options = {"skip_prk_steps": True} if sampler == "pndm" else {}
            rows.append(Row(f"{sampler}-nfe{nfe}", sampler, options, False, nfe))
    # What most users pick first: DPM++ 2M Karras, DPM++ 2M SDE Karras, Euler a.
    karras = {"use_karras_sigmas": True}
    for name, sampler, options in (
        ("dpm-solver++-karras", "dpm-solver++", karras),
        ("dpm-solver++-sde-karras", "dpm-solver++", {**karras, "algorithm_type": "sde-dpmsolver++"}),
        ("euler-ancestral", "euler-ancestral", {}),
    ):
        for nfe in (10, 20):
            rows.append(Row(f"{name}-nfe{nfe}", sampler, options, False, nfe))
    return rows


def run_table(
    pipe: DiffusionPipeline,
    scorer: Scorer,
    out: Path,
    n_long: int,
    n_short: int,
    batch_size: int,
    seed: int,
    only: list[str] | None = None,
    overrides: dict[str, Any] | None = None,
    save: Literal["npz", "png", "none"] = "none",
) -> list[dict[str, Any]]:
    """Every row of :func:`table_rows` (or those named in ``only``, by row or sampler name), appended to
    ``out/table.json`` as each finishes; rows already there are kept, so an interrupted run resumes.
    Each row's samples go to ``out/ROW`` (``save``), to be scored again with ``--score``."""
    path = out / "table.json"
    done = json.loads(path.read_text()) if path.is_file() else []
    have = {r["name"] for r in done}
    rank, _ = _dist()
    order = {r.name: i for i, r in enumerate(table_rows())}
    # Cheapest rows first: an interrupted run has the most rows done.
    for row in sorted(
        table_rows(),
        key=lambda r: (n_long if r.long else n_short) * (r.evaluations or r.options["num_inference_steps"]),
    ):
        if row.name in have or (only and row.name not in only and row.sampler not in only):
            continue
        options = {**row.options, **(overrides or {})}
        if row.evaluations:
            options["num_inference_steps"] = steps_for_evaluations(pipe, row.sampler, row.evaluations, **row.options)
        opts = pipe.sampler_options(row.sampler, **options)
        n = n_long if row.long else n_short
        result = evaluate(pipe, scorer, row.sampler, opts, n, batch_size, seed, out / row.name, save)
        if rank == 0 and result is not None:
            done = sorted([*done, {"name": row.name, **result}], key=lambda r: order.get(r["name"], len(order)))
            out.mkdir(parents=True, exist_ok=True)
            atomic_write(path, lambda p: p.write_text(json.dumps(done, indent=1) + "\n"))
            print(
                f"{row.name}: n={n} NFE={result['model_evaluations']} FD={result.get('fd')} IS={result.get('is')} "
                f"precision={result.get('precision')} recall={result.get('recall')} blank={result.get('blank')} "
                f"({result['seconds']} s)",
                flush=True,
            )
    return done


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The table as README markdown: sampler, steps, NFE, FD, IS, precision, recall, blank images, N, wall
    time per 1000 samples."""
    kind = "Inception" if rows and rows[0].get("metric", "").startswith("FID") else "classifier"
    lines = [
        f"| sampler | setting | steps | NFE | FD ({kind}) | IS ({kind}) | precision | recall | blank | N "
        "| s / 1000 samples |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        o = r["options"]
        setting = {"ddpm": o.get("variance_type", ""), "ddim": f"eta {o.get('eta', 0):g}"}.get(r["sampler"], "")
        if r["sampler"] == "ddim" and not o.get("clip_sample", True):
            setting += ", x0 not clipped"
        elif r["sampler"] == "ddim" and o.get("use_clipped_model_output"):
            setting += ", eps from clipped x0"
        if r["sampler"] == "pndm":
            setting = "PLMS" if o.get("skip_prk_steps") else "PRK warm-up + PLMS"
        if r["sampler"] == "dpm-solver++":
            setting = ", ".join(["SDE" if o.get("algorithm_type") == "sde-dpmsolver++" else "2M"]
                                + (["Karras sigmas"] if o.get("use_karras_sigmas") else []))
        lines.append(
            f"| {r['sampler']} | {setting} | {o['num_inference_steps']} | {r['model_evaluations']} | "
            f"{r.get('fd', float('nan')):.3f} | {r.get('is', float('nan')):.2f} | "
            f"{r.get('precision', float('nan')):.3f} | "
            f"{r.get('recall', float('nan')):.3f} | {_percent(r.get('blank'))} | {r['n']:,} | "
            f"{r['seconds_per_1000']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def _percent(share: float | None) -> str:
    return "-" if share is None else f"{100 * share:.1f}%"


def score_images(scorer: Scorer, images: str, n: int, out: Path) -> int:
    """Score existing images (the first ``n``) and write ``out/metrics.json``: e.g. the training split,
    the floor a perfect model would reach against the test split."""
    data = _reference_images(images)[:n]
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
    p.add_argument("--rounds", type=int_arg(2), default=200, help="with --compare: bootstrap rounds")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    rank, world = _dist()
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
        scorer.check(pipe.image_shape, min(args.n_long, args.num_samples) if args.table else args.num_samples)
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
        row = evaluate(
            pipe, scorer, args.sampler, options, args.num_samples, args.batch_size, args.seed, out, args.save
        )
    except (CheckpointError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if row is not None:
        atomic_write(out / "metrics.json", lambda p: p.write_text(json.dumps(row, indent=2) + "\n"))
        print(json.dumps(row, indent=2))
    return 0


def _main() -> int:
    try:
        return main()
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    raise SystemExit(_main())
