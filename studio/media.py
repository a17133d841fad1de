"""Pictures and files the studio serves: grids, trajectory frames, animations, the schedule plot, and
the temp folder they live in (bounded: the newest request folders are kept, older ones deleted)."""

from __future__ import annotations

import io
import re
import shutil
import threading
import time
import uuid
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gradio.utils import get_upload_folder

import diffusion
from diffusion import images as dimages
from diffusion.latents import PAPER_TABLE2
from diffusion.schedule import NoiseSchedule
from diffusion.trajectory import Trajectory

from .settings import ANIMATION_FRAMES, DISPLAY_PX, FRAME_PX


def picture(images: torch.Tensor, min_size: int = DISPLAY_PX, nrow: int | None = None) -> np.ndarray:
    """[0, 1] images (N, C, H, W) as one RGB uint8 grid, upscaled by an integer factor to >= min_size wide."""
    g = dimages.upscale(dimages.grid(images.float().cpu(), nrow), min_size)
    arr = dimages.to_uint8(g[None])[0]
    return np.repeat(arr, 3, axis=-1) if arr.shape[-1] == 1 else arr


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text.strip("/")).strip("-")[:60] or "model"


class OutputFolders:
    """A folder per request inside Gradio's cache folder (files returned from there are served in place,
    never copied), under one folder per app instance. Making a new one deletes all but the newest
    ``keep``, so the temp folder stays bounded however many requests come; ``keep`` is far above the
    requests a queue holds at once. Instance folders left by earlier runs are deleted after a day."""

    STALE_S = 86_400

    def __init__(self, keep: int = 48, root: str | Path | None = None) -> None:
        self.keep = max(2, keep)
        parent = Path(root or get_upload_folder()) / "studio"
        self._sweep(parent)
        self.root = parent / uuid.uuid4().hex[:8]
        self._lock = threading.Lock()
        self._made: list[Path] = []

    @classmethod
    def _sweep(cls, parent: Path) -> None:
        now = time.time()
        try:
            for old in parent.iterdir():
                if old.is_dir() and now - old.stat().st_mtime > cls.STALE_S:
                    shutil.rmtree(old, ignore_errors=True)
        except OSError:
            pass

    def new(self) -> Path:
        d = self.root / uuid.uuid4().hex[:12]
        with self._lock:
            d.mkdir(parents=True, exist_ok=True)
            self._made.append(d)
            if len(self._made) > self.keep:
                old, self._made = self._made[: -self.keep], self._made[-self.keep :]
                for folder in old:
                    shutil.rmtree(folder, ignore_errors=True)
        return d

    def clear(self) -> None:
        """Delete every folder this app made (at shut-down)."""
        with self._lock:
            shutil.rmtree(self.root, ignore_errors=True)
            self._made.clear()


def save_png(array: np.ndarray, path: Path) -> str:
    """An RGB uint8 picture as a PNG file; returns its path as Gradio wants it."""
    from PIL import Image

    Image.fromarray(array).save(path, format="PNG", compress_level=1)
    return str(path)


# ------------------------------------------------------------------------------------------ trajectory


def frame_pictures(traj: Trajectory, i: int, min_size: int = FRAME_PX) -> tuple[np.ndarray, np.ndarray]:
    """Frame i as two RGB grids: x_t and the predicted x0."""
    return (
        picture(diffusion.to_unit(traj.x_t[i].float()), min_size),
        picture(diffusion.to_unit(traj.x0[i].float()), min_size),
    )


def timestep_text(t: float) -> str:
    """A timestep as shown: 980, or 979.53 for the fractional ones of sigma-based samplers."""
    return f"{t:.0f}" if float(t).is_integer() else f"{t:.2f}"


def readout(traj: Trajectory, i: int) -> str:
    """t, abar_t and sigma_t of frame i, as Markdown."""
    if traj.timesteps[i] < 0:
        return f"**Frame {i} / {len(traj) - 1}** · the sample x₀ after {traj.num_steps} steps · ᾱ = 1 · σ = 0"
    return (
        f"**Frame {i} / {len(traj) - 1}** · step {traj.steps[i] + 1} / {traj.num_steps} "
        f"· **t = {timestep_text(traj.timesteps[i])}** "
        f"· ᾱ_t = {traj.abar[i]:.4f} · σ_t = √(1−ᾱ_t) = {traj.sigma(i):.4f}"
    )


