"""One sampler run as the studio drives it (timed, its trajectory kept), and what compares two runs."""

from __future__ import annotations

import dataclasses
import math
import re
import time
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import gradio as gr
import numpy as np
import torch

import diffusion
from diffusion.samplers import SamplerOptions, Step
from diffusion.trajectory import Trajectory

from .class_controls import Labels
from .errors import refused
from .settings import MAX_TRAJECTORY_FRAMES, PROGRESS_EVERY_S, TRAJECTORY_BYTES, TRAJECTORY_IMAGES


@dataclass
class Run:
    """One sampler run from the seed's x_T, through :meth:`DiffusionPipeline.denoise`. Iterate it to
    step; afterwards ``images`` ([0, 1]), ``seconds`` (the run's wall time as a visitor waits it: the
    sampler and whatever the caller does between steps, previews included), ``evaluations`` and, with
    ``record``, ``trajectory`` are set."""

    pipe: diffusion.DiffusionPipeline
    sampler: str
    options: SamplerOptions
    n: int
    seed: int
    record: bool = False
    model_name: str = ""
    labels: Labels = dataclasses.field(default_factory=lambda: Labels(None))  # a row of n per class
    seconds: float = 0.0
    evaluations: int = 0
    done: int = 0
    images: torch.Tensor | None = None
    first_x_t: torch.Tensor | None = None
    trajectory: Trajectory | None = None

    @property
    def total(self) -> int:
        return int(self.options.num_inference_steps)

    @property
    def images_count(self) -> int:
        """n, or n per class for a row per class."""
        return self.n * (len(self.labels.rows) if self.labels.rows else 1)

    def __iter__(self) -> Iterator[Step]:
        if self.record:
            keep = min(self.images_count, TRAJECTORY_IMAGES)
            frames = Trajectory.frames_per_budget(self.pipe.image_shape, keep, TRAJECTORY_BYTES, MAX_TRAJECTORY_FRAMES)
            self.trajectory = Trajectory(
                self.total,
                self.pipe.schedule,
                frames,
                keep,
                meta={"model": self.model_name, "sampler": self.sampler, "options": dataclasses.asdict(self.options)},
            )
        # x_T of the seed (the same for every class row), then the per-step noise from the same generator
        generator = torch.Generator("cpu").manual_seed(self.seed)
        noise = self.pipe.initial_noise(self.n, self.seed, generator)
        rows = len(self.labels.rows) if self.labels.rows else 1
        steps = self.pipe.denoise(
            self.sampler, noise=noise.repeat(rows, 1, 1, 1), generator=generator, options=self.options,
            class_labels=self.labels.per_image(self.n), guidance_scale=self.labels.scale,
        )
        start, last = time.perf_counter(), None
        while True:
            try:
                step = next(steps)
            except StopIteration:
                break
            except ValueError as e:  # the library's messages are written for users
                raise refused(str(e)) from None
            self.seconds = time.perf_counter() - start
            self.evaluations += step.evaluations
            self.done += 1
            if self.first_x_t is None:
                self.first_x_t = step.x_t[:1].detach().cpu()
            if self.trajectory is not None:
                self.trajectory.observe(step)
            last = step
            try:
                yield step
            except GeneratorExit:  # Stop: the handler was closed between two steps
                print(f"[studio] {self.sampler} stopped at step {self.done} of {self.total}", flush=True)
                raise
        if last is None:
            raise gr.Error("The sampler produced no steps.")
        self.images = diffusion.to_unit(last.x_prev).float().cpu()
        if self.trajectory is not None:
            self.trajectory.finish(last.x_prev)

    def stats(self) -> dict[str, Any]:
        guidance = {} if self.labels.rows is None else {"guidance_scale": self.labels.scale}
        return {
            "sampler": self.sampler,
            **guidance,
            "steps": self.done,
            "evaluations": self.evaluations,
            "seconds": round(self.seconds, 4),
            "ms_per_step": round(1000 * self.seconds / max(1, self.done), 3),
            "ms_per_evaluation": round(1000 * self.seconds / max(1, self.evaluations), 3),
            "options": dataclasses.asdict(self.options),
        }


