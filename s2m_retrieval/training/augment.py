"""Differentiable augmentation (DiffAugment style) applied to real and fake images alike before D."""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F

POLICIES = ("color", "translation", "cutout")


def rand_brightness(x: torch.Tensor) -> torch.Tensor:
    """Add one random offset in [-0.5, 0.5) per image."""
    return x + (torch.rand(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype) - 0.5)


def rand_saturation(x: torch.Tensor) -> torch.Tensor:
    """Scale each pixel's distance to its grey value by a random factor in [0, 2)."""
    mean = x.mean(dim=1, keepdim=True)
    return (x - mean) * (torch.rand(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype) * 2) + mean


def rand_contrast(x: torch.Tensor) -> torch.Tensor:
    """Scale each image's distance to its mean by a random factor in [0.5, 1.5)."""
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (torch.rand(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype) + 0.5) + mean


def rand_translation(x: torch.Tensor, ratio: float = 0.125) -> torch.Tensor:
    """Shift each image by up to ratio*size pixels per axis, filling with 0 (mid grey)."""
    n, _, h, w = x.shape
    ph, pw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy = torch.randint(-ph, ph + 1, (n, 1, 1), device=x.device)
    dx = torch.randint(-pw, pw + 1, (n, 1, 1), device=x.device)
    # Integer gathers from a padded copy keep the op linear in x, so R1's double backward goes through it.
    rows = torch.arange(h, device=x.device).view(1, h, 1) + ph - dy   # [N, H, 1]
    cols = torch.arange(w, device=x.device).view(1, 1, w) + pw - dx   # [N, 1, W]
    padded = F.pad(x, (pw, pw, ph, ph))
    batch = torch.arange(n, device=x.device).view(n, 1, 1)
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)  # [N, C, H, W]


def rand_cutout(x: torch.Tensor, ratio: float = 0.5) -> torch.Tensor:
    """Zero one random square of side ratio*size per image (it may overhang the border)."""
    n, _, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    top = torch.randint(0, h, (n, 1, 1), device=x.device) - sh // 2   # centre anywhere in the image
    left = torch.randint(0, w, (n, 1, 1), device=x.device) - sw // 2
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    inside = (ys >= top) & (ys < top + sh) & (xs >= left) & (xs < left + sw)   # [N, H, W]
    return x * (~inside).unsqueeze(1).to(x.dtype)


def diff_augment(x: torch.Tensor, policy: Iterable[str] = POLICIES, translation_ratio: float = 0.125,
                 cutout_ratio: float = 0.5) -> torch.Tensor:
    """Apply the chosen augmentations ('color', 'translation', 'cutout') to images [N, C, H, W] in [-1, 1]."""
    policy = tuple(policy)
    unknown = set(policy) - set(POLICIES)
    if unknown:
        raise ValueError(f"unknown augmentation {sorted(unknown)}; choose from {POLICIES}")
    if "color" in policy:
        x = rand_contrast(rand_saturation(rand_brightness(x)))
    if "translation" in policy:
        x = rand_translation(x, translation_ratio)
    if "cutout" in policy:
        x = rand_cutout(x, cutout_ratio)
    return x
