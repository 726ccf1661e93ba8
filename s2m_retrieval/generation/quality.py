"""Generation quality: Fréchet distance in the segmenter's domain feature space, anatomy rates, standard FID."""

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
