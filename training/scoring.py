"""What a sample set is scored against: the offline classifier's Frechet distance, Inception Score, precision and
recall (and, for a class-conditional model, the accuracy on the asked classes), or Inception FID/IS with
torch-fidelity; the reference images and the samples' file format."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from . import classifier as clf
from .metrics import blank_fraction, feature_statistics, frechet_distance, inception_score, precision_recall

Metric = Literal["classifier", "inception", "none"]
DEFAULT_CLASSIFIER = Path(__file__).resolve().parent.parent / "checkpoints" / "fashion-mnist-classifier"
INCEPTION_FEATURES = 2048


@dataclass
class Scorer:
    """What the samples are compared with: the metric, its reference images or statistics, and the features' size."""

    metric: Metric
    reference: str
    classifier_dir: Path = DEFAULT_CLASSIFIER
    device: str = "cpu"
    info: dict[str, Any] = field(default_factory=dict)
    _loaded: tuple | None = field(default=None, repr=False)  # classifier_reference's, computed once per scorer

    def check(self, shape: tuple[int, ...], n: int) -> None:
        """Refuse, before any sampling, what would give a meaningless or failing score."""
        if self.metric == "none":
            return
        if self.metric == "inception":
            if not self.reference:
                raise ValueError(
                    "Inception FID/IS need --reference: a torch-fidelity dataset (cifar10-train for "
                    "google/ddpm-cifar10-32), a dataset split such as fashion-mnist-test, or a folder of images."
                )
            try:
                import torch_fidelity  # noqa: F401
            except ImportError:
                raise ValueError("--metric inception needs torch-fidelity: pip install -r requirements.txt") from None
            dim = INCEPTION_FEATURES
        else:
            if tuple(shape) != clf.IMAGE_SHAPE:
                raise ValueError(f"The classifier metric scores 1x28x28 Fashion-MNIST-like images; these are "
                                 f"{'x'.join(map(str, shape))}. Use --metric inception with a --reference.")
            _, _, self.info = clf.load(self.classifier_dir)
            if (
                self.reference not in ("", "fashion-mnist-test", "fashion-mnist-train")
                and not Path(self.reference).exists()
            ):
                raise ValueError(f"--reference {self.reference!r} is neither fashion-mnist-test, fashion-mnist-train "
                                 "nor an existing .npz or folder of images.")
            dim = clf.FEATURES
        if n <= dim:
            raise ValueError(f"-n {n} is not more than the feature dimension ({dim}): the covariance of the samples' "
                             f"features would be singular and the Frechet distance meaningless. Use -n 2000 or more "
                             f"(the papers use 50,000).")

    def describe(self) -> dict[str, Any]:
        if self.metric == "classifier":
            ref = self.reference or "fashion-mnist-test"
            return {
                "metric": "Frechet distance and Inception Score on the features/logits of the Fashion-MNIST classifier "
                "(not comparable with Inception FID/IS)",
                "reference": ref,
                "classifier": str(self.classifier_dir),
                "classifier_test_accuracy": self.info.get("test_accuracy"),
            }
        if self.metric == "inception":
            return {"metric": "FID and IS on Inception-v3 (torch-fidelity)", "reference": self.reference}
        return {"metric": "none"}

    def classifier_reference(
        self, features: bool = True
    ) -> tuple[clf.Classifier, dict[str, torch.Tensor], torch.Tensor | None]:
        """The classifier, the reference's feature mean and covariance (cached for the test split) and, with
        ``features`` or where the statistics need them, the reference images' features (else None: the cached
        statistics need no images on disk). Kept for the scorer's next call: a table scores many rows."""
        if self._loaded is not None and (self._loaded[2] is not None or not features):
            return self._loaded
        model, reference, _ = clf.load(self.classifier_dir, self.device)
        cached = self.reference in ("", "fashion-mnist-test")
        if cached and not features:
            return model, reference, None
        real = clf.extract(model, reference_images(self.reference or "fashion-mnist-test"))[0]
        if not cached:
            reference = dict(zip(("mu", "sigma"), feature_statistics(real)))
        self._loaded = (model, reference, real)
        return self._loaded

    def score(self, images: np.ndarray, labels: torch.Tensor | None = None) -> dict[str, float]:
        """Scores of uint8 (N, H, W, C) images; with the class each was asked for (``labels``), the share the
        classifier puts in that class (``accuracy``; the classifier metric only)."""
        if self.metric == "none":
            return {}
        if self.metric == "inception":
            return inception_metrics(images, self.reference, cuda=self.device.startswith("cuda"))
        model, _, _ = self.classifier_reference()
        pixels = torch.from_numpy(images).permute(0, 3, 1, 2)
        feats, logits = clf.extract(model, pixels)
        return self.classifier_scores(feats, logits, pixels, labels)

    def classifier_scores(self, feats: torch.Tensor, logits: torch.Tensor, pixels: torch.Tensor,
                          labels: torch.Tensor | None = None) -> dict[str, float]:
        """The classifier metric's scores from the samples' features, logits and uint8 (N, C, H, W) pixels. The
        FD needs more samples than features (:meth:`check` says so before sampling; the arena, which runs
        smaller sets, gets no ``fd`` then), the IS 10 (its splits)."""
        _, reference, real = self.classifier_reference()
        # Precision/recall compare sets of equal size (Kynkaanniemi et al. 2019):
        # a fixed random subset of the reference.
        if len(real) > len(feats):
            real = real[torch.randperm(len(real), generator=torch.Generator().manual_seed(0))[:len(feats)]]
        scores: dict[str, float] = {}
        if len(feats) > feats.shape[1]:
            mu, sigma = feature_statistics(feats)
            scores["fd"] = frechet_distance(mu, sigma, reference["mu"], reference["sigma"])
        if len(logits) >= 10:
            scores["is"], scores["is_std"] = inception_score(logits)
        scores["precision"], scores["recall"] = precision_recall(feats, real)
        scores["blank"] = blank_fraction(pixels)
        if labels is not None:
            scores["accuracy"] = (logits.argmax(1).cpu() == labels.cpu()).double().mean().item()
        return scores


