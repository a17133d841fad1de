"""Train a DDPM (Ho et al. 2020, Algorithm 1) on one CPU or GPU, or many through torchrun.

    python -m training.train fashion-mnist --steps=2000 --lr=1e-4     (or diffusion-train, after pip install -e .)
    torchrun --nproc_per_node=8 -m training.train cifar10

Checkpoints (model, EMA, optimizer, step, RNG states, config) go to RUN_DIR/checkpoints every
``ckpt_every`` steps, written atomically; a restarted run resumes from the newest valid one.
At the end the EMA model is exported with ``save_pretrained`` (``--export`` does only that).
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm import tqdm

from diffusion.files import atomic_write, temp_files
from diffusion.schedule import NoiseSchedule
from diffusion.unet import UNet
from training.config import TrainConfig, resolve_config
from training.data import batches, load_images, load_labels
from training.objective import diffusion_loss, drop_labels, ema_decay, lr_factor
from training.run_files import (
    check_output_dirs,
    checkpoint_paths,
    export,
    load_init_weights,
    newest_valid_checkpoint,
    read_checkpoint,
    read_log,
    rng_state,
    sample_grid,
    set_rng_state,
    write_checkpoint,
    write_log,
)


@dataclass
class Processes:
    """This process among those torchrun started (one, without torchrun): rank 0 logs and writes."""

    ddp: bool
    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def start_processes(cfg: TrainConfig) -> Processes:
    """torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; then NCCL on GPUs, gloo on CPUs."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        local = int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device(f"cuda:{local}") if torch.cuda.is_available() else torch.device("cpu")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        procs = Processes(True, dist.get_rank(), dist.get_world_size(), device)
    else:
        procs = Processes(False, 0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    if cfg.batch_size % procs.world:
        raise ValueError(f"batch_size={cfg.batch_size} is not divisible by the {procs.world} processes.")
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    return procs


@dataclass
class TrainState:
    """What a checkpoint holds besides the config: the weights, their EMA, the optimizer, the LR schedule."""

    model: UNet
    ema: UNet
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    step: int = 0
    elapsed: float = 0.0  # training seconds so far, resumed runs included


def build_state(cfg: TrainConfig, procs: Processes) -> TrainState:
    """The model (from ``init_from``'s weights, if given), its EMA, AdamW and the warmup/decay schedule."""
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank, so the EMA copies agree
    model = UNet(cfg.unet_config())
    if cfg.init_from:  # weights from an exported model; a checkpoint found later (a resume) overrides them
        load_init_weights(cfg.init_from, model)
    model = model.to(procs.device)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    if procs.rank:
        torch.manual_seed(cfg.seed + procs.rank)  # each rank draws its own timesteps and noise
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    # the label table (class-conditional models) in a group of its own, at label_lr_scale x lr
    table = [p for name, p in model.named_parameters() if name.startswith("class_embedding.")]
    rest = [p for name, p in model.named_parameters() if not name.startswith("class_embedding.")]
    groups = [{"params": rest}] + ([{"params": table, "lr": cfg.lr * cfg.label_lr_scale}] if table else [])
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(cfg, s))
    return TrainState(model, ema, optimizer, scheduler)


def find_checkpoint(run_dir: Path, resume: str | None) -> tuple[Path, dict[str, Any]] | None:
    """--resume PATH, else the newest valid checkpoint in the run folder (None: a fresh run)."""
    if not resume:
        return newest_valid_checkpoint(run_dir)
    try:
        return Path(resume), read_checkpoint(Path(resume))
    except Exception as e:  # noqa: BLE001 - any failure to read is reported the same way
        raise ValueError(f"Cannot resume from {resume}: {e}") from None


def load_parts(path: Path, saved: dict[str, Any], parts: dict[str, Any], instead: str) -> None:
    """Load each of a checkpoint's ``parts`` (model, ema, optimizer) into its object; a checkpoint of another
    architecture is one ValueError naming it and what to do ``instead``."""
    try:
        for key, target in parts.items():
            target.load_state_dict(saved[key])
    except (RuntimeError, ValueError) as e:
        raise ValueError(
            f"{path} was written for another model than this config describes; {instead}. ({str(e).splitlines()[0]})"
        ) from None


