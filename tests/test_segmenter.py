"""The segmenter of S: network shapes, DICE, training on a tiny synthetic set, checkpoints, inference."""

import math

import numpy as np
import pytest
import torch

from s2m_retrieval.networks.checkpoint import load_checkpoint, save_checkpoint
from s2m_retrieval.errors import BadInputError, CheckpointError
from s2m_retrieval.generation.dice import dice_per_class, mean_dice
from s2m_retrieval.networks.segmenter import Segmenter, SegmenterConfig
from s2m_retrieval.training.segmenter import (SegTrainConfig, _augment, load_segmenter, segment, train_segmenter)

TINY = SegmenterConfig(base_channels=8, depth=2, img_resolution=32)
COLOURS = np.array([[40, 30, 30], [200, 90, 90], [230, 60, 60], [160, 40, 120],
                    [150, 90, 60], [240, 150, 170], [110, 40, 40]])


def toy_set(n, size=32, seed=0, noise=12.0):
    """Random ellipses of classes 5, 3, 2 painted in class colours plus noise: (images, masks)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        for label in (5, 3, 2):
            cx, cy, rx, ry = rng.uniform(0.25, 0.75, 2).tolist() + rng.uniform(0.1, 0.3, 2).tolist()
            masks[i][((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 < 1] = label
    images = COLOURS[masks] + rng.normal(0, noise, masks.shape + (3,))
    return np.clip(images, 0, 255).astype(np.uint8), masks


def test_network_shapes_size_and_config():
    model = Segmenter(SegmenterConfig())
    assert sum(p.numel() for p in model.parameters()) < 500_000
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 7, 64, 64)
        assert model(torch.zeros(1, 3, 128, 96)).shape == (1, 7, 128, 96)
        with pytest.raises(ValueError):
            model(torch.zeros(1, 3, 60, 64))
        with pytest.raises(ValueError):
            model(torch.zeros(1, 1, 64, 64))
    with pytest.raises(ValueError):
        SegmenterConfig(img_resolution=100)


def test_dice_against_hand_computed_cases():
    pred = np.array([[0, 1], [1, 2]])
    target = np.array([[0, 1], [2, 2]])
    dice = dice_per_class(pred, target, 4)
    # class 0: 2*1/(1+1); class 1: 2*1/(2+1); class 2: 2*1/(1+2); class 3 absent from both: NaN
    assert np.allclose(dice[:3], [1.0, 2 / 3, 2 / 3]) and math.isnan(dice[3])
    assert mean_dice(dice) == pytest.approx(2 / 3)
    assert mean_dice(dice, include_background=True) == pytest.approx((1 + 4 / 3) / 3)
    assert np.allclose(dice_per_class(target, target, 3), [1.0, 1.0, 1.0])
    assert np.allclose(dice_per_class(np.zeros((2, 2)), np.ones((2, 2)), 2), [0.0, 0.0])
    assert math.isnan(mean_dice(dice_per_class(np.zeros(3), np.zeros(3), 3)))
    with pytest.raises(ValueError):
        dice_per_class(pred, target[:1], 4)
    with pytest.raises(ValueError):
        dice_per_class(pred, target, 2)


def test_augment_moves_image_and_labels_together():
    images, masks = toy_set(8, noise=0.0)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    cfg = SegTrainConfig(color_jitter=0.0, affine_degrees=15.0, affine_scale=0.1, affine_translate=0.1)
    xa, ya = _augment(x, torch.from_numpy(masks).long(), cfg, torch.Generator().manual_seed(0))
    assert not torch.equal(ya, torch.from_numpy(masks).long())
    # the label each pixel's colour implies must be the label the warped mask gives it
    rgb = ((xa + 1) * 127.5).permute(0, 2, 3, 1).numpy()
    implied = np.linalg.norm(rgb[..., None, :] - COLOURS[None, None, None], axis=-1).argmin(-1)
    assert (implied == ya.numpy()).mean() > 0.95


def test_segmenter_learns_a_tiny_set_and_saves_a_checkpoint(tmp_path):
    images, masks = toy_set(40)
    calls = []
    cfg = SegTrainConfig(steps=60, batch=8, lr=1e-2, seed=0)
    metrics = train_segmenter(images, masks, cfg, TINY, tmp_path / "seg.pt",
                              progress=lambda step, total, loss: calls.append((step, total)))
    assert calls[0] == (1, 60) and calls[-1] == (60, 60)
    assert metrics["loss_end"] < 0.7 * metrics["loss_start"]
    assert metrics["n_val"] == 4 and metrics["n_train"] == 36
    dice = metrics["dice"]
    assert len(dice) == 7 and dice[1] is None and dice[4] is None and dice[6] is None  # absent classes
    assert dice[0] > 0.5

    payload = load_checkpoint(tmp_path / "seg.pt", kind="segmenter")
    assert payload["meta"]["dice"] == dice and payload["meta"]["steps"] == 60 and payload["meta"]["seed"] == 0
    model = load_segmenter(tmp_path / "seg.pt")
    assert model.config == TINY and not model.training
    labels = segment(model, images[:4])
    assert labels.shape == (4, 32, 32) and labels.dtype == np.uint8
    # clearly better than calling every pixel background (about 70 % of these pixels)
    assert (labels == masks[:4]).mean() > (masks[:4] == 0).mean() + 0.05


def test_training_is_seeded():
    images, masks = toy_set(12)

    def run(seed):
        return train_segmenter(images, masks, SegTrainConfig(steps=3, batch=4, seed=seed), TINY)["losses"]

    assert run(1) == run(1)
    assert run(1) != run(2)


def test_checkpoint_round_trip_and_wrong_kind(tmp_path):
    torch.manual_seed(0)
    model = Segmenter(TINY)
    save_checkpoint(tmp_path / "s.pt", kind="segmenter", config=TINY, state_dict=model.state_dict())
    loaded = load_segmenter(tmp_path / "s.pt")
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    save_checkpoint(tmp_path / "g.pt", kind="generator", config=TINY, state_dict=model.state_dict())
    with pytest.raises(CheckpointError):
        load_segmenter(tmp_path / "g.pt")
    wrong = SegmenterConfig(base_channels=4, depth=2, img_resolution=32)
    save_checkpoint(tmp_path / "w.pt", kind="segmenter", config=wrong, state_dict=model.state_dict())
    with pytest.raises(CheckpointError):
        load_segmenter(tmp_path / "w.pt")


def test_segment_any_size_and_bad_inputs():
    model = Segmenter(TINY)
    images, masks = toy_set(3, size=40)
    assert segment(model, images).shape == (3, 40, 40)
    assert segment(model, images[0]).shape == (40, 40)
    with pytest.raises(BadInputError):
        segment(model, images.astype(np.float32))
    bad = masks.copy()
    bad[0, 0, 0] = 9
    with pytest.raises(BadInputError):
        train_segmenter(images, bad, SegTrainConfig(steps=1), TINY)
    with pytest.raises(BadInputError):
        train_segmenter(images, masks[:2], SegTrainConfig(steps=1), TINY)
    with pytest.raises(BadInputError):
        train_segmenter(images[:1], masks[:1], SegTrainConfig(steps=1), TINY)
