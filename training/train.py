"""Train a DDPM (Ho et al. 2020, Algorithm 1) on one CPU or GPU, or many through torchrun.

    python -m training.train fashion-mnist --steps=2000 --lr=1e-4     (or diffusion-train, after pip install -e .)
    torchrun --nproc_per_node=8 -m training.train cifar10

Checkpoints (model, EMA, optimizer, step, RNG states, config) go to RUN_DIR/checkpoints every
``ckpt_every`` steps, written atomically; a restarted run resumes from the newest valid one.
At the end the EMA model is exported with ``save_pretrained`` (``--export`` does only that).
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import shutil
import sys
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

import diffusion
from diffusion.files import CheckpointError, atomic_write, check_writable, temp_files
from diffusion.images import save_grid
from diffusion.pipeline import DiffusionPipeline
from diffusion.schedule import NoiseSchedule
from diffusion.unet import UNet
from training.config import TrainConfig, resolve_config
from training.data import batches, load_images

# ----------------------------------------------------------------------------- checkpoints

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


# ----------------------------------------------------------------------------- export

def export(cfg: TrainConfig, ema: UNet, out_dir: Path, step: int) -> Path:
    """Write the EMA model in diffusers' layout, with the resolved training config beside it."""
    pipe = DiffusionPipeline(copy.deepcopy(ema).float().cpu().eval(), cfg.scheduler_config(), str(out_dir))
    extra = {"training_config.json": json.dumps({**cfg.to_dict(), "trained_steps": step}, indent=2) + "\n"}
    pipe.save_pretrained(out_dir, extra)
    if cfg.push_to_hub:
        url = pipe.push_to_hub(cfg.push_to_hub, extra_files=extra)
        print(f"pushed to {url}")
    return out_dir


# ----------------------------------------------------------------------------- training

def lr_factor(cfg: TrainConfig, step: int) -> float:
    """The learning rate of optimiser step ``step`` (from 0) as a fraction of ``cfg.lr``: a linear warmup over
    ``warmup_steps``, then constant (``lr_schedule=constant``, Ho et al. 2020) or a half cosine from ``lr`` down to
    ``min_lr`` at step ``steps`` (``cosine``; Loshchilov & Hutter 2017, SGDR, without restarts)."""
    if step < cfg.warmup_steps:
        return (step + 1) / (cfg.warmup_steps + 1)
    if cfg.lr_schedule == "constant":
        return 1.0
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    floor = cfg.min_lr / cfg.lr
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def ema_decay(cfg: TrainConfig, step: int) -> float:
    """The EMA's decay after ``step`` updates: ``ema_decay``, or with ``ema_warmup`` min(ema_decay,
    (1 + step) / (10 + step)), so that an early EMA is not mostly the initial weights."""
    return min(cfg.ema_decay, (1 + step) / (10 + step)) if cfg.ema_warmup else cfg.ema_decay


def loss_weights(schedule: NoiseSchedule, cfg: TrainConfig, t: torch.Tensor) -> torch.Tensor | None:
    """Per-sample loss weights, or None for the unweighted loss (``loss_weighting=uniform``).

    Min-SNR-gamma (Hang et al. 2023, Sec. 3.4): with SNR_t = abar_t / (1 - abar_t), the x0 error is weighted
    by min(SNR_t, gamma); in terms of each prediction's own error that is
    epsilon: min(SNR, gamma) / SNR,  x0 (``sample``): min(SNR, gamma),  v: min(SNR, gamma) / (SNR + 1).
    """
    if cfg.loss_weighting == "uniform":
        return None
    abar = schedule.alphas_cumprod.to(t.device)[t]
    snr = abar / (1 - abar)
    clipped = snr.clamp(max=cfg.min_snr_gamma)
    per_prediction = {"epsilon": clipped / snr, "sample": clipped, "v_prediction": clipped / (snr + 1)}
    return per_prediction[cfg.prediction_type].float()


