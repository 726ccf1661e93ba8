"""Tests of the W+ encoders (sketch E, ReStyle inverter) and e4e's latent discriminator (tiny configs, CPU)."""

from __future__ import annotations

import pytest
import torch

from s2m_retrieval.networks.checkpoint import save_checkpoint
from s2m_retrieval.errors import BadInputError, CheckpointError
from s2m_retrieval.networks.encoders import (Encoder, EncoderConfig, LatentDiscriminator, LatentDiscriminatorConfig,
                                             encoder_config_for, entry_resolution, style_levels)
from s2m_retrieval.networks.stylegan2 import Generator, GeneratorConfig
from s2m_retrieval.training.sketch2medi import load_encoder, load_inverter, load_latent_discriminator


TINY_G = GeneratorConfig(z_dim=16, w_dim=16, mapping_layers=2, img_resolution=32, channel_base=128, channel_max=16)
TINY_WIDTHS = dict(widths=(8, 16, 16, 16), head_width=8)


def tiny_encoder(seed: int = 0, **overrides) -> Encoder:
    torch.manual_seed(seed)
    cfg = encoder_config_for(TINY_G, **{**TINY_WIDTHS, **overrides})
    E = Encoder(cfg)
    E.w_avg.copy_(torch.randn(TINY_G.w_dim))
    return E.eval()


def perturb_heads(module: torch.nn.Module, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "linear" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)


def test_style_levels_follow_psp_split():
    assert [entry_resolution(i, 10) for i in range(10)] == [4, 8, 8, 16, 16, 32, 32, 64, 64, 64]
    assert [entry_resolution(i, 8) for i in range(8)] == [4, 8, 8, 16, 16, 32, 32, 32]
    assert style_levels(10) == ("coarse",) * 3 + ("medium",) * 4 + ("fine",) * 3
    assert style_levels(8) == ("coarse",) * 3 + ("medium",) * 5                 # a 32 px G has no fine layers
    assert set(Encoder(encoder_config_for(TINY_G, **TINY_WIDTHS)).lateral) == {"coarse", "medium"}


def test_default_encoder_is_cpu_sized():
    cfg = encoder_config_for(GeneratorConfig())
    assert (cfg.img_resolution, cfg.num_ws, cfg.w_dim, cfg.in_channels) == (64, 10, 256, 1)
    assert [cfg.level_resolution(level) for level in ("coarse", "medium", "fine")] == [4, 8, 16]
    n_params = sum(p.numel() for p in Encoder(cfg).parameters())
    assert 1_000_000 <= n_params <= 3_000_000


@pytest.mark.parametrize("mode", ["e4e", "psp"])
def test_fresh_encoder_predicts_w_avg_and_shapes(mode):
    E = tiny_encoder(style_mode=mode)
    x = torch.rand(3, 1, 32, 32) * 2 - 1
    w = E(x)
    assert w.shape == (3, TINY_G.num_ws, TINY_G.w_dim)
    # Zero-initialised heads: a fresh encoder starts at G's mean latent.
    assert torch.equal(w, E.w_avg.view(1, 1, -1).expand_as(w))
    perturb_heads(E)
    w = E(x)
    assert not torch.allclose(w[0], w[1]) and not torch.allclose(w[:, 0], w[:, -1])


def test_e4e_progressive_deltas():
    E = tiny_encoder()
    perturb_heads(E)
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    w0 = E(x, active_deltas=0)
    assert torch.allclose(w0, w0[:, :1].expand_as(w0))               # no delta active: a single w repeated
    w2 = E(x, active_deltas=2)
    assert torch.allclose(w2[:, :3], E(x)[:, :3]) and torch.allclose(w2[:, 3:], w2[:, :1].expand_as(w2[:, 3:]))


def test_restyle_inverter_takes_current_reconstruction():
    E = tiny_encoder(in_channels=3, extra_channels=3)
    perturb_heads(E)
    x, recon = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    with pytest.raises(ValueError, match="reconstruction"):
        E(x)
    start = torch.randn(2, TINY_G.num_ws, TINY_G.w_dim)
    w = E(x, recon, w_start=start)
    assert w.shape == start.shape
    assert torch.allclose(w - start, E(x, recon) - E.w_avg.view(1, 1, -1), atol=1e-6)  # offsets add to the start
    assert not torch.allclose(E(x, recon), E(x, recon.flip(3)))      # the reconstruction is really read
    with pytest.raises(ValueError, match="encoder input"):
        E(torch.zeros(2, 1, 32, 32), recon)


def test_encoder_config_validation():
    with pytest.raises(BadInputError):
        EncoderConfig(style_mode="restyle")
    with pytest.raises(BadInputError):
        EncoderConfig(img_resolution=32, widths=(8, 8, 8, 8, 8, 8))   # 32 px cannot halve six times
    with pytest.raises(BadInputError):
        EncoderConfig(widths=(8, 8))


def test_latent_discriminator_shapes():
    D = LatentDiscriminator(LatentDiscriminatorConfig(w_dim=16, hidden=32, layers=3))
    assert D(torch.randn(7, 16)).shape == (7, 1)
    with pytest.raises(ValueError):
        D(torch.randn(2, 3, 16))


def test_encoder_checkpoint_round_trip(tmp_path):
    E = tiny_encoder(in_channels=3, extra_channels=3, style_mode="psp")
    perturb_heads(E)
    path = save_checkpoint(tmp_path / "inv.pt", kind="inverter", config=E.config, state_dict=E.state_dict(),
                           w_avg=E.w_avg)
    loaded = load_inverter(path)
    assert loaded.config == E.config and not loaded.training
    x, recon = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    assert torch.equal(loaded(x, recon), E(x, recon))
    with pytest.raises(CheckpointError, match="holds an 'inverter', expected an 'encoder'$"):
        load_encoder(path)
    D = LatentDiscriminator(LatentDiscriminatorConfig(w_dim=16))
    d_path = save_checkpoint(tmp_path / "d.pt", kind="latent_discriminator", config=D.config,
                             state_dict=D.state_dict())
    w = torch.randn(4, 16)
    assert torch.equal(load_latent_discriminator(d_path)(w), D(w))


def test_encoder_checkpoint_with_wrong_shapes_is_a_checkpoint_error(tmp_path):
    E = tiny_encoder()
    state = E.state_dict()
    state["w_avg"] = torch.zeros(5)
    path = save_checkpoint(tmp_path / "e.pt", kind="encoder", config=E.config, state_dict=state)
    with pytest.raises(CheckpointError, match="does not rebuild"):
        load_encoder(path)


def test_encoder_fits_the_generator_it_starts_from():
    G = Generator(TINY_G).eval()
    E = tiny_encoder()
    E.w_avg.copy_(G.w_avg)
    with torch.no_grad():
        img = G(E(torch.zeros(1, 1, 32, 32)))
    assert img.shape == (1, 3, 32, 32)
