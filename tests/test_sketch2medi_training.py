"""Tests of the Sketch2MedI training loops (E + D_latent, H, inverter), pair data and the pipeline (tiny, CPU)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from s2m_retrieval.networks.checkpoint import load_checkpoint, save_checkpoint, version_hash
from s2m_retrieval.data.phantom import make_phantom
from s2m_retrieval.data.sketch import FreehandConfig, sketch_from_mask
from s2m_retrieval.errors import BadInputError, CheckpointError
from s2m_retrieval.networks.encoders import Encoder, encoder_config_for
from s2m_retrieval.networks.refiner import Refiner, refiner_config_for
from s2m_retrieval.networks.stylegan2 import Generator, GeneratorConfig
from s2m_retrieval.model.perceptual import load_perceptual
from s2m_retrieval.model.pipeline import Sketch2MedI, to_uint8
from s2m_retrieval.training.sketch2medi import (EncoderTrainConfig, PairSet, RefinerTrainConfig, invert, load_encoder,
                                                load_inverter, load_refiner, model_version, phantom_pairs,
                                                train_encoder, train_inverter, train_refiner)

TINY_G = GeneratorConfig(z_dim=16, w_dim=16, mapping_layers=2, img_resolution=32, channel_base=256, channel_max=16)
E_KW = dict(widths=(8, 16, 16, 16), head_width=8)
H_KW = dict(widths=(8, 16), head_width=8, rank=2)
QUIET = dict(perceptual="random", sample_every=10_000, snapshot_every=10_000)


@pytest.fixture(scope="module")
def G():
    torch.manual_seed(0)
    G = Generator(TINY_G).eval().requires_grad_(False)
    with torch.no_grad():
        G.mapping(torch.randn(1000, TINY_G.z_dim), update_w_avg=True)
        G.w_avg.copy_(G.mapping_network(torch.randn(1000, TINY_G.z_dim)).mean(0))
    return G


@pytest.fixture(scope="module")
def pairs(G):
    """8 reachable targets (G's own images) next to phantom sketches: a set a tiny E can fit."""
    with torch.no_grad():
        images = G(G.sample_w_plus(8, seed=1)).clamp(-1, 1)
    images = ((images + 1) * 127.5).round().to(torch.uint8)
    sketches = np.stack([sketch_from_mask(make_phantom(3, i, 32)[1], 32) for i in range(8)])
    return PairSet(images, torch.from_numpy(sketches)[:, None])


def fitted(losses, k=5):
    return float(np.mean(losses[:k])), float(np.mean(losses[-k:]))


def test_phantom_pairs_are_seeded_variants():
    a = phantom_pairs(2, 32, seed=4, variants=2)
    b = phantom_pairs(1, 32, seed=4, start=1, variants=2)
    assert a.images.shape == (2, 3, 32, 32) and a.sketches.shape == (2, 2, 32, 32) and a.resolution == 32
    assert torch.equal(a.sketches[1], b.sketches[0]) and torch.equal(a.images[1], b.images[0])
    assert not torch.equal(a.sketches[0, 0], a.sketches[0, 1])          # the variants really differ
    assert a.info["source"] == "phantom" and a.info["variants"] == 2
    with pytest.raises(BadInputError):
        PairSet(a.images, a.sketches[:1])


def test_train_encoder_lowers_the_loss_and_writes_checkpoints(G, pairs, tmp_path):
    losses, terms = [], []
    tc = EncoderTrainConfig(steps=40, batch=8, lr=2e-3, r1_interval=4, **{**QUIET, "sample_every": 40})
    path = train_encoder(pairs, G, tmp_path, encoder_config_for(TINY_G, **E_KW), train_config=tc,
                         progress=lambda p: (losses.append(p.loss), terms.append(p.terms)))
    first, last = fitted(losses)
    assert last < 0.75 * first, (first, last)
    assert {"l2", "perceptual", "adv", "d"} <= set(terms[-1]) and any("r1" in t for t in terms)
    E = load_encoder(path)
    payload = load_checkpoint(path, kind="encoder")
    assert payload["meta"]["generator_version"] == model_version(G) == version_hash(
        {"config": load_checkpoint(save_checkpoint(tmp_path / "g.pt", kind="generator", config=G.config,
                                                   state_dict=G.state_dict()))["config"],
         "state_dict": G.state_dict()})
    assert payload["meta"]["perceptual"] == "random:0" and payload["meta"]["with_latent_discriminator"]
    assert torch.equal(E.w_avg, G.w_avg)
    assert (tmp_path / "latent_discriminator.pt").is_file() and (tmp_path / "latest.pt").is_file()
    assert (tmp_path / "samples" / "encoder0000040.png").is_file()


def test_encoder_resume_continues_at_the_same_step(G, pairs, tmp_path):
    cfg = encoder_config_for(TINY_G, **E_KW)

    def run(out, steps):
        seen = []
        tc = EncoderTrainConfig(steps=steps, batch=4, lr=2e-3, r1_interval=2, progressive_every=2, **QUIET)
        path = train_encoder(pairs, G, out, cfg, train_config=tc, progress=lambda p: seen.append(p.step))
        return path, seen

    straight, _ = run(tmp_path / "a", 6)
    run(tmp_path / "b", 3)
    resumed, seen = run(tmp_path / "b", 6)
    assert seen == [4, 5, 6]
    a, b = load_checkpoint(straight)["state_dict"], load_checkpoint(resumed)["state_dict"]
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    with pytest.raises(CheckpointError, match=r"other settings \(encoder widths"):
        train_encoder(pairs, G, tmp_path / "b", encoder_config_for(TINY_G, widths=(8, 8, 8, 8), head_width=8),
                      train_config=EncoderTrainConfig(steps=7, batch=4, **QUIET), progress=lambda p: None)


def test_encoder_alone_writes_no_discriminator(G, pairs, tmp_path):
    tc = EncoderTrainConfig(steps=2, batch=2, adv=0.0, **QUIET)
    path = train_encoder(pairs, G, tmp_path, encoder_config_for(TINY_G, **E_KW), train_config=tc,
                         progress=lambda p: None)
    assert not (tmp_path / "latent_discriminator.pt").exists()
    assert load_checkpoint(path)["meta"]["with_latent_discriminator"] is False


def test_train_refiner_lowers_the_loss(G, pairs, tmp_path):
    torch.manual_seed(0)
    E = Encoder(encoder_config_for(TINY_G, **E_KW)).eval()
    E.w_avg.copy_(G.w_avg)                                                 # a fresh E: every sketch -> w_avg
    losses = []
    # L2 only: the random plumbing metric is no objective worth fitting, E's test covers the perceptual path.
    tc = RefinerTrainConfig(steps=30, batch=8, lr=1e-2, refine_steps=2, perceptual_weight=0.0,
                            **{**QUIET, "sample_every": 30})
    path = train_refiner(pairs, G, E, tmp_path, refiner_config_for(G, **{**H_KW, "rank": 4}), train_config=tc,
                         progress=lambda p: losses.append(p.loss))
    first, last = fitted(losses)
    assert last < 0.85 * first, (first, last)
    H = load_refiner(path)
    meta = load_checkpoint(path)["meta"]
    assert meta["encoder_version"] == model_version(E) and meta["generator_version"] == model_version(G)
    assert any(torch.count_nonzero(p) for n, p in H.named_parameters() if "to_a" in n)
    assert (tmp_path / "samples" / "refiner0000030.png").is_file()


def test_train_refiner_fine_tunes_from_an_init(G, pairs, tmp_path):
    torch.manual_seed(0)
    E = Encoder(encoder_config_for(TINY_G, **E_KW)).eval()
    E.w_avg.copy_(G.w_avg)
    start = Refiner(refiner_config_for(G, **H_KW))
    with torch.no_grad():
        for p in start.parameters():
            p.add_(0.01 * torch.randn_like(p))
    losses = []
    tc = RefinerTrainConfig(steps=1, batch=2, lr=1e-12, refine_steps=1, perceptual_weight=0.0, **QUIET)
    path = train_refiner(pairs, G, E, tmp_path, train_config=tc, init=start, progress=lambda p: losses.append(p))
    tuned = load_refiner(path)
    assert tuned.config == start.config                                 # the init's config, not the default one
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(tuned.state_dict().values(),
                                                              start.state_dict().values()))


