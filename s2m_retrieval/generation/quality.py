"""Generation quality: Fréchet distance in the segmenter's domain feature space, a real-vs-generated classifier
(realism proxy), anatomy rates, standard FID."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from s2m_retrieval.data.classes import TONGUE, TONSILS, UVULA
from s2m_retrieval.errors import WeightsMissingError

# torchvision's Inception-v3 ImageNet weights, as its hub cache names them.
INCEPTION_FILE = "inception_v3_google-0cc3c7bd.pth"


def _as_float(images) -> torch.Tensor:
    """uint8 `[N, H, W, 3]` (numpy or tensor) or float `[N, 3, H, W]` in [-1, 1] -> float in [-1, 1]."""
    x = torch.as_tensor(images)
    if x.dtype == torch.uint8:
        x = x.permute(0, 3, 1, 2).float() / 127.5 - 1
    return x.float()


@torch.no_grad()
def domain_features(images, segmenter, batch: int = 128) -> np.ndarray:
    """Per-image domain features `[N, D]`: spatial means of each encoder level + mean class probabilities."""
    x = _as_float(images)
    out = []
    for i in range(0, len(x), batch):
        chunk = x[i:i + batch]
        feats = [f.mean(dim=(2, 3)) for f in segmenter.encoder_features(chunk)]
        feats.append(segmenter(chunk).softmax(1).mean(dim=(2, 3)))
        out.append(torch.cat(feats, 1))
    return torch.cat(out).double().numpy()


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets `[N, D]`."""
    from scipy import linalg

    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(covmean).all():
        eps = np.eye(len(cov_a)) * 1e-6
        covmean = linalg.sqrtm((cov_a + eps) @ (cov_b + eps))
    covmean = covmean.real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * covmean))


def anatomy_found(masks: np.ndarray) -> dict[str, float]:
    """Fractions of label maps `[N, H, W]` showing tongue, uvula, two tonsils, and all three at once."""
    from scipy import ndimage

    n = len(masks)
    tongue = np.array([(m == TONGUE).any() for m in masks])
    uvula = np.array([(m == UVULA).any() for m in masks])
    # Both tonsils: tonsil pixels on each side of the image's vertical midline, as two blobs.
    both = []
    for m in masks:
        t = m == TONSILS
        half = m.shape[1] // 2
        blobs = ndimage.label(t)[1]
        both.append(blobs >= 2 and t[:, :half].sum() > 2 and t[:, half:].sum() > 2)
    both = np.array(both)
    return {"tongue": float(tongue.mean()), "uvula": float(uvula.mean()), "both_tonsils": float(both.mean()),
            "all": float((tongue & uvula & both).mean()), "n": n}


def inception_model(torch_home: str | os.PathLike | None = None):
    """torchvision's Inception-v3 (pool features) from the local hub cache; a clear error when absent."""
    from torchvision.models import inception_v3

    home = Path(torch_home or os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch"))
    path = home / "hub" / "checkpoints" / INCEPTION_FILE
    if not path.is_file():
        raise WeightsMissingError(f"standard FID needs Inception-v3 weights at {path} "
                                  f"(torchvision's {INCEPTION_FILE}); copy it there, or use the domain Fréchet distance")
    model = inception_v3(weights=None, aux_logits=True, init_weights=False)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    model.fc = torch.nn.Identity()
    return model.eval()


@torch.no_grad()
def inception_features(images, model, batch: int = 64) -> np.ndarray:
    """2048-d pool features of images resized to 299 px with ImageNet normalisation."""
    x = (_as_float(images) + 1) / 2
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    out = []
    for i in range(0, len(x), batch):
        chunk = torch.nn.functional.interpolate(x[i:i + batch], size=(299, 299), mode="bilinear", align_corners=False)
        out.append(model((chunk - mean) / std))
    return torch.cat(out).double().numpy()


def realism_accuracy(real: np.ndarray, fake: np.ndarray, l2: float = 1.0, iterations: int = 100) -> float:
    """Held-out accuracy of a real-vs-generated classifier on features `[N, D]` (e.g. `domain_features`).

    A realism proxy, not an opinion score: an L2-regularised logistic regression (loss summed over the samples +
    l2/2 |w|^2, on features standardised by the fitting half) is fitted on the even rows of `real` and `fake` and
    scored on their odd rows (ties count half). Rows are expected paired (row i of both from one sketch), so no
    image's counterpart crosses the split. 0.5: the classifier cannot tell the sets apart; 1: it always can.
    """
    if len(real) < 2 or len(fake) < 2 or real.shape[1:] != fake.shape[1:]:
        raise ValueError(f"realism needs >= 2 rows of equal width per set, got {real.shape} and {fake.shape}")
    fit = np.concatenate([real[0::2], fake[0::2]]).astype(np.float64)
    test = np.concatenate([real[1::2], fake[1::2]]).astype(np.float64)
    y_fit = np.r_[np.ones(len(real[0::2])), np.zeros(len(fake[0::2]))]
    y_test = np.r_[np.ones(len(real[1::2])), np.zeros(len(fake[1::2]))]
    mean, std = fit.mean(0), fit.std(0)
    std = np.where(std > 1e-12, std, 1.0)                     # a constant feature carries nothing: left at 0

    def design(x: np.ndarray) -> np.ndarray:
        return np.c_[(x - mean) / std, np.ones(len(x))]        # [M, D + 1], the last column the bias

    X = design(fit)
    penalty = np.r_[np.full(X.shape[1] - 1, l2), 1e-9]         # the bias is not shrunk
    w = np.zeros(X.shape[1])
    for _ in range(iterations):                                # Newton steps: the loss is smooth and convex
        p = 1.0 / (1.0 + np.exp(-np.clip(X @ w, -30, 30)))
        grad = X.T @ (p - y_fit) + penalty * w
        hess = (X.T * (p * (1 - p))) @ X + np.diag(penalty)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    score = design(test) @ w
    right = np.where(np.abs(score) < 1e-12, 0.5, (score > 0) == (y_test == 1))
    return float(right.mean())
