"""Segmentation metrics on label maps (numpy): per-class DICE and its mean."""

from __future__ import annotations

import numpy as np


def dice_per_class(pred, target, num_classes: int) -> np.ndarray:
    """DICE of each class id, pooled over every pixel given: 2|P∩T| / (|P| + |T|), float64 [num_classes].

    A class absent from both `pred` and `target` has no defined DICE: its entry is NaN, and
    `mean_dice` leaves it out. Label maps of any matching shape ([H, W] or [N, H, W]) work.
    """
    pred, target = np.asarray(pred), np.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(f"pred {pred.shape} and target {target.shape} differ in shape")
    pred, target = pred.ravel().astype(np.int64), target.ravel().astype(np.int64)
    for name, labels in (("pred", pred), ("target", target)):
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(f"{name} holds labels outside [0, {num_classes})")
    confusion = np.bincount(target * num_classes + pred, minlength=num_classes ** 2)
    confusion = confusion.reshape(num_classes, num_classes)  # rows: target, columns: pred
    overlap = np.diag(confusion).astype(np.float64)
    total = confusion.sum(0) + confusion.sum(1)
    dice = np.full(num_classes, np.nan)
    present = total > 0
    dice[present] = 2 * overlap[present] / total[present]
    return dice


def mean_dice(dice: np.ndarray, include_background: bool = False) -> float:
    """Mean of the defined (non-NaN) entries; class 0 (background) is left out unless asked; NaN if none."""
    values = np.asarray(dice, dtype=np.float64)[0 if include_background else 1:]
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else float("nan")
