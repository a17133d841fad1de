"""The DDPM UNet of Ho et al. 2020 ("Denoising Diffusion Probabilistic Models", Appendix B).

The network in one readable file; its config (:class:`UNetConfig`) in ``unet_config.py``, the CPU speed path
(a drop-in ``Conv2d`` and ``group_norm``) in ``cpu_kernels.py``. Module names, state-dict keys and forward
semantics are those of diffusers' ``UNet2DModel`` for the block types ``DownBlock2D``, ``AttnDownBlock2D``,
``UpBlock2D``, ``AttnUpBlock2D`` and ``UNetMidBlock2D``, class labels included, so the weights of
``google/ddpm-*`` and of models trained with diffusers load without renaming (old attention names are mapped by
:func:`convert_state_dict`).
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from .cpu_kernels import Conv2d, frozen_weights, group_norm
from .unet_config import UNetConfig

__all__ = ["UNet", "UNetConfig", "build_unet", "convert_state_dict", "load_state_dict_strict", "timestep_embedding"]


def timestep_embedding(t: torch.Tensor, dim: int, flip_sin_to_cos: bool, freq_shift: float) -> torch.Tensor:
    """Sinusoidal embedding of Vaswani et al. 2017 (Sec. 3.5), as DDPM uses for t."""
    half = dim // 2
    exponent = -math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device) / (half - freq_shift)
    emb = t[:, None].float() * torch.exp(exponent)[None, :]
    emb = torch.cat([emb.cos(), emb.sin()] if flip_sin_to_cos else [emb.sin(), emb.cos()], dim=-1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


class TimestepEmbedding(nn.Module):
    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class ResnetBlock(nn.Module):
    """Wide-ResNet block with the time embedding added after the first conv (DDPM, App. B)."""

    def __init__(self, cin: int, cout: int, temb: int, groups: int, eps: float, dropout: float, scale: float = 1.0):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin, eps=eps)
        self.conv1 = Conv2d(cin, cout, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb, cout)
        self.norm2 = nn.GroupNorm(groups, cout, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = Conv2d(cout, cout, 3, padding=1)
        self.conv_shortcut = Conv2d(cin, cout, 1) if cin != cout else None
        self.output_scale_factor = scale

    def forward(self, x: torch.Tensor, temb_act: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(group_norm(self.norm1, x)))
        h = h + self.time_emb_proj(temb_act)[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(group_norm(self.norm2, h))))
        skip = x if self.conv_shortcut is None else self.conv_shortcut(x)
        out = skip + h
        return out if self.output_scale_factor == 1.0 else out / self.output_scale_factor


class AttentionBlock(nn.Module):
    """Self-attention over the pixels with a residual connection (DDPM at 16x16; Vaswani et al. 2017)."""

    def __init__(self, channels: int, head_dim: int | None, groups: int, eps: float, scale: float = 1.0):
        super().__init__()
        self.heads = channels // (head_dim or channels)
        self.group_norm = nn.GroupNorm(groups, channels, eps=eps)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])
        self.rescale_output_factor = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, hgt, wid = x.shape
        h = group_norm(self.group_norm, x).flatten(2).transpose(1, 2)  # (B, HW, C)
        q, k, v = (
            proj(h).view(b, -1, self.heads, c // self.heads).transpose(1, 2)
            for proj in (self.to_q, self.to_k, self.to_v)
        )
        h = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(d)) v
        h = self.to_out[0](h.transpose(1, 2).reshape(b, -1, c))
        out = h.transpose(1, 2).reshape(b, c, hgt, wid) + x
        return out if self.rescale_output_factor == 1.0 else out / self.rescale_output_factor


class Downsample(nn.Module):
    def __init__(self, channels: int, padding: int):
        super().__init__()
        self.padding = padding
        self.conv = Conv2d(channels, channels, 3, stride=2, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding == 0:
            x = F.pad(x, (0, 1, 0, 1))  # asymmetric, as in the TensorFlow original
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class DownBlock(nn.Module):
    """``DownBlock2D`` / ``AttnDownBlock2D``: resnets (each optionally followed by attention), then a
    stride-2 conv unless it is the last level. Returns every intermediate output for the skips."""

    def __init__(self, cfg: UNetConfig, cin: int, cout: int, attention: bool, last: bool):
        super().__init__()
        g, eps = cfg.norm_num_groups, cfg.norm_eps
        self.resnets = nn.ModuleList(
            ResnetBlock(cin if i == 0 else cout, cout, cfg.time_embed_dim, g, eps, cfg.dropout)
            for i in range(cfg.layers_per_block)
        )
        if attention:
            self.attentions = nn.ModuleList(
                AttentionBlock(cout, cfg.attention_head_dim, g, eps) for _ in range(cfg.layers_per_block)
            )
        self.downsamplers = None if last else nn.ModuleList([Downsample(cout, cfg.downsample_padding)])

    def forward(self, x: torch.Tensor, temb_act: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = []
        attentions = getattr(self, "attentions", None)
        for i, resnet in enumerate(self.resnets):
            x = resnet(x, temb_act)
            if attentions is not None:
                x = attentions[i](x)
            skips.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips.append(x)
        return x, skips


class UpBlock(nn.Module):
    """``UpBlock2D`` / ``AttnUpBlock2D``: one more resnet than a down block, each taking a skip."""

    def __init__(self, cfg: UNetConfig, prev: int, cout: int, skip_in: int, attention: bool, last: bool):
        super().__init__()
        g, eps, n = cfg.norm_num_groups, cfg.norm_eps, cfg.layers_per_block + 1
        self.resnets = nn.ModuleList(
            ResnetBlock(
                (prev if i == 0 else cout) + (skip_in if i == n - 1 else cout),
                cout,
                cfg.time_embed_dim,
                g,
                eps,
                cfg.dropout,
            )
            for i in range(n)
        )
        if attention:
            self.attentions = nn.ModuleList(AttentionBlock(cout, cfg.attention_head_dim, g, eps) for _ in range(n))
        self.upsamplers = None if last else nn.ModuleList([Upsample(cout)])

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor], temb_act: torch.Tensor) -> torch.Tensor:
        attentions = getattr(self, "attentions", None)
        for i, resnet in enumerate(self.resnets):
            x = resnet(torch.cat([x, skips.pop()], dim=1), temb_act)
            if attentions is not None:
                x = attentions[i](x)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


class MidBlock(nn.Module):
    """``UNetMidBlock2D``: resnet, attention, resnet at the lowest resolution."""

    def __init__(self, cfg: UNetConfig, channels: int):
        super().__init__()
        g, eps, s = cfg.norm_num_groups, cfg.norm_eps, cfg.mid_block_scale_factor
        head_dim = cfg.attention_head_dim or channels
        groups = cfg.attn_norm_num_groups or g
        self.resnets = nn.ModuleList(
            ResnetBlock(channels, channels, cfg.time_embed_dim, g, eps, cfg.dropout, s) for _ in range(2)
        )
        self.attentions = nn.ModuleList([AttentionBlock(channels, head_dim, groups, eps, s)])

    def forward(self, x: torch.Tensor, temb_act: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x, temb_act)
        return self.resnets[1](self.attentions[0](x), temb_act)


class UNet(nn.Module):
    """eps_theta(x_t, t) of DDPM (Ho et al. 2020, Sec. 4 and App. B); also predicts x0 or v when trained so."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        config.validate()
        self.config = cfg = config
        ch = cfg.block_out_channels
        self.conv_in = Conv2d(cfg.in_channels, ch[0], 3, padding=1)
        self.time_embedding = TimestepEmbedding(ch[0], cfg.time_embed_dim)
        if cfg.class_embed_type == "timestep":
            self.class_embedding = TimestepEmbedding(ch[0], cfg.time_embed_dim)
        elif cfg.class_embed_type is None and cfg.num_class_embeds is not None:
            self.class_embedding = nn.Embedding(cfg.num_class_embeds, cfg.time_embed_dim)
        self.down_blocks = nn.ModuleList(
            DownBlock(cfg, ch[max(i - 1, 0)], ch[i], kind == "AttnDownBlock2D", last=i == len(ch) - 1)
            for i, kind in enumerate(cfg.down_block_types)
        )
        self.mid_block = MidBlock(cfg, ch[-1])
        rev = ch[::-1]
        self.up_blocks = nn.ModuleList(
            UpBlock(
                cfg,
                rev[max(i - 1, 0)],
                rev[i],
                rev[min(i + 1, len(ch) - 1)],
                kind == "AttnUpBlock2D",
                last=i == len(ch) - 1,
            )
            for i, kind in enumerate(cfg.up_block_types)
        )
        self.conv_norm_out = nn.GroupNorm(cfg.norm_num_groups, ch[0], eps=cfg.norm_eps)
        self.conv_out = Conv2d(ch[0], cfg.out_channels, 3, padding=1)

    @property
    def dtype(self) -> torch.dtype:
        return self.conv_in.weight.dtype

    def frozen_weights(self, cache: dict | None = None) -> contextlib.AbstractContextManager[dict]:
        """Inside, the weights count as constants (:func:`diffusion.cpu_kernels.frozen_weights`: on the CPU
        each convolution's weight is reordered for oneDNN once, not at every call)."""
        return frozen_weights(cache)

    @property
    def device(self) -> torch.device:
        return self.conv_in.weight.device

    def forward(self, x: torch.Tensor, t: torch.Tensor | int, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        """eps (or x0, v) for images ``x`` at steps ``t``; a class-conditional UNet also takes one label
        per image (an index for a label table, a number for "timestep", a vector for "identity"). A label
        table also takes (B, num_class_embeds) float weights: a mix of its rows (interpolation between classes)."""
        cfg = self.config
        if self.conv_in.weight.is_contiguous(memory_format=torch.channels_last) and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)  # the layout oneDNN convolutions run fastest in
        t = torch.as_tensor(t, device=x.device)
        t = t.reshape(-1).expand(x.shape[0]) if t.numel() == 1 else t
        if cfg.center_input_sample:
            x = 2 * x - 1.0
        temb = timestep_embedding(t, cfg.block_out_channels[0], cfg.flip_sin_to_cos, cfg.freq_shift).to(x.dtype)
        emb = self.time_embedding(temb)
        if cfg.class_conditional or class_labels is not None:
            emb = emb + self.class_embed(class_labels, x.shape[0]).to(emb.dtype)
        # Every resnet applies SiLU to the embedding before its projection: do it once here.
        temb_act = F.silu(emb)
        h = self.conv_in(x)
        skips = [h]
        for block in self.down_blocks:
            h, block_skips = block(h, temb_act)
            skips.extend(block_skips)
        h = self.mid_block(h, temb_act)
        for block in self.up_blocks:
            h = block(h, skips, temb_act)
        return self.conv_out(F.silu(group_norm(self.conv_norm_out, h))).contiguous()


    def class_embed(self, class_labels: torch.Tensor | None, batch: int) -> torch.Tensor:
        """The vector added to the time embedding for each label (Ho and Salimans 2022 condition this way)."""
        cfg = self.config
        if not cfg.class_conditional:
            raise ValueError("This UNet is unconditional (no num_class_embeds in its config); give no class labels.")
        if class_labels is None:
            raise ValueError("This UNet is class-conditional: give class_labels, one per image.")
        labels = torch.as_tensor(class_labels, device=self.device)
        mixed = cfg.class_embed_type is None and labels.is_floating_point() and labels.ndim == 2
        width = cfg.time_embed_dim if cfg.class_embed_type == "identity" else cfg.num_class_embeds if mixed else None
        want = (batch,) if width is None else (batch, width)
        if labels.ndim == len(want) - 1 or (labels.ndim == len(want) and labels.shape[0] == 1):  # one for all
            labels = labels.reshape(1, *want[1:]).expand(*want)
        if tuple(labels.shape) != want:
            raise ValueError(f"class_labels has shape {tuple(labels.shape)}; expected {want}, one per image.")
        if cfg.class_embed_type == "identity":
            return labels
        if cfg.class_embed_type == "timestep":
            proj = timestep_embedding(labels, cfg.block_out_channels[0], cfg.flip_sin_to_cos, cfg.freq_shift)
            return self.class_embedding(proj.to(self.dtype))
        if labels.is_floating_point() and labels.ndim == 2 and labels.shape[1] == cfg.num_class_embeds:
            return labels.to(self.dtype) @ self.class_embedding.weight  # weights over the table: mixed classes
        if labels.is_floating_point() or labels.dtype == torch.bool:
            raise ValueError(f"class_labels must be whole-number class indices, got {labels.dtype}.")
        checkable = labels.numel() and labels.device.type != "meta"  # shapes only on "meta" (FLOP counting)
        if checkable and not (0 <= int(labels.min()) and int(labels.max()) < cfg.num_class_embeds):
            raise ValueError(
                f"class label {int(labels.max()) if labels.max() >= cfg.num_class_embeds else int(labels.min())} "
                f"is out of range; this model knows labels 0 to {cfg.num_class_embeds - 1}.")
        return self.class_embedding(labels.long())


