"""Tests of the StyleGAN2 generator, discriminator, augmentation and GAN training loop (tiny configs, CPU)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from s2m_retrieval.networks.checkpoint import load_checkpoint, save_checkpoint
from s2m_retrieval.errors import BadInputError, CheckpointError
from s2m_retrieval.networks.stylegan2 import (Discriminator, Generator, GeneratorConfig, load_generator)
from s2m_retrieval.training.augment import diff_augment, rand_translation
from s2m_retrieval.training.gan import (GanTrainConfig, discriminator_config_for, load_train_state, train_generator)

TINY = GeneratorConfig(z_dim=16, w_dim=16, mapping_layers=2, img_resolution=32, channel_base=128, channel_max=16)


def tiny_g(seed: int = 0, **overrides) -> Generator:
    torch.manual_seed(seed)
    cfg = GeneratorConfig(**{**TINY.__dict__, **overrides})
    return Generator(cfg).eval()


@pytest.mark.parametrize("res, num_ws", [(32, 8), (64, 10), (128, 12), (256, 14)])
def test_shapes_and_num_ws(res, num_ws):
    G = tiny_g(img_resolution=res, channel_base=8 * res, channel_max=8)
    assert G.num_ws == G.config.num_ws == num_ws == 2 * math.log2(res) - 2
    with torch.no_grad():
        img = G(G.sample_w_plus(2, seed=1))
        logits = Discriminator(discriminator_config_for(G.config))(img)
    assert img.shape == (2, 3, res, res) and torch.isfinite(img).all()
    assert logits.shape == (2, 1)


def test_default_config_is_the_small_64px_model():
    cfg = GeneratorConfig()
    assert cfg.img_resolution == 64 and cfg.num_ws == 10
    assert [cfg.channels(r) for r in (4, 8, 16, 32, 64)] == [128, 128, 64, 32, 16]
    n_params = sum(p.numel() for p in Generator(cfg).parameters())
    assert 0.8e6 < n_params < 1.5e6


def test_bad_shapes_raise():
    G = tiny_g()
    with pytest.raises(ValueError, match="w_plus"):
        G(torch.zeros(1, G.num_ws + 1, 16))
    with pytest.raises(ValueError, match="noise_mode"):
        G(G.sample_w_plus(1), noise_mode="loud")
    with pytest.raises(ValueError, match="z must be"):
        G.mapping(torch.zeros(2, 3))
    with pytest.raises(BadInputError, match="power of two"):
        GeneratorConfig(img_resolution=48)


def test_checkpoint_round_trip_rebuilds_identical_model(tmp_path):
    G = tiny_g(seed=0)
    G.w_avg.normal_()
    for p in G.parameters():  # non-zero noise strengths and biases, so every tensor matters
        p.data.add_(0.1 * torch.randn_like(p))
    path = save_checkpoint(tmp_path / "g.pt", kind="generator", config=G.config, state_dict=G.state_dict(),
                           w_avg=G.w_avg, meta={"kimg": 1.0})
    G2 = load_generator(path)
    G3 = load_generator(load_checkpoint(path, kind="generator"))
    w = G.sample_w_plus(3, seed=5)
    with torch.no_grad():
        out = G(w)
        assert torch.equal(out, G2(w)) and torch.equal(out, G3(w))
        assert not torch.allclose(out, tiny_g(seed=1)(w), atol=1e-3)
    assert G2.config == G.config and torch.equal(G2.w_avg, G.w_avg)


def test_load_generator_rejects_other_kind(tmp_path):
    G = tiny_g()
    path = save_checkpoint(tmp_path / "x.pt", kind="encoder", config=G.config, state_dict=G.state_dict())
    with pytest.raises(CheckpointError):
        load_generator(path)


def random_deltas(G: Generator, n: int, names: list[str], scale: float = 0.3) -> dict[str, torch.Tensor]:
    shapes = G.conv_weight_shapes()
    return {name: scale * torch.randn(n, *shapes[name][:2], 1, 1) for name in names}


def test_weight_deltas_equal_a_modified_copy_per_sample():
    G = tiny_g()
    names = G.conv_layer_names()
    assert names[0] == "b4.conv1" and names[-1] == "b32.conv1" and len(names) == G.num_ws - 1
    chosen = [names[0], names[3], names[-1]]
    deltas = random_deltas(G, 2, chosen)
    w = G.sample_w_plus(2, seed=2)
    with torch.no_grad():
        out = G(w, deltas)
        for i in range(2):
            G_mod = copy.deepcopy(G)
            for name in chosen:
                G_mod.conv_layer(name).weight.mul_(1 + deltas[name][i])
            expected = G_mod(w[i:i + 1])
            assert torch.allclose(out[i:i + 1], expected, atol=1e-5, rtol=0)
        assert (out - G(w)).abs().max() > 1e-2  # the deltas really changed the image
        as_list = [deltas.get(name) for name in names]
        assert torch.allclose(G(w, as_list), out, atol=1e-6, rtol=0)
    trainable = {k: v.clone().requires_grad_(True) for k, v in deltas.items()}
    G(w, trainable).square().mean().backward()  # H learns through G's image, so deltas must get gradients
    assert all(v.grad is not None and v.grad.abs().sum() > 0 for v in trainable.values())


def test_zero_deltas_give_plain_output_and_shared_deltas_broadcast():
    G = tiny_g()
    w = G.sample_w_plus(3, seed=3)
    zeros = {n: torch.zeros(3, s[0], s[1], 1, 1) for n, s in G.conv_weight_shapes().items()}
    one = random_deltas(G, 1, G.conv_layer_names())
    with torch.no_grad():
        # The delta path is a grouped conv, the plain path scales activations: equal up to float rounding.
        assert torch.allclose(G(w, zeros), G(w), atol=1e-5, rtol=1e-5)
        assert torch.allclose(G(w, one), G(w, {k: v.expand(3, -1, -1, -1, -1) for k, v in one.items()}),
                              atol=1e-6, rtol=0)


def test_a_shared_prefix_gives_the_full_forward_and_guards_its_blocks():
    """The blocks before the first refined one run once (`prefix`); forwards from there give the same images."""
    G = tiny_g()
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith("noise_strength"):
                p.fill_(0.1)  # the const noise is part of the comparison
        w = G.sample_w_plus(2, seed=4)
        fine = random_deltas(G, 2, [n for n in G.conv_layer_names() if n.startswith(("b16", "b32"))])
        start = G.prefix(w, "b16")
        assert start.done == ("b4", "b8") and start.x.shape[-1] == 8
        assert torch.equal(G(w, start=start), G(w))
        assert torch.equal(G(w, fine, start=start), G(w, fine))
        with pytest.raises(ValueError, match="which `start` has run"):
            G(w, random_deltas(G, 2, ["b8.conv0"]), start=start)
        with pytest.raises(ValueError, match="noise_mode 'const' or 'none'"):
            G.prefix(w, "b16", noise_mode="random")
        with pytest.raises(ValueError, match="unknown block"):
            G.prefix(w, "b17")
        with pytest.raises(ValueError, match="prefix of 2 codes, w_plus has 1"):
            G(w[:1], start=start)


def test_bad_deltas_raise():
    G = tiny_g()
    w = G.sample_w_plus(2)
    out_ch, in_ch = G.conv_weight_shapes()["b8.conv0"][:2]
    with pytest.raises(ValueError, match="unknown layers"):
        G(w, {"b8.torgb": torch.zeros(2, 3, out_ch, 1, 1)})
    with pytest.raises(ValueError, match="b8.conv0"):
        G(w, {"b8.conv0": torch.zeros(2, out_ch, in_ch, 3, 3)})
    with pytest.raises(ValueError, match="b8.conv0"):
        G(w, {"b8.conv0": torch.zeros(3, out_ch, in_ch, 1, 1)})
    with pytest.raises(ValueError, match="entries"):
        G(w, [None])


def test_truncation_and_w_avg_tracking():
    G = tiny_g()
    G.w_avg.normal_()
    z = torch.randn(4, 16)
    w0 = G.mapping(z, truncation_psi=0.0)
    assert w0.shape == (4, G.num_ws, 16)
    assert torch.equal(w0, G.w_avg.expand(4, G.num_ws, -1))
    assert not torch.allclose(G.mapping(z), w0)
    before = G.w_avg.clone()
    w = G.mapping(z, update_w_avg=True)[:, 0]
    beta = G.config.w_avg_beta
    assert torch.allclose(G.w_avg, beta * before + (1 - beta) * w.mean(0), atol=1e-6)


def test_noise_modes():
    G, G_other_seed = tiny_g(seed=0), tiny_g(seed=7)
    for a, b in zip(G.buffers(), G_other_seed.buffers()):
        if a.ndim == 4:  # const noise maps depend only on the config
            assert torch.equal(a, b)
    for name, p in G.named_parameters():
        if name.endswith("noise_strength"):
            p.data.fill_(0.5)
    w = G.sample_w_plus(2, seed=4)
    with torch.no_grad():
        assert torch.equal(G(w), G(w, noise_mode="const"))
        assert not torch.allclose(G(w, noise_mode="random"), G(w, noise_mode="random"))
        assert not torch.allclose(G(w, noise_mode="none"), G(w))


def test_sample_is_seeded():
    G = tiny_g()
    a, b, c = G.sample(2, seed=3), G.sample(2, seed=3), G.sample(2, seed=4)
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert torch.equal(G.sample(2, seed=torch.Generator().manual_seed(3)), a)


def test_augment_keeps_shape_and_supports_double_backward():
    torch.manual_seed(0)
    x = torch.arange(2 * 8 * 8, dtype=torch.float32).view(2, 1, 8, 8)
    shifted = rand_translation(x, 0.25)
    for i in range(2):  # the visible part is an integer shift of the input
        nz = shifted[i, 0][shifted[i, 0] != 0]
        assert torch.isin(nz, x[i, 0]).all() and nz.numel() >= 16
    img = torch.rand(3, 3, 16, 16, requires_grad=True)
    y = diff_augment(img * 2 - 1)
    assert y.shape == img.shape
    (g,) = torch.autograd.grad(y.square().sum(), img, create_graph=True)
    g.square().sum().backward()
    assert torch.isfinite(img.grad).all() and img.grad.abs().sum() > 0
    with pytest.raises(ValueError):
        diff_augment(img, ["rotate"])


def tiny_train(out_dir, steps: int, resume: bool = True, seen: list | None = None):
    images = torch.randint(0, 256, (12, 3, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    tc = GanTrainConfig(batch=4, total_kimg=steps * 4 / 1000, r1_interval=2, r1_gamma=1.0, ema_kimg=0.01,
                        snapshot_every=2, sample_every=2, seed=3)
    return train_generator(images, out_dir, TINY, train_config=tc, resume=resume,
                           progress=(seen.append if seen is not None else lambda p: None))


def test_training_steps_are_finite_and_resume_continues(tmp_path):
    seen_full, seen_a, seen_b = [], [], []
    full = tiny_train(tmp_path / "full", 4, seen=seen_full)
    tiny_train(tmp_path / "split", 2, seen=seen_a)
    split = tiny_train(tmp_path / "split", 4, seen=seen_b)
    assert [p.step for p in seen_full] == [1, 2, 3, 4]
    assert [p.step for p in seen_a] == [1, 2] and [p.step for p in seen_b] == [3, 4]
    assert all(math.isfinite(p.loss_g) and math.isfinite(p.loss_d) for p in seen_full)
    assert seen_full[0].r1 is not None and seen_full[1].r1 is None and math.isfinite(seen_full[0].r1)
    assert [p.loss_d for p in seen_b] == [p.loss_d for p in seen_full[2:]]

    state = torch.load(tmp_path / "split" / "latest.pt", weights_only=True)
    assert state["step"] == 4 and state["nimg"] == 16
    a, b = load_checkpoint(full, kind="generator"), load_checkpoint(split, kind="generator")
    assert a["meta"]["kimg"] == b["meta"]["kimg"] == 0.016
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    G = load_generator(split)
    assert torch.isfinite(G.sample(2)).all()
    assert (tmp_path / "split" / "samples" / "fakes0000004.png").is_file()
    assert (tmp_path / "split" / "samples" / "reals.png").is_file()


def test_training_rejects_bad_input_and_foreign_state(tmp_path):
    with pytest.raises(BadInputError, match="32"):
        train_generator(torch.zeros(4, 3, 16, 16), tmp_path / "x", TINY)
    with pytest.raises(BadInputError, match=r"\[-1, 1\]"):
        train_generator(torch.full((4, 3, 32, 32), 255.0), tmp_path / "x", TINY)
    tiny_train(tmp_path / "run", 1)
    other = GeneratorConfig(**{**TINY.__dict__, "w_dim": 8})
    with pytest.raises(CheckpointError, match="other network configs"):
        train_generator(torch.zeros(4, 3, 32, 32), tmp_path / "run", other, progress=lambda p: None)
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        load_train_state(tmp_path / "bad.pt")
