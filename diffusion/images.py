"""Pictures of samples and of the denoising process: grids, frame strips, GIF and MP4."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from .files import atomic_write


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """Model space [-1, 1] to image space [0, 1], as diffusers' pipelines finish."""
    return (x / 2 + 0.5).clamp(0, 1)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[0, 1] images (N, C, H, W) to uint8 (N, H, W, C)."""
    return (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def grid(images: torch.Tensor, nrow: int | None = None, padding: int = 2) -> torch.Tensor:
    """[0, 1] images tiled into one (C, H, W) image, ``nrow`` per row (default: square)."""
    from torchvision.utils import make_grid  # imported here: torchvision adds seconds to every start

    nrow = nrow or max(1, int(np.ceil(np.sqrt(images.shape[0]))))
    return make_grid(images.detach().float().cpu().clamp(0, 1), nrow=nrow, padding=padding, pad_value=1.0)


def to_pil(image: torch.Tensor) -> Image.Image:
    """One [0, 1] image (C, H, W) as a PIL image (L for one channel, RGB for three)."""
    arr = to_uint8(image[None])[0]
    return Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None) -> torch.Tensor:
    """Save a PNG grid atomically; returns the grid tensor."""
    g = grid(images, nrow)
    atomic_write(Path(path), lambda p: to_pil(g).save(p, format="PNG"))
    return g


def upscale(images: torch.Tensor, min_size: int) -> torch.Tensor:
    """Nearest-neighbour upscaling by an integer factor so small images (28 px) stay crisp when shown."""
    factor = max(1, -(-min_size // images.shape[-1]))
    return images.repeat_interleave(factor, -1).repeat_interleave(factor, -2) if factor > 1 else images


def save_animation(frames: Sequence[np.ndarray], path: str | Path, fps: int = 10) -> Path:
    """uint8 frames (H, W, C) as a looping GIF or an H.264 MP4, by the path's suffix."""
    import imageio.v3 as iio

    path = Path(path)
    frames = [f if f.shape[-1] == 3 else np.repeat(f, 3, axis=-1) for f in frames]
    if path.suffix == ".gif":
        # grey frames are written as such: quantising RGB frames to a palette is several times slower
        grey = all(np.array_equal(f[..., 0], f[..., 1]) and np.array_equal(f[..., 0], f[..., 2]) for f in frames)
        data = [f[..., 0] for f in frames] if grey else frames
        atomic_write(path, lambda p: iio.imwrite(p, data, extension=".gif", duration=1000 / fps, loop=0))
    elif path.suffix == ".mp4":
        # H.264 wants even sizes
        h, w = frames[0].shape[:2]
        frames = [np.pad(f, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge") for f in frames]
        atomic_write(path, lambda p: iio.imwrite(p, frames, extension=".mp4", fps=fps, codec="libx264", plugin="pyav")
                     if _has_pyav() else _ffmpeg_write(p, frames, fps))
    else:
        raise ValueError(f"Unsupported animation format {path.suffix!r}; use .gif or .mp4.")
    return path


def _has_pyav() -> bool:
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


def _ffmpeg_write(path: Path, frames: Sequence[np.ndarray], fps: int) -> None:
    import imageio.v2 as iio2

    with iio2.get_writer(
        path, format="FFMPEG", mode="I", fps=fps, codec="libx264", pixelformat="yuv420p", macro_block_size=1
    ) as w:
        for f in frames:
            w.append_data(f)


MAX_INPUT_IMAGES = 256  # images one reconstruction run reads (encoding and decoding all of them at once)


def read_images(path: str | Path, limit: int = MAX_INPUT_IMAGES) -> list[Image.Image]:
    """The image file ``path``, or the image files in the folder ``path`` sorted by name (other files are
    skipped), loaded; ValueError for a missing path, a file that is not an image, a folder with none,
    or more than ``limit`` of them."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ValueError(f"{path}: no such file or folder.")
    if path.is_dir():
        known = set(Image.registered_extensions())
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in known and p.name[0] != ".")
        if not files:
            raise ValueError(f"{path}: the folder holds no image files ({', '.join(sorted(known)[:6])}, ...).")
    else:
        files = [path]
    if len(files) > limit:
        raise ValueError(f"{path}: {len(files)} images; at most {limit} at a time.")
    images = []
    for f in files:
        try:
            with Image.open(f) as im:
                im.load()
                images.append(im.copy())
        except (OSError, Image.DecompressionBombError) as e:
            raise ValueError(f"{f}: not a readable image ({e}).") from None
    return images


def images_to_tensor(images: Sequence[Image.Image], channels: int, size: int) -> torch.Tensor:
    """PIL images as a model's input: converted to L (1 channel) or RGB (3), resized to ``size`` x ``size``
    (bicubic), as floats in [0, 1] of shape (n, channels, size, size)."""
    if channels not in (1, 3):
        raise ValueError(f"Images can be read for models of 1 or 3 channels, not {channels}.")
    mode = "L" if channels == 1 else "RGB"
    arrays = []
    for im in images:
        im = im.convert(mode)
        if im.size != (size, size):
            im = im.resize((size, size), Image.Resampling.BICUBIC)
        arrays.append(np.asarray(im, dtype=np.float32).reshape(size, size, channels))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous() / 255.0


def scale_to_unit(x: torch.Tensor) -> torch.Tensor:
    """Each image of ``x`` (n, C, H, W) stretched to [0, 1] (latents, which are not images, for display)."""
    flat = x.detach().float().flatten(1)
    low, high = flat.min(1).values, flat.max(1).values
    return ((flat - low[:, None]) / (high - low).clamp(min=1e-12)[:, None]).view_as(x)
