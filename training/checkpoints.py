"""Training checkpoints: written atomically, the newest valid one found for a resume, RNG states per rank."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from diffusion.files import atomic_write


def checkpoint_paths(run_dir: Path) -> list[Path]:
    """Checkpoints in the run folder, newest first."""
    return sorted((run_dir / "checkpoints").glob("step-*.pt"), reverse=True)


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A training checkpoint; tensors and plain values only (``weights_only=True``)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    missing = {"model", "ema", "optimizer", "scheduler", "step", "rng", "config"} - set(state)
    if missing:
        raise ValueError(f"{path} lacks {', '.join(sorted(missing))}")
    return state


def newest_valid_checkpoint(run_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint that loads; damaged ones (a crash while copying, a full disk) are skipped."""
    for path in checkpoint_paths(run_dir):
        try:
            return path, read_checkpoint(path)
        except Exception as e:  # noqa: BLE001 - any failure to read means "not valid"
            warnings.warn(f"Skipping damaged checkpoint {path}: {e}", stacklevel=2)
    return None


def write_checkpoint(run_dir: Path, state: dict[str, Any], keep: int) -> Path:
    path = run_dir / "checkpoints" / f"step-{state['step']:08d}.pt"
    atomic_write(path, lambda p: torch.save(state, p))
    # prune the oldest; never the one just written, even when a newer (damaged, skipped) file sorts first
    for old in [p for p in checkpoint_paths(run_dir) if p.name < path.name][keep - 1:]:
        old.unlink(missing_ok=True)
    return path


def rng_state() -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
