"""Tests of the sketch -> image quality table on tiny random checkpoints: rows, columns, DICE, notes, refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from s2m_retrieval.networks.checkpoint import load_checkpoint, save_checkpoint, version_hash
from s2m_retrieval.data.phantom import make_phantom
from s2m_retrieval.errors import BadInputError, CheckpointError
from s2m_retrieval.networks.encoders import Encoder, encoder_config_for
from s2m_retrieval.networks.pix2pix import UNetGenerator
from s2m_retrieval.networks.refiner import Refiner, refiner_config_for
from s2m_retrieval.networks.segmenter import Segmenter, SegmenterConfig
from s2m_retrieval.networks.stylegan2 import Generator, GeneratorConfig
from s2m_retrieval.model.perceptual import load_perceptual
from s2m_retrieval.generation.sketch_quality import (NA_MISSING, REFERENCE, held_out_phantoms, load_models,
                                                     overlaps_training, psnr, quality_markdown, sample_sheet,
                                                     sketch_dice, sketch_quality)
from s2m_retrieval.training.latent import model_version
from s2m_retrieval.training.pix2pix import pix2pix_config_for
from s2m_retrieval.training.segmenter import load_segmenter

TINY_G = GeneratorConfig(z_dim=16, w_dim=16, mapping_layers=2, img_resolution=32, channel_base=256, channel_max=16)
E_KW = dict(widths=(8, 16, 16, 16), head_width=8)
SEG = SegmenterConfig(base_channels=4, depth=2, img_resolution=32)


def _save(path, kind, module, meta):
    return save_checkpoint(path, kind=kind, config=module.config, state_dict=module.state_dict(),
                           w_avg=getattr(module, "w_avg", None), meta=meta)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Random tiny G, E (with and without D), H on E + D, pix2pix, inverter and segmenter, as checkpoint files."""
    tmp = tmp_path_factory.mktemp("quality")
    torch.manual_seed(0)
    G = Generator(TINY_G)
    E, E_alone = Encoder(encoder_config_for(TINY_G, **E_KW)), Encoder(encoder_config_for(TINY_G, **E_KW))
    inverter = Encoder(encoder_config_for(TINY_G, 3, 3, **E_KW))
    H = Refiner(refiner_config_for(G, widths=(8, 16), head_width=8, rank=2))
    with torch.no_grad():  # non-zero heads: every method makes a different image
        for module in (E, E_alone, inverter):
            module.w_avg.copy_(G.w_avg)
        for module in (E, E_alone, inverter, H):
            for name, p in module.named_parameters():
                if "linear" in name or "to_a" in name:
                    p.normal_(0, 0.05)
    g_meta = {"generator_version": model_version(G)}
    paths = {"generator": _save(tmp / "g.pt", "generator", G, {}),
             "encoder": _save(tmp / "e.pt", "encoder", E, {**g_meta, "with_latent_discriminator": True}),
             "encoder_alone": _save(tmp / "e0.pt", "encoder", E_alone, {**g_meta, "with_latent_discriminator": False}),
             "inverter": _save(tmp / "i.pt", "inverter", inverter, g_meta),
             "pix2pix": _save(tmp / "p.pt", "pix2pix", UNetGenerator(pix2pix_config_for(32, base_channels=8,
                                                                                      max_channels=16)), {})}
    paths["refiner"] = _save(tmp / "h.pt", "refiner", H,
                             {**g_meta, "encoder_version": version_hash(load_checkpoint(paths["encoder"]))})
    segmenter = _save(tmp / "seg.pt", "segmenter", Segmenter(SEG), {})
    return paths, segmenter


@pytest.fixture(scope="module")
def held():
    return held_out_phantoms(6, 32, seed=3, start=100)


def test_dice_of_a_perfect_segmentation_is_one():
    masks = np.stack([make_phantom(1, i, 32)[1] for i in range(3)])
    assert sketch_dice(masks, masks) == 1.0
    assert sketch_dice(np.zeros_like(masks), masks) == 0.0              # every anatomy class missed
    half = masks.copy()
    half[1] = 0
    assert sketch_dice(half, masks) == pytest.approx(2 / 3)             # per-image means, then their mean


def test_psnr_by_hand():
    a = np.zeros((2, 4, 4, 3), np.uint8)
    b = a.copy()
    b[1] = 255
    assert psnr(a, b)[1] == pytest.approx(0.0) and psnr(a, b)[0] == pytest.approx(100.0)


