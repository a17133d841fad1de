"""What a training step optimises (Ho et al. 2020, Algorithm 1): the diffusion loss with its per-sample weights
(min-SNR-gamma), classifier-free guidance's label dropping, and the schedules of the learning rate and the EMA."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from diffusion.schedule import NoiseSchedule

from .config import TrainConfig


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


def drop_labels(cfg: TrainConfig, labels: torch.Tensor | None) -> torch.Tensor | None:
    """Classifier-free guidance's training (Ho and Salimans 2022, Algorithm 1): each label replaced by the
    null label (the number of classes) with probability ``cond_drop_prob``."""
    if labels is None:
        return None
    drop = torch.rand(labels.shape, device=labels.device) < cfg.cond_drop_prob
    return torch.where(drop, torch.full_like(labels, len(cfg.class_names())), labels)


def diffusion_loss(
    forward: Any, schedule: NoiseSchedule, cfg: TrainConfig, x0: torch.Tensor, autocast: Any,
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """|| target - model(x_t, t[, label]) ||^2 (Ho et al. 2020, Algorithm 1; target eps, x0 or v), weighted per
    sample by :func:`loss_weights` when ``loss_weighting`` asks for it."""
    # (2) t ~ Uniform({1..T}), eps ~ N(0, I); (3) x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps
    t = torch.randint(0, cfg.num_train_timesteps, (x0.shape[0],), device=x0.device)
    noise = torch.randn_like(x0)
    x_t = schedule.q_sample(x0, t, noise)
    # (4) the regression loss, in fp32 whatever the autocast dtype
    with autocast:
        pred = forward(x_t, t) if labels is None else forward(x_t, t, labels)
    target = schedule.training_target(cfg.prediction_type, x0, t, noise)
    weights = loss_weights(schedule, cfg, t)
    if weights is None:
        return F.mse_loss(pred.float(), target)
    per_sample = (pred.float() - target).square().flatten(1).mean(1)
    return (weights * per_sample).mean()