def read_samples_npz(path: Path) -> torch.Tensor:
    """uint8 (N, C, H, W) images from an .npz of (N, H, W, C) images under ``arr_0`` (or its only array), as
    :func:`evaluate` writes them and guided-diffusion's evaluator reads them. uint8 is taken as it is, floats in
    [0, 1] are scaled to 0-255 (and said); anything else is refused with the reason (ValueError)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            keys = list(f.keys())
            if "arr_0" not in keys and len(keys) != 1:
                raise ValueError(f"{path} holds {', '.join(keys) or 'no arrays'}; put the images under arr_0 "
                                 "(np.savez(path, images)).")
            x = f["arr_0" if "arr_0" in keys else keys[0]]
    except (OSError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path} is not a readable .npz file ({err}).") from None
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3) or 0 in x.shape:
        raise ValueError(f"{path}: images of shape {x.shape}; expected (N, H, W, C) with C = 1 or 3 and N >= 1.")
    if np.issubdtype(x.dtype, np.floating):
        if not np.isfinite(x).all():
            raise ValueError(f"{path}: the images hold NaN or infinite values; they cannot be scored.")
        if x.min() < 0 or x.max() > 1:
            raise ValueError(f"{path}: float images from {x.min():.4g} to {x.max():.4g}; give uint8 (0-255) or "
                             "floats in [0, 1].")
        print(f"{path}: float images in [0, 1], scaled to 0-255 (as uint8 images are read)")
        x = np.round(x * 255).astype(np.uint8)
    elif x.dtype != np.uint8:
        if x.min() < 0 or x.max() > 255:
            raise ValueError(f"{path}: {x.dtype} images from {x.min()} to {x.max()}; give uint8 (0-255) or "
                             "floats in [0, 1].")
        x = x.astype(np.uint8)
    return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2)


def reference_images(reference: str, shape: tuple[int, int, int] | None = None) -> torch.Tensor:
    """uint8 (N, C, H, W) images of a dataset split name (``fashion-mnist-test``), an .npz or a folder (read at
    ``shape``, the samples' (C, H, W); without one, at its first image's size and colours)."""
    from .data import image_files, load_images

    path = Path(reference)
    if path.suffix == ".npz":
        return read_samples_npz(path)
    if path.is_dir():
        if shape is None:
            from PIL import Image

            with Image.open(image_files(str(path))[0]) as first:
                shape = (1 if first.mode in ("L", "I;16", "I", "1") else 3, first.height, first.width)
        return load_images("folder", str(path), image_size=shape[-1], channels=shape[0])
    name, _, split = reference.rpartition("-")
    return load_images(name, "data", split)


class _Images(torch.utils.data.Dataset):
    """uint8 (N, H, W, C) images as torch-fidelity wants them: (3, H, W) uint8 tensors."""

    def __init__(self, images: np.ndarray | torch.Tensor) -> None:
        t = torch.as_tensor(images)
        self.images = t.permute(0, 3, 1, 2) if t.shape[-1] in (1, 3) else t

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        x = self.images[i]
        return x.expand(3, -1, -1).contiguous() if x.shape[0] == 1 else x


def inception_metrics(images: np.ndarray, reference: str, cuda: bool = False, **kwargs: Any) -> dict[str, float]:
    """FID and IS of uint8 (N, H, W, C) images with torch-fidelity; ``reference`` is a torch-fidelity
    input (a registered dataset such as ``cifar10-train``, whose statistics it caches, or a folder) or
    one of our dataset splits (``fashion-mnist-test``), cached under that name. ``kwargs`` go to
    ``torch_fidelity.calculate_metrics`` (e.g. another ``feature_extractor``)."""
    import torch_fidelity

    registered = reference in torch_fidelity.registry.DATASETS_REGISTRY
    shape = (images.shape[-1], *images.shape[1:3])
    ref: Any = reference if registered or Path(reference).is_dir() else _Images(reference_images(reference, shape))
    extra = (
        {}
        if registered or isinstance(ref, str)
        else {"cache": True, "input2_cache_name": f"repro-diffusion-{reference}"}
    )
    m = torch_fidelity.calculate_metrics(input1=_Images(images), input2=ref, cuda=cuda, fid=True, isc=True,
                                         verbose=False, **extra, **kwargs)
    return {"fd": m["frechet_inception_distance"], "is": m["inception_score_mean"], "is_std": m["inception_score_std"]}