_OLD_ATTENTION_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def convert_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map the attention names of old diffusers checkpoints (``query``, ``key``, ``value``,
    ``proj_attn``: the google/ddpm-* repos) to the current ones."""
    out = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        if len(parts) >= 3 and parts[-2] in _OLD_ATTENTION_NAMES and "attentions" in parts:
            key = ".".join(parts[:-2] + [_OLD_ATTENTION_NAMES[parts[-2]], parts[-1]])
        out[key] = value
    return out


def load_state_dict_strict(model: UNet, state_dict: dict[str, torch.Tensor]) -> None:
    """Load weights, raising one clear error that lists missing, unexpected and mis-shaped keys."""
    state_dict = convert_state_dict(state_dict)
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state_dict and state_dict[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        def head(items: list[str]) -> str:
            return ", ".join(items[:5]) + (f" (and {len(items) - 5} more)" if len(items) > 5 else "")
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing keys: {head(missing)}")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected keys: {head(unexpected)}")
        if shapes:
            problems.append(f"{len(shapes)} shape mismatches: {head(shapes)}")
        raise ValueError(
            "The weights do not fit the UNet config: "
            + "; ".join(problems)
            + ". Check that config.json belongs to these weights."
        )
    model.load_state_dict(state_dict, strict=True)


def build_unet(config: dict, state_dict: dict[str, torch.Tensor]) -> UNet:
    """A UNet from a diffusers ``config.json`` dict and its weights (every key must match), in eval mode."""
    unet = UNet(UNetConfig.from_dict(config))
    load_state_dict_strict(unet, state_dict)
    return unet.eval()
