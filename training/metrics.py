"""Sample-quality metrics: the Frechet distance between feature Gaussians, the Inception Score, improved
precision and recall, and the share of blank images.

FID (Heusel et al. 2017) and IS (Salimans et al. 2016) are these two formulas on Inception-v3 features;
``training/evaluate.py`` computes them with torch-fidelity on Inception-v3, or with the functions here on
the features of the small Fashion-MNIST classifier (``training/classifier.py``) when offline.
"""

from __future__ import annotations

import torch


def feature_statistics(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (unbiased) covariance of (N, D) features, in float64."""
    f = features.double()
    if f.ndim != 2:
        raise ValueError(f"Features must be (N, D), got shape {tuple(f.shape)}.")
    n, d = f.shape
    if n <= d:
        raise ValueError(f"{n} samples cannot estimate a {d}x{d} covariance (it would be singular): "
                         f"use more than {d} samples; published numbers use thousands.")
    return f.mean(0), torch.cov(f.T)


def _sqrt_psd(m: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix through its eigendecomposition."""
    w, v = torch.linalg.eigh((m + m.T) / 2)
    return (v * w.clamp(min=0).sqrt()) @ v.T


def frechet_distance(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor) -> float:
    """Frechet distance between N(mu1, S1) and N(mu2, S2) (Dowson & Landau 1982; FID, Heusel et al. 2017):

        d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1^1/2 S2 S1^1/2)^1/2)

    (S1^1/2 S2 S1^1/2 is symmetric PSD with the eigenvalues of S1 S2, so its square root is stable.)
    """
    mu1, mu2, sigma1, sigma2 = (torch.as_tensor(a, dtype=torch.float64) for a in (mu1, mu2, sigma1, sigma2))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.numel(), mu1.numel()):
        raise ValueError(f"Mismatched statistics: means {tuple(mu1.shape)} and {tuple(mu2.shape)}, "
                         f"covariances {tuple(sigma1.shape)} and {tuple(sigma2.shape)}.")
    root1 = _sqrt_psd(sigma1)
    cross = torch.linalg.eigvalsh(root1 @ sigma2 @ root1).clamp(min=0).sqrt().sum()
    diff = mu1 - mu2
    return float(diff @ diff + sigma1.trace() + sigma2.trace() - 2 * cross)


def frechet_difference(a: torch.Tensor, b: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor, rounds: int = 200,
                       seed: int = 0) -> dict[str, float]:
    """How sure is "FD(a) < FD(b)"? A paired bootstrap (Efron & Tibshirani 1993, ch. 6): draw N indices with
    replacement, score both sets' features at the same indices against the reference N(mu, sigma), repeat.
    Pairing keeps what the two sets share (the same starting noise, sample by sample) out of the spread.
    Returns both FDs, their difference, the difference's bootstrap standard deviation and the share of
    rounds in which ``a`` scored lower. Resampling duplicates points, which biases each FD upward; the
    difference is what to read."""
    if a.shape != b.shape:
        raise ValueError(f"Compare sets of the same size and feature dimension: got {tuple(a.shape)} and "
                         f"{tuple(b.shape)} (score the same -n for both rows).")
    if rounds < 2:
        raise ValueError(f"A bootstrap needs at least 2 rounds, got {rounds}.")

    def fd(f: torch.Tensor) -> float:
        return frechet_distance(*feature_statistics(f), mu, sigma)

    g = torch.Generator().manual_seed(seed)
    diffs = []
    for _ in range(rounds):
        i = torch.randint(0, len(a), (len(a),), generator=g)
        diffs.append(fd(a[i]) - fd(b[i]))
    d = torch.tensor(diffs, dtype=torch.float64)
    fd_a, fd_b = fd(a), fd(b)
    return {"fd_a": fd_a, "fd_b": fd_b, "difference": fd_a - fd_b, "std": float(d.std()),
            "p_a_lower": float((d < 0).double().mean()), "p_b_lower": float((d > 0).double().mean()),
            "p_tie": float((d == 0).double().mean())}


def inception_score(logits: torch.Tensor, splits: int = 10) -> tuple[float, float]:
    """IS = exp(E_x KL(p(y|x) || p(y))) (Salimans et al. 2016), mean and std over ``splits`` folds
    of the samples in order, as torch-fidelity and the original code report it."""
    if len(logits) < splits:
        raise ValueError(
            f"The Inception Score over {splits} splits needs at least {splits} samples, got {len(logits)}."
        )
    log_p = logits.double().log_softmax(1)
    scores = []
    for chunk in log_p.tensor_split(splits):
        log_py = chunk.exp().mean(0).log()
        scores.append((chunk.exp() * (chunk - log_py)).sum(1).mean().exp())
    s = torch.stack(scores)
    return float(s.mean()), float(s.std(unbiased=False))


def precision_recall(generated: torch.Tensor, real: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019, Sec. 2): each feature vector's k-th nearest
    neighbour among its own set (k = 3) is the radius of a ball around it; precision is the share of
    generated features inside some ball of a real one (samples on the data manifold), recall the share of
    real features inside some ball of a generated one (modes covered). Computed by torch-fidelity."""
    from torch_fidelity.metric_prc import prc_features_to_metric

    if generated.ndim != 2 or real.ndim != 2 or generated.shape[1] != real.shape[1]:
        raise ValueError(
            f"Features must be (N, D) with the same D, got {tuple(generated.shape)} and {tuple(real.shape)}."
        )
    if min(len(generated), len(real)) <= k:
        raise ValueError(f"Precision and recall with k={k} need more than {k} samples in each set.")
    m = prc_features_to_metric(generated.double(), real.double(), prc_neighborhood=k, prc_batch_size=2048,
                               save_cpu_ram=True, verbose=False)
    return m["precision"], m["recall"]


# A pixel is lit above 10% of full scale. The dimmest of the 70,000 real Fashion-MNIST images (train and test)
# has 3.8% of its pixels lit, the dimmest test image 6.8%: under 3% is a blank, not a garment.
BLANK_LIT_LEVEL = 0.1
BLANK_LIT_AREA = 0.03


def blank_fraction(images: torch.Tensor, lit_level: float = BLANK_LIT_LEVEL, lit_area: float = BLANK_LIT_AREA) -> float:
    """Share of images that are blank: fewer than ``lit_area`` of their pixels above ``lit_level`` of full
    scale. For dark-background data such as Fashion-MNIST, where a model that leaves the data manifold
    often leaves an empty frame or a few specks that a feature-space metric averages away."""
    if images.ndim != 4:
        raise ValueError(f"Images must be (N, ...) of rank 4, got shape {tuple(images.shape)}.")
    if len(images) == 0:
        raise ValueError("No images to count blanks in.")
    scale = 255.0 if images.dtype == torch.uint8 else 1.0
    lit = (images.float() / scale > lit_level).flatten(1).float().mean(1)
    return float((lit < lit_area).float().mean())