def composite(traj: Trajectory, i: int, min_size: int = 160) -> np.ndarray:
    """x_t and predicted x0 side by side, with a caption strip (a GIF / MP4 / PNG frame)."""
    from PIL import Image, ImageDraw

    a, b = frame_pictures(traj, i, min_size)
    body = np.concatenate([a, np.full((a.shape[0], 8, 3), 255, np.uint8), b], axis=1)
    strip = Image.new("RGB", (body.shape[1], 18), "white")
    t = traj.timesteps[i]
    text = (
        f"t={timestep_text(t)}  abar={traj.abar[i]:.4f}  sigma={traj.sigma(i):.3f}"
        if t >= 0
        else f"sample after {traj.num_steps} steps"
    )
    ImageDraw.Draw(strip).text((4, 3), f"x_t | predicted x0    {text}", fill="black")
    return np.concatenate([body, np.asarray(strip)], axis=0)


def trajectory_files(traj: Trajectory, folder: Path, stem: str) -> dict[str, Path]:
    """GIF and MP4 (through :func:`diffusion.images.save_animation`), a ZIP of PNG frames, the .npz."""
    from PIL import Image

    frames = [composite(traj, i) for i in traj.picks(ANIMATION_FRAMES)]
    fps = int(max(4, min(15, len(frames) / 4)))
    frames += [frames[-1]] * fps  # rest a second on the sample
    out = {"gif": dimages.save_animation(frames, folder / f"{stem}.gif", fps)}
    try:
        out["mp4"] = dimages.save_animation(frames, folder / f"{stem}.mp4", fps)
    except Exception as e:  # noqa: BLE001 - no ffmpeg: the GIF and the frames still work
        print(f"[studio] MP4 not written: {e}")
    zpath = folder / f"{stem}_frames.zip"
    with zipfile.ZipFile(zpath, "w", zipfile.ZIP_STORED) as z:
        for k in range(len(traj)):
            buf = io.BytesIO()
            Image.fromarray(composite(traj, k)).save(buf, format="PNG")
            t = traj.timesteps[k]
            z.writestr(f"frame{k:03d}_{'t' + timestep_text(t) if t >= 0 else 'sample'}.png", buf.getvalue())
    out["zip"] = zpath
    out["npz"] = traj.save_npz(folder / f"{stem}_trajectory.npz")
    return out


# ------------------------------------------------------------------------------------------ schedule plot


def schedule_plot_data(schedule: NoiseSchedule, visited: list[float] | list[int]) -> dict[str, np.ndarray]:
    """abar_t and log-SNR (the schedule's) over t = 0..T-1, and their values at the visited timesteps."""
    abar = schedule.alphas_cumprod.numpy()
    log_snr = schedule.log_snr().numpy()
    v = np.array(sorted({int(round(t)) for t in visited if 0 <= round(t) < len(abar)}), dtype=np.int64)
    return {
        "t": np.arange(len(abar)),
        "abar": abar,
        "log_snr": log_snr,
        "visited": v,
        "visited_abar": abar[v],
        "visited_log_snr": log_snr[v],
    }


def schedule_figure(data: dict[str, np.ndarray], title: str = "") -> Any:
    """A two-panel matplotlib figure (not registered with pyplot, so nothing accumulates)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2), dpi=100, layout="constrained")
    ax1, ax2 = fig.subplots(2, 1, sharex=True)
    ax1.plot(data["t"], data["abar"], color="#4c72b0", lw=1.5)
    ax1.scatter(
        data["visited"],
        data["visited_abar"],
        s=10,
        color="#dd8452",
        zorder=3,
        label=f"{len(data['visited'])} visited timesteps",
    )
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


def error_figure(errors: dict[int, float]) -> Any:
    """Reconstruction error (per-dimension MSE) against DDIM steps, log-log, beside the DDIM paper's
    CIFAR-10 numbers (Table 2)."""
    from matplotlib.figure import Figure

    paper = {k: v for k, v in PAPER_TABLE2.items() if k <= max(errors)}
    fig = Figure(figsize=(5.2, 3.4), dpi=100, layout="constrained")
    ax = fig.subplots()
    ax.plot(list(errors), list(errors.values()), "o-", color="#4c72b0", label="this model, this image")
    ax.plot(list(paper), list(paper.values()), "s--", color="#999999", label="DDIM paper, CIFAR-10 (Table 2)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(list(errors), [str(k) for k in errors])
    ax.set_xlabel("DDIM steps (encode and decode)")
    ax.set_ylabel("MSE per dimension")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return fig
