"""Models: what a Model box value names, a small cache of loaded pipelines, and the work budget."""

from __future__ import annotations

import re
import threading
import weakref
from collections import OrderedDict
from pathlib import Path

import gradio as gr

import diffusion
from diffusion.hub import Checkpoint, HubUnreachable, load_checkpoint
from diffusion.machine import default_device, flops_per_pixel

from .compute import compute_thread
from .errors import refused
from .settings import APP_DIR, BUNDLED_MODELS, GPU_BUDGET_FACTOR, MAX_IMAGES, REFERENCE_FLOPS, Settings

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}$")
MAX_NAME = 200  # longer than any Hub id; a file name this long is refused before the file system is asked


class ModelStore:
    """Loaded pipelines, least recently used first out. Loading happens outside the store's lock, one
    load per model at a time, so a slow download never blocks requests for models already loaded.
    ``get`` raises ``gr.Error`` with the reason (the models already loaded stay loaded)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.default = settings.default_model
        self._models: OrderedDict[str, diffusion.DiffusionPipeline] = OrderedDict()
        self._flops: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # UNet -> FLOPs per pixel
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}

    def resolve(self, choice: str | None) -> str:
        """The source to load for a Model box value: the bundled folder, a local folder (if allowed)
        or a Hub repo id. gr.Error says what is wrong with anything else."""
        choice = (choice or "").strip() or self.default
        if len(choice) > MAX_NAME:
            raise refused(
                f"That model name is {len(choice)} characters long; Hub repo ids are owner/name, at most "
                "96 characters each. Pick a model from the list or type a repo id.",
                title="Unknown model",
            )
        try:
            if choice == self.default or choice in BUNDLED_MODELS:
                path = Path(choice).expanduser()
                return str(path if path.is_absolute() or not (APP_DIR / path).exists() else APP_DIR / path)
            local = Path(choice).expanduser()
            if local.exists():
                if self.settings.allow_local and local.is_dir():
                    return str(local.resolve())
                raise refused(
                    f"{choice!r} is a local path; this app loads only its bundled model and Hub repos "
                    "(start it with --allow-local to load local folders).",
                    title="Local folders are off",
                )
        except OSError as e:  # a name the file system refuses (too long a component, a NUL byte...)
            raise refused(
                f"{choice[:80]!r} is not a usable model name ({e.strerror or e}). Type a Hub repo id as "
                "owner/name, e.g. google/ddpm-cifar10-32.",
                title="Unknown model",
            ) from None
        if not HUB_ID.match(choice):
            raise refused(
                f"{choice[:120]!r} is not a Hub repo id. Type one as owner/name, e.g. google/ddpm-cifar10-32, "
                "or pick a model from the list.",
                title="Unknown model",
            )
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
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:  # two requests for one new model: the second waits for the first's load
            with self._lock:
                if key in self._models:
                    return self._models[key]
            pipe = self._load(key)
            with self._lock:
                self._models[key] = pipe
                self._loading.pop(key, None)
                while len(self._models) > max(1, self.settings.max_models):
                    self._models.popitem(last=False)
            return pipe

    def _load(self, key: str) -> diffusion.DiffusionPipeline:
        """Read (or download) the files on the calling thread, build the model on the compute thread."""
        try:
            checkpoint = load_checkpoint(key)
            return compute_thread().call(self._build, checkpoint)
        except HubUnreachable:  # the CLI's message names the server's cache and offline switches: not a visitor's
            raise refused(
                f"{key} is not available: this server cannot reach the Hub now and has no copy of it. "
                "Pick a model from the list (the bundled one always works).",
                title="Model not available",
            ) from None
        except diffusion.CheckpointError as e:
            raise refused(str(e), title="Cannot load this model") from None
        except OSError as e:  # network failures that escape huggingface_hub's own errors
            raise refused(
                f"Cannot download {key!r}: {e}. Check the connection or pick another model.", title="Download failed"
            ) from None

    def _build(self, checkpoint: Checkpoint) -> diffusion.DiffusionPipeline:
        pipe = diffusion.DiffusionPipeline.from_checkpoint(checkpoint, device=default_device())
        pipe.unet.eval().requires_grad_(False)
        if self.settings.compile:
            pipe.compile()  # the ahead-of-time compiled package, if one was built for these weights
        return pipe

    def loaded(self) -> list[str]:
        with self._lock:
            return list(self._models)

    # -- the work budget ---------------------------------------------------------------------------

    def flops(self, pipe: diffusion.DiffusionPipeline) -> float:
        """FLOPs of one model evaluation per pixel (counted once per model, on the meta device)."""
        if pipe.unet not in self._flops:
            try:
                self._flops[pipe.unet] = flops_per_pixel(pipe.unet.config)
            except Exception:  # noqa: BLE001 - an estimate is enough: 2 FLOPs per parameter and pixel
                self._flops[pipe.unet] = 2.0 * sum(p.numel() for p in pipe.unet.parameters())
        return self._flops[pipe.unet]

    def work_budget(self, pipe: diffusion.DiffusionPipeline, base: int | None = None) -> int:
        """The most pixel-steps (images x pixels x model evaluations) one request may ask of this model:
        ``max_work`` (or ``base``: the Arena's) for models costing up to the bundled one's FLOPs per pixel, less
        in proportion for costlier ones, 50x more on a GPU."""
        scale = min(1.0, REFERENCE_FLOPS / max(1.0, self.flops(pipe)))
        budget = (base or self.settings.max_work) * scale * (GPU_BUDGET_FACTOR if pipe.device.type == "cuda" else 1)
        return max(1000, int(budget // 1000 * 1000))

    def check_work(self, pipe: diffusion.DiffusionPipeline, n: int, evaluations: int, name: str = "this model",
                   passes: int = 1) -> int:
        """Refuse requests above :meth:`work_budget`, saying how many steps or images would fit. ``passes``:
        UNet passes per model evaluation (2 under classifier-free guidance: the class and the null label)."""
        _, h, w = pipe.image_shape
        work = n * h * w * evaluations * passes
        budget = self.work_budget(pipe)
        if work > budget:
            hints = []
            if budget // (n * h * w * passes) >= 1:
                hints.append(f"at most {budget // (n * h * w * passes)} steps with {n} images")
            if budget // (h * w * evaluations * passes) >= 1:
                hints.append(f"at most {budget // (h * w * evaluations * passes)} images with {evaluations} steps")
            guided = " × 2 passes (guidance: the class and the null label)" if passes == 2 else ""
            raise refused(
                f"This request is {n} images × {h}×{w} pixels × {evaluations} steps{guided} = {work:,} pixel-steps, "
                f"above the {'GPU' if pipe.device.type == 'cuda' else 'CPU'} budget of {budget:,} for {name} (images "
                f"× pixels × steps). Use {' or '.join(hints) or 'fewer images and steps'}"
                f"{' or guidance 0 or 1 (one pass)' if passes == 2 else ''}.",
                title="Too much work",
            )
        return work

    def describe(self, pipe: diffusion.DiffusionPipeline, name: str) -> str:
        """One Markdown paragraph about a model: shape, size, schedule, how it runs and its budget."""
        c, h, w = pipe.image_shape
        cfg = pipe.config
        budget = self.work_budget(pipe)
        params = sum(p.numel() for p in pipe.unet.parameters())
        runs = " · compiled ahead of time" if pipe.compiled is not None else ""
        return (
            f"**{name}** · {w}×{h} {'grey' if c == 1 else 'colour'} images · {params / 1e6:.1f}M parameters · "
            f"trained with T = {pipe.schedule.num_train_timesteps} steps ({cfg['beta_schedule']} betas, predicts "
            f"{cfg['prediction_type']}) · runs on {pipe.device.type.upper()}{runs} · "
            f"{self.flops(pipe) / 1e6:.2f} MFLOP per pixel and step  \n"
            f"Budget per request: images × pixels × steps ≤ **{budget:,}** (e.g. {max(1, budget // (h * w * 1000))} "
            f"images × 1000 steps or {max(1, min(MAX_IMAGES, budget // (h * w * 50)))} images × 50 steps at {h}×{w})."
        )

    def name(self, choice: str | None) -> str:
        """A short name for files and titles: the folder name of a local model, the repo id otherwise."""
        choice = (choice or "").strip() or self.default
        bundled = choice == self.default or choice in BUNDLED_MODELS
        return Path(choice).name if bundled or Path(choice).is_absolute() else choice