def restore(state: TrainState, found: tuple[Path, dict[str, Any]], cfg: TrainConfig, rank: int) -> None:
    """Load a checkpoint into ``state``, with this rank's RNG streams, so the run goes on bit for bit."""
    path, saved = found
    load_parts(path, saved, {"model": state.model, "ema": state.ema, "optimizer": state.optimizer},
               "resume with its own config (saved in the checkpoint) or use a new run_dir")
    state.scheduler.load_state_dict(saved["scheduler"])
    state.step, state.elapsed = int(saved["step"]), float(saved.get("elapsed", 0.0))
    rngs = saved["rng"] if isinstance(saved["rng"], list) else [saved["rng"]]
    if rank < len(rngs):
        set_rng_state(rngs[rank])
    else:  # resumed with more processes than saved the checkpoint: a distinct stream per rank
        torch.manual_seed(cfg.seed + rank + 1_000_003 * state.step)


def export_checkpoint(cfg: TrainConfig, resume: str | None) -> dict[str, Any]:
    """``--export``: the newest checkpoint's EMA model in diffusers' layout (no optimizer is built)."""
    run_dir = Path(cfg.run_dir)
    found = find_checkpoint(run_dir, resume)
    torch.manual_seed(cfg.seed)  # with no checkpoint and no init_from: the weights a run would start from
    ema = UNet(cfg.unet_config())
    step = 0
    if cfg.init_from and not found:
        load_init_weights(cfg.init_from, ema)
    if found:
        path, saved = found
        load_parts(path, saved, {"ema": ema}, "export with its own config (saved in the checkpoint)")
        step = int(saved["step"])
        print(f"resumed from {path} at step {step}")
    out = export(cfg, ema, Path(cfg.export_dir or run_dir / "export"), step)
    print(f"exported the EMA model at step {step} to {out}")
    return {"step": step}


def load_data(cfg: TrainConfig) -> tuple[torch.Tensor, torch.Tensor | None]:
    """All training images in memory as uint8 (N, C, H, W), and their labels for a class-conditional run."""
    images = load_images(cfg.dataset, cfg.data_root, "train", cfg.image_size, cfg.channels, cfg.download)
    if images.shape[1:] != (cfg.channels, cfg.image_size, cfg.image_size):
        raise ValueError(f"The dataset's images are {tuple(images.shape[1:])}, the config says "
                         f"({cfg.channels}, {cfg.image_size}, {cfg.image_size}); set channels and image_size to match.")
    labels = load_labels(cfg.dataset, cfg.data_root, "train", cfg.download) if cfg.class_conditional else None
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"The dataset has {len(images)} images but {len(labels)} labels; its files do not match.")
    return images, labels


