"""What a training run reads and writes besides its loop: checkpoints (written atomically, the newest valid one
found for a resume, RNG states per rank), the starting weights of ``--init_from``, the loss log, the exported model."""

from __future__ import annotations

import copy
import csv
import json
import warnings
from pathlib import Path
from typing import Any

import torch

import diffusion
from diffusion.files import CheckpointError, atomic_write, check_writable
from diffusion.images import save_grid
from diffusion.pipeline import DiffusionPipeline
from diffusion.unet import UNet
from training.config import TrainConfig


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


def load_init_weights(source: str, model: UNet) -> None:
    """Copy an exported model's weights into ``model`` (``--init_from``); the architecture must match."""
    try:
        pipe = diffusion.load(source)
    except CheckpointError as e:
        raise ValueError(f"init_from={source!r}: {e}") from None
    theirs, ours = pipe.unet.config.to_dict(), model.config.to_dict()
    # An unconditional model may start a class-conditional one: its new label table starts at zero, so
    # step 0 is the unconditional model whatever the label (Ho and Salimans 2022 train one model for both).
    warm_start = not pipe.unet.config.class_conditional and model.config.class_conditional
    labels_keys = ("num_class_embeds", "class_embed_type") if warm_start else ()
    differ = [k for k in ours if k != "dropout" and k not in labels_keys and theirs.get(k) != ours[k]]
    if differ:
        what = "; ".join(f"{k}: {theirs.get(k)!r} there, {ours[k]!r} here" for k in differ)
        raise ValueError(
            f"init_from={source!r} is another architecture than this config describes ({what}). "
            "Set the config's unet, image_size and channels to the model's (its training_config.json has them)."
        )
    if warm_start:
        if model.config.class_embed_type is not None:
            raise ValueError("init_from an unconditional model starts a label table only (class_embed_type null).")
        state = {**pipe.unet.state_dict(), "class_embedding.weight": torch.zeros_like(model.class_embedding.weight)}
        model.load_state_dict(state)
        return
    model.load_state_dict(pipe.unet.state_dict())


def export(cfg: TrainConfig, ema: UNet, out_dir: Path, step: int) -> Path:
    """Write the EMA model in diffusers' layout, with the resolved training config beside it."""
    pipe = DiffusionPipeline(copy.deepcopy(ema).float().cpu().eval(), cfg.scheduler_config(), str(out_dir),
                             cfg.class_info())
    extra = {"training_config.json": json.dumps({**cfg.to_dict(), "trained_steps": step}, indent=2) + "\n"}
    pipe.save_pretrained(out_dir, extra)
    if cfg.push_to_hub:
        url = pipe.push_to_hub(cfg.push_to_hub, extra_files=extra)
        print(f"pushed to {url}")
    return out_dir


def read_log(run_dir: Path, upto: int) -> list[dict[str, Any]]:
    """The loss log's rows up to step ``upto`` (a resumed run rewrites what came after its checkpoint)."""
    path = run_dir / "log.csv"
    if not path.is_file():
        return []
    with path.open() as f:
        return [r for r in csv.DictReader(f) if int(r["step"]) <= upto]


def write_log(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    """``log.csv`` (step, loss, lr, elapsed_s), rewritten whole and atomically."""

    def write(p: Path) -> None:
        with p.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["step", "loss", "lr", "elapsed_s"])
            w.writeheader()
            w.writerows(rows)
    atomic_write(run_dir / "log.csv", write)


def check_output_dirs(cfg: TrainConfig, export_only: bool = False) -> None:
    """run_dir (unless only exporting) and the export folder can be written: checked before any work, so that
    a bad path fails before step 1, not at the first checkpoint or after the whole training."""
    dirs = {"export_dir": cfg.export_dir or str(Path(cfg.run_dir) / "export")}
    if not export_only:
        dirs = {"run_dir": cfg.run_dir, **dirs}
    for key, folder in dirs.items():
        try:
            check_writable(folder, "folder")
        except ValueError as e:
            raise ValueError(f"{key}={folder!r}: {e}") from None


def sample_grid(cfg: TrainConfig, ema: UNet, path: Path) -> torch.Tensor:
    """16 DDIM samples of the EMA model from seed 0 (the same noise at every step), saved as a PNG grid; a
    class-conditional model's row per class (up to 10), at the config's guidance scale."""
    pipe = DiffusionPipeline(ema, cfg.scheduler_config(), classes=cfg.class_info())
    was_training = ema.training
    if pipe.classes is None:
        images = pipe.sample("ddim", n=16, seed=0, num_inference_steps=cfg.sample_steps)
        nrow = 4
    else:
        k = min(len(pipe.classes.names), 10)
        images = pipe.sample("ddim", n=8 * k, seed=0, num_inference_steps=cfg.sample_steps,
                             class_labels=torch.arange(k).repeat_interleave(8), guidance_scale=cfg.guidance_scale)
        nrow = 8
    ema.train(was_training)
    return save_grid(images, path, nrow=nrow)
