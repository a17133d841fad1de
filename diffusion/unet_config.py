"""The UNet's architecture as diffusers' ``UNet2DModel`` config describes it: one dataclass, checked when built."""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Any, Literal

DownBlockType = Literal["DownBlock2D", "AttnDownBlock2D"]
UpBlockType = Literal["UpBlock2D", "AttnUpBlock2D"]
DOWN_BLOCK_TYPES = ("DownBlock2D", "AttnDownBlock2D")
UP_BLOCK_TYPES = ("UpBlock2D", "AttnUpBlock2D")
ClassEmbedType = Literal["timestep", "identity"]
CLASS_EMBED_TYPES = ("timestep", "identity")


@dataclass
class UNetConfig:
    """The architecture; field names and defaults are those of diffusers' ``UNet2DModel`` config."""

    sample_size: int = 32
    in_channels: int = 3
    out_channels: int = 3
    block_out_channels: tuple[int, ...] = (224, 448, 672, 896)
    down_block_types: tuple[str, ...] = ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D")
    up_block_types: tuple[str, ...] = ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D")
    layers_per_block: int = 2
    attention_head_dim: int | None = 8  # None: one head as wide as the block ("google" configs)
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    flip_sin_to_cos: bool = True
    freq_shift: float = 0
    downsample_padding: int = 1
    mid_block_scale_factor: float = 1.0
    center_input_sample: bool = False
    dropout: float = 0.0
    act_fn: Literal["silu", "swish"] = "silu"
    # Values of UNet2DModel options this implementation supports only in their default form.
    time_embedding_type: Literal["positional"] = "positional"
    resnet_time_scale_shift: Literal["default"] = "default"
    add_attention: bool = True
    attn_norm_num_groups: int | None = None
    downsample_type: Literal["conv"] = "conv"
    upsample_type: Literal["conv"] = "conv"
    mid_block_type: Literal["UNetMidBlock2D"] = "UNetMidBlock2D"
    time_embedding_dim: int | None = None
    num_train_timesteps: int | None = None  # used by diffusers only for "learned" time embeddings
    # Class conditioning, as UNet2DModel: None with num_class_embeds: a label table added to the time
    # embedding; "timestep": labels embedded like t; "identity": the caller passes embedding vectors.
    class_embed_type: ClassEmbedType | None = None
    num_class_embeds: int | None = None

    def __post_init__(self) -> None:
        self.block_out_channels = tuple(int(c) for c in self.block_out_channels)
        self.down_block_types = tuple(self.down_block_types)
        self.up_block_types = tuple(self.up_block_types)
        if isinstance(self.sample_size, (list, tuple)):
            if len(set(self.sample_size)) != 1:
                raise ValueError(f"Only square images are supported, got sample_size={list(self.sample_size)}.")
            self.sample_size = int(self.sample_size[0])
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first option this UNet cannot build."""
        counts = {"sample_size": self.sample_size, "norm_num_groups": self.norm_num_groups,
                  "attention_head_dim": self.attention_head_dim, "attn_norm_num_groups": self.attn_norm_num_groups,
                  "num_class_embeds": self.num_class_embeds,
                  **{f"block_out_channels[{i}]": c for i, c in enumerate(self.block_out_channels)}}
        for key, value in counts.items():
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{key} must be a whole number of at least 1, got {value!r}.")
        if not self.block_out_channels:
            raise ValueError("block_out_channels is empty; give one width per level, e.g. [32, 64].")
        if not (isinstance(self.norm_eps, (int, float)) and 0 < self.norm_eps < 1):
            raise ValueError(f"norm_eps must be a small positive number such as 1e-5, got {self.norm_eps!r}.")
        levels = len(self.block_out_channels)
        for name, types, allowed in (
            ("down_block_types", self.down_block_types, DOWN_BLOCK_TYPES),
            ("up_block_types", self.up_block_types, UP_BLOCK_TYPES),
        ):
            if len(types) != levels:
                raise ValueError(
                    f"{name} has {len(types)} entries but block_out_channels has {levels}; give one per level."
                )
            for t in types:
                if t not in allowed:
                    raise ValueError(
                        f"Unsupported block type {t!r} in {name}; this UNet supports {', '.join(allowed)}."
                    )
        unsupported = {
            "time_embedding_type": (self.time_embedding_type, "positional"),
            "resnet_time_scale_shift": (self.resnet_time_scale_shift, "default"),
            "downsample_type": (self.downsample_type, "conv"),
            "upsample_type": (self.upsample_type, "conv"),
            "mid_block_type": (self.mid_block_type, "UNetMidBlock2D"),
            "add_attention": (self.add_attention, True),
        }
        for key, (value, supported) in unsupported.items():
            if value != supported:
                raise ValueError(f"Unsupported UNet option {key}={value!r}; only {supported!r} is implemented.")
        if self.class_embed_type is not None and self.class_embed_type not in CLASS_EMBED_TYPES:
            raise ValueError(
                f"Unsupported class_embed_type {self.class_embed_type!r}; use null (a label table of "
                f"num_class_embeds entries), 'timestep' or 'identity'."
            )
        if self.act_fn not in ("silu", "swish"):
            raise ValueError(f"Unsupported act_fn {self.act_fn!r}; only 'silu' is implemented.")
        if self.in_channels < 1 or self.out_channels < 1 or self.layers_per_block < 1:
            raise ValueError("in_channels, out_channels and layers_per_block must be positive.")
        for c in self.block_out_channels:
            if c % self.norm_num_groups:
                raise ValueError(
                    f"block_out_channels {list(self.block_out_channels)} must be multiples of "
                    f"norm_num_groups={self.norm_num_groups}."
                )
            if self.attention_head_dim is not None and c % self.attention_head_dim:
                raise ValueError(f"block width {c} is not a multiple of attention_head_dim={self.attention_head_dim}.")
        factor = 2 ** (levels - 1)
        if self.sample_size % factor:
            raise ValueError(
                f"sample_size {self.sample_size} is not divisible by {factor}, the downsampling of {levels} levels; "
                f"use a size that is a multiple of {factor} or fewer levels."
            )

    @property
    def time_embed_dim(self) -> int:
        return self.time_embedding_dim or 4 * self.block_out_channels[0]

    @property
    def class_conditional(self) -> bool:
        """Whether ``forward`` needs ``class_labels``."""
        return self.class_embed_type is not None or self.num_class_embeds is not None

    def to_dict(self) -> dict[str, Any]:
        """The config as diffusers writes it (``_class_name`` included), JSON-ready."""
        d = {"_class_name": "UNet2DModel", **dataclasses.asdict(self)}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> "UNetConfig":
        """Parse a diffusers ``config.json``: ``_``-keys are metadata, keys in ``_use_default_values``
        take the default, unknown keys are ignored with a warning."""
        use_default = set(config.get("_use_default_values", []))
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs, unknown = {}, []
        for key, value in config.items():
            if key.startswith("_") or key in use_default:
                continue
            if key in names:
                kwargs[key] = value
            else:
                unknown.append(key)
        if unknown:
            warnings.warn(f"Ignoring unknown UNet config keys: {', '.join(sorted(unknown))}", stacklevel=2)
        if kwargs.get("sample_size") is None:
            kwargs.pop("sample_size", None)
        return cls(**kwargs)
