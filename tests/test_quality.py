"""Generation-quality metrics: Fréchet distance, anatomy rates, Inception weights message."""

from __future__ import annotations

import numpy as np
import pytest

from s2m_retrieval.data.classes import TONGUE, TONSILS, UVULA
from s2m_retrieval.errors import WeightsMissingError
from s2m_retrieval.generation.quality import anatomy_found, frechet_distance, inception_model


def test_frechet_distance_of_gaussians():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 3))
    b = rng.normal(size=(4000, 3))
    assert frechet_distance(a, b) < 0.02
    shifted = b + np.array([2.0, 0.0, 0.0])
    assert frechet_distance(a, shifted) == pytest.approx(4.0, abs=0.15)
    # Scaling one axis by s adds (s - 1)^2 to the trace term.
    scaled = b * np.array([3.0, 1.0, 1.0])
    assert frechet_distance(a, scaled) == pytest.approx(4.0, abs=0.3)


def test_anatomy_found_counts_both_tonsils():
    full = np.zeros((16, 16), np.uint8)
    full[12:, :] = TONGUE
    full[2:6, 7:9] = UVULA
    full[6:9, 1:4] = TONSILS
    full[6:9, 12:15] = TONSILS
    one_side = full.copy()
    one_side[6:9, 12:15] = 0
    no_uvula = full.copy()
    no_uvula[no_uvula == UVULA] = 0
    stats = anatomy_found(np.stack([full, one_side, no_uvula, full]))
    assert stats["tongue"] == 1.0
    assert stats["uvula"] == 0.75
    assert stats["both_tonsils"] == 0.75
    assert stats["all"] == 0.5


def test_inception_weights_missing_is_clear(tmp_path):
    with pytest.raises(WeightsMissingError, match="inception_v3_google"):
        inception_model(torch_home=tmp_path)
