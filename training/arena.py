"""The sampler arena: which sampler, at how many model evaluations? Every row (a sampler with its options at a
budget of model evaluations) samples the same N noises (:class:`generation.BatchSampler`) and is scored by

- the RMSE of each sample to the same noise's converged solution, a high-step run of the deterministic
  probability-flow ODE (:data:`REFERENCE`, cached per model and noise): the error-against-evaluations curve of
  sampler papers (Lu et al. 2022, "DPM-Solver", Fig. 3; Zhao et al. 2023, "UniPC"); and
- for Fashion-MNIST-like images, the offline classifier's Frechet distance, precision and recall
  (:class:`scoring.Scorer`).

Error bars are bootstrap standard deviations over the samples with the same resampled indices for every row,
so the difference of two rows' values in each round is the paired bootstrap of
:func:`metrics.frechet_difference` (the same draws: ``--compare`` on two rows' samples gives the same numbers).
One :class:`Arena` serves ``python -m training.evaluate --arena`` and the studio's Arena tab."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generator, Iterator

import torch

from diffusion.classes import passes as unet_passes
from diffusion.files import atomic_write
from diffusion.images import to_uint8, to_unit
from diffusion.pipeline import DiffusionPipeline
from diffusion.samplers import get_sampler

from . import classifier as clf
from .generation import BatchSampler, asked_labels, steps_for_evaluations
from .metrics import feature_statistics, frechet_distance
from .scoring import Scorer

MAX_CONTENDERS = 4
MAX_BUDGET = 1000
STEP_OPTIONS = ("num_inference_steps", "timesteps")  # set by the arena from each budget
KEEP_REFERENCES = 32  # cached reference solutions kept (the newest)


@dataclass(frozen=True)
class Contender:
    """A sampler and the options given for it (text, typed by the sampler's options class; the rest are the
    model's scheduler config's). Written ``unipc:solver_order=3:solver_type=bh1`` on the command line."""

    sampler: str
    options: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, text: str) -> "Contender":
        """``sampler[:key=value...]``; options may also be separated by spaces or commas."""
        name, _, rest = text.strip().partition(":")
        return cls.of(name, rest)

    @classmethod
    def of(cls, sampler: str, options: str | dict[str, Any] | None = None) -> "Contender":
        """A contender from a sampler name and its options as text (``solver_order=3 use_karras_sigmas=true``)
        or a dict; ValueError for an unknown sampler or an item that is not key=value."""
        get_sampler(sampler.strip())
        if isinstance(options, dict):
            pairs = [(str(k), str(v)) for k, v in options.items()]
        else:
            pairs = []
            for item in re.split(r"[\s,:]+", (options or "").strip()):
                if not item:
                    continue
                key, eq, value = item.partition("=")
                if not eq or not key or not value:
                    raise ValueError(f"Sampler options are key=value items, e.g. solver_order=3; got {item!r}.")
                pairs.append((key.strip().replace("-", "_"), value.strip()))
        keys = [k for k, _ in pairs]
        if len(set(keys)) != len(keys):
            raise ValueError(f"An option of {sampler} is given twice ({', '.join(keys)}); give each once.")
        if steps := [k for k in keys if k in STEP_OPTIONS]:
            raise ValueError(f"The arena sets each row's steps from its budget of model evaluations; leave "
                             f"{', '.join(steps)} out of {sampler}'s options.")
        return cls(sampler.strip(), tuple(pairs))

    def __str__(self) -> str:
        return ":".join([self.sampler, *(f"{k}={v}" for k, v in self.options)])

    @property
    def label(self) -> str:
        return " ".join([self.sampler.upper(), *(f"{k}={v}" for k, v in self.options)])


# The converged solution: UniPC (bh2, order 3, data prediction) with 200 steps spread from t = T - 1. Its distance
# to the same run at 100 steps is about 0.002 (the bundled model, docs/results.md): smaller errors are not resolved.
REFERENCE = Contender("unipc", (("solver_order", "3"), ("timestep_spacing", "trailing")))
REFERENCE_STEPS = 200


@dataclass(frozen=True)
class ArenaSpec:
    """What an arena runs: contenders x budgets of model evaluations (per sample), N samples from the noise of
    ``seed`` (batch b from seed + b, ``batch_size`` a batch), the bootstrap's rounds, the reference's steps and,
    for a class-conditional model, the guidance scale (None: the model's)."""

    contenders: tuple[Contender, ...]
    budgets: tuple[int, ...]
    n: int
    seed: int = 0
    batch_size: int = 500
    guidance_scale: float | None = None
    rounds: int = 200
    reference_steps: int = REFERENCE_STEPS

    def __post_init__(self) -> None:
        if not 1 <= len(self.contenders) <= MAX_CONTENDERS:
            raise ValueError(f"Choose 1 to {MAX_CONTENDERS} samplers; got {len(self.contenders)}.")
        if len(set(self.contenders)) != len(self.contenders):
            raise ValueError("The same sampler with the same options is chosen twice; change or drop one.")
        budgets = sorted(set(self.budgets))
        if not budgets or any(not isinstance(b, int) or not 1 <= b <= MAX_BUDGET for b in budgets):
            raise ValueError(f"Budgets are whole numbers of model evaluations from 1 to {MAX_BUDGET}; "
                             f"got {list(self.budgets)}.")
        object.__setattr__(self, "budgets", tuple(budgets))
        for name, value, low in (("The number of samples", self.n, 4), ("The batch size", self.batch_size, 1),
                                 ("The seed", self.seed, 0), ("The bootstrap rounds", self.rounds, 2),
                                 ("The reference's steps", self.reference_steps, 10)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be a whole number of at least {low}; got {value!r}.")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ArenaSpec":
        """From :meth:`to_dict` (a result file's ``spec``, a studio link)."""
        known = {f.name for f in dataclasses.fields(cls)}
        if unknown := sorted(set(d) - known):
            raise ValueError(f"Unknown arena settings: {', '.join(unknown)}; known: {', '.join(sorted(known))}.")
        contenders = tuple(Contender.parse(c) for c in d.get("contenders", ()))
        return cls(**{**d, "contenders": contenders, "budgets": tuple(d.get("budgets", ()))})

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "contenders": [str(c) for c in self.contenders],
                "budgets": list(self.budgets)}

    def command(self, model: str, out: str = "runs/arena") -> str:
        """The ``python -m training.evaluate --arena`` line that runs the same arena."""
        parts = ["python -m training.evaluate --arena", *(str(c) for c in self.contenders),
                 "--evaluations", *map(str, self.budgets), f"--model {model}", f"-n {self.n}",
                 f"--batch-size {self.batch_size}", f"--seed {self.seed}"]
        if self.guidance_scale is not None:
            parts.append(f"--guidance-scale {self.guidance_scale:g}")
        if self.rounds != 200:
            parts.append(f"--rounds {self.rounds}")
        if self.reference_steps != REFERENCE_STEPS:
            parts.append(f"--reference-steps {self.reference_steps}")
        return " ".join([*parts, f"--out {out}"])


@dataclass
class Tick:
    """Progress: ``done`` of ``total`` sample-evaluations (images x model evaluations) of the whole arena."""

    done: int
    total: int
    label: str


@dataclass
class Plan:
    name: str
    contender: Contender
    budget: int
    options: Any  # the sampler's checked options, steps included
    evaluations: int  # model evaluations per sample


class Arena:
    """The rows of ``spec`` on ``pipe``; ``scorer`` (the classifier metric, or None) for FD, precision and recall;
    reference solutions cached in ``cache`` (None: not kept). Everything is checked here, before any sampling:
    options, budgets a sampler cannot meet, a class-conditional model's guidance."""

    def __init__(self, pipe: DiffusionPipeline, spec: ArenaSpec, scorer: Scorer | None = None,
                 cache: Path | None = None) -> None:
        self.pipe, self.spec, self.cache = pipe, spec, cache
        self.scorer = scorer if scorer is not None and pipe.image_shape == clf.IMAGE_SHAPE else None
        self.guidance = pipe.guidance(spec.guidance_scale) if pipe.class_conditional else None
        self.labels = asked_labels(pipe, spec.n)
        self.plans = [self._plan(c, b) for c in spec.contenders for b in spec.budgets]
        self.reference_plan = self._plan(REFERENCE, spec.reference_steps, steps=spec.reference_steps)
        self.rows: list[dict[str, Any]] = []
        self.first_images: dict[str, torch.Tensor] = {}  # a row's first images, [0, 1] (k, C, H, W)
        self.reference_images: torch.Tensor | None = None
        self.done = 0  # sample-evaluations spent by the current run
        self._rounds: dict[str, dict[str, torch.Tensor]] = {}  # row -> metric -> its value in each bootstrap round
        g = torch.Generator().manual_seed(0)  # frechet_difference's draws
        self.draws = [torch.randint(0, spec.n, (spec.n,), generator=g) for _ in range(spec.rounds)]

    def _plan(self, c: Contender, budget: int, steps: int | None = None) -> Plan:
        given = dict(c.options)
        try:
            self.pipe.sampler_options(c.sampler, **given)  # the options' own message first
            steps = steps or steps_for_evaluations(self.pipe, c.sampler, budget, **given)
            options = self.pipe.sampler_options(c.sampler, **given, num_inference_steps=steps)
        except ValueError as e:
            raise ValueError(f"{c.label} at {budget} model evaluations: {e}") from None
        evaluations = len(get_sampler(c.sampler).timesteps(self.pipe.schedule, options))
        return Plan(f"{c}@{budget}", c, budget, options, evaluations)

    @property
    def passes(self) -> int:
        """UNet passes per model evaluation (2 under guidance: the class and the null label)."""
        return unet_passes(self.guidance)

    @functools.cached_property
    def reference_key(self) -> str:
        """What the reference solution depends on: the weights, the noise, the labels and the reference's plan
        (hashed once: the weights do not change during an arena)."""
        h = hashlib.sha256()
        for name, t in sorted(self.pipe.unet.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
        s = self.spec
        h.update(json.dumps({"seed": s.seed, "n": s.n, "batch_size": s.batch_size, "guidance": self.guidance,
                             "device": self.pipe.device.type, "dtype": str(self.pipe.unet.dtype),
                             "options": dataclasses.asdict(self.reference_plan.options)}, sort_keys=True).encode())
        return h.hexdigest()[:24]

    def _reference_path(self) -> Path | None:
        return None if self.cache is None else self.cache / f"reference-{self.reference_key}.safetensors"

    def reference_cached(self) -> bool:
        path = self._reference_path()
        return path is not None and path.is_file()

    def work(self) -> int:
        """Model evaluations per sample still to spend: every row, and the reference unless it is cached."""
        reference = 0 if self.reference_cached() else self.reference_plan.evaluations
        return sum(p.evaluations for p in self.plans) + reference

    def run(self) -> Iterator[Tick | dict[str, Any]]:
        """Sample and score every row in turn: ticks of progress, and each row (a dict) as it is scored. Closing
        the iterator stops the run at the next step (a reference not finished is not cached)."""
        total, self.done = self.spec.n * self.work(), 0
        self.reference_images = self._load_reference()
        if self.reference_images is None:
            label = f"reference ({REFERENCE.label}, {self.spec.reference_steps} steps; once per model and noise)"
            self.reference_images, _ = yield from self._sample(self.reference_plan, total, label)
            self._save_reference(self.reference_images)
        for plan in self.plans:
            label = f"{plan.contender.label} · {plan.budget} evaluations"
            images, seconds = yield from self._sample(plan, total, label)
            yield self._score(plan, images, seconds)

    def _sample(self, plan: Plan, total: int, label: str) -> Generator[Tick, None, tuple[torch.Tensor, float]]:
        """A tick at every step; returns the row's samples in [0, 1] (float32, on the CPU) and the seconds spent in
        the sampler."""
        run = BatchSampler(self.pipe, plan.contender.sampler, plan.options, self.spec.n, self.spec.batch_size,
                           self.spec.seed, guidance_scale=self.guidance)
        finals: dict[int, torch.Tensor] = {}
        for b, step, last in run:
            self.done += len(step.x_prev) * step.evaluations
            if last:
                finals[b] = to_unit(step.x_prev).float().cpu()
            yield Tick(self.done, total, label)
        return torch.cat([finals[b] for b in sorted(finals)]), run.seconds

    def _load_reference(self) -> torch.Tensor | None:
        path = self._reference_path()
        if path is None or not path.is_file():
            return None
        from safetensors.torch import load_file

        try:
            images = load_file(str(path))["images"]
        except Exception:  # a damaged cache file is recomputed, not trusted
            return None
        return images if tuple(images.shape) == (self.spec.n, *self.pipe.image_shape) else None

    def _save_reference(self, images: torch.Tensor) -> None:
        path = self._reference_path()
        if path is None:
            return
        from safetensors.torch import save_file

        atomic_write(path, lambda p: save_file({"images": images.contiguous()}, str(p)))
        for old in sorted(path.parent.glob("reference-*.safetensors"), key=lambda p: p.stat().st_mtime)[
            :-KEEP_REFERENCES
        ]:
            old.unlink(missing_ok=True)

    def _score(self, plan: Plan, images: torch.Tensor, seconds: float) -> dict[str, Any]:
        """The row: what ran, its time, RMSE to the reference and, with a scorer, FD / precision / recall; each
        with its bootstrap spread; then every row of the same budget is compared with that budget's best."""
        assert self.reference_images is not None
        n = self.spec.n
        mse = ((images - self.reference_images) ** 2).flatten(1).mean(1).double()
        rounds = {"rmse": torch.stack([mse[i].mean().sqrt() for i in self.draws])}
        row: dict[str, Any] = {
            "name": plan.name, "sampler": plan.contender.sampler, "label": plan.contender.label,
            "options": dict(plan.contender.options), "budget": plan.budget,
            "steps": plan.options.num_inference_steps, "model_evaluations": plan.evaluations,
            "stochastic": plan.options.stochastic, "n": n, "seconds": round(seconds, 3),
            "seconds_per_1000": round(1000 * seconds / n, 3), "rmse": round(float(mse.mean().sqrt()), 6),
        }
        if self.scorer is not None:
            model, reference, _ = self.scorer.classifier_reference()
            pixels = torch.from_numpy(to_uint8(images)).permute(0, 3, 1, 2)
            feats, logits = clf.extract(model, pixels)
            same = self.labels is not None and tuple(self.pipe.classes.names) == tuple(clf.CLASSES)
            scores = self.scorer.classifier_scores(feats, logits, pixels, self.labels if same else None)
            row.update({k: round(v, 4) for k, v in scores.items() if k != "is_std"})
            if "fd" in scores:
                mu, sigma = reference["mu"], reference["sigma"]
                rounds["fd"] = torch.tensor(
                    [frechet_distance(*feature_statistics(feats[i]), mu, sigma) for i in self.draws],
                    dtype=torch.float64)
        for metric, values in rounds.items():
            row[f"{metric}_std"] = round(float(values.std()), 6)
        self._rounds[plan.name] = rounds
        self.first_images[plan.name] = images[:8]
        self.rows.append(row)
        self._compare(plan.budget)
        return row

    def _compare(self, budget: int) -> None:
        """Each row of ``budget`` against the best of that budget (lowest FD, else RMSE) by the paired bootstrap:
        the difference, its spread and the share of rounds in which the best scored lower."""
        rows = [r for r in self.rows if r["budget"] == budget]
        for metric in ("fd", "rmse"):
            have = [r for r in rows if metric in r]
            if not have:
                continue
            best = min(have, key=lambda r: r[metric])
            for r in have:
                d = self._rounds[r["name"]][metric] - self._rounds[best["name"]][metric]
                r[f"{metric}_vs_best"] = None if r is best else {
                    "best": best["name"], "difference": round(r[metric] - best[metric], 6),
                    "std": round(float(d.std()), 6), "best_lower": round(float((d > 0).double().mean()), 3)}

    def best(self, budget: int, metric: str) -> tuple[dict[str, Any], bool] | None:
        """The best row of ``budget`` by ``metric`` and whether it is lower than every other row beyond the noise
        (in at least 95% of the bootstrap rounds)."""
        rows = [r for r in self.rows if r["budget"] == budget and metric in r]
        if not rows:
            return None
        best = min(rows, key=lambda r: r[metric])
        others = [r[f"{metric}_vs_best"] for r in rows if r is not best]
        return best, bool(others) and all(o["best_lower"] >= 0.95 for o in others)

    def result(self, model: str) -> dict[str, Any]:
        """Everything a result file holds: the settings, the reference, the device and the rows."""
        ref = self.reference_plan
        return {"model": model, "spec": self.spec.to_dict(), "command": self.spec.command(model),
                "reference": {"sampler": REFERENCE.sampler, "options": dataclasses.asdict(ref.options),
                              "model_evaluations": ref.evaluations},
                "guidance_scale": self.guidance, "metric": self.scorer.describe() if self.scorer else None,
                "device": device_name(self.pipe), "rows": self.rows}


def device_name(pipe: DiffusionPipeline) -> str:
    if pipe.device.type == "cuda":
        return torch.cuda.get_device_name(pipe.device)
    return f"cpu ({torch.get_num_threads()} threads)"