def test_train_inverter_lowers_the_loss_and_inverts(G, pairs, tmp_path):
    losses = []
    tc = EncoderTrainConfig(steps=30, batch=8, lr=2e-3, iterations=2, **QUIET)
    path = train_inverter(pairs.images, G, tmp_path, encoder_config_for(TINY_G, 3, 3, **E_KW), train_config=tc,
                          progress=lambda p: losses.append(p.loss))
    first, last = fitted(losses)
    assert last < 0.75 * first, (first, last)
    inverter = load_inverter(path)
    assert inverter.config.extra_channels == 3
    images = pairs.images[:2].float() / 127.5 - 1
    w1 = invert(inverter, G, images, iterations=1)
    w3 = invert(inverter, G, images)
    assert w1.shape == w3.shape == (2, TINY_G.num_ws, TINY_G.w_dim) and not torch.allclose(w1, w3)
    metric = load_perceptual("random")
    w_opt = invert(inverter, G, images, optimise_steps=15, perceptual=metric)

    def error(w):
        with torch.no_grad():
            return ((G(w) - images) ** 2).mean().item()

    assert error(w_opt) < error(w3)
    assert all(p.grad is None for p in G.parameters())
    with pytest.raises(BadInputError):
        invert(inverter, G, images[:, :1])


