"""The Arena tab's handler: up to four samplers at several budgets of model evaluations, N samples from the same
noise, scored as each row finishes (:mod:`training.arena`; the same rows ``python -m training.evaluate --arena``
computes for the same settings), with the plot, the strip of first images, the table, JSON / CSV downloads, a
link that fills the tab in again and the command line that reruns it."""

from __future__ import annotations

import json
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any, Iterator

import gradio as gr

from training import arena_report
from training.arena import Arena, ArenaSpec, Contender, Tick
from training.scoring import DEFAULT_CLASSIFIER, Scorer

from .compute import on_compute_thread
from .errors import refused, shows_refusals
from .handlers import Studio
from .options import check_count, in_ui_words
from .runs import Throttle, running_note, time_left
from .settings import MAX_SEED, PROGRESS_EVERY_S

MIN_SAMPLES, MAX_SAMPLES = 64, 1000
BATCH_SIZE = 250  # samples a forward pass (with the seed, what fixes the noise: the command line shown says it)
EVALUATION_CHOICES = (3, 5, 8, 10, 15, 20, 30, 50, 100)
DEFAULT_CONTENDERS = ("ddim", "unipc", "dpm-solver++", "deis")
SLOTS = 4
OUTPUTS = 5  # plot, strip, table, result line, files


def arena_cache(studio: Studio) -> Path:
    """Where converged solutions are kept (per model and noise): ARENA_CACHE, else the system's temp folder."""
    return Path(studio.settings.arena_cache or Path(tempfile.gettempdir()) / "repro-diffusion-arena")


def read_spec(seed: Any, num_samples: Any, evaluations: Any, slots: list[tuple[Any, Any]]) -> ArenaSpec:
    """The tab's values (or the API's) as an :class:`ArenaSpec`, or a refusal saying what to change."""
    n = check_count(num_samples, "The number of samples", MIN_SAMPLES, MAX_SAMPLES)
    seed = check_count(seed, "The seed", 0, MAX_SEED)
    budgets = [evaluations] if isinstance(evaluations, (int, float, str)) else list(evaluations or [])
    if not budgets:
        raise refused("Tick at least one number of model evaluations.")
    try:
        contenders = tuple(Contender.of(str(s), str(o or "")) for s, o in slots if s)
        if not contenders:
            raise ValueError("Choose at least one sampler.")
        return ArenaSpec(contenders, tuple(check_count(b, "Model evaluations", 1, 1000) for b in budgets), n, seed,
                         min(n, BATCH_SIZE))
    except ValueError as e:
        raise refused(in_ui_words(str(e))) from None


def link(model: str, spec: ArenaSpec) -> str:
    """The query string that opens the Arena tab with these settings (:func:`studio.ui.deep_link_handler`)."""
    return "?" + urllib.parse.urlencode({"tab": "arena", "model": model, "arena": json.dumps(spec.to_dict(),
                                                                                            separators=(",", ":"))})


