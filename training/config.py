"""The training configuration: one dataclass, JSON config files, and ``--key=value`` overrides."""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from diffusion.classes import ClassInfo, check_guidance
from diffusion.samplers import get_sampler
from diffusion.schedule import ALIASES, BETA_SCHEDULES, PREDICTIONS
from diffusion.typed import Range, coerce
from diffusion.unet import UNetConfig

from .data import DATASETS, class_names

CONFIG_DIR = Path(__file__).parent / "configs"
POSITIVE, NON_NEGATIVE, FRACTION = Range(0, open_low=True), Range(0), Range(0, 1, open_high=True)
# The numeric fields' ranges (diffusion.typed.Range, the sampler options' check too); min_lr's depends on lr.
TRAIN_RANGES = {
    **dict.fromkeys(("lr", "steps", "batch_size", "image_size", "channels", "num_train_timesteps", "ckpt_every",
                     "log_every", "keep_checkpoints", "sample_steps", "min_snr_gamma"), POSITIVE),
    **dict.fromkeys(("warmup_steps", "weight_decay", "grad_clip", "sample_every"), NON_NEGATIVE),
    "ema_decay": FRACTION,
    "dropout": FRACTION,
    "cond_drop_prob": Range(0, 1, open_high=True, why="0.1 to 0.2 is usual"),
    "label_lr_scale": Range(0, open_low=True, why="1 to 20"),
}