def save_component(path, kind, module, meta=None):
    return save_checkpoint(path, kind=kind, config=module.config, state_dict=module.state_dict(),
                           w_avg=getattr(module, "w_avg", None), meta=meta or {})


@pytest.fixture
def pipeline_files(G, tmp_path):
    torch.manual_seed(0)
    E = Encoder(encoder_config_for(TINY_G, **E_KW))
    E.w_avg.copy_(G.w_avg)
    inv = Encoder(encoder_config_for(TINY_G, 3, 3, **E_KW))
    H = Refiner(refiner_config_for(G, **H_KW))
    with torch.no_grad():
        for module in (E, inv, H):
            for name, p in module.named_parameters():
                if "linear" in name or "to_a" in name:
                    p.normal_(0, 0.05)
    g_meta = {"generator_version": model_version(G)}
    return {"generator": save_component(tmp_path / "g.pt", "generator", G),
            "encoder": save_component(tmp_path / "e.pt", "encoder", E, g_meta),
            "refiner": save_component(tmp_path / "h.pt", "refiner", H, {**g_meta, "encoder_version": model_version(E)}),
            "inverter": save_component(tmp_path / "i.pt", "inverter", inv, g_meta)}


def test_pipeline_generates_and_inverts(G, pipeline_files):
    model = Sketch2MedI.from_checkpoints(**pipeline_files, perceptual="random")
    sketch = sketch_from_mask(make_phantom(3, 0, 64)[1], 64)           # any size: resized to G's resolution
    w0, deltas0, x0 = model.generate(sketch, steps=0)
    w3, deltas3, x3 = model.generate(sketch, steps=3)
    assert deltas0 is None and set(deltas3) == set(model.refiner.config.layers)
    assert torch.equal(w0, w3) and torch.equal(w0, model.sketch_to_latent(sketch))
    # The pipeline runs G in channels_last: the same images as G's own layout up to float rounding.
    assert torch.allclose(x0, G(w0), atol=1e-5, rtol=0) and (x3 - x0).abs().max() > 1e-4
    assert to_uint8(x3).shape == (1, 32, 32, 3)
    rgba = np.dstack([np.repeat(sketch[..., None], 3, 2), np.full(sketch.shape, 255, np.uint8)])
    assert torch.equal(model.sketch_to_latent(rgba), w0)
    w_inv = model.invert(np.zeros((2, 40, 40, 3), np.uint8), iterations=2)
    assert w_inv.shape == (2, TINY_G.num_ws, TINY_G.w_dim)
    with pytest.raises(BadInputError, match="blank"):
        model.generate(np.full((32, 32), 255, np.uint8))
    assert len(model.version) == 16 and model.versions["encoder"] == version_hash(
        load_checkpoint(pipeline_files["encoder"]))
    without_h = Sketch2MedI.from_checkpoints(pipeline_files["generator"], pipeline_files["encoder"], None, None,
                                             perceptual=None)
    assert without_h.version != model.version
    with pytest.raises(BadInputError, match="refiner"):
        without_h.generate(sketch, steps=1)


def test_pipeline_refuses_components_trained_on_another_generator(G, pipeline_files, tmp_path):
    torch.manual_seed(1)
    other = save_component(tmp_path / "g2.pt", "generator", Generator(TINY_G))
    with pytest.raises(CheckpointError, match="trained against generator"):
        Sketch2MedI.from_checkpoints(other, pipeline_files["encoder"], None, None, perceptual=None)
    loose = Sketch2MedI.from_checkpoints(other, pipeline_files["encoder"], None, None, perceptual=None, strict=False)
    assert loose.versions["generator"] != model_version(G)


