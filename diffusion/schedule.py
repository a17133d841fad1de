"""Noise schedules and the closed forms of the DDPM forward process (Ho et al. 2020, Sec. 2).

Betas and everything derived from them are computed in float64, then cast to float32, so the
coefficients are as exact as a float32 model can use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch

BetaSchedule = Literal["linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid"]
Prediction = Literal["epsilon", "sample", "v_prediction"]
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid")
PREDICTIONS = ("epsilon", "sample", "v_prediction")
# Friendly names accepted everywhere a schedule is named.
ALIASES = {"quadratic": "scaled_linear", "cosine": "squaredcos_cap_v2"}


def make_betas(
    schedule: str, num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02
) -> torch.Tensor:
    """beta_1..beta_T in float64. ``linear``: DDPM (Ho et al. 2020, Sec. 4); ``scaled_linear`` (alias
    ``quadratic``): linear in sqrt(beta); ``squaredcos_cap_v2`` (alias ``cosine``): Nichol & Dhariwal
    2021, eq. 17 with betas capped at 0.999; ``sigmoid``: GeoDiff (Xu et al. 2022)."""
    schedule = ALIASES.get(schedule, schedule)
    T = num_train_timesteps
    if T < 1:
        raise ValueError(f"num_train_timesteps must be positive, got {T}.")
    if schedule == "linear":
        return torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
    if schedule == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float64) ** 2
    if schedule == "squaredcos_cap_v2":
        def abar(s: float) -> float:  # (17) f(t) = cos^2((t/T + s) / (1 + s) * pi / 2), s = 0.008
            return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
        return torch.tensor([min(1 - abar((i + 1) / T) / abar(i / T), 0.999) for i in range(T)], dtype=torch.float64)
    if schedule == "sigmoid":
        return torch.sigmoid(torch.linspace(-6, 6, T, dtype=torch.float64)) * (beta_end - beta_start) + beta_start
    raise ValueError(
        f"Unknown beta schedule {schedule!r}; choose one of {', '.join(BETA_SCHEDULES)} (or 'quadratic', 'cosine')."
    )


@dataclass
class NoiseSchedule:
    """alpha-bar and friends for t = 0..T-1 (the paper's t = 1..T, shifted as in code)."""

    betas: torch.Tensor  # float64, (T,)
    # The config's name for them (diffusers' ``beta_schedule``, even beside ``trained_betas``): DPM-Solver++
    # rounds Karras timesteps to integers for every schedule but "squaredcos_cap_v2", as diffusers does.
    beta_schedule: str = "linear"
    # The betas as diffusers' schedulers hold them (float32, from torch.linspace in float32 where the schedule is
    # linear): the Karras, exponential and beta sigma options place timesteps by diffusers' float32 sigmas, so
    # the timesteps DPM-Solver++ rounds land on the same integers. None: the betas cast to float32.
    betas_float32: torch.Tensor | None = None

    @classmethod
    def from_config(cls, beta_schedule: str = "linear", num_train_timesteps: int = 1000, beta_start: float = 1e-4,
                    beta_end: float = 0.02, trained_betas: list[float] | None = None) -> "NoiseSchedule":
        name = ALIASES.get(beta_schedule, beta_schedule)
        if trained_betas is not None:
            return cls(
                torch.tensor(trained_betas, dtype=torch.float64), name, torch.tensor(trained_betas, dtype=torch.float32)
            )
        betas = make_betas(beta_schedule, num_train_timesteps, beta_start, beta_end)
        f32 = {
            "linear": lambda: torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32),
            "scaled_linear": lambda: (
                torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32) ** 2
            ),
        }
        return cls(betas, name, f32[name]() if name in f32 else None)

    def __post_init__(self) -> None:
        self.betas = self.betas.to(torch.float64)
        if self.betas.ndim != 1 or not ((self.betas > 0) & (self.betas < 1)).all():
            raise ValueError("betas must be a 1-D sequence of values in (0, 1).")
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, dim=0)  # abar_t = prod_{s<=t} (1 - beta_s)
        if self.betas_float32 is None:
            self.betas_float32 = self.betas.to(torch.float32)

    @property
    def num_train_timesteps(self) -> int:
        return self.betas.shape[0]

    def abar(self, t: int | torch.Tensor, final: float = 1.0) -> torch.Tensor:
        """abar_t in float64; ``final`` for t < 0 (1.0: the clean data, DDIM's ``set_alpha_to_one``)."""
        t = torch.as_tensor(t)
        return torch.where(t >= 0, self.alphas_cumprod[t.clamp(min=0)], torch.tensor(final, dtype=torch.float64))

    def final_abar(self, set_alpha_to_one: bool) -> float:
        """The alpha-bar a DDIM / PNDM step to t = -1 ends at: 1.0 (the clean data) with ``set_alpha_to_one``,
        else abar_0 (diffusers' ``final_alpha_cumprod``)."""
        return 1.0 if set_alpha_to_one else self.alphas_cumprod[0].item()

    def log_snr(self) -> torch.Tensor:
        """lambda_t = log(abar_t / (1 - abar_t)) (Kingma et al. 2021)."""
        return torch.log(self.alphas_cumprod) - torch.log1p(-self.alphas_cumprod)

    def _at(self, values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return values.to(like.device)[t.to(like.device)].to(like.dtype).view(-1, *([1] * (like.ndim - 1)))

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps (Ho et al. 2020, eq. 4)."""
        a = self.alphas_cumprod
        return self._at(a.sqrt(), t, x0) * x0 + self._at((1 - a).sqrt(), t, x0) * noise

    def velocity(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0 (Salimans & Ho 2022, Sec. 4)."""
        a = self.alphas_cumprod
        return self._at(a.sqrt(), t, x0) * noise - self._at((1 - a).sqrt(), t, x0) * x0

    def training_target(
        self, prediction: Prediction, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor
    ) -> torch.Tensor:
        """What the network learns to output for each prediction type."""
        if prediction == "epsilon":
            return noise
        if prediction == "sample":
            return x0
        if prediction == "v_prediction":
            return self.velocity(x0, t, noise)
        raise ValueError(f"Unknown prediction type {prediction!r}; choose one of {', '.join(PREDICTIONS)}.")


def to_x0_eps(
    prediction: Prediction, model_output: torch.Tensor, x_t: torch.Tensor, abar_t: torch.Tensor | float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Convert a model output of any prediction type into (x0, epsilon) at noise level abar_t.

    epsilon: x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar)   (Ho et al. 2020, eq. 15)
    sample:  eps = (x_t - sqrt(abar) x0) / sqrt(1 - abar)
    v:       x0 = sqrt(abar) x_t - sqrt(1 - abar) v,  eps = sqrt(abar) v + sqrt(1 - abar) x_t  (Salimans & Ho 2022)
    """
    abar_t = torch.as_tensor(abar_t, dtype=torch.float64)
    sa, s1a = abar_t.sqrt().item(), (1 - abar_t).sqrt().item()
    if prediction == "epsilon":
        return (x_t - s1a * model_output) / sa, model_output
    if prediction == "sample":
        return model_output, (x_t - sa * model_output) / s1a
    if prediction == "v_prediction":
        return sa * x_t - s1a * model_output, sa * model_output + s1a * x_t
    raise ValueError(f"Unknown prediction type {prediction!r}; choose one of {', '.join(PREDICTIONS)}.")


# diffusers' DDPMScheduler defaults: what a scheduler config means when it leaves a key out.
SCHEDULER_DEFAULTS: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "trained_betas": None,
    "variance_type": "fixed_small",
    "clip_sample": True,
    "clip_sample_range": 1.0,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
    "steps_offset": 0,
}
# Variance types diffusers computes in log space: the same distribution as their plain forms.
_VARIANCE_ALIASES = {"fixed_small_log": "fixed_small", "fixed_large_log": "fixed_large"}


def parse_scheduler_config(config: dict[str, Any]) -> dict[str, Any]:
    """Fill in diffusers' defaults and reject what the samplers cannot honour, with the reason."""
    cfg = {**SCHEDULER_DEFAULTS, **{k: v for k, v in config.items() if not k.startswith("_")}}
    for k in config.get("_use_default_values", []):
        if k in SCHEDULER_DEFAULTS:
            cfg[k] = SCHEDULER_DEFAULTS[k]
    cfg["variance_type"] = _VARIANCE_ALIASES.get(cfg["variance_type"], cfg["variance_type"])
    if cfg["variance_type"] in ("learned", "learned_range"):
        raise ValueError(
            "This model predicts its own variance (variance_type='learned*'), which these samplers do not support."
        )
    if cfg.get("thresholding"):
        raise ValueError("Dynamic thresholding (thresholding=true in the scheduler config) is not supported.")
    if cfg.get("rescale_betas_zero_snr"):
        raise ValueError("rescale_betas_zero_snr=true in the scheduler config is not supported.")
    return cfg