class Throttle:
    """True on the first call, then at most every ``seconds`` (and whenever forced)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.last = -math.inf

    def __call__(self, force: bool = False) -> bool:
        now = time.perf_counter()
        if force or now - self.last >= self.seconds:
            self.last = now
            return True
        return False


@dataclass
class Beat:
    """A moment a run's loop shows something: ``done`` steps of the run so far, the step, and whether a preview
    is due (else it is a progress tick)."""

    done: int
    step: Step
    preview: bool


class Pace:
    """When the loops of one request show something, the one pacing every handler uses: a preview at most every
    ``preview_every`` seconds (never without it), else a tick at most every ``PROGRESS_EVERY_S``. Each beat is a
    message to the page and the point where Stop takes effect (Gradio cancels at a yield); the progress bar moves
    after it, so the bar stays up between messages instead of blinking. Beats skip a run's last step: its result
    follows. Several runs (Compare's panels, Explore's encode then decode) share one pace and one bar."""

    def __init__(self, progress: Any, grand_total: int, preview_every: float | None = None) -> None:
        self.progress, self.grand_total = progress, max(1, grand_total)
        self.previews = Throttle(preview_every) if preview_every is not None else None
        self.tick = Throttle(PROGRESS_EVERY_S)
        self.done = 0  # steps of the request so far
        self.start = time.perf_counter()
        self.last: Step | None = None  # the last step seen

    def beats(self, steps: Iterable[Step], total: int, label: str) -> Iterator[Beat]:
        for i, step in enumerate(steps, 1):
            self.done, self.last = self.done + 1, step
            last = i == total
            ticked = self.tick(last)
            preview = self.previews is not None and self.previews() and not last
            if preview or (ticked and not last):
                yield Beat(i, step, preview)
            if ticked:
                left = time_left(self.done, self.grand_total, time.perf_counter() - self.start)
                self.progress(self.done / self.grand_total, desc=f"{label} step {i}/{total} · {left}")


def running_note(label: str, done: int, total: int, detail: str = "", unit: str = "step") -> str:
    """The result line while a run goes: "DDPM: step 45 / 1000 · t = 955" (the Arena counts rows: "Arena: row 2 /
    6"). :func:`stopped_note` reads it."""
    return f"{label}: {unit} {done} / {total}{f' · {detail}' if detail else ''}"


RUNNING = re.compile(r"(?P<label>[^\n]+?): (?P<unit>step|row) (?P<done>\d+) / (?P<total>\d+)")


def stopped_note(info: str | None) -> Any:
    """What Stop leaves in a result line that showed a run going (:func:`running_note`): where it stopped, so
    that stopped never looks like hung. A line that shows no run going is left as it is."""
    m = RUNNING.match(info or "")
    if m is None:
        return gr.skip()
    shown = ("the rows scored before it" if m["unit"] == "row" else "from that step, not a result")
    return (f"**Stopped** at {m['unit']} {m['done']} of {m['total']} ({m['label']}). What shows above is {shown}; "
            "press the button again to start over.")


def time_left(done: int, total: int, elapsed: float) -> str:
    if done <= 0:
        return "…"
    left = elapsed / done * max(0, total - done)
    return f"{left:.1f} s left" if left < 90 else f"{left / 60:.1f} min left"


def difference(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """|a - b| of two [0, 1] batches as heat-map images (magma, scaled to the maximum) and summary numbers."""
    if a.shape != b.shape:
        raise ValueError(f"Cannot compare images of shapes {tuple(a.shape)} and {tuple(b.shape)}.")
    from matplotlib import colormaps

    diff = (a.float() - b.float()).abs().mean(dim=1, keepdim=True)  # (N, 1, H, W), averaged over channels
    mse = ((a.float() - b.float()) ** 2).mean().item()
    peak = diff.max().item()
    stats = {
        "mean_abs_difference": round(diff.mean().item(), 6),
        "max_abs_difference": round(peak, 6),
        "psnr_db": round(10 * math.log10(1 / mse), 3) if mse > 0 else math.inf,
    }
    scaled = (diff / peak if peak > 0 else diff)[:, 0].numpy()  # (N, H, W) in [0, 1]
    coloured = torch.from_numpy(np.ascontiguousarray(colormaps["magma"](scaled)[..., :3])).permute(0, 3, 1, 2).float()
    return coloured, stats


def compare_metrics(a: dict[str, Any], b: dict[str, Any], diff: dict[str, float], device: str) -> dict[str, Any]:
    """Both runs' stats, the speed-up of the faster one and the image difference."""
    fast, slow = ("b", "a") if b["seconds"] <= a["seconds"] else ("a", "b")
    runs = {"a": a, "b": b}
    speedup = runs[slow]["seconds"] / runs[fast]["seconds"] if runs[fast]["seconds"] > 0 else math.inf
    eval_ratio = runs[slow]["evaluations"] / max(1, runs[fast]["evaluations"])
    return {
        "a": a,
        "b": b,
        "faster": fast,
        "speedup": round(speedup, 3),
        "evaluation_ratio": round(eval_ratio, 3),
        "difference": diff,
        "device": device,
    }


def metrics_markdown(m: dict[str, Any]) -> str:
    a, b = m["a"], m["b"]
    guided = "guidance_scale" in a
    rows = [
        ("Sampler", a["sampler"].upper(), b["sampler"].upper()),
        *([("Guidance scale", f"{a['guidance_scale']:g}", f"{b['guidance_scale']:g}")] if guided else []),
        ("Steps", a["steps"], b["steps"]),
        ("Model evaluations", a["evaluations"], b["evaluations"]),
        ("Wall time", f"{a['seconds']:.2f} s", f"{b['seconds']:.2f} s"),
        ("ms per step", f"{a['ms_per_step']:.1f}", f"{b['ms_per_step']:.1f}"),
    ]
    table = "| | Panel A | Panel B |\n|---|---:|---:|\n" + "\n".join(f"| {r[0]} | {r[1]} | {r[2]} |" for r in rows)
    fast, slow = m["faster"], "a" if m["faster"] == "b" else "b"
    d = m["difference"]
    return (
        (f"Class **{m['class']}** in both panels.\n\n" if "class" in m else "")
        + f"{table}\n\n**Speed-up: {m['speedup']:.1f}×** — panel {fast.upper()} ({m[fast]['sampler'].upper()}) is "
        f"{m['speedup']:.1f}× faster than panel {slow.upper()} ({m[slow]['sampler'].upper()}) with "
        f"{m['evaluation_ratio']:.1f}× fewer model evaluations, on {m['device']}.  \n"
        f"Difference: mean |A−B| = {d['mean_abs_difference']:.3f}, max = {d['max_abs_difference']:.3f}, "
        f"PSNR = {d['psnr_db']:.1f} dB (images in [0, 1])."
    )
