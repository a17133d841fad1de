"""Pictures of samples and of the denoising process: grids, frame strips, GIF and MP4."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

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
MAX_INPUT_SIDE = 4096  # an input image may hold up to MAX_INPUT_SIDE**2 pixels, read from its header first


def read_images(path: str | Path, limit: int = MAX_INPUT_IMAGES) -> list[Image.Image]:
    """The image file ``path``, or the image files in the folder ``path`` sorted by name (other files are
    skipped), loaded (:func:`open_image`); ValueError for a missing path, a file that is not an image, a
    folder with none, or more than ``limit`` of them."""
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
            images.append(open_image(f))
        except ValueError as e:
            raise ValueError(f"{f}: {e}") from None
    return images


def open_image(path: Path, max_side: int | None = MAX_INPUT_SIDE) -> Image.Image:
    """One image file, decoded only after its header's size is checked (a small file can declare 12000 x 12000
    pixels): ValueError, with the reason, for more than ``max_side`` squared pixels or a file that is not a
    readable image. An animation gives its first frame; ``info`` keeps how many ``frames`` it had and the
    file's name (``source``)."""
    limit = f"give an image of at most {max_side}×{max_side} pixels." if max_side else "give a smaller image."
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size is checked right here
            im = Image.open(path)
        with im:
            width, height = im.size
            if max_side and width * height > max_side**2:
                raise ValueError(f"{width}×{height} pixels; {limit}")
            frames = getattr(im, "n_frames", 1)
            im.load()
            out = im.copy()
    except Image.DecompressionBombError:  # Pillow's own limit, refused at open
        raise ValueError(f"more pixels than Pillow opens ({2 * Image.MAX_IMAGE_PIXELS:,}); {limit}") from None
    except UnidentifiedImageError:
        raise ValueError("not an image file (PNG, JPEG, WebP, GIF, BMP and TIFF are read).") from None
    except (OSError, SyntaxError) as e:
        raise ValueError(f"a damaged image file ({e}).") from None
    out.info.update(frames=frames, source=Path(path).name)
    return out


def image_to_array(im: Image.Image, channels: int, size: int) -> tuple[np.ndarray, list[str]]:
    """One PIL image as a model's input: (size, size, channels) float32 in [0, 1], and a note for each change
    made on the way. Every pixel format is read with its real range (16-bit grey by 65535, floats as they are
    in [0, 1]); EXIF orientation is applied; transparency is flattened onto white; colour becomes grey by
    ITU-R 601 luma for a 1-channel model; a non-square image is centre-cropped to a square, then resized
    (bicubic, antialiased), as training reads folders. ValueError names what cannot be read."""
    notes = []
    if im.info.get("frames", 1) > 1:
        notes.append(f"the first of its {im.info['frames']} frames")
    orientation = im.getexif().get(0x0112, 1)  # EXIF Orientation: 1 is upright
    if orientation not in (1, None):
        im = ImageOps.exif_transpose(im)
        notes.append(f"turned upright (EXIF orientation {orientation})")
    x = _unit_pixels(im, notes)
    if channels == 1 and x.shape[-1] == 3:
        if not (np.array_equal(x[..., 0], x[..., 1]) and np.array_equal(x[..., 0], x[..., 2])):
            notes.append("colour made grey (ITU-R 601 luma)")
        x = x @ np.array([[0.299], [0.587], [0.114]], dtype=np.float32)
    elif channels == 3 and x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    h, w = x.shape[:2]
    side = min(h, w)
    if h != w:
        top, left = (h - side) // 2, (w - side) // 2
        x = x[top : top + side, left : left + side]
        notes.append(f"centre-cropped from {w}×{h} to {side}×{side}")
    if side != size:
        t = torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1)[None]
        t = torch.nn.functional.interpolate(t, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
        x = t[0].permute(1, 2, 0).clamp(0, 1).numpy()
        notes.append(f"resized from {side}×{side} to {size}×{size}")
    return np.ascontiguousarray(x, dtype=np.float32), notes


_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
_ALPHA = ("RGBA", "LA", "PA", "La", "RGBa")


def _unit_pixels(im: Image.Image, notes: list[str]) -> np.ndarray:
    """(H, W, 1) for grey pixel formats or (H, W, 3) for colour ones, float32 in [0, 1], by the format's range."""
    mode = im.mode
    if mode in _SIXTEEN_BIT or mode == "I":
        a = np.asarray(im).astype(np.float32)
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise ValueError(
                f"its 32-bit integer pixels run from {a.min():.0f} to {a.max():.0f}, beyond 16 bits; "
                "save it as an 8- or 16-bit PNG."
            )
        return a[..., None] / 65535.0  # Pillow reads 16-bit grey PNG and TIFF as I;16 (or I)
    if mode == "F":
        a = np.asarray(im, dtype=np.float32)
        if not np.isfinite(a).all():
            raise ValueError("its floating-point pixels include NaN or infinity; save it without them.")
        if a.size and (a.min() < 0 or a.max() > 1):
            raise ValueError(
                f"its floating-point pixels run from {a.min():.4g} to {a.max():.4g}; floats are read as [0, 1]: "
                "rescale them to [0, 1] or save it as an 8-bit PNG."
            )
        return a[..., None]
    if mode in _ALPHA or "transparency" in im.info:
        rgba = _convert(im, "RGBA")
        if rgba.getextrema()[3][0] < 255:
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            im = Image.alpha_composite(white, rgba)
            notes.append("transparency flattened onto white")
        else:
            im = rgba
    if mode in ("1", "L"):
        return np.asarray(im.convert("L"), dtype=np.float32)[..., None] / 255.0
    if mode == "CMYK":
        notes.append("CMYK converted to RGB without a colour profile")
    return np.asarray(_convert(im, "RGB"), dtype=np.float32) / 255.0


def _convert(im: Image.Image, mode: str) -> Image.Image:
    """Pillow's conversion, or ValueError for a pixel format it cannot convert (LAB, premultiplied La...)."""
    try:
        return im.convert(mode)
    except ValueError:
        raise ValueError(f"its pixel format {im.mode} cannot be read; save it as an RGB or grey PNG.") from None


def images_to_tensor(images: Sequence[Image.Image], channels: int, size: int) -> tuple[torch.Tensor, list[str]]:
    """PIL images as a model's input, (n, channels, size, size) floats in [0, 1] (:func:`image_to_array`),
    and for each image what was changed ("" when nothing was)."""
    if channels not in (1, 3):
        raise ValueError(f"Images can be read for models of 1 or 3 channels, not {channels}.")
    arrays, notes = [], []
    for i, im in enumerate(images):
        try:
            x, changes = image_to_array(im, channels, size)
        except ValueError as e:
            raise ValueError(f"{im.info.get('source', f'image {i + 1}')}: {e}") from None
        arrays.append(x)
        notes.append(", ".join(changes))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous(), notes


def scale_to_unit(x: torch.Tensor) -> torch.Tensor:
    """Each image of ``x`` (n, C, H, W) stretched to [0, 1] (latents, which are not images, for display)."""
    flat = x.detach().float().flatten(1)
    low, high = flat.min(1).values, flat.max(1).values
    return ((flat - low[:, None]) / (high - low).clamp(min=1e-12)[:, None]).view_as(x)
