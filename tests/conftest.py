"""Shared test fixtures: tiny UNet configs and diffusers-written checkpoints with random weights."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny models: on a busy 2-core machine a second OpenMP thread makes
    every small op wait for a time slice (use with ``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

# 8x8, one channel: the samplers and DDIM latents against diffusers.
TINY_8 = dict(
    sample_size=8, in_channels=1, out_channels=1, block_out_channels=(32, 32),
    down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    layers_per_block=1,
)
# 8x8, one channel, 16 channels in groups of 2: the faster samplers and the studio (fast on one thread).
TINY_16 = dict(
    sample_size=8, in_channels=1, out_channels=1, block_out_channels=(16, 16), norm_num_groups=8,
    down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    layers_per_block=1, attention_head_dim=None,
)
# TINY_16 without attention: the fastest model whose outputs still depend on the timestep.
TINY_PLAIN = {**TINY_16, "down_block_types": ("DownBlock2D", "DownBlock2D"),
              "up_block_types": ("UpBlock2D", "UpBlock2D"), "attention_head_dim": 8}
# Both config families of diffusers' UNet2DModel, small enough for CPU tests.
GOOGLE_TINY = dict(
    sample_size=16, in_channels=3, out_channels=3, block_out_channels=(32, 64, 64),
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), layers_per_block=1,
    attention_head_dim=None, flip_sin_to_cos=False, freq_shift=1, downsample_padding=0, norm_eps=1e-6,
)
DIFFUSERS_TINY = dict(
    sample_size=16, in_channels=1, out_channels=1, block_out_channels=(32, 64),
    down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    layers_per_block=1,
)
# A very small 1x28x28 UNet: evaluation's metrics need more samples (> 128 features) than the parity tests.
SMALL_28 = {**DIFFUSERS_TINY, "sample_size": 28, "block_out_channels": (8, 16), "norm_num_groups": 4,
            "down_block_types": ("DownBlock2D", "DownBlock2D"), "up_block_types": ("UpBlock2D", "UpBlock2D")}


def random_diffusers_unet(config: dict, seed: int = 0, std: float = 0.02):
    """A diffusers UNet2DModel with small random weights (a contractive model: sampler parity over
    1000 steps stays meaningful instead of amplifying float rounding through a chaotic network)."""
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    unet = UNet2DModel(**config).eval()
    with torch.no_grad():
        for p in unet.parameters():
            p.normal_(0, std)
    return unet


def old_attention_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename to_q/to_k/to_v/to_out.0 to query/key/value/proj_attn, as in the google/ddpm-* files."""
    new = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    out = {}
    for k, v in state.items():
        for a, b in new.items():
            if f".{a}." in k and "attentions" in k:
                k = k.replace(f".{a}.", f".{b}.")
        out[k] = v
    return out


def write_diffusers_checkpoint(root: Path, config: dict = GOOGLE_TINY, layout: str = "subfolder",
                               weights: str = "safetensors", old_names: bool = False, seed: int = 0,
                               scheduler: dict | None = None):
    """Write a model folder as diffusers writes it: ``subfolder`` = DDPMPipeline.save_pretrained
    (unet/ + scheduler/), ``flat`` = the google/ddpm-* layout (config.json at the root).
    Returns the diffusers UNet holding the same weights."""
    from diffusers import DDPMScheduler
    from safetensors.torch import save_file

    unet = random_diffusers_unet(config, seed)
    sched = DDPMScheduler(**(scheduler or {}))
    unet_dir = root / "unet" if layout == "subfolder" else root
    unet.save_pretrained(unet_dir, safe_serialization=weights == "safetensors")
    sched.save_pretrained(root / "scheduler" if layout == "subfolder" else root)
    if old_names:
        state = old_attention_names(unet.state_dict())
        for f in unet_dir.glob("diffusion_pytorch_model.*"):
            f.unlink()
        if weights == "safetensors":
            save_file(
                {k: v.contiguous() for k, v in state.items()}, str(unet_dir / "diffusion_pytorch_model.safetensors")
            )
        else:
            torch.save(state, unet_dir / "diffusion_pytorch_model.bin")
    return unet


@pytest.fixture
def google_checkpoint(tmp_path):
    """A flat, google-family checkpoint with old attention names, as google/ddpm-cifar10-32 ships."""
    path = tmp_path / "google-tiny"
    unet = write_diffusers_checkpoint(path, GOOGLE_TINY, layout="flat", old_names=True)
    return path, unet


@pytest.fixture
def diffusers_checkpoint(tmp_path):
    """A subfolder-layout checkpoint with diffusers' default family, as DDPMPipeline.save_pretrained writes."""
    path = tmp_path / "diffusers-tiny"
    unet = write_diffusers_checkpoint(path, DIFFUSERS_TINY, layout="subfolder")
    return path, unet


# ---------------------------------------------------------------------------------------- the studio's tests


def write_tiny_model(path: Path, seed: int = 0) -> Path:
    """A :data:`TINY_16` model with random weights in diffusers' layout (fast on one CPU thread)."""
    from diffusion import DiffusionPipeline, UNet, UNetConfig

    torch.manual_seed(seed)
    DiffusionPipeline(UNet(UNetConfig(**TINY_16)), {}).save_pretrained(path)
    return path


def make_studio(model: str, **changes):
    """A :class:`studio.handlers.Studio` over ``model`` (no compiled packages), with ``changes`` to its settings."""
    from studio.handlers import Studio
    from studio.settings import Settings

    return Studio(Settings(**{"default_model": model, "compile": False, **changes}))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    return str(write_tiny_model(tmp_path_factory.mktemp("models") / "tiny"))


@pytest.fixture(scope="module")
def studio(tiny_model):
    return make_studio(tiny_model)


@pytest.fixture(scope="module")
def pipe(studio):
    return studio.store.get(studio.default_model)


def run_all(gen) -> list:
    return list(gen)


def png(path) -> Any:
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"))


def count_files(root: Path) -> int:
    return sum(1 for p in root.rglob("*") if p.is_file()) if root.exists() else 0


def a_picture(tmp_path: Path, name: str = "img.png", size: int = 40, mode: str = "RGB") -> str:
    """A random picture file (RGB or L) to upload."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    arr = rng.integers(0, 255, (size, size, 3 if mode == "RGB" else 1), dtype=np.uint8)
    path = tmp_path / name
    Image.fromarray(arr.squeeze(-1) if mode == "L" else arr).save(path)
    return str(path)