def training_batch(cfg: TrainConfig, images: torch.Tensor, idx: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Algorithm 1's (1): x0 ~ q(x0), the batch ``idx`` scaled to [-1, 1]; random flips as in DDPM's CIFAR-10 runs."""
    x0 = images[idx].to(device, non_blocking=True).float().div_(127.5).sub_(1.0)
    if cfg.random_flip:
        flip = torch.rand(x0.shape[0], device=device) < 0.5
        x0 = torch.where(flip[:, None, None, None], x0.flip(3), x0)
    if cfg.channels_last:
        x0 = x0.contiguous(memory_format=torch.channels_last)
    return x0


def train_step(cfg: TrainConfig, state: TrainState, forward: Any, schedule: NoiseSchedule, x0: torch.Tensor,
               autocast: Any, labels: torch.Tensor | None = None) -> tuple[float, torch.Tensor]:
    """Algorithm 1's steps (2)-(5) on one batch: the loss, a clipped AdamW step, the EMA. Returns the loss and
    the gradient norm; a loss that is not finite stops the run before the step changes the weights."""
    loss = diffusion_loss(forward, schedule, cfg, x0, autocast, drop_labels(cfg, labels))
    loss_value = loss.item()
    if not math.isfinite(loss_value):
        raise ValueError(diverged(cfg, loss_value, state.step + 1))
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(
        state.model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
    )
    state.optimizer.step()
    state.scheduler.step()
    state.step += 1
    # (5) EMA of the weights; identical on every rank, as the weights are
    with torch.no_grad():
        decay = ema_decay(cfg, state.step)
        torch._foreach_lerp_(list(state.ema.parameters()), list(state.model.parameters()), 1.0 - decay)
    return loss_value, grad_norm


def save_checkpoint(cfg: TrainConfig, state: TrainState, procs: Processes, run_dir: Path) -> None:
    """Every rank's RNG streams gathered, then rank 0 writes the checkpoint atomically."""
    rngs: Any = rng_state()
    if procs.ddp:
        gathered: list[Any] = [None] * procs.world
        dist.all_gather_object(gathered, rngs)
        rngs = gathered
    if procs.main:
        saved = {"model": state.model.state_dict(), "ema": state.ema.state_dict(),
                 "optimizer": state.optimizer.state_dict(), "scheduler": state.scheduler.state_dict(),
                 "step": state.step, "rng": rngs if procs.ddp else [rngs], "config": cfg.to_dict(),
                 "elapsed": state.elapsed}
        write_checkpoint(run_dir, saved, cfg.keep_checkpoints)
    if procs.ddp:
        dist.barrier()


def open_run_dir(cfg: TrainConfig, run_dir: Path, step: int) -> tuple[Any, list[dict[str, Any]]]:
    """The main process's run folder: made, cleared of a killed run's temp files, the config written; its
    TensorBoard writer (past ``step`` purged, as a resume rewrites what came after) and the loss log so far."""
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in [*temp_files(run_dir), *temp_files(run_dir / "checkpoints")]:  # a run killed mid-write
        stale.unlink(missing_ok=True)
    atomic_write(run_dir / "config.json", lambda p: p.write_text(json.dumps(cfg.to_dict(), indent=2) + "\n"))
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(run_dir / "tb"), purge_step=step or None), read_log(run_dir, step)