@dataclass
class TrainConfig:
    # data
    dataset: str = "fashion-mnist"  # mnist | fashion-mnist | cifar10 | folder
    data_root: str = "data"  # torchvision's root, or the image folder for dataset=folder
    download: bool = False  # let torchvision download the dataset (needs the internet)
    image_size: int = 28
    channels: int = 1
    random_flip: bool = False  # horizontal flips (DDPM's CIFAR-10 setting)
    # classifier-free guidance (Ho and Salimans 2022): labels as inputs, replaced by the null label
    # (index = number of classes) with probability cond_drop_prob so one model is also the unconditional one
    class_conditional: bool = False
    cond_drop_prob: float = 0.1
    guidance_scale: float = 3.0  # the exported classes.json's recommended scale, and the sample grids'
    # the label table's learning rate as a multiple of lr: a new table started at zero beside trained weights
    # (--init_from an unconditional model) moves too slowly at lr to steer the model in a few thousand steps
    label_lr_scale: float = 1.0
    # model: UNetConfig fields; sample_size and channels come from the data settings
    unet: dict[str, Any] = field(default_factory=dict)
    dropout: float = 0.1
    # diffusion
    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    prediction_type: Literal["epsilon", "sample", "v_prediction"] = "epsilon"
    # uniform: Ho et al. 2020's unweighted MSE; min_snr: Hang et al. 2023, weights min(SNR_t, gamma) on the x0 error
    loss_weighting: Literal["uniform", "min_snr"] = "uniform"
    min_snr_gamma: float = 5.0
    clip_sample: bool = True  # the exported scheduler config's clip_sample (diffusers' DDPMScheduler default: true)
    # optimisation
    steps: int = 10_000
    batch_size: int = 128  # global: split over the processes of torchrun
    lr: float = 2e-4
    warmup_steps: int = 500
    # after warmup: constant (Ho et al. 2020) or a half cosine down to min_lr at the last step
    lr_schedule: Literal["constant", "cosine"] = "constant"
    min_lr: float = 0.0
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.9999
    ema_warmup: bool = True  # decay min(ema_decay, (1 + step) / (10 + step)), so early EMA is usable
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16 autocast on CUDA and CPU; no fp16 (NaNs)
    compile: bool = False
    channels_last: bool = False
    seed: int = 0
    init_from: str = ""  # an exported model folder (or Hub id): model and EMA start from its weights, fresh optimizer
    deterministic: bool = False  # torch.use_deterministic_algorithms (bit-identical resume on GPU)
    # outputs
    run_dir: str = "runs/fashion-mnist"
    log_every: int = 50
    sample_every: int = 1000  # DDIM sample grid into TensorBoard and run_dir/samples (0: never)
    sample_steps: int = 50
    ckpt_every: int = 500
    keep_checkpoints: int = 3
    export_dir: str = ""  # default: run_dir/export
    push_to_hub: str = ""  # Hub repo id to upload the exported EMA model to

    def unet_config(self) -> UNetConfig:
        labels = {"num_class_embeds": len(self.class_names()) + 1} if self.class_conditional else {}
        return UNetConfig(**{**self.unet, "sample_size": self.image_size, "in_channels": self.channels,
                             "out_channels": self.channels, "dropout": self.dropout, **labels})

    def class_names(self) -> tuple[str, ...]:
        """The dataset's classes (labels 0..k-1; the null label is k); empty for an unconditional run."""
        return class_names(self.dataset, self.data_root) if self.class_conditional else ()

    def class_info(self) -> ClassInfo | None:
        """What the exported model's classes.json says (:mod:`diffusion.classes`)."""
        names = self.class_names()
        return ClassInfo(names, len(names), self.guidance_scale) if names else None

    def scheduler_config(self) -> dict[str, Any]:
        """What the exported model's scheduler_config.json says (diffusers' DDPMScheduler keys)."""
        return {"_class_name": "DDPMScheduler", "num_train_timesteps": self.num_train_timesteps,
                "beta_schedule": ALIASES.get(self.beta_schedule, self.beta_schedule), "beta_start": self.beta_start,
                "beta_end": self.beta_end, "prediction_type": self.prediction_type, "variance_type": "fixed_small",
                "clip_sample": self.clip_sample, "timestep_spacing": "leading", "steps_offset": 0}

    def validate(self) -> None:
        """Every problem found before any work starts, each with what to change."""
        problems = []
        if self.dataset not in DATASETS:
            problems.append(f"dataset={self.dataset!r} is unknown; choose one of {', '.join(DATASETS)}")
        if ALIASES.get(self.beta_schedule, self.beta_schedule) not in BETA_SCHEDULES:
            problems.append(
                f"beta_schedule={self.beta_schedule!r} is unknown; choose one of {', '.join(BETA_SCHEDULES)}"
            )
        if self.prediction_type not in PREDICTIONS:
            problems.append(
                f"prediction_type={self.prediction_type!r} is unknown; choose one of {', '.join(PREDICTIONS)}"
            )
        if self.loss_weighting not in ("uniform", "min_snr"):
            problems.append(f"loss_weighting={self.loss_weighting!r} is unknown; choose uniform or min_snr")
        if self.precision not in ("fp32", "bf16"):
            problems.append(f"precision={self.precision!r}: use fp32 or bf16 (fp16 overflows in diffusion training)")
        for name, allowed in {**TRAIN_RANGES, "min_lr": Range(0, self.lr, why="at most lr")}.items():
            try:
                allowed.check(name, getattr(self, name))
            except ValueError as e:
                problems.append(str(e).rstrip("."))
        if self.class_conditional and self.cond_drop_prob == 0 and self.guidance_scale != 1:
            problems.append("cond_drop_prob=0 never trains the null label that guidance needs: set it to 0.1-0.2, "
                            "or guidance_scale=1")
        try:
            check_guidance(self.guidance_scale)
        except ValueError as e:
            problems.append(str(e).rstrip("."))
        if not 0 < self.beta_start < self.beta_end < 1:
            problems.append(f"need 0 < beta_start < beta_end < 1, got {self.beta_start}, {self.beta_end}")
        try:
            self.unet_config()
        except (TypeError, ValueError) as e:
            problems.append(f"the UNet cannot be built: {e}")
        # The sample grids' DDIM options, checked as every sampler's.
        if self.sample_steps > 0 and self.num_train_timesteps > 0:
            try:
                ddim = get_sampler("ddim")
                ddim.timesteps(self.num_train_timesteps, ddim.make_options(num_inference_steps=self.sample_steps))
            except ValueError as e:
                problems.append(f"sample_steps: {e}")
        if problems:
            raise ValueError("Invalid training config:\n  - " + "\n  - ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _parse_json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def resolve_config(config_file: str | None, overrides: list[str]) -> TrainConfig:
    """Defaults, then the JSON config file (a path or a name in training/configs), then ``--key=value``
    overrides (values parsed as JSON when they parse; ``--unet.layers_per_block=1`` sets a UNet field)."""
    values: dict[str, Any] = {}
    if config_file:
        path = Path(config_file)
        if not path.is_file():
            path = CONFIG_DIR / f"{config_file.removesuffix('.json')}.json"
        if not path.is_file():
            names = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.json")))
            raise FileNotFoundError(f"No config file {config_file!r}; give a path or one of: {names}.")
        try:
            values = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"The config file {path} is not valid JSON ({e}); fix it or give another.") from None
        if not isinstance(values, dict):
            raise ValueError(
                f"The config file {path} holds a JSON {type(values).__name__}; it should hold one object of "
                'settings, e.g. {"lr": 1e-4, "steps": 5000}.'
            )
    for item in overrides:
        if not item.startswith("--") or "=" not in item:
            raise ValueError(f"Cannot read {item!r}: overrides look like --key=value, e.g. --lr=1e-4.")
        key, text = item[2:].split("=", 1)
        key = key.replace("-", "_")
        if key.startswith("unet."):
            values.setdefault("unet", {})
            values["unet"] = {**values["unet"], key[5:]: _parse_json(text)}
        else:
            values[key] = text  # typed below, by the field's type hint
    names = {f.name: f for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ValueError(f"Unknown config keys {', '.join(unknown)}; valid keys: {', '.join(names)}.")
    hints = typing.get_type_hints(TrainConfig)
    wrong = []
    for key, value in values.items():  # "--lr=1e-4" -> 0.0001, "--download=yes" refused: diffusion.typed.coerce
        if typing.get_origin(hints[key]) is dict or hints[key] is dict:
            value = _parse_json(value) if isinstance(value, str) else value
            if not isinstance(value, dict):
                wrong.append(f"{key} must be a JSON object, got {value!r}")
            values[key] = value
            continue
        try:
            values[key] = coerce(key, hints[key], value)
        except ValueError as e:
            wrong.append(str(e).rstrip("."))
    if wrong:  # "--lr=abc" or "--download=yes": say so, rather than fail later comparing a str with 0
        raise ValueError("Invalid training config:\n  - " + "\n  - ".join(wrong))
    cfg = TrainConfig(**values)
    cfg.validate()
    return cfg
