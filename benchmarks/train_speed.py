"""Training throughput of our UNet against diffusers' UNet2DModel: same architecture, same initial
weights, same optimiser and the same training step as training/train.py (q_sample, MSE on the
target, backward, gradient clipping, AdamW, warmup LR, EMA).

    python -m benchmarks.train_speed                  # fashion-mnist config, batch 64, CPU fp32 + bf16 (+ CUDA)
    python -m benchmarks.train_speed --quick          # a rough number in about a minute
    python -m benchmarks.train_speed --config cifar10 --batch 128 --devices cuda --precisions bf16

Models are measured interleaved (ours, diffusers, ours, ...) after a warm-up, and the median of
the repeats is reported, so a slow patch of a shared machine hits both about equally. On a CPU,
images per CPU-second of this process are printed too: on a machine shared with other jobs, they
are the fairer number (wall-clock throughput then mostly measures the other jobs).
Without AVX512-BF16 or AMX, bf16 autocast on a CPU is much slower than fp32: that is the CPU.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from contextlib import nullcontext

import torch

from diffusion.schedule import NoiseSchedule
from diffusion.unet import UNet
from training.config import resolve_config
from training.objective import diffusion_loss, ema_decay, lr_factor


def make_step(net, forward, cfg, device, precision):
    """One training step of train.py for ``net``; ``forward(x_t, t)`` returns the prediction."""
    params = list(net.parameters())
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    ema_params = list(ema.parameters())
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(cfg, s))
    schedule = NoiseSchedule.from_config(cfg.beta_schedule, cfg.num_train_timesteps, cfg.beta_start, cfg.beta_end)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()
    n = [0]

    def step(x0: torch.Tensor) -> float:
        loss = diffusion_loss(forward, schedule, cfg, x0, autocast)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        optimizer.step()
        scheduler.step()
        n[0] += 1
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, params, 1.0 - ema_decay(cfg, n[0]))
        return loss.item()  # a host sync, as train.py's logging does every step

    return step


def build(cfg, device):
    """Our UNet and diffusers' UNet2DModel from the same config, holding the same weights."""
    from diffusers import UNet2DModel

    torch.manual_seed(cfg.seed)
    ours = UNet(cfg.unet_config())
    theirs = UNet2DModel.from_config(ours.config.to_dict())
    theirs.load_state_dict(ours.state_dict())
    return ours.to(device).train(), theirs.to(device).train()


def images_per_s(step, x0: torch.Tensor, steps: int, device: torch.device) -> tuple[float, float]:
    """Images per second of wall time, and per second of this process's CPU time (robust to other
    processes taking the cores; meaningful for CPU runs only)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step(x0)
    if device.type == "cuda":
        torch.cuda.synchronize()
    n = steps * x0.shape[0]
    return n / (time.perf_counter() - wall), n / (time.process_time() - cpu)


def bench(
    cfg, device: torch.device, precision: str, batch: int, warmup: int, steps: int, repeats: int
) -> dict[str, tuple[float, float]]:
    ours, theirs = build(cfg, device)
    runs = {"ours": make_step(ours, ours, cfg, device, precision),
            "diffusers": make_step(theirs, lambda x, t: theirs(x, t).sample, cfg, device, precision)}
    x0 = torch.rand(batch, cfg.channels, cfg.image_size, cfg.image_size, device=device) * 2 - 1
    for step in runs.values():
        for _ in range(warmup):
            step(x0)
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
    for r in range(repeats):  # interleaved, alternating who goes first
        for name in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
            results[name].append(images_per_s(runs[name], x0, steps, device))
    return {
        name: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for name, v in results.items()
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", default="fashion-mnist", help="a training config (name in training/configs or path)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--devices", nargs="+", default=None, help="cpu and/or cuda (default: cpu, and cuda if available)")
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per model")
    p.add_argument("--steps", type=int, default=10, help="timed steps per repeat")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--quick", action="store_true", help="warmup 1, steps 2, repeats 3; bf16 on CPU: steps 1, repeats 2")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = resolve_config(args.config, [])
    devices = args.devices or ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

    print(
        f"config {args.config}: {cfg.channels}x{cfg.image_size}x{cfg.image_size}, "
        f"UNet {cfg.unet.get('block_out_channels')}, "
        f"batch {args.batch}; torch {torch.__version__}, {torch.get_num_threads()} CPU threads",
        flush=True,
    )
    print(f"{'device':<8}{'precision':<11}{'ours img/s':>12}{'diffusers img/s':>17}{'ours/diffusers':>16}"
          f"{'ours img/CPU-s':>16}{'diffusers img/CPU-s':>21}{'ours/diffusers':>16}")
    for name in devices:
        device = torch.device(name)
        for precision in args.precisions:
            warmup, steps, repeats = args.warmup, args.steps, args.repeats
            if args.quick:
                slow = device.type == "cpu" and precision == "bf16"
                warmup, steps, repeats = (1, 1, 2) if slow else (1, 2, 3)
            r = bench(cfg, device, precision, args.batch, warmup, steps, repeats)
            (ours, ours_cpu), (theirs, theirs_cpu) = r["ours"], r["diffusers"]
            line = f"{name:<8}{precision:<11}{ours:>12.1f}{theirs:>17.1f}{ours / theirs:>16.3f}"
            if device.type == "cpu":
                line += f"{ours_cpu:>16.1f}{theirs_cpu:>21.1f}{ours_cpu / theirs_cpu:>16.3f}"
            print(line, flush=True)


if __name__ == "__main__":
    main()
