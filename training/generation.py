"""Sampling for evaluation: the same noise for every row (batch b from seed + b), shared across torchrun
processes (:class:`BatchSampler`), one row's samples and timings, and the step count that fits an evaluation
budget."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any, Iterator, Literal

import numpy as np
import torch
from tqdm import tqdm

from diffusion.files import atomic_write
from diffusion.images import to_uint8
from diffusion.pipeline import DiffusionPipeline, to_unit
from diffusion.samplers import Step, get_sampler

from . import classifier as clf
from .scoring import Scorer


def dist_rank() -> tuple[int, int]:
    """(rank, world size) under torchrun, else (0, 1)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def asked_labels(pipe: DiffusionPipeline, n: int) -> torch.Tensor | None:
    """The class each of ``n`` samples of a class-conditional model is asked for: sample i gets class i mod k,
    so every class is drawn equally often (None for an unconditional model)."""
    if not pipe.class_conditional:
        return None
    if pipe.classes is None:
        raise ValueError("This model embeds labels as numbers or vectors; evaluate it from Python.")
    return torch.arange(n) % len(pipe.classes.names)


class BatchSampler:
    """The n samples of one evaluation row as batches b = rank, rank + world, ... of ``batch_size``, batch b from
    the noise of a generator seeded with seed + b; a class-conditional model's samples are of :func:`asked_labels`
    at ``guidance_scale``. Iterate it for (b, step, last) at every step of every batch, through
    :meth:`DiffusionPipeline.denoise`; ``seconds`` counts the time spent in the sampler (not the caller's between
    steps), ``evaluations`` the model evaluations per sample of the last batch."""

    def __init__(self, pipe: DiffusionPipeline, sampler: str, options: Any, n: int, batch_size: int, seed: int,
                 rank: int = 0, world: int = 1, guidance_scale: float | None = None) -> None:
        self.pipe, self.sampler, self.options = pipe, sampler, options
        self.n, self.batch_size, self.seed, self.guidance_scale = n, batch_size, seed, guidance_scale
        self.batches = [b for b in range(-(-n // batch_size)) if b % world == rank]
        self.labels = asked_labels(pipe, n)
        self.seconds = 0.0
        self.evaluations = 0

    def __iter__(self) -> Iterator[tuple[int, Step, bool]]:
        """(batch, step, whether it is the batch's last step), for every step of every batch."""
        pipe, device = self.pipe, self.pipe.device
        for b in self.batches:
            size = min(self.batch_size, self.n - b * self.batch_size)
            generator = torch.Generator(device).manual_seed(self.seed + b)
            x = torch.randn((size, *pipe.image_shape), generator=generator, device=device, dtype=pipe.unet.dtype)
            asked = {} if self.labels is None else {
                "class_labels": self.labels[b * self.batch_size:b * self.batch_size + size],
                "guidance_scale": self.guidance_scale}
            steps = pipe.denoise(self.sampler, noise=x, generator=generator, options=self.options, **asked)
            self.evaluations = 0
            step = self._next(steps)
            while step is not None:
                following = self._next(steps)  # one step ahead, to say which step is the last
                self.evaluations += step.evaluations
                yield b, step, following is None
                step = following

    def _next(self, steps: Iterator[Step]) -> Step | None:
        start = time.perf_counter()
        step = next(steps, None)
        if self.pipe.device.type == "cuda":
            torch.cuda.synchronize(self.pipe.device)
        self.seconds += time.perf_counter() - start
        return step


def generate(pipe: DiffusionPipeline, sampler: str, options: Any, n: int, batch_size: int, seed: int,
             rank: int = 0, world: int = 1, progress: bool = True,
             guidance_scale: float | None = None) -> tuple[dict[int, np.ndarray], dict[str, float]]:
    """The batches of :class:`BatchSampler` as uint8 (B, H, W, C), and timings.

    Returns ({batch index: images}, {"seconds", "evaluations" (model evaluations per sample)})."""
    run = BatchSampler(pipe, sampler, options, n, batch_size, seed, rank, world, guidance_scale)
    out: dict[int, np.ndarray] = {}
    with tqdm(total=len(run.batches), desc=f"{sampler} {options.num_inference_steps} steps", unit="batch",
              disable=not progress) as bar:
        for b, step, last in run:
            if last:
                out[b] = to_uint8(to_unit(step.x_prev))
                bar.update(1)
    return out, {"seconds": run.seconds, "evaluations": run.evaluations}


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
             out: Path | None = None, save: str = "npz", progress: bool = True,
             guidance_scale: float | None = None) -> dict[str, Any] | None:
    """Sample, gather (under torchrun), save and score; the result row on process 0, None elsewhere. A
    class-conditional model is sampled for every class in turn at ``guidance_scale`` (None: its recommended
    one), and the row has the classifier's accuracy on the asked classes."""
    rank, world = dist_rank()
    scale = pipe.guidance(guidance_scale) if pipe.class_conditional else None
    shards, timing = generate(pipe, sampler, options, n, batch_size, seed, rank, world, progress and rank == 0, scale)
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
    if scale is not None:
        row["guidance_scale"] = scale
    same_classes = pipe.classes is not None and tuple(pipe.classes.names) == tuple(clf.CLASSES)
    scores = scorer.score(images, asked_labels(pipe, n) if same_classes else None)
    row.update({k: round(v, 4) for k, v in scores.items()})
    return row
