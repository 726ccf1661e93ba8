"""Halving a bundle's checkpoints: smaller files, same outputs within float16 precision, dependents re-stamped."""

from __future__ import annotations

import numpy as np
import torch

from s2m_retrieval.networks.checkpoint import load_checkpoint
from s2m_retrieval.model.compact import compact_bundle
from s2m_retrieval.model.pipeline import Sketch2MedI
from s2m_retrieval.testing.random_models import write_random_models
from retrieval_helpers import phantom_sketch


def _load(folder):
    return Sketch2MedI.from_checkpoints(generator=folder / "generator.pt", encoder=folder / "encoder.pt",
                                        refiner=folder / "refiner.pt", inverter=folder / "inverter.pt",
                                        perceptual=None)


def test_compact_halves_and_restamps(tmp_path):
    folder = write_random_models(tmp_path / "m", seed=3)
    before = _load(folder)
    with torch.inference_mode():
        _, _, x_before = before.generate(phantom_sketch(size=32), steps=2)
    sizes = compact_bundle(folder, ("encoder", "refiner", "inverter"))
    assert set(sizes) == {"encoder.pt", "refiner.pt", "inverter.pt"}
    assert all(after < b for b, after in sizes.values())  # tiny models: the pickle overhead is most of a file
    stored = load_checkpoint(folder / "encoder.pt", kind="encoder")["state_dict"]
    assert {t.dtype for t in stored.values() if t.is_floating_point()} == {torch.float16}
    after = _load(folder)  # strict: H's recorded encoder version must be the halved E's, or this raises
    assert after.versions["encoder"] != before.versions["encoder"]
    assert after.versions["generator"] == before.versions["generator"]
    assert next(after.encoder.parameters()).dtype == torch.float32  # computed in float32 as before
    with torch.inference_mode():
        _, _, x_after = after.generate(phantom_sketch(size=32), steps=2)
    assert np.abs((x_after - x_before).numpy()).max() < 0.02
    assert compact_bundle(folder, ("encoder", "refiner", "inverter")) == {}  # already half: nothing rewritten