def diffusion_loss(
    forward: Any, schedule: NoiseSchedule, cfg: TrainConfig, x0: torch.Tensor, autocast: Any
) -> torch.Tensor:
    """|| target - model(x_t, t) ||^2 (Ho et al. 2020, Algorithm 1; target eps, x0 or v), weighted per sample
    by :func:`loss_weights` when ``loss_weighting`` asks for it."""
    # (2) t ~ Uniform({1..T}), eps ~ N(0, I); (3) x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps
    t = torch.randint(0, cfg.num_train_timesteps, (x0.shape[0],), device=x0.device)
    noise = torch.randn_like(x0)
    x_t = schedule.q_sample(x0, t, noise)
    # (4) the regression loss, in fp32 whatever the autocast dtype
    with autocast:
        pred = forward(x_t, t)
    target = schedule.training_target(cfg.prediction_type, x0, t, noise)
    weights = loss_weights(schedule, cfg, t)
    if weights is None:
        return F.mse_loss(pred.float(), target)
    per_sample = (pred.float() - target).square().flatten(1).mean(1)
    return (weights * per_sample).mean()


def load_init_weights(source: str, model: UNet) -> None:
    """Copy an exported model's weights into ``model`` (``--init_from``); the architecture must match."""
    try:
        pipe = diffusion.load(source)
    except CheckpointError as e:
        raise ValueError(f"init_from={source!r}: {e}") from None
    theirs, ours = pipe.unet.config.to_dict(), model.config.to_dict()
    differ = [k for k in ours if k != "dropout" and theirs.get(k) != ours[k]]
    if differ:
        what = "; ".join(f"{k}: {theirs.get(k)!r} there, {ours[k]!r} here" for k in differ)
        raise ValueError(
            f"init_from={source!r} is another architecture than this config describes ({what}). "
            "Set the config's unet, image_size and channels to the model's (its training_config.json has them)."
        )
    model.load_state_dict(pipe.unet.state_dict())


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


