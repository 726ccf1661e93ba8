"""The shipped phantom generator loads and its samples show the anatomy the segmenter knows."""

from __future__ import annotations

import numpy as np
import torch

from s2m_retrieval.networks.checkpoint import load_checkpoint, shipped_weights
from s2m_retrieval.generation.report import generate_images
from s2m_retrieval.networks.stylegan2 import GeneratorConfig, load_generator
from s2m_retrieval.generation.quality import anatomy_found
from s2m_retrieval.model.segmentation import segment_images


def test_shipped_generator_makes_throats():
    torch.set_num_threads(1)
    payload = load_checkpoint(shipped_weights("generator"), kind="generator")
    assert payload["meta"]["kimg"] > 50
    G = load_generator(payload)
    assert G.config == GeneratorConfig() and G.config.num_ws == 10
    images = generate_images(G, 32, seed=123)
    assert images.shape == (32, 64, 64, 3)
    assert images.std(axis=0).mean() > 5  # samples differ from one another
    found = anatomy_found(segment_images(list(images)))
    assert found["tongue"] > 0.8 and found["uvula"] > 0.8, found
    assert np.isfinite(images).all()
