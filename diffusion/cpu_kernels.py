"""Two CPU inference details of eager PyTorch, behind a small interface the UNet uses: :class:`Conv2d` (a
drop-in ``nn.Conv2d``), :func:`group_norm` and :func:`frozen_weights`. ``torch.compile`` generates its own
kernels and skips both; on other devices, in bf16 or with autograd they are plain PyTorch."""

from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator

import torch
from torch import nn

# The oneDNN-reordered convolution weights of the innermost frozen_weights() context, per Conv2d.
_PACKED: contextvars.ContextVar[dict | None] = contextvars.ContextVar("packed_conv_weights", default=None)
_MKLDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` (same parameters, same state-dict keys) that, inside :func:`frozen_weights` on the CPU
    in fp32 without autograd, reorders its weight into oneDNN's blocked layout once and reuses it. Plain
    ``conv2d`` reorders the weight at every call and, for batch 1 at small spatial sizes, takes ATen's slower
    im2col path instead (``benchmarks/unet_speed.py`` measures the difference)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cache = None if torch.compiler.is_compiling() else _PACKED.get()
        w = self.weight
        if (cache is None or not _MKLDNN or not torch.backends.mkldnn.enabled or x.device.type != "cpu" or x.ndim != 4
                or x.dtype != torch.float32 or w.dtype != torch.float32 or self.padding_mode != "zeros"
                or isinstance(self.padding, str) or (torch.is_grad_enabled() and (x.requires_grad or w.requires_grad))):
            return super().forward(x)
        key = (w.data_ptr(), w._version, w.shape, w.stride())
        entry = cache.get(self)
        if entry is None or entry[0] != key:
            packed = torch.ops.mkldnn._reorder_convolution_weight(
                w, list(self.padding), list(self.stride), list(self.dilation), self.groups, list(x.shape))
            cache[self] = entry = (key, packed)
        return torch.ops.mkldnn._convolution_pointwise(
            x,
            entry[1],
            self.bias,
            list(self.padding),
            list(self.stride),
            list(self.dilation),
            self.groups,
            "none",
            [],
            None,
        )


def group_norm(norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    """``norm(x)``; in eager mode a channels-last ``x`` with fewer than 4 channels per group is
    normalised in NCHW layout: ATen's channels-last GroupNorm kernel is 2 to 10x slower there (the
    Fashion-MNIST UNet's 32 and 64 channels in 32 groups), which costs more than the copy."""
    if (
        not torch.compiler.is_compiling()
        and x.ndim == 4
        and norm.num_channels // norm.num_groups < 4
        and x.device.type == "cpu"
        and not x.is_contiguous()
        and x.is_contiguous(memory_format=torch.channels_last)
    ):
        x = x.contiguous()
    return norm(x)


@contextlib.contextmanager
def frozen_weights(cache: dict | None = None) -> Iterator[dict]:
    """Inside, the weights count as constants: on the CPU each :class:`Conv2d` reorders its weight for oneDNN at
    its first call and keeps it (in ``cache``, a dict the caller may pass again to reuse the reordered weights
    across contexts). The weights must not change while it is in use; a change through the parameter itself
    (``copy_``, ``load_state_dict``, an optimizer step) is noticed, one through ``param.data`` is not. Without
    autograd only (``torch.no_grad()``)."""
    cache = {} if cache is None else cache
    token = _PACKED.set(cache)
    try:
        yield cache
    finally:
        _PACKED.reset(token)
