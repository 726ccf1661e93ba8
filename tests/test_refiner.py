"""Tests of the refiner H: offset shapes, identity at init, iterative refinement, checkpoints (tiny configs, CPU)."""

from __future__ import annotations

import pytest
import torch

from s2m_retrieval.networks.checkpoint import load_checkpoint, save_checkpoint
from s2m_retrieval.errors import BadInputError
from s2m_retrieval.networks.refiner import Refiner, RefinerConfig, add_deltas, refine, refiner_config_for
from s2m_retrieval.networks.stylegan2 import Generator, GeneratorConfig
from s2m_retrieval.training.sketch2medi import load_refiner


TINY_G = GeneratorConfig(z_dim=16, w_dim=16, mapping_layers=2, img_resolution=32, channel_base=256, channel_max=16)


@pytest.fixture(scope="module")
def G():
    torch.manual_seed(0)
    G = Generator(TINY_G).eval().requires_grad_(False)
    with torch.no_grad():  # a non-zero noise strength makes the const-noise path part of the comparison
        for name, p in G.named_parameters():
            if name.endswith("noise_strength"):
                p.fill_(0.1)
    return G


def tiny_refiner(G, seed=0, **overrides) -> Refiner:
    torch.manual_seed(seed)
    return Refiner(refiner_config_for(G, **{"widths": (8, 16), "head_width": 8, "rank": 2, **overrides})).eval()


def make_nonzero(H: Refiner, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in H.named_parameters():
            if "to_a" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)


def inputs(n=2, seed=3):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 32, 32, generator=gen) * 2 - 1, torch.rand(n, 3, 32, 32, generator=gen) * 2 - 1


def test_default_layers_are_medium_and_fine_convs():
    G = Generator(GeneratorConfig())
    cfg = refiner_config_for(G)
    assert cfg.layers == ("b16.conv0", "b16.conv1", "b32.conv0", "b32.conv1", "b64.conv0", "b64.conv1")
    assert all(name in G.conv_layer_names() for name in cfg.layers)      # no ToRGB layer
    assert cfg.layer_shapes == tuple(G.conv_weight_shapes()[n][:2] for n in cfg.layers)
    n_params = sum(p.numel() for p in Refiner(cfg).parameters())
    assert 500_000 <= n_params <= 3_000_000


def test_offsets_have_the_shapes_g_expects(G):
    H = tiny_refiner(G, min_resolution=8)
    sketch, image = inputs(3)
    deltas = H(sketch, image)
    shapes = G.conv_weight_shapes()
    assert list(deltas) == [n for n in G.conv_layer_names() if int(n.split(".")[0][1:]) >= 8]
    for name, delta in deltas.items():
        assert delta.shape == (3, shapes[name][0], shapes[name][1], 1, 1)
    assert G(G.sample_w_plus(3), weight_deltas=deltas).shape == (3, 3, 32, 32)


def test_zero_heads_reproduce_g(G):
    H = tiny_refiner(G)
    sketch, _ = inputs()
    w = G.sample_w_plus(2, seed=5)
    deltas, images = refine(H, G, w, sketch, steps=3)
    assert all(torch.count_nonzero(d) == 0 for d in deltas.values())
    assert torch.equal(images[0], G(w))
    for img in images[1:]:
        # Per-sample weights take G's grouped-conv path: the same math, float rounding apart.
        assert torch.allclose(img, images[0], atol=1e-5, rtol=0)
    deltas0, images0 = refine(H, G, w, sketch, steps=0)
    assert deltas0 is None and len(images0) == 1 and torch.equal(images0[0], G(w))


def test_refinement_steps_change_the_image_and_accumulate(G):
    H = tiny_refiner(G)
    make_nonzero(H)
    sketch, _ = inputs()
    w = G.sample_w_plus(2, seed=5)
    deltas, images = refine(H, G, w, sketch, steps=2)
    assert (images[1] - images[0]).abs().max() > 1e-3
    assert (images[2] - images[1]).abs().max() > 1e-4
    expected = add_deltas(H(sketch, images[0]), H(sketch, images[1]))
    for name in deltas:
        assert torch.allclose(deltas[name], expected[name], atol=1e-6)
    assert torch.allclose(images[2], G(w, weight_deltas=deltas, noise_mode="const"), atol=1e-6)
    with pytest.raises(ValueError):
        refine(H, G, w, sketch, steps=-1)
    no_h, plain = refine(None, G, w, sketch, steps=0)                 # T = 0 needs no refiner
    assert no_h is None and torch.equal(plain[0], G(w, noise_mode="const"))


def test_refiner_rejects_wrong_inputs(G):
    H = tiny_refiner(G)
    with pytest.raises(ValueError, match="refiner expects"):
        H(torch.zeros(1, 3, 32, 32), torch.zeros(1, 3, 32, 32))
    with pytest.raises(BadInputError):
        refiner_config_for(G, layers=("b32.torgb",))
    with pytest.raises(BadInputError):
        RefinerConfig()                                                  # layers must be given


def test_refiner_checkpoint_round_trip(G, tmp_path):
    H = tiny_refiner(G)
    make_nonzero(H)
    path = save_checkpoint(tmp_path / "h.pt", kind="refiner", config=H.config, state_dict=H.state_dict())
    assert isinstance(load_checkpoint(path)["config"]["layer_shapes"][0], list)  # stored as plain lists
    loaded = load_refiner(path)
    assert loaded.config == H.config and hash(loaded.config) == hash(H.config)
    sketch, image = inputs()
    for name, delta in H(sketch, image).items():
        assert torch.equal(loaded(sketch, image)[name], delta)