class ArenaRuns:
    """The Arena tab's handler over a :class:`Studio`'s models, budget and temp folders."""

    def __init__(self, studio: Studio) -> None:
        self.studio = studio
        self.scorer = Scorer("classifier", "", DEFAULT_CLASSIFIER)  # loads the classifier on first use

    def _check_work(self, arena: Arena, name: str) -> None:
        pipe, spec = arena.pipe, arena.spec
        _, h, w = pipe.image_shape
        work = spec.n * h * w * arena.work() * arena.passes
        budget = self.studio.store.work_budget(pipe, self.studio.settings.arena_work)
        if work > budget:
            fits = budget // (h * w * arena.work() * arena.passes)
            reference = 0 if arena.reference_cached() else arena.reference_plan.evaluations
            cached = f", the converged solution's {reference} included (once per model and noise)" if reference else ""
            if MIN_SAMPLES * h * w * (reference + 1) * arena.passes > budget:
                advice = (f"{name} costs too much for the arena within this budget (its converged solution alone is "
                          f"{reference} evaluations of {MIN_SAMPLES} samples or more): run `python -m "
                          "training.evaluate --arena` from the command line, or raise ARENA_WORK where you host it.")
            elif fits >= MIN_SAMPLES:
                advice = f"Use at most {fits} samples, or fewer samplers or numbers of evaluations."
            else:
                advice = "Use fewer samplers or numbers of evaluations."
            raise refused(
                f"This arena is {spec.n} samples × {arena.work()} model evaluations each{cached} × {h}×{w} pixels = "
                f"{work:,} pixel-steps, above the arena's budget of {budget:,} for {name}. {advice}",
                title="Too much work")

    @on_compute_thread
    @shows_refusals(line=3, outputs=OUTPUTS)
    def run(self, model: str, seed: Any, num_samples: Any, evaluations: Any, progress: gr.Progress = gr.Progress(),
            **slots: Any) -> Iterator[tuple]:
        """Samplers ``sampler_1`` .. ``sampler_4`` (empty: unused) with their ``options_1`` .. (``key=value`` items)
        at each number of ``evaluations``, ``num_samples`` from the seed's noise. Yields (plot, strip, table,
        result line, files) as each row is scored; the last yield has the JSON, CSV and pictures to download."""
        start = time.perf_counter()
        spec = read_spec(seed, num_samples, evaluations,
                         [(slots.get(f"sampler_{i}"), slots.get(f"options_{i}")) for i in range(1, SLOTS + 1)])
        pipe = self.studio.store.get(model)
        name = self.studio.store.name(model)
        try:
            arena = Arena(pipe, spec, self.scorer, arena_cache(self.studio))
        except ValueError as e:
            raise refused(in_ui_words(str(e))) from None
        self._check_work(arena, name)
        folder = self.studio.outputs.new()
        rows_total, shown = len(arena.plans), Throttle(PROGRESS_EVERY_S)
        progress(0, desc="Arena: starting")
        yield None, None, "", running_note("Arena", 0, rows_total, "starting", "row"), None
        try:
            for event in arena.run():
                if isinstance(event, Tick):
                    if shown():  # each yield is where Stop takes effect
                        left = time_left(event.done, event.total, time.perf_counter() - start)
                        progress(event.done / event.total, desc=f"{event.label} · {left}")
                        yield (gr.skip(), gr.skip(), gr.skip(),
                               running_note("Arena", len(arena.rows) + 1, rows_total, event.label, "row"), gr.skip())
                    continue
                plot = arena_report.plot(arena, folder / f"arena-{len(arena.rows)}.png")
                strip = arena_report.strip(arena, folder / f"strip-{len(arena.rows)}.png")
                yield (str(plot), str(strip), arena_report.markdown(arena),
                       running_note("Arena", len(arena.rows), rows_total, f"{event['label']} · "
                                    f"{event['model_evaluations']} evaluations scored", "row"), gr.skip())
        except ValueError as e:  # the library's messages are written for users (a sample that turned non-finite)
            raise refused(str(e)) from None
        files = arena_report.write(arena, name, folder)
        seconds = time.perf_counter() - start
        metric = "FD, precision, recall (the Fashion-MNIST classifier) and " if arena.scorer else ""
        small = " FD needs more than 128 samples." if arena.scorer and spec.n <= 128 else ""
        info = (
            f"**{len(arena.rows)} rows** · {spec.n} samples each from seed {spec.seed} · {metric}RMSE to the converged "
            f"solution · {seconds:.1f} s on {self.studio.device(pipe)}.{small}  \n"
            f"[Link to this arena]({link(model, spec)}) · the same rows from the command line: "
            f"`{spec.command(model)}`"
        )
        downloads = [str(files[k]) for k in ("json", "csv", "plot", "strip")]
        yield str(files["plot"]), str(files["strip"]), arena_report.markdown(arena), info, downloads
