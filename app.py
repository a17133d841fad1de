"""DDPM / DDIM Studio: a Gradio 6 app over the ``diffusion`` library.

Tabs: Sample (any registered sampler, streamed x0 previews), Compare (two samplers from the same
x_T: timings, model evaluations, an image slider and a difference map) and Denoising (the cached
trajectory as x_t and predicted x0, a step scrubber, GIF / MP4, the noise schedule).

The logic lives in plain functions and in :class:`Studio` (testable without a server); the
``build_app`` function only wires Gradio components to them. Run ``python app.py`` (offline, with the
bundled ``checkpoints/fashion-mnist``) or see ``python app.py --help``.

Environment: ``DEFAULT_MODEL`` (model folder or Hub id), ``CPU_CORES`` (torch threads),
``MAX_WORK`` (CPU budget in pixel-steps), ``MAX_MODELS`` (LRU size), ``QUEUE_SIZE``,
``ALLOW_LOCAL_MODELS=1`` (accept any local folder, not only the bundled one), ``COMPILE=0`` (do not
compile CPU models with torch.compile in the background; ``COMPILE_BATCHES``: the image counts compiled
ahead, default 16,4).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import math
import os
import re
import threading
import time
import typing
import uuid
import weakref
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

import diffusion
from diffusion import images as dimages
from diffusion.samplers import SAMPLERS, SamplerOptions, Step, get_sampler

try:  # Hugging Face ZeroGPU: the decorator does nothing elsewhere; the package is absent off Spaces.
    import spaces  # type: ignore[import-not-found]

    gpu_task: Callable[[Callable], Callable] = spaces.GPU(duration=120)
except ImportError:  # pragma: no cover - depends on the environment

    def gpu_task(fn: Callable) -> Callable:
        return fn


import gradio as gr
from gradio.utils import get_upload_folder

APP_DIR = Path(__file__).resolve().parent
BUNDLED_MODEL = "checkpoints/fashion-mnist"
HUB_PRESETS = ("google/ddpm-cifar10-32", "google/ddpm-ema-church-256", "google/ddpm-ema-celebahq-256",
               "anton-l/ddpm-butterflies-128")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}$")

# Limits. Work is counted in pixel-steps (images x pixels x steps). The CPU budget is for a model that
# costs up to REFERENCE_FLOPS per pixel and step (the bundled Fashion-MNIST UNet: 0.71 MFLOP) and
# shrinks in proportion for costlier ones (google/ddpm-cifar10-32: 12 MFLOP, so 17x fewer pixel-steps).
WORK_BUDGET = int(float(os.environ.get("MAX_WORK", 16_000_000)))
REFERENCE_FLOPS = 710_000
GPU_BUDGET_FACTOR = 50
MAX_IMAGES = 64
MAX_SEED = 2**63 - 1
MAX_MODELS = int(os.environ.get("MAX_MODELS", 3))
QUEUE_SIZE = int(os.environ.get("QUEUE_SIZE", 20))
PREVIEW_EVERY_S = float(os.environ.get("PREVIEW_EVERY", 0.5))  # stream an x0 preview at most this often (each costs CPU)
PROGRESS_EVERY_S = 0.1
# ``python app.py`` compiles each model it loads on the CPU with torch.compile in the background
# (diffusion.fast): ~1.3x faster steps once ready, eager until then. COMPILE=0 turns it off.
COMPILE_BATCHES = tuple(int(b) for b in os.environ.get("COMPILE_BATCHES", "16,4").split(","))  # the tabs' default image counts
MAX_FRAMES = 100  # trajectory frames cached for the scrubber
ANIMATION_FRAMES = 50  # of which the GIF / MP4 use at most this many
TRAJECTORY_IMAGES = 16  # images kept in the trajectory
TRAJECTORY_BYTES = 24 * 2**20
DISPLAY_PX = 512  # grids are upscaled (nearest neighbour, integer factor) to at least this width
PREVIEW_PX = 256  # streamed previews: smaller, the page scales them up (pixelated)
GALLERY_PX = 128
FRAME_PX = 320
STATE_TTL_S = 3600
DELETE_CACHE = (900, 3600)  # every 15 min, delete this app's temp files older than an hour

# How each sampler option appears in the UI. Options are discovered from the registry (dataclass
# fields), so a newly registered sampler gets controls without changes here; these only polish them.
PRIMARY_OPTIONS = ("num_inference_steps", "eta", "variance_type", "timestep_spacing")
HIDDEN_OPTIONS = {"prediction_type",  # a property of the trained model: always the checkpoint's value
                  "interpolation_type",  # one allowed value: there to refuse configs asking another
                  "sigma_min", "sigma_max"}  # Euler's ends of Karras / exponential / beta sigmas: the checkpoint's (or the plan's)
API_NAMES = {"num_inference_steps": "steps"}
LABELS = {"num_inference_steps": "Steps", "eta": "eta", "variance_type": "Variance type",
          "timestep_spacing": "Timestep selection", "steps_offset": "Steps offset",
          "clip_sample": "Clip predicted x0", "clip_sample_range": "Clip range",
          "set_alpha_to_one": "Final alpha-bar = 1", "use_clipped_model_output": "Use clipped model output",
          "use_karras_sigmas": "Karras sigmas", "use_exponential_sigmas": "Exponential sigmas", "use_beta_sigmas": "Beta sigmas",
          "algorithm_type": "Algorithm"}
INFO = {"eta": "0: deterministic DDIM; 1: as noisy as DDPM",
        "variance_type": "fixed_small: posterior variance beta~_t; fixed_large: beta_t",
        "timestep_spacing": "how the visited timesteps are spread over 0..T-1",
        "clip_sample": "clamp the predicted x0 to the data range at every step",
        "use_karras_sigmas": "noise levels of Karras et al. 2022 (rho = 7) instead of the spacing's; at most one sigma option",
        "use_exponential_sigmas": "log-uniform noise levels instead of the spacing's",
        "use_beta_sigmas": "Beta(0.6, 0.6) quantiles of the noise range (dense at both ends)",
        "algorithm_type": "dpmsolver++: the ODE solver; sde-dpmsolver++: its stochastic (SDE) version"}


# --------------------------------------------------------------------------------------------------
# Machine
# --------------------------------------------------------------------------------------------------

def cpu_cores() -> int:
    """Cores to use: ``CPU_CORES`` if set, else the cores this process may run on, capped by a
    cgroup CPU quota (containers report the host's cores; oversubscribing them is many times slower)."""
    env = os.environ.get("CPU_CORES", "").strip()
    if env:
        try:
            return max(1, int(float(env)))
        except ValueError:
            raise ValueError(f"CPU_CORES must be a number of cores, got {env!r}.") from None
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.floor(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def configure_torch() -> int:
    """Set torch's thread count from :func:`cpu_cores`; returns it."""
    n = cpu_cores()
    torch.set_num_threads(n)
    return n


def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


# --------------------------------------------------------------------------------------------------
# Models: resolution of a choice, a small LRU
# --------------------------------------------------------------------------------------------------

class ModelStore:
    """Loaded pipelines, least recently used first out. ``get`` raises ``gr.Error`` with the reason
    (the models already loaded stay loaded, so the current one keeps working)."""

    def __init__(self, default: str = BUNDLED_MODEL, capacity: int = MAX_MODELS, allow_local: bool = False,
                 compile: bool = False) -> None:
        self.default = default
        self.capacity = max(1, capacity)
        self.allow_local = allow_local
        self.compile = compile  # CPU models: torch.compile in the background (diffusion.fast), eager until ready
        self._models: OrderedDict[str, diffusion.DiffusionPipeline] = OrderedDict()
        self._lock = threading.RLock()

    def resolve(self, choice: str | None) -> str:
        """The source to load for a dropdown value: the bundled folder, or a Hub repo id."""
        choice = (choice or "").strip() or self.default
        if choice == self.default:
            path = Path(choice).expanduser()
            return str(path if path.is_absolute() or not (APP_DIR / path).exists() else APP_DIR / path)
        if Path(choice).expanduser().exists():
            if self.allow_local and Path(choice).expanduser().is_dir():
                return str(Path(choice).expanduser().resolve())
            raise gr.Error(f"{choice!r} is a local path; this app loads only its bundled model and Hub repos "
                           "(start it with --allow-local to load local folders).", title="Local folders are off")
        if not HUB_ID.match(choice):
            raise gr.Error(f"{choice!r} is not a Hub repo id. Type one as owner/name, e.g. google/ddpm-cifar10-32, "
                           "or pick a model from the list.", title="Unknown model")
        return choice

    def peek(self, choice: str | None) -> diffusion.DiffusionPipeline | None:
        """The pipeline if it is loaded already (no loading, no error)."""
        try:
            key = self.resolve(choice)
        except gr.Error:
            return None
        with self._lock:
            return self._models.get(key)

    def get(self, choice: str | None) -> diffusion.DiffusionPipeline:
        key = self.resolve(choice)
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            try:
                pipe = diffusion.load(key, device=device())
            except diffusion.CheckpointError as e:
                raise gr.Error(str(e), title="Cannot load this model") from None
            except OSError as e:  # network failures that escape huggingface_hub's own errors
                raise gr.Error(f"Cannot download {key!r}: {e}. Check the connection or pick another model.",
                               title="Download failed") from None
            pipe.unet.eval().requires_grad_(False)
            if self.compile and device() == "cpu":
                _, h, w = pipe.image_shape  # ahead of time: the image counts a 20-evaluation request may have
                pipe.compile(background=True, batch_sizes=tuple(n for n in COMPILE_BATCHES if n * h * w * 20 <= work_budget(pipe)))
            self._models[key] = pipe
            while len(self._models) > self.capacity:
                self._models.popitem(last=False)
            return pipe

    def loaded(self) -> list[str]:
        with self._lock:
            return list(self._models)


def parameter_count(pipe: diffusion.DiffusionPipeline) -> int:
    return sum(p.numel() for p in pipe.unet.parameters())


_FLOPS: weakref.WeakKeyDictionary[torch.nn.Module, float] = weakref.WeakKeyDictionary()


def flops_per_pixel(pipe: diffusion.DiffusionPipeline) -> float:
    """FLOPs of one model evaluation per pixel, counted on a copy of the UNet on the meta device
    (shapes only: no memory, no compute). Cached per model."""
    if pipe.unet not in _FLOPS:
        from torch.utils.flop_counter import FlopCounterMode

        cfg = pipe.unet.config
        try:
            with torch.device("meta"):
                unet = diffusion.UNet(cfg)
                x = torch.empty(1, cfg.in_channels, cfg.sample_size, cfg.sample_size)
                with FlopCounterMode(display=False) as counter, torch.no_grad():
                    unet(x, torch.tensor(500))
            flops = counter.get_total_flops() / cfg.sample_size**2
        except Exception:  # noqa: BLE001 - an estimate is enough: 2 FLOPs per parameter and pixel
            flops = 2.0 * parameter_count(pipe)
        _FLOPS[pipe.unet] = float(flops)
    return _FLOPS[pipe.unet]


def work_budget(pipe: diffusion.DiffusionPipeline, on_gpu: bool | None = None) -> int:
    """The most pixel-steps (images x pixels x steps) one request may ask of this model: ``MAX_WORK``
    for models costing up to the bundled one's FLOPs per pixel, less in proportion for costlier ones,
    50x more on a GPU."""
    on_gpu = device() == "cuda" if on_gpu is None else on_gpu
    scale = min(1.0, REFERENCE_FLOPS / max(1.0, flops_per_pixel(pipe)))
    budget = WORK_BUDGET * scale * (GPU_BUDGET_FACTOR if on_gpu else 1)
    return max(1000, int(budget // 1000 * 1000))


def describe_model(pipe: diffusion.DiffusionPipeline, name: str) -> str:
    """One Markdown line about a model: shape, size, schedule and the budget."""
    c, h, w = pipe.image_shape
    cfg = pipe.config
    budget = work_budget(pipe)
    px = h * w
    return (f"**{name}** · {c}×{h}×{w} · {parameter_count(pipe) / 1e6:.1f}M parameters · "
            f"{flops_per_pixel(pipe) / 1e6:.2f} MFLOP per pixel-step · T = {pipe.schedule.num_train_timesteps} "
            f"· {cfg['beta_schedule']} betas · predicts {cfg['prediction_type']} · {device().upper()}  \n"
            f"Budget per request: images × pixels × steps ≤ **{budget:,}** (e.g. {max(1, budget // (px * 1000))} images × 1000 steps "
            f"or {max(1, min(MAX_IMAGES, budget // (px * 50)))} images × 50 steps at {h}×{w}).")


# --------------------------------------------------------------------------------------------------
# Sampler options: discovered from the registry
# --------------------------------------------------------------------------------------------------

def sampler_fields(sampler: str) -> dict[str, Any]:
    """The options a sampler takes (name -> type hint), minus the model's own (prediction type)."""
    spec = get_sampler(sampler)
    hints = typing.get_type_hints(spec.options)
    return {f.name: hints[f.name] for f in dataclasses.fields(spec.options) if f.name not in HIDDEN_OPTIONS}


def all_option_fields() -> dict[str, Any]:
    """Every option of every registered sampler, the primary ones first."""
    merged: dict[str, Any] = {}
    for name in SAMPLERS:
        for k, hint in sampler_fields(name).items():
            merged.setdefault(k, hint)
    return {**{k: merged[k] for k in PRIMARY_OPTIONS if k in merged}, **{k: v for k, v in merged.items() if k not in PRIMARY_OPTIONS}}


def default_options(pipe: diffusion.DiffusionPipeline | None, sampler: str) -> SamplerOptions:
    """A sampler's defaults: the checkpoint's scheduler config when a model is loaded."""
    return pipe.sampler_options(sampler) if pipe is not None else get_sampler(sampler).make_options()


def make_options(pipe: diffusion.DiffusionPipeline, sampler: str, values: dict[str, Any]) -> SamplerOptions:
    """Validated sampler options from UI / API values (``values`` may hold options of other samplers:
    they are ignored; ``None`` means the model's default). Raises ``gr.Error`` saying what to change."""
    if sampler not in SAMPLERS:
        raise gr.Error(f"Unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}.")
    fields = sampler_fields(sampler)
    chosen = {k: v for k, v in values.items() if k in fields and v is not None}
    try:  # types, ranges and the timesteps this model's T allows: checked by the options (diffusion.samplers.base)
        options = pipe.sampler_options(sampler, **chosen)
    except ValueError as e:
        raise gr.Error(str(e)) from None
    return options


def check_count(value: Any, label: str, low: int, high: int) -> int:
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not float(value).is_integer():
        raise gr.Error(f"{label} must be a whole number from {low} to {high}; got {value!r}.")
    if not low <= int(value) <= high:
        raise gr.Error(f"{label} must be from {low} to {high}; got {int(value)}.")
    return int(value)


def check_seed(seed: Any) -> int:
    return check_count(seed, "The seed", 0, MAX_SEED)


def evaluations(pipe: diffusion.DiffusionPipeline, sampler: str, options: SamplerOptions) -> int:
    """Model evaluations a run will spend: the steps for most samplers, 2N - 1 for Heun, N + 9 for PNDM."""
    return len(get_sampler(sampler).timesteps(pipe.schedule, options))


def check_work(pipe: diffusion.DiffusionPipeline, n: int, steps: int, name: str = "this model") -> int:
    """Refuse requests above :func:`work_budget`, saying how many steps or images would fit. ``steps``
    counts model evaluations (the steps, for DDPM and DDIM)."""
    _, h, w = pipe.image_shape
    work = n * h * w * steps
    budget = work_budget(pipe)
    if work > budget:
        fit_steps = budget // (n * h * w)
        fit_images = budget // (h * w * steps)
        hints = []
        if fit_steps >= 1:
            hints.append(f"at most {fit_steps} steps with {n} images")
        if fit_images >= 1:
            hints.append(f"at most {fit_images} images with {steps} steps")
        raise gr.Error(
            f"This request is {n} images × {h}×{w} pixels × {steps} steps = {work:,} pixel-steps, above the "
            f"{'GPU' if device() == 'cuda' else 'CPU'} budget of {budget:,} for {name} (images × pixels × steps). "
            f"Use {' or '.join(hints) or 'fewer images and steps'}.", title="Too much work")
    return work


# --------------------------------------------------------------------------------------------------
# Pictures
# --------------------------------------------------------------------------------------------------

def picture(images: torch.Tensor, min_size: int = DISPLAY_PX, nrow: int | None = None) -> np.ndarray:
    """[0, 1] images (N, C, H, W) as one RGB uint8 grid, upscaled by an integer factor to >= min_size wide."""
    g = dimages.grid(images.float().cpu(), nrow)
    g = dimages.upscale(g, min_size)
    arr = dimages.to_uint8(g[None])[0]
    return np.repeat(arr, 3, axis=-1) if arr.shape[-1] == 1 else arr


def tiles(images: torch.Tensor, min_size: int = GALLERY_PX) -> list[np.ndarray]:
    """Each image alone, upscaled for the gallery."""
    arr = dimages.to_uint8(dimages.upscale(images.float().cpu(), min_size))
    return [np.repeat(a, 3, axis=-1) if a.shape[-1] == 1 else a for a in arr]


def model_name(choice: str, default: str) -> str:
    """A short name for files and titles: the folder name of a local model, the repo id otherwise."""
    choice = choice or default
    return Path(choice).name if choice == default or Path(choice).is_absolute() else choice


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text.strip("/")).strip("-")[:60] or "model"


_last_prune = [0.0]


def output_dir() -> Path:
    """A fresh folder inside Gradio's cache: files returned from there are served in place and
    removed by ``delete_cache`` like Gradio's own (emptied folders are pruned here, every 10 min)."""
    root = Path(get_upload_folder()) / "studio"
    now = time.time()
    if now - _last_prune[0] > 600 and root.is_dir():
        _last_prune[0] = now
        for old in root.iterdir():
            try:
                if old.is_dir() and now - old.stat().st_mtime > DELETE_CACHE[1] and not any(old.iterdir()):
                    old.rmdir()
            except OSError:
                pass
    d = root / uuid.uuid4().hex[:12]
    d.mkdir(parents=True, exist_ok=True)
    return d


# --------------------------------------------------------------------------------------------------
# A run: the steps of one sampler, timed, with the trajectory recorded
# --------------------------------------------------------------------------------------------------

def frame_steps(num_steps: int, max_frames: int) -> set[int]:
    """Which loop indices to record: evenly spread, always the first and the last."""
    if max_frames <= 0 or num_steps <= 0:
        return set()
    if num_steps <= max_frames:
        return set(range(num_steps))
    return {int(round(i)) for i in np.linspace(0, num_steps - 1, max_frames)}


@dataclass
class Trajectory:
    """Cached frames of a run: x_t and the predicted x0 at the recorded steps, then the sample.
    Tensors are float16 in model space [-1, 1], shape (n, C, H, W) per frame."""

    model: str
    sampler: str
    options: dict[str, Any]
    num_steps: int
    alphas_cumprod: np.ndarray  # (T,) float64, for the schedule plot
    steps: list[int] = field(default_factory=list)  # loop index of each frame (num_steps: the sample)
    timesteps: list[int] = field(default_factory=list)  # t of each frame (-1: the sample, x_0)
    abar: list[float] = field(default_factory=list)
    x_t: list[torch.Tensor] = field(default_factory=list)
    x0: list[torch.Tensor] = field(default_factory=list)
    visited: list[int] = field(default_factory=list)  # every timestep the sampler evaluated

    def record(self, step: Step, abar_t: float) -> None:
        self.steps.append(step.index)
        self.timesteps.append(int(step.t))
        self.abar.append(float(abar_t))
        self.x_t.append(step.x_t.detach().to("cpu", torch.float16))
        self.x0.append(step.pred_x0.detach().to("cpu", torch.float16))

    def finish(self, sample: torch.Tensor) -> None:
        """Add the final frame: the sample itself (t = -1, abar = 1, no noise left)."""
        s = sample.detach().to("cpu", torch.float16)
        self.steps.append(self.num_steps)
        self.timesteps.append(-1)
        self.abar.append(1.0)
        self.x_t.append(s)
        self.x0.append(s)

    def __len__(self) -> int:
        return len(self.steps)

    def sigma(self, i: int) -> float:
        """The noise level of frame i's x_t: x_t = sqrt(abar_t) x0 + sigma_t eps, sigma_t = sqrt(1 - abar_t)."""
        return math.sqrt(max(0.0, 1.0 - self.abar[i]))

    def pictures(self, i: int, min_size: int = FRAME_PX) -> tuple[np.ndarray, np.ndarray]:
        """Frame i as two RGB grids: x_t and the predicted x0."""
        return (picture(diffusion.to_unit(self.x_t[i].float()), min_size),
                picture(diffusion.to_unit(self.x0[i].float()), min_size))

    def readout(self, i: int) -> str:
        """t, abar_t and sigma_t of frame i, as Markdown."""
        if self.timesteps[i] < 0:
            return (f"**Frame {i + 1} / {len(self)}** · the sample x₀ after {self.num_steps} steps "
                    f"· ᾱ = 1 · σ = 0")
        return (f"**Frame {i + 1} / {len(self)}** · step {self.steps[i] + 1} / {self.num_steps} · **t = {self.timesteps[i]}** "
                f"· ᾱ_t = {self.abar[i]:.4f} · σ_t = √(1−ᾱ_t) = {self.sigma(i):.4f}")

    def composite(self, i: int, min_size: int = 160) -> np.ndarray:
        """x_t and predicted x0 side by side, with a caption strip (for GIF / MP4 / PNG frames)."""
        from PIL import Image, ImageDraw

        a, b = self.pictures(i, min_size)
        gap = np.full((a.shape[0], 8, 3), 255, np.uint8)
        body = np.concatenate([a, gap, b], axis=1)
        strip = Image.new("RGB", (body.shape[1], 18), "white")
        t = self.timesteps[i]
        text = (f"t={t}  abar={self.abar[i]:.4f}  sigma={self.sigma(i):.3f}" if t >= 0 else f"sample after {self.num_steps} steps")
        ImageDraw.Draw(strip).text((4, 3), f"x_t | predicted x0    {text}", fill="black")
        return np.concatenate([body, np.asarray(strip)], axis=0)

    def save_npz(self, path: Path) -> Path:
        np.savez_compressed(
            path, x_t=torch.stack(self.x_t).numpy(), pred_x0=torch.stack(self.x0).numpy(),
            timesteps=np.array(self.timesteps), step_index=np.array(self.steps), alpha_bar=np.array(self.abar),
            visited_timesteps=np.array(self.visited),
            meta=np.array(json.dumps({"model": self.model, "sampler": self.sampler, "options": self.options,
                                      "layout": "frames x images x channels x height x width, model space [-1, 1]; "
                                                "the last frame is the sample (timestep -1)"})))
        return path


@dataclass
class Run:
    """One sampler run from the seed's x_T. Iterate it to step; afterwards ``images`` ([0, 1]),
    ``seconds`` (time spent in the sampler only), ``evaluations`` and ``trajectory`` are set."""

    pipe: diffusion.DiffusionPipeline
    sampler: str
    options: SamplerOptions
    n: int
    seed: int
    max_frames: int = 0
    model_name: str = ""
    seconds: float = 0.0
    evaluations: int = 0
    done: int = 0
    images: torch.Tensor | None = None
    first_x_t: torch.Tensor | None = None
    trajectory: Trajectory | None = None

    @property
    def total(self) -> int:
        return int(self.options.num_inference_steps)

    def __iter__(self) -> Iterator[Step]:
        # A background compile (diffusion.fast) waits while a run is in progress, its pauses included.
        with self.pipe.compiled.serving() if self.pipe.compiled is not None else contextlib.nullcontext():
            yield from self._steps()

    def _steps(self) -> Iterator[Step]:
        record = frame_steps(self.total, self.max_frames)
        if record:
            self.trajectory = Trajectory(self.model_name, self.sampler, dataclasses.asdict(self.options), self.total,
                                         self.pipe.schedule.alphas_cumprod.numpy().copy())
        keep = min(self.n, TRAJECTORY_IMAGES)
        steps = self.pipe.denoise(self.sampler, n=self.n, seed=self.seed, options=self.options)
        last = None
        while True:
            t0 = time.perf_counter()
            try:
                with torch.no_grad():
                    step = next(steps)
            except StopIteration:
                break
            except ValueError as e:  # the library's messages are written for users
                raise gr.Error(str(e)) from None
            self.seconds += time.perf_counter() - t0
            self.evaluations += step.evaluations
            self.done += 1
            if self.first_x_t is None:
                self.first_x_t = step.x_t[:1].detach().cpu()
            if self.trajectory is not None:
                self.trajectory.visited.append(int(step.t))
                if step.index in record or len(record) >= self.total:
                    s = dataclasses.replace(step, x_t=step.x_t[:keep], pred_x0=step.pred_x0[:keep])
                    self.trajectory.record(s, self.pipe.schedule.abar(step.t).item())
            last = step
            yield step
        if last is None:
            raise gr.Error("The sampler produced no steps.")
        self.images = diffusion.to_unit(last.x_prev).float().cpu()
        if self.trajectory is not None:
            self.trajectory.finish(last.x_prev[:keep])

    def stats(self) -> dict[str, Any]:
        return {"sampler": self.sampler, "steps": self.done, "evaluations": self.evaluations,
                "seconds": round(self.seconds, 4),
                "ms_per_step": round(1000 * self.seconds / max(1, self.done), 3),
                "ms_per_evaluation": round(1000 * self.seconds / max(1, self.evaluations), 3),
                "options": dataclasses.asdict(self.options)}


def trajectory_budget_frames(pipe: diffusion.DiffusionPipeline, n: int) -> int:
    """How many frames fit in :data:`TRAJECTORY_BYTES` (float16 x_t and x0 of the kept images)."""
    c, h, w = pipe.image_shape
    per_frame = 2 * 2 * min(n, TRAJECTORY_IMAGES) * c * h * w
    return int(max(2, min(MAX_FRAMES, TRAJECTORY_BYTES // per_frame)))


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


def run_mode(pipe: diffusion.DiffusionPipeline, n: int) -> str:
    """Shown after the device: " · compiled" once this batch size runs through torch.compile, " · eager (compiling)" before."""
    if pipe.compiled is None or pipe.compiled.error is not None:
        return ""
    return " · compiled" if pipe.compiled.ready((n, *pipe.image_shape)) else " · eager (compiling)"


def time_left(done: int, total: int, elapsed: float) -> str:
    if done <= 0:
        return "…"
    left = elapsed / done * max(0, total - done)
    return f"{left:.1f} s left" if left < 90 else f"{left / 60:.1f} min left"


# --------------------------------------------------------------------------------------------------
# Comparison
# --------------------------------------------------------------------------------------------------

def difference_map(a: torch.Tensor, b: torch.Tensor, min_size: int = DISPLAY_PX) -> tuple[np.ndarray, dict[str, float]]:
    """|a - b| of two [0, 1] batches as a heat-map grid (scaled to its maximum) and summary numbers."""
    if a.shape != b.shape:
        raise ValueError(f"Cannot compare images of shapes {tuple(a.shape)} and {tuple(b.shape)}.")
    diff = (a.float() - b.float()).abs().mean(dim=1, keepdim=True)  # (N, 1, H, W), averaged over channels
    mse = ((a.float() - b.float()) ** 2).mean().item()
    peak = diff.max().item()
    stats = {"mean_abs_difference": round(diff.mean().item(), 6), "max_abs_difference": round(peak, 6),
             "psnr_db": round(10 * math.log10(1 / mse), 3) if mse > 0 else math.inf}
    from matplotlib import colormaps

    scaled = (diff / peak if peak > 0 else diff)[:, 0].numpy()  # (N, H, W) in [0, 1]
    coloured = torch.from_numpy(colormaps["magma"](scaled)[..., :3]).permute(0, 3, 1, 2).float()  # (N, 3, H, W)
    return picture(coloured, min_size), stats  # tiled like the images, white between them


def compare_metrics(a: dict[str, Any], b: dict[str, Any], difference: dict[str, float]) -> dict[str, Any]:
    """Both runs' stats, the speed-up of the faster one and the image difference."""
    fast, slow = ("b", "a") if b["seconds"] <= a["seconds"] else ("a", "b")
    runs = {"a": a, "b": b}
    speedup = runs[slow]["seconds"] / runs[fast]["seconds"] if runs[fast]["seconds"] > 0 else math.inf
    eval_ratio = runs[slow]["evaluations"] / max(1, runs[fast]["evaluations"])
    return {"a": a, "b": b, "faster": fast, "speedup": round(speedup, 3), "evaluation_ratio": round(eval_ratio, 3),
            "difference": difference, "device": f"{device()} ({torch.get_num_threads()} threads)"}


def metrics_markdown(m: dict[str, Any]) -> str:
    a, b = m["a"], m["b"]
    rows = [("Sampler", a["sampler"].upper(), b["sampler"].upper()), ("Steps", a["steps"], b["steps"]),
            ("Model evaluations", a["evaluations"], b["evaluations"]),
            ("Wall time", f"{a['seconds']:.2f} s", f"{b['seconds']:.2f} s"),
            ("ms per step", f"{a['ms_per_step']:.1f}", f"{b['ms_per_step']:.1f}")]
    table = "| | Panel A | Panel B |\n|---|---:|---:|\n" + "\n".join(f"| {r[0]} | {r[1]} | {r[2]} |" for r in rows)
    fast, slow = m["faster"], "a" if m["faster"] == "b" else "b"
    d = m["difference"]
    return (f"{table}\n\n**Speed-up: {m['speedup']:.1f}×** — panel {fast.upper()} ({m[fast]['sampler'].upper()}) is "
            f"{m['speedup']:.1f}× faster than panel {slow.upper()} ({m[slow]['sampler'].upper()}) with "
            f"{m['evaluation_ratio']:.1f}× fewer model evaluations, on {m['device']}.  \n"
            f"Difference: mean |A−B| = {d['mean_abs_difference']:.3f}, max = {d['max_abs_difference']:.3f}, "
            f"PSNR = {d['psnr_db']:.1f} dB (images in [0, 1]).")


# --------------------------------------------------------------------------------------------------
# Noise schedule plot
# --------------------------------------------------------------------------------------------------

def schedule_plot_data(alphas_cumprod: np.ndarray | torch.Tensor, visited: Sequence[int]) -> dict[str, np.ndarray]:
    """abar_t and log-SNR over t = 0..T-1, and their values at the visited timesteps."""
    abar = np.asarray(alphas_cumprod, dtype=np.float64)
    log_snr = np.log(abar) - np.log1p(-abar)
    v = np.array(sorted({int(t) for t in visited if 0 <= int(t) < len(abar)}), dtype=np.int64)
    return {"t": np.arange(len(abar)), "abar": abar, "log_snr": log_snr,
            "visited": v, "visited_abar": abar[v], "visited_log_snr": log_snr[v]}


def schedule_figure(data: dict[str, np.ndarray], title: str = "") -> Any:
    """A two-panel matplotlib figure (not registered with pyplot, so nothing accumulates)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2), dpi=100, layout="constrained")
    ax1, ax2 = fig.subplots(2, 1, sharex=True)
    ax1.plot(data["t"], data["abar"], color="#4c72b0", lw=1.5)
    ax1.scatter(data["visited"], data["visited_abar"], s=10, color="#dd8452", zorder=3, label=f"{len(data['visited'])} visited timesteps")
    ax1.set_ylabel("ᾱ_t")
    ax1.legend(loc="upper right", fontsize=8)
    ax2.plot(data["t"], data["log_snr"], color="#55a868", lw=1.5)
    ax2.scatter(data["visited"], data["visited_log_snr"], s=10, color="#dd8452", zorder=3)
    ax2.set_ylabel("log-SNR  log(ᾱ/(1−ᾱ))")
    ax2.set_xlabel("timestep t")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    ax2.vlines(data["visited"], data["log_snr"].min(), data["log_snr"].max(), color="#dd8452", alpha=0.12, lw=0.8)
    if title:
        ax1.set_title(title, fontsize=10)
    return fig


def planned_timesteps(pipe: diffusion.DiffusionPipeline, sampler: str, options: SamplerOptions) -> list[int]:
    """The timesteps ``sampler`` will evaluate the model at, rounded (a run records the exact ones)."""
    return [round(t) for t in get_sampler(sampler).timesteps(pipe.schedule, options)]


# --------------------------------------------------------------------------------------------------
# Trajectory files
# --------------------------------------------------------------------------------------------------

def write_animation(frames: Sequence[np.ndarray], path: Path, fps: int) -> Path:
    """GIF or MP4 through imageio. Grey frames are written as such (GIF quantisation of RGB frames is
    several times slower); MP4 sizes are padded to even numbers for H.264."""
    import imageio.v3 as iio

    gray = all(np.array_equal(f[..., 0], f[..., 1]) and np.array_equal(f[..., 0], f[..., 2]) for f in frames)
    if path.suffix == ".gif":
        data = [f[..., 0] for f in frames] if gray else list(frames)
        iio.imwrite(path, data, extension=".gif", duration=round(1000 / fps), loop=0)
    else:
        h, w = frames[0].shape[:2]
        data = [np.pad(f, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge") for f in frames]
        iio.imwrite(path, data, extension=".mp4", fps=fps, codec="libx264", macro_block_size=1)
    return path


def trajectory_files(traj: Trajectory, folder: Path) -> dict[str, Path]:
    """GIF, MP4, a ZIP of PNG frames and the trajectory as .npz."""
    from PIL import Image

    stem = f"{slug(traj.model)}_{traj.sampler}_{traj.num_steps}steps"
    picks = sorted({int(round(i)) for i in np.linspace(0, len(traj) - 1, min(len(traj), ANIMATION_FRAMES))})
    frames = [traj.composite(i) for i in picks]
    fps = int(max(4, min(15, len(frames) / 4)))
    hold = [frames[-1]] * fps  # rest a second on the sample
    out = {"gif": write_animation(frames + hold, folder / f"{stem}.gif", fps)}
    try:
        out["mp4"] = write_animation(frames + hold, folder / f"{stem}.mp4", fps)
    except Exception as e:  # no ffmpeg: the GIF and the frames still work
        print(f"[studio] MP4 not written: {e}")
    zpath = folder / f"{stem}_frames.zip"
    with zipfile.ZipFile(zpath, "w", zipfile.ZIP_STORED) as z:
        for k in range(len(traj)):
            buf = io.BytesIO()
            Image.fromarray(traj.composite(k)).save(buf, format="PNG")
            t = traj.timesteps[k]
            z.writestr(f"frame{k:03d}_{'t' + str(t) if t >= 0 else 'sample'}.png", buf.getvalue())
    out["zip"] = zpath
    out["npz"] = traj.save_npz(folder / f"{stem}_trajectory.npz")
    return out


# --------------------------------------------------------------------------------------------------
# The studio: event handlers (generators stream, gr.Error reports)
# --------------------------------------------------------------------------------------------------

def _split_options(options: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """UI / API keyword values -> option names (``steps`` -> ``num_inference_steps``)."""
    inverse = {v: k for k, v in API_NAMES.items()}
    out = {}
    for k, v in options.items():
        if prefix:
            if not k.startswith(prefix):
                continue
            k = k[len(prefix):]
        out[inverse.get(k, k)] = v
    return out


class Studio:
    """Handlers of the app, usable without a server (they are generators yielding output tuples)."""

    def __init__(self, default_model: str | None = None, allow_local: bool | None = None, compile: bool = False) -> None:
        default = default_model or os.environ.get("DEFAULT_MODEL") or BUNDLED_MODEL
        allow = os.environ.get("ALLOW_LOCAL_MODELS", "") == "1" if allow_local is None else allow_local
        self.store = ModelStore(default, MAX_MODELS, allow, compile)

    @property
    def default_model(self) -> str:
        return self.store.default

    def model_choices(self) -> list[tuple[str, str]]:
        name = Path(self.default_model).name or self.default_model
        return [(f"{name} (bundled)", self.default_model)] + [(p, p) for p in HUB_PRESETS]

    def _prepare(self, model: str, sampler: str, seed: Any, num_images: Any, values: dict[str, Any]
                 ) -> tuple[diffusion.DiffusionPipeline, SamplerOptions, int, int]:
        n = check_count(num_images, "The number of images", 1, MAX_IMAGES)
        seed = check_seed(seed)
        pipe = self.store.get(model)
        options = make_options(pipe, sampler, values)
        check_work(pipe, n, evaluations(pipe, sampler, options), model_name(model, self.default_model))
        return pipe, options, n, seed

    # -- Sample ------------------------------------------------------------------------------------

    def sample(self, model: str, sampler: str, seed: float, num_images: float,
               progress: gr.Progress = gr.Progress(), **options: Any) -> Iterator[tuple]:
        """Sample images, streaming predicted-x0 previews. Yields (preview, gallery, grid PNG, info,
        trajectory); the last yield holds the results. Options: any sampler option (``steps``, ``eta``...)."""
        pipe, opts, n, seed = self._prepare(model, sampler, seed, num_images, _split_options(options))
        run = Run(pipe, sampler, opts, n, seed, trajectory_budget_frames(pipe, n), model_name(model, self.default_model))
        show, tick = Throttle(PREVIEW_EVERY_S), Throttle(PROGRESS_EVERY_S)
        start = time.perf_counter()
        progress(0, desc=f"{sampler.upper()}: starting")
        for step in run:
            last = run.done == run.total
            if tick(last):
                progress(run.done / run.total, desc=f"{sampler.upper()} step {run.done}/{run.total} · "
                                                    f"{time_left(run.done, run.total, time.perf_counter() - start)}")
            if show() and not last:
                info = f"Step {run.done} / {run.total} · t = {step.t} · predicted x0 preview"
                yield picture(diffusion.to_unit(step.pred_x0), PREVIEW_PX), gr.skip(), gr.skip(), info, gr.skip()
        assert run.images is not None
        folder = output_dir()
        grid_path = folder / f"{slug(model_name(model, self.default_model))}_{sampler}_{run.done}steps_seed{seed}.png"
        dimages.save_grid(run.images, grid_path)
        st = run.stats()
        info = (f"**{n} image{'s' if n != 1 else ''}** · {sampler.upper()} · {st['steps']} steps · {st['evaluations']} model evaluations · "
                f"{st['seconds']:.2f} s ({st['ms_per_step']:.0f} ms/step) · seed {seed} · {device()}{run_mode(pipe, n)}")
        yield picture(run.images), tiles(run.images), str(grid_path), info, run.trajectory

    # -- Compare -----------------------------------------------------------------------------------

    def compare(self, model: str, seed: float, num_images: float, progress: gr.Progress = gr.Progress(),
                **panels: Any) -> Iterator[tuple]:
        """Two samplers from the same x_T (the seed's). Keyword options are prefixed ``a_`` / ``b_``
        (``a_sampler``, ``a_steps``, ``b_eta``...). Yields (image A, image B, slider pair, difference
        map, metrics Markdown, metrics dict)."""
        samplers = {p: panels.get(f"{p}_sampler") for p in "ab"}
        n = check_count(num_images, "The number of images", 1, MAX_IMAGES)
        seed = check_seed(seed)
        pipe = self.store.get(model)
        opts = {p: make_options(pipe, samplers[p] or "", _split_options(panels, f"{p}_")) for p in "ab"}
        check_work(pipe, n, sum(evaluations(pipe, samplers[p] or "", opts[p]) for p in "ab"), model_name(model, self.default_model))
        total_steps = sum(o.num_inference_steps for o in opts.values())
        runs: dict[str, Run] = {}
        show, tick = Throttle(PREVIEW_EVERY_S), Throttle(PROGRESS_EVERY_S)
        start, done = time.perf_counter(), 0
        for p in "ab":
            runs[p] = run = Run(pipe, samplers[p], opts[p], n, seed)
            label = f"Panel {p.upper()} ({samplers[p].upper()})"
            for step in run:
                done += 1
                if tick(done == total_steps):
                    progress(done / total_steps, desc=f"{label} step {run.done}/{run.total} · "
                                                      f"{time_left(done, total_steps, time.perf_counter() - start)}")
                if show() and run.done < run.total:
                    pic = picture(diffusion.to_unit(step.pred_x0), PREVIEW_PX)
                    md = f"{label}: step {run.done} / {run.total} · t = {step.t}"
                    a_img, b_img = (pic, gr.skip()) if p == "a" else (gr.skip(), pic)
                    yield a_img, b_img, gr.skip(), gr.skip(), md, gr.skip()
            if p == "a" and run.images is not None:  # panel A's result stays up while B runs
                yield picture(run.images), gr.skip(), gr.skip(), gr.skip(), f"{label}: done in {run.seconds:.2f} s", gr.skip()
        a, b = runs["a"], runs["b"]
        assert a.images is not None and b.images is not None and a.first_x_t is not None and b.first_x_t is not None
        if not torch.equal(a.first_x_t, b.first_x_t):  # both start from the seed's x_T; guard the promise
            raise gr.Error("Internal error: the two panels did not start from the same x_T.")
        heat, diff = difference_map(a.images, b.images)
        metrics = compare_metrics(a.stats(), b.stats(), diff)
        pa, pb = picture(a.images), picture(b.images)
        yield pa, pb, (pa, pb), heat, metrics_markdown(metrics), metrics

    # -- Denoising ---------------------------------------------------------------------------------

    def show_trajectory(self, traj: Trajectory | None) -> tuple:
        """After a run: the scrubber at the sample, the schedule plot, GIF / MP4 / ZIP / NPZ."""
        if traj is None or len(traj) == 0:
            return (gr.update(maximum=1, value=0), None, None, "Run **Generate** on the Sample tab first.",
                    gr.skip(), None, None, None)
        last = len(traj) - 1
        xt, x0 = traj.pictures(last)
        title = f"{traj.sampler.upper()} · {traj.num_steps} steps · {slug(traj.model)}"
        fig = schedule_figure(schedule_plot_data(traj.alphas_cumprod, traj.visited), title)
        files = trajectory_files(traj, output_dir())
        mp4 = str(files["mp4"]) if "mp4" in files else None
        return (gr.update(maximum=last, value=last), xt, x0, traj.readout(last), fig, str(files["gif"]), mp4,
                [str(p) for p in files.values()])

    @staticmethod
    def show_frame(index: float, traj: Trajectory | None) -> tuple:
        if traj is None or len(traj) == 0:
            return None, None, "Run **Generate** on the Sample tab first."
        i = int(min(max(0, index or 0), len(traj) - 1))
        xt, x0 = traj.pictures(i)
        return xt, x0, traj.readout(i)

    @staticmethod
    def advance(index: float, playing: bool, traj: Trajectory | None) -> tuple:
        """One tick of the play button: the next frame, stopping at the sample."""
        if traj is None or not playing:
            return gr.skip(), gr.Timer(active=False), gr.update(value="▶ Play"), False
        i = int(index or 0) + 1
        if i >= len(traj) - 1:
            return len(traj) - 1, gr.Timer(active=False), gr.update(value="▶ Play"), False
        return i, gr.skip(), gr.skip(), True

    @staticmethod
    def toggle_play(index: float, playing: bool, traj: Trajectory | None) -> tuple:
        if traj is None or playing:
            return gr.skip(), gr.Timer(active=False), gr.update(value="▶ Play"), False
        start = 0 if int(index or 0) >= len(traj) - 1 else gr.skip()
        return start, gr.Timer(active=True), gr.update(value="Pause"), True

    def schedule_preview(self, model: str, sampler: str, **options: Any) -> Any:
        """The schedule plot for the current Sample settings, before anything runs."""
        pipe = self.store.peek(model)
        if pipe is None or sampler not in SAMPLERS:
            return gr.skip()
        try:
            opts = make_options(pipe, sampler, _split_options(options))
            visited = planned_timesteps(pipe, sampler, opts)
        except gr.Error:
            return gr.skip()
        return schedule_figure(schedule_plot_data(pipe.schedule.alphas_cumprod.numpy(), visited),
                               f"{sampler.upper()} · {opts.num_inference_steps} steps (planned)")


# --------------------------------------------------------------------------------------------------
# The interface
# --------------------------------------------------------------------------------------------------

class OptionControls:
    """One sampler dropdown and a control per registered option, shown for the samplers that take it."""

    def __init__(self, pipe: diffusion.DiffusionPipeline | None, sampler: str, prefix: str = "", label: str = "Sampler") -> None:
        self.prefix = prefix
        self.fields = all_option_fields()
        T = pipe.schedule.num_train_timesteps if pipe is not None else 1000
        self.sampler = gr.Dropdown([(s.upper(), s) for s in SAMPLERS], value=sampler, label=label,
                                   info=get_sampler(sampler).description, elem_id=f"{prefix or 's_'}sampler")
        defaults = {s: dataclasses.asdict(default_options(pipe, s)) for s in SAMPLERS}
        own = sampler_fields(sampler)
        self.controls: dict[str, gr.components.Component] = {}
        for name, hint in self.fields.items():
            if name not in PRIMARY_OPTIONS:
                continue
            self.controls[name] = self._control(name, own.get(name, hint), self._value(name, sampler, defaults), name in own, T,
                                                self._elem_id(name))
        advanced = [k for k in self.fields if k not in PRIMARY_OPTIONS]
        if advanced:
            with gr.Accordion("Advanced sampler options (defaults: the model's scheduler config)", open=False):
                for name in advanced:
                    self.controls[name] = self._control(name, own.get(name, self.fields[name]), self._value(name, sampler, defaults),
                                                        name in own, T, self._elem_id(name))

    def _elem_id(self, name: str) -> str:
        return f"{self.prefix or 's_'}{API_NAMES.get(name, name)}"

    @staticmethod
    def _value(name: str, sampler: str, defaults: dict[str, dict[str, Any]]) -> Any:
        if name in defaults[sampler]:
            return defaults[sampler][name]
        return next(d[name] for d in defaults.values() if name in d)

    @staticmethod
    def _control(name: str, hint: Any, value: Any, visible: bool, T: int, elem_id: str) -> gr.components.Component:
        """A control by the option's type: Literal -> dropdown, bool -> checkbox, int / float -> number."""
        kw = dict(label=LABELS.get(name, name.replace("_", " ").capitalize()), info=INFO.get(name), visible=visible, elem_id=elem_id)
        if name == "num_inference_steps":
            return gr.Slider(1, T, value=value, step=1, precision=0, **{**kw, "info": f"1 to {T} (the model's training timesteps)"})
        if name == "eta":
            return gr.Slider(0.0, 1.0, value=value, step=0.05, **kw)
        if typing.get_origin(hint) is typing.Literal:
            return gr.Dropdown(list(typing.get_args(hint)), value=value, **kw)
        if hint is bool:
            return gr.Checkbox(value=value, **kw)
        if hint is int:
            return gr.Number(value=value, precision=0, **kw)
        return gr.Number(value=value, **kw)

    def kwargs(self) -> dict[str, gr.components.Component]:
        """Inputs for an event, by API name (``steps``, ``eta``...; prefixed for the compare panels)."""
        return {f"{self.prefix}{API_NAMES.get(k, k)}": c for k, c in self.controls.items()}

    def outputs(self) -> list[gr.components.Component]:
        return [self.sampler, *self.controls.values()]

    def updates(self, pipe: diffusion.DiffusionPipeline | None, sampler: str, *, only_model_fields: bool = False) -> list[Any]:
        """Updates for :meth:`outputs`: visibility by sampler, values from the model's defaults."""
        if sampler not in SAMPLERS:
            return [gr.skip()] * (1 + len(self.controls))
        opts = dataclasses.asdict(default_options(pipe, sampler))
        own = sampler_fields(sampler)
        model_keys = set(pipe.config) | {"set_alpha_to_one"} if pipe is not None else set()
        out: list[Any] = [gr.update(info=get_sampler(sampler).description)]
        for name in self.controls:
            upd: dict[str, Any] = {"visible": name in own}
            if name in own and (not only_model_fields or name in model_keys):
                upd["value"] = opts[name]
            if name in own and typing.get_origin(own[name]) is typing.Literal:  # e.g. no "quad" for DPM-Solver++
                upd["choices"] = list(typing.get_args(own[name]))
            if name == "num_inference_steps" and pipe is not None:
                T = pipe.schedule.num_train_timesteps
                upd.update(maximum=T, info=f"1 to {T} (the model's training timesteps)")
            out.append(gr.update(**upd))
        return out


CSS = """
.studio-note {font-size: 0.9em; opacity: 0.85}
#preview img, #compare-a img, #compare-b img, #frame-xt img, #frame-x0 img, #diff-map img {image-rendering: pixelated}
"""
THEME_FONTS = dict(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])


def launch_kwargs() -> dict[str, Any]:
    """What ``launch`` needs besides the address: theme, CSS, state limits (Gradio 6 takes them here)."""
    return dict(theme=gr.themes.Soft(**THEME_FONTS), css=CSS, state_session_capacity=64)


def build_app(default_model: str | None = None, allow_local: bool | None = None, compile: bool = False) -> gr.Blocks:
    """The Blocks app. Model work (load, sample, compare) shares one queue: concurrency id "model".
    ``compile``: CPU models run through torch.compile once it has compiled them in the background."""
    studio = Studio(default_model, allow_local, compile)
    try:
        pipe = studio.store.get(studio.default_model)
        status = describe_model(pipe, Path(studio.default_model).name)
    except gr.Error as e:
        pipe, status = None, f"**The default model could not be loaded**: {e.message}"
        print(f"[studio] {status}")
    model_event = dict(concurrency_id="model", concurrency_limit=1)
    private = dict(api_visibility="private")

    with gr.Blocks(title="DDPM / DDIM Studio", delete_cache=DELETE_CACHE) as demo:
        gr.Markdown("# DDPM / DDIM Studio\nSample a denoising diffusion model with any sampler of the library, compare two "
                    "samplers from the same starting noise, and watch the denoising step by step.")
        with gr.Row(equal_height=True):
            model = gr.Dropdown(studio.model_choices(), value=studio.default_model, allow_custom_value=True, scale=2,
                                label="Model", info="The bundled model works offline; Hub models download on first use. "
                                                    "Type any diffusers UNet2DModel repo id (owner/name).")
            model_md = gr.Markdown(status, elem_classes="studio-note")
        current = gr.State(studio.default_model)

        with gr.Tabs():
            # ---------------------------------------------------------------- Sample
            with gr.Tab("Sample", id="sample"):
                with gr.Row():
                    with gr.Column(scale=1, min_width=300):
                        s_opts = OptionControls(pipe, "ddim")
                        with gr.Row(equal_height=True):
                            s_seed = gr.Number(0, precision=0, label="Seed", scale=3)
                            s_dice = gr.Button("Random seed", scale=1, min_width=60)
                        s_n = gr.Slider(1, MAX_IMAGES, value=16, step=1, precision=0, label="Number of images", elem_id="s_n")
                        with gr.Row():
                            s_go = gr.Button("Generate", variant="primary")
                            s_stop = gr.Button("Stop", variant="stop")
                    with gr.Column(scale=2):
                        s_info = gr.Markdown("Press **Generate**: predicted-x0 previews stream in while it samples.")
                        s_progress = gr.Markdown("", elem_id="s-progress", min_height=44)  # the progress bar shows here
                        s_preview = gr.Image(label="Preview / result grid", format="png", elem_id="preview",
                                             interactive=False, height=420, buttons=["download", "fullscreen"])
                        s_gallery = gr.Gallery(label="Samples", format="png", columns=6, height="auto", interactive=False,
                                               elem_id="gallery")
                        s_grid = gr.File(label="PNG grid", interactive=False)
                traj = gr.State(None, time_to_live=STATE_TTL_S)

            # ---------------------------------------------------------------- Compare
            with gr.Tab("Compare", id="compare"):
                gr.Markdown("Both panels start from the **same x_T** (drawn from the seed), so the difference comes from the "
                            "samplers alone. Wall time counts the sampler only.", elem_classes="studio-note")
                with gr.Row(equal_height=True):
                    c_seed = gr.Number(0, precision=0, label="Seed", scale=3)
                    c_dice = gr.Button("Random seed", scale=1, min_width=60)
                    c_n = gr.Slider(1, MAX_IMAGES, value=4, step=1, precision=0, label="Number of images", scale=3,
                                    elem_id="c_n")
                    c_go = gr.Button("Compare", variant="primary", scale=2)
                    c_stop = gr.Button("Stop", variant="stop", scale=1)
                with gr.Row():
                    with gr.Column():
                        a_opts = OptionControls(pipe, "ddpm", "a_", "Panel A sampler")
                        c_img_a = gr.Image(label="Panel A", format="png", interactive=False, elem_id="compare-a", height=360)
                    with gr.Column():
                        b_opts = OptionControls(pipe, "ddim", "b_", "Panel B sampler")
                        c_img_b = gr.Image(label="Panel B", format="png", interactive=False, elem_id="compare-b", height=360)
                c_progress = gr.Markdown("", elem_id="c-progress", min_height=44)  # the progress bar shows here
                c_md = gr.Markdown("Press **Compare**.")
                with gr.Row():
                    c_slider = gr.ImageSlider(label="A ↔ B", format="png", interactive=False, max_height=600)
                    c_diff = gr.Image(label="|A − B| (scaled to its maximum)", format="png", interactive=False,
                                      elem_id="diff-map")
                with gr.Accordion("Metrics as JSON", open=False):
                    c_json = gr.JSON(label="Metrics")

            # ---------------------------------------------------------------- Denoising
            with gr.Tab("Denoising", id="denoising"):
                gr.Markdown("The denoising of the last **Generate** run (up to 16 images): the noisy x_t the model saw and "
                            "its predicted clean image x̂₀, at every cached step.", elem_classes="studio-note")
                with gr.Row():
                    d_xt = gr.Image(label="x_t (noisy input)", format="png", interactive=False, elem_id="frame-xt", height=360)
                    d_x0 = gr.Image(label="predicted x̂₀", format="png", interactive=False, elem_id="frame-x0", height=360)
                with gr.Row(equal_height=True):
                    d_frame = gr.Slider(0, 1, value=0, step=1, precision=0, label="Step", scale=5, elem_id="d_frame")
                    d_play = gr.Button("▶ Play", scale=1, min_width=80)
                d_readout = gr.Markdown("Run **Generate** on the Sample tab first.")
                d_timer = gr.Timer(0.2, active=False)
                d_playing = gr.State(False)
                with gr.Row():
                    initial = {k: c.value for k, c in s_opts.kwargs().items()}
                    d_plot = gr.Plot(label="Noise schedule",
                                     value=studio.schedule_preview(studio.default_model, "ddim", **initial) if pipe else None)
                    with gr.Column():
                        d_gif = gr.Image(label="Animation (GIF)", interactive=False, type="filepath")
                        d_mp4 = gr.Video(label="Animation (MP4)", format="mp4", interactive=False)
                d_files = gr.File(elem_id="d_files", label="Downloads: GIF, MP4, frames (ZIP of PNGs), trajectory (.npz)", file_count="multiple",
                                  interactive=False)

        # ---------------------------------------------------------------- Events
        dice_js = "() => Math.floor(Math.random() * 2147483647)"
        s_dice.click(None, None, s_seed, js=dice_js, **private)
        c_dice.click(None, None, c_seed, js=dice_js, **private)

        def on_model(choice: str, cur: str, ss: str, sa: str, sb: str, progress: gr.Progress = gr.Progress(track_tqdm=True)) -> list:
            n_out = len(s_opts.outputs()) + len(a_opts.outputs()) + len(b_opts.outputs())
            try:
                new = studio.store.get(choice)
            except gr.Error as e:
                name = model_name(cur, studio.default_model)
                gr.Warning(f"{e.message} Still using {name}.", title=e.title or "Cannot load this model")
                return [gr.update(value=cur), cur, f"**Could not load {choice}**: {e.message}  \nStill using **{name}**."] + [gr.skip()] * n_out
            return ([gr.update(value=choice), choice, describe_model(new, model_name(choice, studio.default_model))]
                    + s_opts.updates(new, ss, only_model_fields=True) + a_opts.updates(new, sa, only_model_fields=True)
                    + b_opts.updates(new, sb, only_model_fields=True))

        model.input(on_model, [model, current, s_opts.sampler, a_opts.sampler, b_opts.sampler],
                    [model, current, model_md, *s_opts.outputs(), *a_opts.outputs(), *b_opts.outputs()],
                    **model_event, **private)

        def sampler_changed(oc: OptionControls) -> Callable[[str, str], list]:
            return lambda m, s: oc.updates(studio.store.peek(m), s)

        for oc in (s_opts, a_opts, b_opts):
            oc.sampler.input(sampler_changed(oc), [model, oc.sampler], oc.outputs(), queue=False, show_progress="hidden", **private)

        preview_inputs = dict(model=model, sampler=s_opts.sampler, **s_opts.kwargs())
        for comp in (s_opts.sampler, s_opts.controls["num_inference_steps"], *([s_opts.controls["timestep_spacing"]] if "timestep_spacing" in s_opts.controls else [])):
            comp.change(studio.schedule_preview, None, d_plot, inputs_kwargs=preview_inputs, trigger_mode="always_last",
                        show_progress="hidden", concurrency_id="plots", concurrency_limit=1, **private)

        sample_event = s_go.click(
            gpu_task(studio.sample), None, [s_preview, s_gallery, s_grid, s_info, traj],
            inputs_kwargs=dict(model=model, sampler=s_opts.sampler, seed=s_seed, num_images=s_n, **s_opts.kwargs()),
            api_name="sample", show_progress_on=[s_progress], **model_event)
        sample_event.success(studio.show_trajectory, [traj], [d_frame, d_xt, d_x0, d_readout, d_plot, d_gif, d_mp4, d_files],
                             concurrency_id="media", concurrency_limit=1, show_progress="minimal", **private)
        s_stop.click(None, None, None, cancels=[sample_event], **private)

        compare_event = c_go.click(
            gpu_task(studio.compare), None, [c_img_a, c_img_b, c_slider, c_diff, c_md, c_json],
            inputs_kwargs=dict(model=model, seed=c_seed, num_images=c_n, a_sampler=a_opts.sampler, **a_opts.kwargs(),
                               b_sampler=b_opts.sampler, **b_opts.kwargs()),
            api_name="compare", show_progress_on=[c_progress], **model_event)
        c_stop.click(None, None, None, cancels=[compare_event], **private)

        d_frame.change(studio.show_frame, [d_frame, traj], [d_xt, d_x0, d_readout], queue=False, show_progress="hidden",
                       trigger_mode="always_last", **private)
        d_play.click(studio.toggle_play, [d_frame, d_playing, traj], [d_frame, d_timer, d_play, d_playing], queue=False, **private)
        d_timer.tick(studio.advance, [d_frame, d_playing, traj], [d_frame, d_timer, d_play, d_playing], queue=False,
                     show_progress="hidden", **private)

        def deep_link(request: gr.Request) -> list:
            """``?seed=3&sampler=ddpm&steps=100&eta=0.5&n=4`` pre-fills the Sample tab."""
            q = dict(request.query_params) if request is not None else {}
            seed_u, n_u = gr.update(), gr.update()
            sampler = q.get("sampler") if q.get("sampler") in SAMPLERS else None
            controls = s_opts.updates(studio.store.peek(studio.default_model), sampler) if sampler else \
                [gr.update() for _ in s_opts.outputs()]
            if sampler:
                controls[0]["value"] = sampler
            names = list(s_opts.controls)
            try:
                if "seed" in q:
                    seed_u = check_seed(int(q["seed"]))
                if "n" in q:
                    n_u = check_count(int(q["n"]), "n", 1, MAX_IMAGES)
                for key, name, cast in (("steps", "num_inference_steps", int), ("eta", "eta", float)):
                    if key in q and name in names:
                        controls[1 + names.index(name)]["value"] = cast(q[key])
            except (ValueError, gr.Error):
                gr.Warning("Some link parameters were not understood and were ignored.")
            return [seed_u, n_u, *controls]

        demo.load(deep_link, None, [s_seed, s_n, *s_opts.outputs()], queue=False, show_progress="hidden", **private)

    demo.queue(max_size=QUEUE_SIZE, default_concurrency_limit=1)
    demo.studio = studio  # type: ignore[attr-defined]  # for tests and scripts
    return demo


def launch(demo: gr.Blocks, attempts: int = 3, **kwargs: Any) -> tuple[Any, str, str]:
    """``demo.launch`` with :func:`launch_kwargs`, retried when Gradio's start-up check of its own page
    times out (it allows 3 s, which a loaded CPU can exceed on the first render)."""
    for attempt in range(attempts):
        try:
            return demo.launch(**{**launch_kwargs(), **kwargs})
        except ValueError as e:
            if "localhost is not accessible" not in str(e) or attempt == attempts - 1:
                raise
            demo.close()
            print(f"[studio] the server did not answer its start-up check in time; retrying ({attempt + 2}/{attempts})")
    raise AssertionError("unreachable")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="DDPM / DDIM Studio (Gradio).")
    parser.add_argument("--model", default=None, help=f"default model folder or Hub id (env DEFAULT_MODEL; default {BUNDLED_MODEL})")
    parser.add_argument("--allow-local", action="store_true", help="accept any local model folder typed in the Model box")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME"), help="address to listen on")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    parser.add_argument("--no-compile", action="store_true",
                        help="run CPU models eagerly only (env COMPILE=0); by default they are compiled in the background")
    args = parser.parse_args(argv)
    threads = configure_torch()
    print(f"[studio] torch uses {threads} thread(s) on {device()}; CPU budget {WORK_BUDGET:,} pixel-steps")
    demo = build_app(args.model, args.allow_local or None, compile=not args.no_compile and os.environ.get("COMPILE", "1") != "0")
    launch(demo, server_name=args.host, server_port=args.port)


if __name__ == "__main__":
    main()