def test_held_out_phantoms_are_seeded_and_disjoint(held):
    again = held_out_phantoms(6, 32, seed=3, start=100)
    assert held.sketches.shape == held.masks.shape == (6, 32, 32) and held.images.shape == (6, 32, 32, 3)
    assert np.array_equal(held.sketches, again.sketches) and not np.array_equal(held.sketches[0], held.sketches[1])
    assert np.array_equal(held.images[0], make_phantom(3, 100, 32)[0])
    assert np.array_equal(held.reference[0], make_phantom(3, 106, 32)[0])
    assert overlaps_training(held.info, {"source": "phantom", "phantom_seed": 3, "start": 0, "n": 101})
    assert not overlaps_training(held.info, {"source": "phantom", "phantom_seed": 3, "start": 0, "n": 100})
    assert not overlaps_training(held.info, {"source": "phantom", "phantom_seed": 4, "start": 0, "n": 1000})


def test_quality_table_has_every_row_and_column(files, held):
    paths, seg_path = files
    models = load_models(**paths)
    metrics = {"seg": load_perceptual("seg", checkpoint=seg_path), "lpips-alex": NA_MISSING}
    stages = set()
    report, outputs = sketch_quality(held, models, load_segmenter(seg_path), metrics, max_steps=2, optimise_steps=2,
                                     batch=4, progress=lambda stage, done, total: stages.add(stage))
    methods = [row["method"] for row in report["sketch_to_image"]]
    assert methods == ["E alone", "E + D", "E + D + H, T=1", "E + D + H, T=2", "pix2pix", REFERENCE]
    assert list(outputs) == methods[:-1] and outputs["pix2pix"].shape == (6, 32, 32, 3)
    assert not np.array_equal(outputs["E + D"], outputs["E + D + H, T=1"])
    for row in report["sketch_to_image"][:-1]:
        assert row["perceptual"]["lpips-alex"] == NA_MISSING and row["perceptual"]["seg"] > 0
        assert 0 <= row["dice"] <= 1 and np.isfinite(row["fd"])
    assert [r["inversion"] for r in report["inversion"]] == ["1 iteration", "2 iterations", "3 iterations",
                                                             "3 iterations + 2 opt. steps"]
    assert all(r["images_per_s"] > 0 and np.isfinite(r["psnr"]) for r in report["inversion"])
    assert report["notes"] == [] and stages == {"generate", "score", "invert"}
    table = quality_markdown(report)
    rows = [line for line in table.splitlines() if line.startswith("|")]
    assert rows[0] == "| method | seg ↓ | lpips-alex ↓ | DICE S(x̂) vs mask ↑ | domain FD ↓ |"
    assert len(rows) == 2 + 6 + 2 + 4 and all(line.count("|") == 6 for line in rows)
    assert "| E alone | " in table and NA_MISSING in table and "| 3 iterations + 2 opt. steps |" in table
    sheet = sample_sheet(held, outputs, columns=2, tile=32)
    assert sheet.size[0] == 2 + (32 + 2) * 2                          # two sketches
    assert sheet.size[1] == 2 + (32 + 2 + 14) * 7                     # rows: sketch, five methods, target


def test_missing_methods_are_omitted_with_a_note(files, held):
    paths, seg_path = files
    models = load_models(paths["generator"], encoder=paths["encoder"])
    report, _ = sketch_quality(held, models, load_segmenter(seg_path), {"random": load_perceptual("random")},
                               max_steps=1)
    assert [row["method"] for row in report["sketch_to_image"]] == ["E + D", REFERENCE]
    assert report["inversion"] == [] and len(report["notes"]) == 4
    assert any("--pix2pix" in note for note in report["notes"])
    assert "Archive inverter" not in quality_markdown(report)


def test_load_models_refuses_mismatched_checkpoints(files, held):
    paths, seg_path = files
    with pytest.raises(CheckpointError, match="trained on encoder"):
        load_models(paths["generator"], encoder_alone=paths["encoder_alone"], refiner=paths["refiner"])
    with pytest.raises(BadInputError, match="pass it as --encoder"):
        load_models(paths["generator"], encoder_alone=paths["encoder"])
    torch.manual_seed(5)
    other = save_checkpoint(paths["generator"].parent / "g2.pt", kind="generator", config=TINY_G,
                            state_dict=Generator(TINY_G).state_dict())
    with pytest.raises(CheckpointError, match="trained against generator"):
        load_models(other, encoder=paths["encoder"])
    models = load_models(paths["generator"], encoder=paths["encoder"])
    models.data["encoder"] = {"source": "phantom", "phantom_seed": 3, "start": 0, "n": 500}
    with pytest.raises(BadInputError, match="overlap"):
        sketch_quality(held, models, load_segmenter(seg_path), {"random": load_perceptual("random")})
