"""The shipped Sketch2MedI networks (E, H, inverter) load together and do their jobs on held-out phantoms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from s2m_retrieval.data.phantom import make_phantom
from s2m_retrieval.data.sketch import FreehandConfig, sketch_from_mask
from s2m_retrieval.generation.dice import dice_per_class
from s2m_retrieval.model.pipeline import Sketch2MedI, to_uint8
from s2m_retrieval.model.segmentation import segment_images

N = 16
SEED = 5  # phantoms of a seed no network was trained on (training uses seed 0)


@pytest.fixture(scope="module")
def pipeline():
    return Sketch2MedI.from_checkpoints(perceptual=None)


@pytest.fixture(scope="module")
def held_out():
    phantoms = [make_phantom(SEED, i, 64) for i in range(N)]
    sketches = np.stack([sketch_from_mask(m, 64, freehand=FreehandConfig(), seed=i)
                         for i, (_, m, _) in enumerate(phantoms)])
    return np.stack([p[0] for p in phantoms]), np.stack([p[1] for p in phantoms]), sketches


def _dice(pred: np.ndarray, masks: np.ndarray, shift: int = 0) -> float:
    """Mean anatomy DICE of each prediction against the mask `shift` places on (0: its own)."""
    return float(np.mean([np.nanmean(dice_per_class(pred[i], masks[(i + shift) % len(masks)], 7)[1:])
                          for i in range(len(pred))]))


def test_shipped_networks_belong_to_the_shipped_generator(pipeline):
    assert pipeline.refiner is not None and pipeline.inverter is not None
    assert set(pipeline.versions) >= {"generator", "encoder", "refiner", "inverter"}


def test_generated_images_follow_their_sketches(pipeline, held_out):
    torch.set_num_threads(1)
    _, masks, sketches = held_out
    for steps in (0, 3):
        with torch.inference_mode():
            _, _, x_hat = pipeline.generate(sketches, steps=steps)
        pred = segment_images(to_uint8(x_hat))
        own, other = _dice(pred, masks), _dice(pred, masks, shift=5)
        # the anatomy of x̂ matches its own sketch's phantom clearly better than another phantom's
        assert own > 0.55 and own > other + 0.08, (steps, own, other)


def test_inverter_keeps_the_layout_of_archive_images(pipeline, held_out):
    torch.set_num_threads(1)
    images, masks, _ = held_out
    with torch.inference_mode():
        w_plus = pipeline.invert(images)
        recon = to_uint8(pipeline.G(w_plus))
    pred = segment_images(recon)
    own, other = _dice(pred, masks), _dice(pred, masks, shift=5)
    assert own > 0.6 and own > other + 0.1, (own, other)
