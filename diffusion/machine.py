"""What the machine gives a sampling run: its CPU cores, its device, and what one UNet evaluation costs."""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from .typed import env_number
from .unet import UNet, UNetConfig


def cpu_cores() -> int:
    """Cores to use: ``CPU_CORES`` if set (1 to the cores available), else the cores available: those
    this process may run on, capped by a cgroup CPU quota (containers report the host's cores;
    oversubscribing them is many times slower). ValueError names the accepted range."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.floor(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    n = max(1, n)
    return env_number("CPU_CORES", int, n, 1, n, " (the cores this process may use)")


def configure_threads() -> int:
    """Set torch's thread count from :func:`cpu_cores`; returns it."""
    n = cpu_cores()
    torch.set_num_threads(n)
    return n


def default_device() -> str:
    """``cuda`` where a GPU is available, else ``cpu``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def unet_flops(config: UNetConfig, batch: int = 1) -> tuple[float, dict[str, float]]:
    """FLOPs of one UNet evaluation of ``batch`` images, counted on the meta device (shapes only: no
    memory, no compute), and the count per operator (``torch.utils.flop_counter``)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        unet = UNet(config)
        x = torch.empty(batch, config.in_channels, config.sample_size, config.sample_size)
        labels = None  # a class-conditional UNet needs labels: one per image, of the kind its config embeds
        if config.class_conditional:
            width = config.time_embed_dim if config.class_embed_type == "identity" else None
            labels = torch.zeros(batch, width) if width else torch.zeros(batch, dtype=torch.long)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            unet(x, torch.tensor(500), labels)
    per_op = {str(op): float(n) for op, n in counter.get_flop_counts()["Global"].items()}
    return float(counter.get_total_flops()), per_op


def flops_per_pixel(config: UNetConfig) -> float:
    """FLOPs of one model evaluation per output pixel (per image)."""
    return unet_flops(config)[0] / config.sample_size**2
