"""The shipped phantom segmenter loads and segments fresh phantoms well."""

from __future__ import annotations

import numpy as np
import torch

from s2m_retrieval.networks.checkpoint import load_checkpoint, shipped_weights
from s2m_retrieval.data.phantom import make_phantom
from s2m_retrieval.generation.dice import dice_per_class
from s2m_retrieval.model.segmentation import segment_images


def test_shipped_segmenter_scores_fresh_phantoms():
    torch.set_num_threads(1)
    payload = load_checkpoint(shipped_weights("segmenter"), kind="segmenter")
    assert payload["meta"]["mean_dice"] > 0.85
    # A seed the shipped model never saw in training (it was trained on seed 0).
    phantoms = [make_phantom(2024, i, 64) for i in range(24)]
    pred = segment_images([img for img, _, _ in phantoms])
    dice = np.stack([dice_per_class(p, m, 7) for p, (_, m, _) in zip(pred, phantoms)])
    per_class = np.nanmean(dice, axis=0)
    assert per_class[1:6].min() > 0.85, per_class
    assert np.nanmean(per_class[1:]) > 0.85