def test_pairs_cache_refuses_what_it_did_not_draw(tmp_path):
    from s2m_retrieval.training.pair_source import source_pairs

    def draw(spec="phantom:3", **kwargs):
        return source_pairs(spec, 32, cache=tmp_path / "pairs.pt", **{"variants": 1, **kwargs})

    note = tmp_path / "note.txt"
    note.write_text("not pairs")
    ckpt = save_checkpoint(tmp_path / "g.pt", kind="generator", config=TINY_G, state_dict={})
    for path in (note, ckpt):
        before = path.read_bytes()
        with pytest.raises(BadInputError, match=f"{path} is not a pairs cache") as info:
            source_pairs("phantom:3", 32, variants=1, cache=path)
        assert "\n" not in str(info.value) and path.read_bytes() == before
    with pytest.raises(BadInputError, match=f"pairs cache {tmp_path} is a folder"):
        source_pairs("phantom:3", 32, variants=1, cache=tmp_path)
    assert len(draw()) == 3 and draw().key["source"] == "phantom:3:0"             # drawn once, then read
    cached = (tmp_path / "pairs.pt").read_bytes()
    for kwargs, change in (({"spec": "phantom:4"}, "source phantom:3:0 -> phantom:4:0"),
                           ({"spec": "phantom:3:1"}, "source phantom:3:0 -> phantom:3:1"),
                           ({"limit": 2}, "limit none -> 2"), ({"variants": 2}, "pairs per image 1 -> 2")):
        with pytest.raises(BadInputError, match=f"other settings \\({change}\\).*another path.*or delete"):
            draw(**kwargs)
        assert (tmp_path / "pairs.pt").read_bytes() == cached
    assert len(draw(limit=3)) == 3                                        # a limit of N or more: the same pairs
    assert len(draw(limit=2, replace=True)) == 2 and len(draw(limit=2)) == 2   # replace: a file the caller owns
    with pytest.raises(BadInputError, match="limit 2 -> none"):
        draw()
    for bad in (0, -3):
        with pytest.raises(BadInputError, match="limit must be >= 1"):
            draw(limit=bad)


def test_pairs_cache_of_before_phantom_keys_held_the_limit(tmp_path):
    import json

    from s2m_retrieval.training.pair_source import source_pairs
    from s2m_retrieval.training.pairs import SKETCH_RECIPE
    from s2m_retrieval.training.state import atomic_save

    two = phantom_pairs(2, 32, variants=1)
    old_key = {"phantom": [4, 0], "size": 32, "variants": 1, "recipe": SKETCH_RECIPE}  # drawn with --limit 2
    atomic_save({"key": json.dumps(old_key, sort_keys=True), "images": two.images, "sketches": two.sketches,
                 "info": json.dumps(two.info)}, tmp_path / "pairs.pt")
    assert torch.equal(source_pairs("phantom:4", 32, variants=1, limit=2, cache=tmp_path / "pairs.pt").images,
                       two.images)
    with pytest.raises(BadInputError, match="images 2 -> 4"):
        source_pairs("phantom:4", 32, variants=1, cache=tmp_path / "pairs.pt")


def test_train_configs_refuse_non_finite_rates_and_weights():
    from s2m_retrieval.training.cyclegan import CycleGANTrainConfig
    from s2m_retrieval.training.embedding import EmbeddingTrainConfig
    from s2m_retrieval.training.index_space import IndexEncoderTrainConfig
    from s2m_retrieval.training.pix2pix import Pix2PixTrainConfig
    from s2m_retrieval.training.projector import ProjectorTrainConfig
    from s2m_retrieval.training.ugatit import UGATITTrainConfig
    from s2m_retrieval.training.unit import UNITTrainConfig
    from s2m_retrieval.training.unpaired import UnpairedTrainConfig

    fields = {EncoderTrainConfig: ("lr", "d_lr", "l2", "perceptual_weight", "adv"),
              RefinerTrainConfig: ("lr", "l2", "perceptual_weight"), Pix2PixTrainConfig: ("lr", "l1", "adv"),
              EmbeddingTrainConfig: ("lr", "weight_decay"), UnpairedTrainConfig: ("lr", "cycle", "adv"),
              CycleGANTrainConfig: ("identity",), UNITTrainConfig: ("recon", "kl", "kl_cycle"),
              UGATITTrainConfig: ("identity", "cam"), IndexEncoderTrainConfig: ("lr", "distill", "tau"),
              ProjectorTrainConfig: ("lr", "tau")}
    for config, names in fields.items():
        for name in names:
            for value in (float("nan"), float("inf"), -float("inf"), 1e300):  # 1e300: finite, not in float32
                with pytest.raises(BadInputError, match=f"finite .*{name} {re.escape(str(value))}"):
                    config(**{name: value})
