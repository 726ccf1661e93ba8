"""Tests of the pix2pix baseline: U-Net and PatchGAN shapes, a tiny run lowers L1, resume, checkpoint round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from s2m_retrieval.networks.checkpoint import load_checkpoint
from s2m_retrieval.errors import BadInputError, CheckpointError
from s2m_retrieval.networks.pix2pix import PatchDiscriminator, UNetGenerator
from s2m_retrieval.training.pairs import phantom_pairs
from s2m_retrieval.training.pix2pix import (Pix2PixTrainConfig, load_pix2pix, patch_config_for, pix2pix_config_for,
                                            train_pix2pix)

TINY = dict(base_channels=8, max_channels=16)
TINY_D = dict(base_channels=8, max_channels=16)
QUIET = dict(sample_every=10_000, snapshot_every=10_000)


@pytest.fixture(scope="module")
def pairs():
    return phantom_pairs(6, 32, seed=2, variants=1)


def test_unet_and_patchgan_shapes():
    cfg = pix2pix_config_for(64, **TINY)
    assert cfg.depth == 6 and pix2pix_config_for(256).depth == 8
    net = UNetGenerator(cfg).eval()
    sketch = torch.rand(2, 1, 64, 64) * 2 - 1
    image = net(sketch)
    assert image.shape == (2, 3, 64, 64) and image.abs().max() <= 1
    d_cfg = patch_config_for(64, **TINY_D)
    assert d_cfg.receptive_field == 34 and patch_config_for(256).receptive_field == 70
    logits = PatchDiscriminator(d_cfg)(sketch, image)
    assert logits.shape == (2, 1, 14, 14)                               # one logit per overlapping 34 px patch
    with pytest.raises(ValueError, match="sketches"):
        net(torch.zeros(1, 3, 64, 64))
    with pytest.raises(BadInputError):
        pix2pix_config_for(48)


def test_unet_skips_carry_the_sketch_layout():
    # With the bottleneck zeroed, the output still depends on where the strokes are: the skips reach the decoder.
    net = UNetGenerator(pix2pix_config_for(32, **TINY)).eval()
    net.downs[-1].register_forward_hook(lambda module, args, output: torch.zeros_like(output))
    with torch.no_grad():
        left, right = torch.ones(1, 1, 32, 32), torch.ones(1, 1, 32, 32)
        left[..., 4:28, 6], right[..., 4:28, 25] = -1.0, -1.0
        assert (net(left) - net(right)).abs().mean() > 1e-4


def test_tiny_run_lowers_l1_and_round_trips(pairs, tmp_path):
    losses = []
    tc = Pix2PixTrainConfig(steps=30, batch=6, lr=2e-3, **{**QUIET, "sample_every": 30})
    path = train_pix2pix(pairs, tmp_path, pix2pix_config_for(32, **TINY), patch_config_for(32, **TINY_D), tc,
                         progress=lambda p: losses.append(p.loss))
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    assert last < 0.8 * first, (first, last)
    payload = load_checkpoint(path, kind="pix2pix")
    assert payload["meta"]["step"] == 30 and payload["meta"]["train_config"]["l1"] == 100.0
    net = load_pix2pix(path)
    assert not net.training and net.config == pix2pix_config_for(32, **TINY)
    x = pairs.sketches[:2, 0][:, None].float() / 127.5 - 1
    trained = UNetGenerator(net.config)
    trained.load_state_dict(payload["state_dict"])
    with torch.no_grad():
        assert torch.equal(net(x), trained.eval()(x))
    assert (tmp_path / "samples" / "pix2pix0000030.png").is_file()
    with pytest.raises(CheckpointError, match="expected a 'pix2pix'"):
        load_pix2pix(payload | {"kind": "encoder"})


def test_resume_continues_at_the_same_step(pairs, tmp_path):
    def run(out, steps):
        seen = []
        tc = Pix2PixTrainConfig(steps=steps, batch=2, **QUIET)
        path = train_pix2pix(pairs, out, pix2pix_config_for(32, **TINY), patch_config_for(32, **TINY_D), tc,
                             progress=lambda p: seen.append(p.step))
        return load_checkpoint(path)["state_dict"], seen

    straight, _ = run(tmp_path / "a", 4)
    run(tmp_path / "b", 2)
    resumed, seen = run(tmp_path / "b", 4)
    assert seen == [3, 4]
    assert all(torch.allclose(straight[k], resumed[k], atol=1e-6) for k in straight)