def train(cfg: TrainConfig, resume: str | None = None, export_only: bool = False) -> dict[str, Any]:
    # -- processes: torchrun sets RANK / WORLD_SIZE / LOCAL_RANK
    ddp = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if ddp:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device(f"cuda:{local}") if torch.cuda.is_available() else torch.device("cpu")
        if device.type == "cuda":
            torch.cuda.set_device(device)
    else:
        rank, world = 0, 1
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    main = rank == 0
    if cfg.batch_size % world:
        raise ValueError(f"batch_size={cfg.batch_size} is not divisible by the {world} processes.")
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank, so the EMA copies agree
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    run_dir = Path(cfg.run_dir)
    check_output_dirs(cfg, export_only)

    # -- model, EMA, optimiser, warmup
    model = UNet(cfg.unet_config())
    if cfg.init_from:  # weights from an exported model; a checkpoint found below (a resume) overrides them
        load_init_weights(cfg.init_from, model)
    model = model.to(device)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    if rank:
        torch.manual_seed(cfg.seed + rank)  # each rank draws its own timesteps and noise
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(cfg, s))
    schedule = NoiseSchedule.from_config(cfg.beta_schedule, cfg.num_train_timesteps, cfg.beta_start, cfg.beta_end)

    # -- resume: --resume PATH, else the newest valid checkpoint in the run folder
    step = 0
    if resume:
        try:
            found = (Path(resume), read_checkpoint(Path(resume)))
        except Exception as e:  # noqa: BLE001 - any failure to read is reported the same way
            raise ValueError(f"Cannot resume from {resume}: {e}") from None
    else:
        found = newest_valid_checkpoint(run_dir)
    if found:
        path, state = found
        try:
            model.load_state_dict(state["model"])
            ema.load_state_dict(state["ema"])
            optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError) as e:
            raise ValueError(
                f"{path} was written for another model than this config describes; "
                f"resume with its own config (saved in the checkpoint) or use a new run_dir. ({str(e).splitlines()[0]})"
            ) from None
        scheduler.load_state_dict(state["scheduler"])
        step = int(state["step"])
        rngs = state["rng"] if isinstance(state["rng"], list) else [state["rng"]]
        if rank < len(rngs):
            set_rng_state(rngs[rank])
        else:  # resumed with more processes than saved the checkpoint: a distinct stream per rank
            torch.manual_seed(cfg.seed + rank + 1_000_003 * step)
        if main:
            print(f"resumed from {path} at step {step}")
    if export_only:
        if main:
            out = export(cfg, ema, Path(cfg.export_dir or run_dir / "export"), step)
            print(f"exported the EMA model at step {step} to {out}")
        return {"step": step}

    # -- data: all images in memory as uint8, a seeded shuffle per epoch
    images = load_images(cfg.dataset, cfg.data_root, "train", cfg.image_size, cfg.channels, cfg.download)
    if images.shape[1:] != (cfg.channels, cfg.image_size, cfg.image_size):
        raise ValueError(f"The dataset's images are {tuple(images.shape[1:])}, the config says "
                         f"({cfg.channels}, {cfg.image_size}, {cfg.image_size}); set channels and image_size to match.")
    per_rank = cfg.batch_size // world
    data = batches(len(images), per_rank, cfg.seed, step, rank, world)

    net = (
        torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        if ddp
        else model
    )
    forward = torch.compile(net) if cfg.compile else net
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if cfg.precision == "bf16" else nullcontext()
    ema_params, params = list(ema.parameters()), list(model.parameters())

    writer = None
    fresh = main and not run_dir.exists()  # made by this run: removed again if the run fails before a checkpoint
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        for stale in [*temp_files(run_dir), *temp_files(run_dir / "checkpoints")]:  # a run killed mid-write
            stale.unlink(missing_ok=True)
        atomic_write(run_dir / "config.json", lambda p: p.write_text(json.dumps(cfg.to_dict(), indent=2) + "\n"))
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run_dir / "tb"), purge_step=step or None)
        log_rows = _read_log(run_dir, step)
    bar = tqdm(total=cfg.steps, initial=step, desc="train", unit="step", disable=not main, dynamic_ncols=True)
    t_last, seen, loss_sum, n_sum = time.perf_counter(), 0, 0.0, 0
    elapsed = float(found[1].get("elapsed", 0.0)) if found else 0.0
    model.train()
    try:
        while step < cfg.steps:
            _, idx = next(data)
            # (1) x0 ~ q(x0), scaled to [-1, 1]; random flips as in DDPM's CIFAR-10 runs
            x0 = images[idx].to(device, non_blocking=True).float().div_(127.5).sub_(1.0)
            if cfg.random_flip:
                flip = torch.rand(x0.shape[0], device=device) < 0.5
                x0 = torch.where(flip[:, None, None, None], x0.flip(3), x0)
            if cfg.channels_last:
                x0 = x0.contiguous(memory_format=torch.channels_last)
            # (2)-(4) the DDPM loss on this batch, then a gradient step
            loss = diffusion_loss(forward, schedule, cfg, x0, autocast)
            loss_value = loss.item()
            if not math.isfinite(loss_value):  # before the step: the weights stay as they were
                raise ValueError(diverged(cfg, loss_value, step + 1))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(
                model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
            )
            optimizer.step()
            scheduler.step()
            step += 1
            # (5) EMA of the weights; identical on every rank, as the weights are
            with torch.no_grad():
                torch._foreach_lerp_(ema_params, params, 1.0 - ema_decay(cfg, step))

            seen += x0.shape[0] * world
            loss_sum, n_sum = loss_sum + loss_value, n_sum + 1
            if main and (step % cfg.log_every == 0 or step == cfg.steps):
                now = time.perf_counter()
                elapsed += now - t_last
                ips = seen / (now - t_last)
                lr = scheduler.get_last_lr()[0]
                bar.set_postfix(loss=f"{loss_sum / n_sum:.4f}", img_s=f"{ips:.0f}", lr=f"{lr:.1e}")
                writer.add_scalar("train/loss", loss_sum / n_sum, step)
                writer.add_scalar("train/lr", lr, step)
                writer.add_scalar("train/grad_norm", float(grad_norm), step)
                writer.add_scalar("train/images_per_s", ips, step)
                log_rows.append({"step": step, "loss": loss_sum / n_sum, "lr": lr, "elapsed_s": round(elapsed, 1)})
                _write_log(run_dir, log_rows)
                t_last, seen, loss_sum, n_sum = time.perf_counter(), 0, 0.0, 0
            bar.update(1)
            if main and cfg.sample_every and step % cfg.sample_every == 0:
                grid = _sample_grid(cfg, ema, run_dir / "samples" / f"step-{step:08d}.png")
                writer.add_image("samples/ema_ddim", grid, step)
                t_last = time.perf_counter()  # sampling time is not training throughput
            if step % cfg.ckpt_every == 0 or step == cfg.steps:
                rngs = rng_state()
                if ddp:
                    gathered: list[Any] = [None] * world
                    dist.all_gather_object(gathered, rngs)
                    rngs = gathered
                if main:
                    state = {"model": model.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
                             "scheduler": scheduler.state_dict(), "step": step, "rng": rngs if ddp else [rngs],
                             "config": cfg.to_dict(), "elapsed": elapsed}
                    write_checkpoint(run_dir, state, cfg.keep_checkpoints)
                if ddp:
                    dist.barrier()
    except ValueError:  # diverged, or a sample grid turned non-finite: one message, and no empty run folder
        bar.close()
        if writer is not None:
            writer.close()
        if fresh and not checkpoint_paths(run_dir):
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    bar.close()
    if main:
        writer.close()
        out = export(cfg, ema, Path(cfg.export_dir or run_dir / "export"), step)
        print(f"done: step {step}; EMA model exported to {out}")
        print(f"sample it:  python -m diffusion.sample --model {out} --sampler ddim --steps 50 -n 16 --out samples.png")
    if ddp:
        dist.destroy_process_group()
    return {"step": step, "model": model, "ema": ema}


