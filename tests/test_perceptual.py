"""Tests of the perceptual distance backends: per-pair outputs, feature caching, explicit missing-weights errors."""

from __future__ import annotations

import pytest
import torch

from s2m_retrieval.networks.checkpoint import save_checkpoint
from s2m_retrieval.errors import BadInputError, PerceptualWeightsMissing
from s2m_retrieval.networks.segmenter import Segmenter, SegmenterConfig
from s2m_retrieval.model.perceptual import load_perceptual, torchvision_weights_path

ALEXNET_FEATURE_SHAPES = {0: (64, 3, 11, 11), 3: (192, 64, 5, 5), 6: (384, 192, 3, 3), 8: (256, 384, 3, 3),
                          10: (256, 256, 3, 3)}


def images(n=3, seed=0, size=32):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=gen) * 2 - 1


def check_metric(metric, size=32):
    x, y = images(3, 0, size), images(3, 1, size)
    same, other = metric.distance(x, x), metric.distance(x, y)
    assert same.shape == other.shape == (3,)
    assert torch.all(same.abs() < 1e-6) and torch.all(other > 1e-4)
    # Cached features give the same numbers, and one query broadcasts against a batch of candidates.
    fx, fy = metric.features(x), metric.features(y)
    assert torch.allclose(metric.distance_from_features(fx, fy), other, atol=1e-6)
    one_vs_all = metric.distance_from_features([f[:1] for f in fx], fy)
    assert torch.allclose(one_vs_all, metric.distance(x[:1].expand_as(y), y), atol=1e-5)


def test_random_backend_is_a_per_pair_distance():
    metric = load_perceptual("random")
    assert (metric.name, metric.version) == ("random", "random:0")
    check_metric(metric)
    assert load_perceptual("random").distance(images(2), images(2, 5)).tolist() == \
        metric.distance(images(2), images(2, 5)).tolist()                   # same weights every time


def test_gradients_reach_the_images_not_the_metric():
    metric = load_perceptual("random")
    metric.train()
    assert not metric.training                                             # a metric never trains
    x = images(2).requires_grad_(True)
    metric.distance(x, images(2, 1)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in metric.parameters())


def test_lpips_without_torchvision_weights_says_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(PerceptualWeightsMissing) as info:
        load_perceptual("lpips-alex")
    message = str(info.value)
    assert "\n" not in message
    assert "alexnet-owt-7be5be79.pth" in message and str(tmp_path / "hub" / "checkpoints") in message
    assert "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth" in message
    with pytest.raises(PerceptualWeightsMissing, match="vgg16-397923af.pth"):
        load_perceptual("lpips-vgg")


def test_lpips_loads_the_placed_file_without_network(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path = torchvision_weights_path("alex")
    path.parent.mkdir(parents=True)
    gen = torch.Generator().manual_seed(0)
    state = {}
    for index, shape in ALEXNET_FEATURE_SHAPES.items():  # a random stand-in with torchvision's key layout
        state[f"features.{index}.weight"] = torch.randn(shape, generator=gen) * 0.05
        state[f"features.{index}.bias"] = torch.zeros(shape[0])
    torch.save(state, path)
    metric = load_perceptual("lpips-alex")
    assert (metric.name, metric.version) == ("lpips-alex", "lpips-alex:v0.1")
    check_metric(metric, size=64)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(PerceptualWeightsMissing, match="damaged"):
        load_perceptual("lpips-alex")


def test_seg_backend_uses_the_segmenter_encoder(tmp_path):
    torch.manual_seed(0)
    model = Segmenter(SegmenterConfig(base_channels=8, depth=2, img_resolution=32))
    path = save_checkpoint(tmp_path / "seg.pt", kind="segmenter", config=model.config, state_dict=model.state_dict())
    metric = load_perceptual("seg", checkpoint=path)
    assert metric.name == "seg" and metric.version.startswith("seg:") and len(metric.version) == 20
    assert len(metric.features(images(1))) == 3                            # stem + two down levels
    check_metric(metric)
    with pytest.raises(ValueError, match="multiples of 4"):
        metric.distance(images(1, size=30), images(1, size=30))


def test_seg_dice_compares_segmentations_and_caches_them():
    import numpy as np

    from s2m_retrieval.data.phantom import make_phantom
    from s2m_retrieval.model.pipeline import image_batch

    metric = load_perceptual("seg-dice")                                     # the shipped segmenter
    assert metric.cacheable and metric.version.startswith("seg-dice:")
    phantoms = [make_phantom(4, i, 64) for i in range(4)]
    x = image_batch(np.stack([p[0] for p in phantoms]), 64)
    check_metric(metric, size=64)
    rows = metric.pack(metric.features(x))
    assert rows.shape == (4, 6 * 16 * 16) and rows.dtype == np.float16
    stored = metric.unpack(rows, [(6, 16, 16)])
    d = metric.distance_from_features(metric.features(x[:1]), stored)
    assert float(d[0]) < 1e-3 and bool((d[1:] > 0.05).all())
    # the distance follows how the true label maps overlap: the closest by masks is the closest by seg-dice
    masks = [p[1] for p in phantoms]
    true = [np.mean([2 * ((masks[0] == c) & (m == c)).sum() / max((masks[0] == c).sum() + (m == c).sum(), 1)
                     for c in range(1, 7) if (masks[0] == c).any() or (m == c).any()]) for m in masks[1:]]
    assert int(np.argmax(true)) == int(torch.argmin(d[1:]))


def test_unknown_backend_is_a_bad_input():
    with pytest.raises(BadInputError, match="seg, lpips-alex"):
        load_perceptual("clip")
