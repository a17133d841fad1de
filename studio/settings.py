"""The studio's limits and switches: a frozen dataclass read from the environment and the command line
in :func:`studio.main.main`, never at import."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffusion.cli import MAX_SEED  # noqa: F401  (re-exported: one range for the CLI and the studio)
from diffusion.typed import env_number

APP_DIR = Path(__file__).resolve().parents[1]
BUNDLED_MODEL = "checkpoints/fashion-mnist"
BUNDLED_MODELS = (BUNDLED_MODEL, "checkpoints/fashion-mnist-cond")  # offered, and loaded, whatever allow_local says
HUB_PRESETS = (
    "google/ddpm-cifar10-32",
    "google/ddpm-ema-church-256",
    "google/ddpm-ema-celebahq-256",
    "anton-l/ddpm-butterflies-128",
)

# Work is counted in pixel-steps (images x pixels x model evaluations). The CPU budget is for a model
# costing up to REFERENCE_FLOPS per pixel and evaluation (the bundled Fashion-MNIST UNet) and shrinks in
# proportion for costlier ones (google/ddpm-cifar10-32 costs ~17x more per pixel).
REFERENCE_FLOPS = 710_000
GPU_BUDGET_FACTOR = 50
MAX_IMAGES = 64
MAX_TRAJECTORY_FRAMES = 100  # trajectory frames cached for the scrubber
ANIMATION_FRAMES = 50  # of which the GIF / MP4 use at most this many
TRAJECTORY_IMAGES = 16  # images kept in the trajectory
TRAJECTORY_BYTES = 24 * 2**20
DISPLAY_PX = 512  # result grids are upscaled (nearest neighbour, integer factor) to at least this width
PREVIEW_PX = 256  # streamed previews: smaller, the page scales them up (pixelated)
FRAME_PX = 320
DOWNLOAD_TILE_PX = 112  # the downloaded grid's images are upscaled (nearest neighbour, integer factor) to this
STATE_TTL_S = 3600
PROGRESS_EVERY_S = 0.1
MAX_UPLOAD_BYTES = 20 * 2**20  # Gradio refuses bigger uploads (launch's max_file_size); Explore checks again


@dataclass(frozen=True)
class Settings:
    """What an operator may change (environment variable in brackets)."""

    default_model: str = BUNDLED_MODEL  # DEFAULT_MODEL: a model folder or Hub repo id
    allow_local: bool = False  # ALLOW_LOCAL_MODELS=1: accept any local folder typed in the Model box
    max_work: int = 16_000_000  # MAX_WORK: pixel-steps one CPU request may cost (bundled-model FLOPs)
    arena_work: int = 64_000_000  # ARENA_WORK: pixel-steps one Arena run may cost (it samples many rows)
    arena_cache: str = ""  # ARENA_CACHE: folder of the Arena's converged solutions (default: in the temp folder)
    max_models: int = 3  # MAX_MODELS: models kept loaded (least recently used out)
    queue_size: int = 20  # QUEUE_SIZE
    preview_every_s: float = 0.5  # PREVIEW_EVERY: stream an x0 preview at most this often (each costs CPU)
    compile: bool = True  # COMPILE=0 / --no-compile: never use compiled UNet packages
    build_compiled: bool = False  # --compile: build the default model's package before serving
    keep_outputs: int = 48  # KEEP_OUTPUTS: request folders of pictures and files kept in the temp folder

    @classmethod
    def from_env(cls, **overrides: Any) -> "Settings":
        """The environment's values, then ``overrides`` (those not None)."""
        env = dict(
            default_model=os.environ.get("DEFAULT_MODEL", "").strip() or BUNDLED_MODEL,
            allow_local=os.environ.get("ALLOW_LOCAL_MODELS", "") == "1",
            max_work=env_number("MAX_WORK", int, cls.max_work, 1000, 10**12, " pixel-steps"),
            arena_work=env_number("ARENA_WORK", int, cls.arena_work, 1000, 10**13, " pixel-steps"),
            arena_cache=os.environ.get("ARENA_CACHE", "").strip(),
            max_models=env_number("MAX_MODELS", int, cls.max_models, 1, 32),
            queue_size=env_number("QUEUE_SIZE", int, cls.queue_size, 1, 10_000),
            preview_every_s=env_number("PREVIEW_EVERY", float, cls.preview_every_s, 0.05, 60, " seconds"),
            compile=os.environ.get("COMPILE", "1") != "0",
            keep_outputs=env_number("KEEP_OUTPUTS", int, cls.keep_outputs, 1, 10_000),
        )
        return cls(**{**env, **{k: v for k, v in overrides.items() if v is not None}})

    def replace(self, **changes: Any) -> "Settings":
        return dataclasses.replace(self, **changes)
