"""The denoising process of one run, kept at a few steps: x_t and the predicted x0 (the studio's
Denoising tab, ``python -m diffusion.sample --process``)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .files import atomic_write
from .images import to_unit
from .samplers import Step
from .schedule import NoiseSchedule


def frame_steps(num_steps: int, max_frames: int) -> set[int]:
    """Loop indices to keep: evenly spread over the run, always the first and the last."""
    if max_frames <= 0 or num_steps <= 0:
        return set()
    if num_steps <= max_frames:
        return set(range(num_steps))
    return {int(round(i)) for i in np.linspace(0, num_steps - 1, max_frames)}


@dataclass(eq=False)  # compared and hashed by identity: a run's record, and a key for what shows it
class Trajectory:
    """x_t and the predicted x0 at the kept steps of a run, then the sample (a last frame with t = -1).

    Frames are float16 tensors in model space [-1, 1], shape (n, C, H, W), of the first ``images``
    images. :meth:`observe` every step of the run, then :meth:`finish` with the last ``x_prev``."""

    num_steps: int
    schedule: NoiseSchedule  # the model's: abar_t and log-SNR of the frames
    max_frames: int = 100
    images: int = 16
    meta: dict[str, Any] = field(default_factory=dict)  # model, sampler, options: written into the .npz
    steps: list[int] = field(default_factory=list)  # loop index of each frame (num_steps: the sample)
    timesteps: list[float] = field(default_factory=list)  # t of each frame (-1: the sample, x_0)
    abar: list[float] = field(default_factory=list)
    x_t: list[torch.Tensor] = field(default_factory=list)
    x0: list[torch.Tensor] = field(default_factory=list)
    visited: list[float] = field(default_factory=list)  # every timestep the sampler evaluated

    def __post_init__(self) -> None:
        self._keep = frame_steps(self.num_steps, self.max_frames)

    def observe(self, step: Step) -> None:
        """Note the step's timestep; keep its x_t and predicted x0 if it is one of the chosen frames."""
        self.visited.append(float(step.t))
        if step.index in self._keep or len(self._keep) >= self.num_steps:
            self.steps.append(step.index)
            self.timesteps.append(float(step.t))
            self.abar.append(self._abar(step.t))
            self.x_t.append(step.x_t[: self.images].detach().to("cpu", torch.float16))
            self.x0.append(step.pred_x0[: self.images].detach().to("cpu", torch.float16))

    def finish(self, sample: torch.Tensor) -> None:
        """Add the final frame: the sample itself (t = -1, abar = 1, no noise left)."""
        s = sample[: self.images].detach().to("cpu", torch.float16)
        self.steps.append(self.num_steps)
        self.timesteps.append(-1)
        self.abar.append(1.0)
        self.x_t.append(s)
        self.x0.append(s)

    def _abar(self, t: float) -> float:
        """abar at a timestep, interpolated linearly between trained ones (Euler and Heun visit fractional t)."""
        abar = self.schedule.alphas_cumprod.numpy()
        return float(np.interp(float(t), np.arange(len(abar)), abar))

    def __len__(self) -> int:
        return len(self.steps)

    def sigma(self, i: int) -> float:
        """Noise level of frame i's x_t: x_t = sqrt(abar_t) x0 + sigma_t eps, sigma_t = sqrt(1 - abar_t)."""
        return math.sqrt(max(0.0, 1.0 - self.abar[i]))

    def picks(self, frames: int) -> list[int]:
        """``frames`` frame indices evenly spread over the trajectory, the sample included."""
        return sorted(frame_steps(len(self), frames))

    def process_grid(self, rows: int = 4) -> torch.Tensor:
        """The process as images in [0, 1]: for each of the first ``rows`` images, a row of x_t and a
        row of predicted x0 over the frames (the sample last), for :func:`diffusion.images.save_grid`."""
        out = []
        for r in range(min(rows, self.x_t[0].shape[0])):
            out += [to_unit(f[r].float()) for f in self.x_t] + [to_unit(f[r].float()) for f in self.x0]
        return torch.stack(out)

    def save_npz(self, path: str | Path) -> Path:
        """Every frame as arrays, with a JSON ``meta`` entry describing the layout."""
        meta = {
            **self.meta,
            "layout": "frames x images x channels x height x width, model space [-1, 1]; "
            "the last frame is the sample (timestep -1)",
        }
        arrays = dict(
            x_t=torch.stack(self.x_t).numpy(),
            pred_x0=torch.stack(self.x0).numpy(),
            timesteps=np.array(self.timesteps),
            step_index=np.array(self.steps),
            alpha_bar=np.array(self.abar),
            visited_timesteps=np.array(self.visited),
            meta=np.array(json.dumps(meta, default=str)),
        )
        path = Path(path)
        atomic_write(path, lambda p: np.savez_compressed(p, **arrays))
        return path

    @staticmethod
    def frames_per_budget(image_shape: tuple[int, int, int], images: int, budget_bytes: int, most: int = 100) -> int:
        """How many frames of ``images`` images fit in ``budget_bytes`` (float16 x_t and x0), from 2 to ``most``."""
        c, h, w = image_shape
        return int(max(2, min(most, budget_bytes // (2 * 2 * images * c * h * w))))