def diverged(cfg: TrainConfig, loss: float, step: int) -> str:
    """What to say when the loss turns NaN or infinite: what to change, for this config."""
    advice = [f"lower lr (it is {cfg.lr:g}; 1e-4 to 2e-4 suit these models)"]
    if cfg.grad_clip == 0:
        advice.append("clip gradients (grad_clip=1)")
    if cfg.precision == "bf16":
        advice.append("use precision=fp32")
    said = advice[0] if len(advice) == 1 else f"{', '.join(advice[:-1])} or {advice[-1]}"
    return f"The loss became {loss} at step {step}: the run diverged; {said}."


def _sample_grid(cfg: TrainConfig, ema: UNet, path: Path) -> torch.Tensor:
    pipe = DiffusionPipeline(ema, cfg.scheduler_config())
    was_training = ema.training
    images = pipe.sample("ddim", n=16, seed=0, num_inference_steps=cfg.sample_steps)
    ema.train(was_training)
    return save_grid(images, path, nrow=4)


def _read_log(run_dir: Path, upto: int) -> list[dict[str, Any]]:
    path = run_dir / "log.csv"
    if not path.is_file():
        return []
    with path.open() as f:
        return [r for r in csv.DictReader(f) if int(r["step"]) <= upto]


def _write_log(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    def write(p: Path) -> None:
        with p.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["step", "loss", "lr", "elapsed_s"])
            w.writeheader()
            w.writerows(rows)
    atomic_write(run_dir / "log.csv", write)


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
