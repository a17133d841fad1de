"""A small Fashion-MNIST classifier whose features stand in for Inception-v3 where its weights cannot be
downloaded: a Frechet distance on its penultimate features and a classifier-based Inception Score.
These numbers are NOT comparable to Inception FID/IS (other network, other features, 28 px images).

    python -m training.classifier --out checkpoints/fashion-mnist-classifier      # ~10 min on 2 CPU cores

The folder holds ``classifier.safetensors`` (weights, plus the reference statistics of the test set's
features: mean and covariance in float64) and ``classifier.json`` (architecture, test accuracy, how it was made).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from diffusion.files import atomic_write

from .data import CLASS_NAMES, DEBIAN_FASHION_MNIST, load_images, read_idx_labels

FEATURES = 128
CLASSES = CLASS_NAMES["fashion-mnist"]
IMAGE_SHAPE = (1, 28, 28)  # what it classifies: Fashion-MNIST-like grey 28 x 28 images


class Classifier(nn.Module):
    """conv 32 - pool - conv 64 - conv 64 - pool - conv 128 - global mean - fc 128 (the features) - fc 10."""

    def __init__(self, features: int = FEATURES, classes: int = len(CLASSES)) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

        self.body = nn.Sequential(
            block(1, 32), nn.MaxPool2d(2), block(32, 64), block(64, 64), nn.MaxPool2d(2), block(64, 128)
        )
        self.fc = nn.Linear(128, features)
        self.dropout = nn.Dropout(0.2)
        self.head = nn.Linear(features, classes)

    def features_and_logits(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 images (N, 1, 28, 28) -> (features (N, 128), logits (N, 10))."""
        x = images.float() / 127.5 - 1
        h = self.body(x).mean(dim=(2, 3))
        f = F.relu(self.fc(h))
        return f, self.head(self.dropout(f))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features_and_logits(images)[1]


def load_labelled(split: str, root: str = "data", download: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST images (N, 1, 28, 28) uint8 and labels (N,): Debian's files, else torchvision's."""
    prefix = "train" if split == "train" else "t10k"
    labels = DEBIAN_FASHION_MNIST / f"{prefix}-labels-idx1-ubyte.gz"
    if labels.is_file() and not download:
        return load_images("fashion-mnist", root, split), read_idx_labels(labels)
    import torchvision

    ds = torchvision.datasets.FashionMNIST(root, train=split == "train", download=download)
    return torch.as_tensor(np.asarray(ds.data))[:, None], torch.as_tensor(np.asarray(ds.targets))


@torch.no_grad()
def extract(model: Classifier, images: torch.Tensor, batch_size: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """Features (float64) and logits (float64) of uint8 images, in batches, on the model's device."""
    model.eval()
    device = next(model.parameters()).device
    feats, logits = [], []
    for i in range(0, len(images), batch_size):
        f, lg = model.features_and_logits(images[i:i + batch_size].to(device))
        feats.append(f.double().cpu())
        logits.append(lg.double().cpu())
    return torch.cat(feats), torch.cat(logits)


def save(model: Classifier, directory: Path, reference: dict[str, torch.Tensor], info: dict) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.contiguous() for k, v in model.state_dict().items()}
    tensors.update({f"reference.{k}": v.contiguous() for k, v in reference.items()})
    atomic_write(directory / "classifier.safetensors", lambda p: save_file(tensors, str(p)))
    atomic_write(directory / "classifier.json", lambda p: p.write_text(json.dumps(info, indent=2) + "\n"))


def load(directory: str | Path, device: str | torch.device = "cpu") -> tuple[Classifier, dict[str, torch.Tensor], dict]:
    """(classifier, reference statistics {"mu", "sigma"}, info) from a folder written by this module."""
    directory = Path(directory)
    weights, meta = directory / "classifier.safetensors", directory / "classifier.json"
    if not weights.is_file() or not meta.is_file():
        raise FileNotFoundError(f"{directory} holds no classifier (classifier.safetensors + classifier.json); "
                                f"make one with `python -m training.classifier --out {directory}`.")
    tensors = load_file(str(weights))
    model = Classifier()
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    reference = {k[10:]: v for k, v in tensors.items() if k.startswith("reference.")}
    return model.to(device).eval(), reference, json.loads(meta.read_text())


def train(epochs: int, batch_size: int, lr: float, seed: int, root: str) -> tuple[Classifier, float]:
    """AdamW with a one-cycle cosine schedule, random shifts (pad 2, crop) and horizontal flips."""
    torch.manual_seed(seed)
    images, labels = load_labelled("train", root)
    test_images, test_labels = load_labelled("test", root)
    model = Classifier()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    steps = epochs * (len(images) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    bar = tqdm(total=steps, desc="classifier", unit="step")
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(images))
        for i in range(len(images) // batch_size):
            idx = perm[i * batch_size:(i + 1) * batch_size]
            x = F.pad(images[idx], (2, 2, 2, 2))
            dx, dy = torch.randint(0, 5, (2,)).tolist()
            x = x[:, :, dy:dy + 28, dx:dx + 28]
            if torch.rand(()) < 0.5:
                x = x.flip(3)
            loss = F.cross_entropy(model(x), labels[idx], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{loss.item():.3f}")
    bar.close()
    _, logits = extract(model, test_images)
    accuracy = (logits.argmax(1) == test_labels).double().mean().item()
    return model, accuracy


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m training.classifier", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", default="checkpoints/fashion-mnist-classifier")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-root", default="data")
    args = p.parse_args(argv)
    start = time.time()
    model, accuracy = train(args.epochs, args.batch_size, args.lr, args.seed, args.data_root)
    from .metrics import feature_statistics, inception_score  # the same code the metric uses

    test_images, _ = load_labelled("test", args.data_root)
    feats, logits = extract(model, test_images)
    mu, sigma = feature_statistics(feats)
    is_mean, is_std = inception_score(logits)
    info = {
        "architecture": Classifier.__doc__, "features": FEATURES, "classes": list(CLASSES),
        "parameters": sum(p.numel() for p in model.parameters()),
        "test_accuracy": round(accuracy, 4), "reference": "fashion-mnist test split (10,000 images)",
        "reference_inception_score": [round(is_mean, 4), round(is_std, 4)],
        "training": {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
                     "wall_minutes": round((time.time() - start) / 60, 1),
                     "command": f"python -m training.classifier --out {args.out} --epochs {args.epochs}"},
    }
    save(model, Path(args.out), {"mu": mu, "sigma": sigma}, info)
    print(json.dumps(info, indent=2))
    if math.isnan(accuracy):
        raise SystemExit("training diverged")


if __name__ == "__main__":
    main()
