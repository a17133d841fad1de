"""Training images as one uint8 tensor (N, C, H, W) in memory, from torchvision, Debian's
Fashion-MNIST files, or any folder of images; their class labels for class-conditional training."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
TORCHVISION = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "cifar10": "CIFAR10"}
DATASETS = (*TORCHVISION, "folder")
DEFAULT_ROOT = "data"  # TrainConfig.data_root's default: for fashion-mnist, Debian's copy is used before it
CLASS_NAMES = {
    "fashion-mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                      "Ankle boot"),
    "mnist": tuple(str(i) for i in range(10)),
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"}


def read_idx_images(path: Path) -> torch.Tensor:
    """An IDX3 file (gzip or raw), the MNIST family's format: magic 2051, N, rows, cols, then bytes."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    magic, n, rows, cols = np.frombuffer(data[:16], dtype=">i4")
    if magic != 2051 or len(data) != 16 + n * rows * cols:
        raise ValueError(f"{path} is not a complete IDX image file.")
    return torch.from_numpy(np.frombuffer(data, dtype=np.uint8, offset=16).reshape(n, 1, rows, cols).copy())


def read_idx_labels(path: Path) -> torch.Tensor:
    """An IDX1 label file (magic 2049), as int64."""
    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
        data = f.read()
    magic, n = np.frombuffer(data[:8], dtype=">i4")
    if magic != 2049 or len(data) != 8 + n:
        raise ValueError(f"{path} is not a complete IDX label file.")
    return torch.from_numpy(np.frombuffer(data, dtype=np.uint8, offset=8).astype(np.int64))


def _debian_fashion_mnist(split: str, what: str = "images") -> torch.Tensor | None:
    prefix = "train" if split == "train" else "t10k"
    path = DEBIAN_FASHION_MNIST / f"{prefix}-{what}-idx{3 if what == 'images' else 1}-ubyte.gz"
    if not path.is_file():
        return None
    return read_idx_images(path) if what == "images" else read_idx_labels(path)


def _torchvision(name: str, root: str, split: str, download: bool, labels: bool = False) -> torch.Tensor:
    import torchvision

    cls = getattr(torchvision.datasets, TORCHVISION[name])
    try:
        ds = cls(root=root, train=split == "train", download=download)
    except (RuntimeError, OSError) as e:
        how = (
            f"`apt-get install dataset-fashion-mnist` puts it in {DEBIAN_FASHION_MNIST}; "
            if name == "fashion-mnist"
            else ""
        )
        raise FileNotFoundError(
            f"{name} is not in {root} and could not be downloaded ({e}). "
            f"{how}With internet access, pass --download=true "
            f"(torchvision fetches it into --data_root), or put the files there yourself."
        ) from None
    if labels:
        return torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)
    data = torch.as_tensor(np.asarray(ds.data))
    return data.permute(0, 3, 1, 2).contiguous() if data.ndim == 4 else data[:, None]


def image_files(root: str) -> list[Path]:
    files = sorted(p for p in Path(root).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(
            f"No images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {root}; point --data_root at a folder of images."
        )
    return files


def folder_classes(root: str) -> tuple[str, ...]:
    """The classes of an image folder: its subfolders that hold images (one subfolder per class)."""
    files = image_files(root)
    names = sorted({p.relative_to(root).parts[0] for p in files if len(p.relative_to(root).parts) > 1})
    loose = [p for p in files if len(p.relative_to(root).parts) == 1]
    if len(names) < 2 or loose:
        raise ValueError(
            f"Class labels of a folder come from its subfolders, one per class; {root} has {len(names)} "
            f"subfolder(s) with images{f' and {len(loose)} image(s) outside them' if loose else ''}. "
            "Put each class's images in its own subfolder (at least two classes)."
        )
    return tuple(names)


def class_names(name: str, root: str) -> tuple[str, ...]:
    """The names of a dataset's classes, label 0 first."""
    if name == "folder":
        return folder_classes(root)
    if name not in CLASS_NAMES:
        raise ValueError(f"Unknown dataset {name!r}; choose one of {', '.join(DATASETS)}.")
    return CLASS_NAMES[name]


def load_labels(name: str, root: str, split: str = "train", download: bool = False) -> torch.Tensor:
    """The class label of each image of :func:`load_images`, in the same order, as int64 (N,)."""
    if name == "folder":
        classes = folder_classes(root)
        return torch.tensor([classes.index(p.relative_to(root).parts[0]) for p in image_files(root)])
    if name == "fashion-mnist" and not download and root in ("", DEFAULT_ROOT):
        local = _debian_fashion_mnist(split, "labels")
        if local is not None:
            return local
    return _torchvision(name, root, split, download, labels=True)


def _folder(root: str, image_size: int, channels: int) -> torch.Tensor:
    """Every image under ``root`` read as sampling reads inputs (:func:`diffusion.images.image_to_array`:
    each pixel format by its range, centre-cropped to a square, resized to ``image_size``)."""
    from diffusion.images import image_to_array, open_image

    files = image_files(root)
    out = torch.empty((len(files), channels, image_size, image_size), dtype=torch.uint8)
    for i, p in enumerate(tqdm(files, desc=f"loading {root}", unit="img")):
        try:
            x, _ = image_to_array(open_image(p, max_side=None), channels, image_size)
        except ValueError as e:
            raise ValueError(f"{p}: {e}") from None
        out[i] = torch.from_numpy(x).permute(2, 0, 1).mul(255).round().to(torch.uint8)
    return out


def load_images(name: str, root: str, split: str = "train", image_size: int | None = None, channels: int = 1,
                download: bool = False) -> torch.Tensor:
    """The whole split as uint8 (N, C, H, W). With the default ``root`` ("data"), fashion-mnist comes from
    Debian's copy when it is installed; a ``root`` given explicitly is used, and refused if it is not a folder."""
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}; choose one of {', '.join(DATASETS)}.")
    if name == "folder":
        if not root or not Path(root).is_dir():
            raise FileNotFoundError(
                f"dataset=folder needs --data_root pointing at a folder of images; {root!r} is not a folder."
            )
        return _folder(root, image_size or 32, channels)
    if name == "fashion-mnist" and not download and root in ("", DEFAULT_ROOT):
        local = _debian_fashion_mnist(split)
        if local is not None:
            return local
    if root not in ("", DEFAULT_ROOT) and not download and not Path(root).is_dir():
        fallback = (
            f"leave --data_root out to use Debian's copy in {DEBIAN_FASHION_MNIST}, " if name == "fashion-mnist" else ""
        )
        raise FileNotFoundError(
            f"data_root={root!r} is not a folder. Point --data_root at the folder that holds {name} "
            f"(torchvision's layout), {fallback}or pass --download=true to fetch it there."
        )
    return _torchvision(name, root, split, download)


def batches(n: int, batch_size: int, seed: int, start_step: int, rank: int = 0, world: int = 1):
    """Endless (step, indices) of a seeded shuffle per epoch, sharded by rank: resuming at
    ``start_step`` continues the exact sequence an uninterrupted run would have drawn."""
    per_epoch = n // (batch_size * world)
    if per_epoch < 1:  # raised here, not at the first next(): before the run folder is made
        raise ValueError(f"The dataset has {n} images, fewer than one batch of {batch_size} x {world} processes.")

    def generate():
        step = start_step
        while True:
            epoch, i = divmod(step, per_epoch)
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
            shard = perm[rank::world]
            while i < per_epoch:
                yield step, shard[i * batch_size:(i + 1) * batch_size]
                i += 1
                step += 1

    return generate()