def train(cfg: TrainConfig, resume: str | None = None, export_only: bool = False) -> dict[str, Any]:
    """Set up, restore, then steps until ``cfg.steps`` with logs, sample grids and checkpoints, then export."""
    check_output_dirs(cfg, export_only)
    if export_only:  # by one process, also under torchrun
        return export_checkpoint(cfg, resume) if int(os.environ.get("RANK", "0")) == 0 else {}
    procs = start_processes(cfg)
    run_dir = Path(cfg.run_dir)
    state = build_state(cfg, procs)
    schedule = NoiseSchedule.from_config(cfg.beta_schedule, cfg.num_train_timesteps, cfg.beta_start, cfg.beta_end)
    found = find_checkpoint(run_dir, resume)
    if found:
        restore(state, found, cfg, procs.rank)
        if procs.main:
            print(f"resumed from {found[0]} at step {state.step}")

    images, labels = load_data(cfg)
    data = batches(len(images), cfg.batch_size // procs.world, cfg.seed, state.step, procs.rank, procs.world)
    device = procs.device
    net = state.model
    if procs.ddp:
        ids = [device.index] if device.type == "cuda" else None
        net = torch.nn.parallel.DistributedDataParallel(net, device_ids=ids)
    forward = torch.compile(net) if cfg.compile else net
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if cfg.precision == "bf16" else nullcontext()

    fresh = procs.main and not run_dir.exists()  # made by this run: removed again if it fails before a checkpoint
    writer, log_rows = open_run_dir(cfg, run_dir, state.step) if procs.main else (None, [])
    bar = tqdm(total=cfg.steps, initial=state.step, desc="train", unit="step", disable=not procs.main,
               dynamic_ncols=True)
    t_last, seen, loss_sum, n_sum = time.perf_counter(), 0, 0.0, 0
    state.model.train()
    try:
        while state.step < cfg.steps:
            _, idx = next(data)
            x0 = training_batch(cfg, images, idx, device)
            y = None if labels is None else labels[idx].to(device)
            loss_value, grad_norm = train_step(cfg, state, forward, schedule, x0, autocast, y)
            step = state.step
            seen += x0.shape[0] * procs.world
            loss_sum, n_sum = loss_sum + loss_value, n_sum + 1
            if procs.main and (step % cfg.log_every == 0 or step == cfg.steps):
                now = time.perf_counter()
                state.elapsed += now - t_last
                ips = seen / (now - t_last)
                lr = state.scheduler.get_last_lr()[0]
                bar.set_postfix(loss=f"{loss_sum / n_sum:.4f}", img_s=f"{ips:.0f}", lr=f"{lr:.1e}")
                writer.add_scalar("train/loss", loss_sum / n_sum, step)
                writer.add_scalar("train/lr", lr, step)
                writer.add_scalar("train/grad_norm", float(grad_norm), step)
                writer.add_scalar("train/images_per_s", ips, step)
                log_rows.append(
                    {"step": step, "loss": loss_sum / n_sum, "lr": lr, "elapsed_s": round(state.elapsed, 3)}
                )
                write_log(run_dir, log_rows)
                t_last, seen, loss_sum, n_sum = time.perf_counter(), 0, 0.0, 0
            bar.update(1)
            if procs.main and cfg.sample_every and step % cfg.sample_every == 0:
                grid = sample_grid(cfg, state.ema, run_dir / "samples" / f"step-{step:08d}.png")
                writer.add_image("samples/ema_ddim", grid, step)
                t_last = time.perf_counter()  # sampling time is not training throughput
            if step % cfg.ckpt_every == 0 or step == cfg.steps:
                save_checkpoint(cfg, state, procs, run_dir)
    except ValueError:  # diverged, or a sample grid turned non-finite: one message, and no empty run folder
        bar.close()
        if writer is not None:
            writer.close()
        if fresh and not checkpoint_paths(run_dir):
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    bar.close()
    if procs.main:
        writer.close()
        out = export(cfg, state.ema, Path(cfg.export_dir or run_dir / "export"), state.step)
        print(f"done: step {state.step}; EMA model exported to {out}")
        print(f"sample it:  python -m diffusion.sample --model {out} --sampler ddim --steps 50 -n 16 --out samples.png")
    if procs.ddp:  # every rank waits for the main one's export, then all leave together (a rank that tore its
        dist.barrier()  # group down while rank 0 still exported was once aborted: "terminate called", exit -6)
        dist.destroy_process_group()
    return {"step": state.step, "model": state.model, "ema": state.ema}


def diverged(cfg: TrainConfig, loss: float, step: int) -> str:
    """What to say when the loss turns NaN or infinite: what to change, for this config."""
    advice = [f"lower lr (it is {cfg.lr:g}; 1e-4 to 2e-4 suit these models)"]
    if cfg.grad_clip == 0:
        advice.append("clip gradients (grad_clip=1)")
    if cfg.precision == "bf16":
        advice.append("use precision=fp32")
    said = advice[0] if len(advice) == 1 else f"{', '.join(advice[:-1])} or {advice[-1]}"
    return f"The loss became {loss} at step {step}: the run diverged; {said}."


def main(argv: list[str] | None = None) -> int:
    """Train (or ``--export`` only); every expected failure is an ``error:`` message on stderr (one line, or
    the list of a config's problems) and exit status 2, before any training step where it can be known then."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        print("Options (--key=value):", ", ".join(TrainConfig.__dataclass_fields__))
        return 0
    resume = next((a.split("=", 1)[1] for a in argv if a.startswith("--resume=")), None)
    export_only = "--export" in argv
    rest = [a for a in argv if not a.startswith("--resume=") and a != "--export"]
    config_file = rest.pop(0) if rest and not rest[0].startswith("--") else None
    try:
        cfg = resolve_config(config_file, rest)
        train(cfg, resume=resume, export_only=export_only)
    except (OSError, ValueError) as e:  # FileNotFoundError and PermissionError included
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
