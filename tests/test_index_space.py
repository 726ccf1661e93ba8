"""E trained for the index space: code bank, the index-metric losses, the fine-tuning loop (tiny, CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from s2m_retrieval.networks.checkpoint import load_checkpoint
from s2m_retrieval.data.phantom import make_phantom
from s2m_retrieval.data.sketch import sketch_from_mask
from s2m_retrieval.errors import BadInputError, CheckpointError
from s2m_retrieval.model.latent_space import LatentWeighting, w_plus_to_vectors
from s2m_retrieval.networks.encoders import Encoder, encoder_config_for
from s2m_retrieval.networks.stylegan2 import Generator, GeneratorConfig
from s2m_retrieval.training.index_space import (BANK_FILE, IndexEncoderTrainConfig, bank_losses, build_code_bank,
                                                cached_code_bank, hard_batch_indices, latent_vectors, read_code_bank,
                                                train_index_encoder)
from s2m_retrieval.training.pairs import PairSet

TINY_G = GeneratorConfig(z_dim=16, w_dim=16, mapping_layers=2, img_resolution=32, channel_base=256, channel_max=16)
E_KW = dict(widths=(8, 16, 16, 16), head_width=8)
QUIET = dict(perceptual="random", sample_every=10_000, snapshot_every=10_000)
N = 12


@pytest.fixture(scope="module")
def G():
    torch.manual_seed(0)
    G = Generator(TINY_G).eval().requires_grad_(False)
    with torch.no_grad():
        G.w_avg.copy_(G.mapping_network(torch.randn(1000, TINY_G.z_dim)).mean(0))
    return G


@pytest.fixture(scope="module")
def inverter(G):
    torch.manual_seed(1)
    inv = Encoder(encoder_config_for(TINY_G, in_channels=3, **E_KW)).eval()
    inv.w_avg.copy_(G.w_avg)
    with torch.no_grad():  # the heads start at zero offsets: spread them so images get distinct codes
        for p in inv.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return inv


@pytest.fixture(scope="module")
def pairs(G):
    """N of G's own images beside distinct phantom sketches."""
    with torch.no_grad():
        images = G(G.sample_w_plus(N, seed=1)).clamp(-1, 1)
    images = ((images + 1) * 127.5).round().to(torch.uint8)
    sketches = np.stack([[sketch_from_mask(make_phantom(3, i, 32)[1], 32, seed=v) for v in range(2)]
                         for i in range(N)])
    return PairSet(images, torch.from_numpy(sketches))


@pytest.fixture(scope="module")
def bank(pairs, inverter, G):
    return build_code_bank(pairs.images, inverter, G, hard_k=4, batch=5)


def test_latent_vectors_match_the_index_vectors():
    weighting = LatentWeighting(coarse=1.0, medium=0.3, fine=0.0)
    w = torch.randn(3, 8, 16)
    avg = torch.randn(16)
    ours = latent_vectors(w, avg, weighting).numpy()
    assert np.allclose(ours, w_plus_to_vectors(w, avg, weighting), atol=1e-6)


def test_code_bank_holds_images_mirrors_and_nearest_neighbours(bank, pairs, inverter, G):
    from s2m_retrieval.training.inverter import invert
    from s2m_retrieval.training.latent import as_float

    assert bank.vectors.shape == (2 * N, G.num_ws * 16) and bank.num_images == N
    x = as_float(pairs.images[:2])
    with torch.no_grad():
        direct = latent_vectors(invert(inverter, G, x), inverter.w_avg, LatentWeighting())
        mirror = latent_vectors(invert(inverter, G, x.flip(3)), inverter.w_avg, LatentWeighting())
    assert torch.allclose(bank.vectors[:2], direct, atol=1e-5)
    assert torch.allclose(bank.vectors[N:N + 2], mirror, atol=1e-5)
    assert bank.hard.shape == (N, 4)
    d = torch.cdist(bank.vectors[:N], bank.vectors[:N])
    d.fill_diagonal_(float("inf"))
    assert torch.equal(bank.hard[:, 0], d.argmin(1))           # the first hard negative is the nearest other image
    assert not (bank.hard == torch.arange(N)[:, None]).any()


def test_code_bank_cache_is_keyed_by_the_inverter(tmp_path, pairs, inverter, G):
    path = tmp_path / BANK_FILE
    first = cached_code_bank(path, pairs.images, inverter, G, source="s", hard_k=4)
    stamp = path.stat().st_mtime_ns
    again = cached_code_bank(path, pairs.images, inverter, G, source="s", hard_k=4)
    assert path.stat().st_mtime_ns == stamp and torch.equal(first.vectors, again.vectors)
    other = Encoder(inverter.config)
    other.load_state_dict(inverter.state_dict())
    with torch.no_grad():
        next(other.parameters()).add_(0.5)
    rebuilt = cached_code_bank(path, pairs.images, other, G, source="s", hard_k=4)
    assert not torch.allclose(rebuilt.vectors, first.vectors)
    assert torch.equal(read_code_bank(path).vectors, rebuilt.vectors)
    path.write_bytes(b"not a bank")
    with pytest.raises(CheckpointError, match="code bank"):
        read_code_bank(path)


def test_a_named_code_bank_is_refused_not_replaced(tmp_path, pairs, inverter, G):
    path = tmp_path / "shared_bank.pt"
    cached_code_bank(path, pairs.images, inverter, G, source="s", hard_k=4, replace=False)  # missing: made
    made = path.read_bytes()
    with pytest.raises(CheckpointError, match=r"other images or models \(source s -> t\).*kept"):
        cached_code_bank(path, pairs.images, inverter, G, source="t", hard_k=4, replace=False)
    assert path.read_bytes() == made
    text = tmp_path / "notes.txt"
    text.write_text("my notes")
    with pytest.raises(CheckpointError, match="is not a code bank; it is kept"):
        cached_code_bank(text, pairs.images, inverter, G, source="s", hard_k=4, replace=False)
    assert text.read_text() == "my notes"
    with pytest.raises(BadInputError, match="is a folder"):
        cached_code_bank(tmp_path, pairs.images, inverter, G, source="s", hard_k=4, replace=False)


def test_bank_losses_reward_the_own_vector(bank):
    gen = torch.Generator().manual_seed(0)
    rows = torch.tensor([0, 3, N + 5])
    own = bank.vectors[rows]
    distill, nce, accuracy = bank_losses(own, rows, bank, gen, negatives=8, tau=1.0)
    assert float(distill) == 0.0 and accuracy == 1.0
    wrong = bank.vectors[torch.tensor([1, 4, 6])]
    d2, nce2, _ = bank_losses(wrong, rows, bank, gen, negatives=8, tau=1.0)
    assert float(d2) > 0 and float(nce2) > float(nce)


def test_hard_batches_put_neighbours_together(bank):
    gen = torch.Generator().manual_seed(0)
    idx = hard_batch_indices(gen, N, 8, bank.hard, 0.25)
    assert len(idx) == 8
    assert all(int(idx[6 + i]) in bank.hard[idx[i]].tolist() for i in range(2))
    assert len(hard_batch_indices(gen, N, 8, None, 0.25)) == 8


def _cfg(steps, **kw):
    return IndexEncoderTrainConfig(**{"steps": steps, "batch": 6, "lr": 2e-3, "negatives": 8, "image_every": 2,
                                      "image_batch": 2, **QUIET, **kw})


def _encoder(G):
    torch.manual_seed(5)
    E = Encoder(encoder_config_for(TINY_G, in_channels=1, **E_KW))
    E.w_avg.copy_(G.w_avg)
    return E


def test_index_training_pulls_sketch_codes_onto_stored_vectors(G, pairs, bank, tmp_path):
    seen = []
    path = train_index_encoder(pairs, bank, _encoder(G), G, tmp_path, _cfg(60), progress=seen.append)
    first = np.mean([p.terms["distill"] for p in seen[:5]])
    last = np.mean([p.terms["distill"] for p in seen[-5:]])
    assert last < 0.5 * first, (first, last)
    assert "l2" in seen[0].terms and "l2" not in seen[1].terms      # the image loss every image_every steps
    payload = load_checkpoint(path, kind="encoder")
    assert payload["meta"]["objective"] == "index" and payload["meta"]["inverter_version"] == bank.info[
        "inverter_version"]


def test_index_training_resumes_bit_identically(G, pairs, bank, tmp_path):
    straight = train_index_encoder(pairs, bank, _encoder(G), G, tmp_path / "a", _cfg(6), progress=lambda p: None)

    class Killed(Exception):
        pass

    def kill_after_3(p):
        if p.step == 4:
            raise Killed  # killed during step 4: latest.pt holds step 3
    with pytest.raises(Killed):
        train_index_encoder(pairs, bank, _encoder(G), G, tmp_path / "b", _cfg(6, snapshot_every=3),
                            progress=kill_after_3)
    seen = []
    resumed = train_index_encoder(pairs, bank, _encoder(G), G, tmp_path / "b", _cfg(6, snapshot_every=3),
                                  progress=lambda p: seen.append(p.step))
    assert seen == [4, 5, 6]
    a, b = load_checkpoint(straight)["state_dict"], load_checkpoint(resumed)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_index_training_refuses_a_bank_of_other_images(G, pairs, bank, tmp_path):
    small = PairSet(pairs.images[:4], pairs.sketches[:4])
    with pytest.raises(BadInputError, match="code bank holds"):
        train_index_encoder(small, bank, _encoder(G), G, tmp_path, _cfg(2), progress=lambda p: None)
    with pytest.raises(BadInputError, match="weighting"):
        train_index_encoder(pairs, bank, _encoder(G), G, tmp_path, _cfg(2), progress=lambda p: None,
                            weighting=LatentWeighting(fine=0.5))


def test_training_in_a_projector_space_fine_tunes_e_and_the_query_head_only(G, pairs, bank, tmp_path):
    from s2m_retrieval.networks.projector import LatentProjector, ProjectorConfig, load_projector
    from s2m_retrieval.training.index_space import project_bank
    from s2m_retrieval.training.latent import model_version

    torch.manual_seed(3)
    P = LatentProjector(ProjectorConfig(in_dim=bank.vectors.shape[1], weighting=LatentWeighting().spec(), dim=8))
    P.fit_input(bank.vectors)
    archive_before = {k: v.clone() for k, v in P.archive.state_dict().items()}
    query_before = {k: v.clone() for k, v in P.query.state_dict().items()}
    projected = project_bank(bank, P)
    assert projected.vectors.shape == (2 * N, 8)
    assert torch.allclose(projected.vectors.norm(dim=1), torch.ones(2 * N), atol=1e-5)
    seen = []
    # a random E and a random P: the pull onto the stored vectors alone, long enough to show
    path = train_index_encoder(pairs, bank, _encoder(G), G, tmp_path, _cfg(400, tau=0.1, contrastive=0.0,
                                                                           image_every=0),
                               progress=seen.append, projector=P,
                               projector_meta={"inverter_version": "inv", "encoder_version": "old"})
    first = np.mean([p.terms["distill"] for p in seen[:40]])
    last = np.mean([p.terms["distill"] for p in seen[-40:]])
    assert last < 0.85 * first, (first, last)
    E_payload = load_checkpoint(path, kind="encoder")
    assert E_payload["meta"]["objective"] == "projector"
    P_payload = load_checkpoint(tmp_path / "projector.pt", kind="projector")
    assert P_payload["meta"]["inverter_version"] == "inv"
    E = _encoder(G)
    E.load_state_dict(E_payload["state_dict"])
    assert P_payload["meta"]["encoder_version"] == model_version(E)     # restamped with the new E
    P_new = load_projector(P_payload)
    assert all(torch.equal(P_new.archive.state_dict()[k], v) for k, v in archive_before.items())
    assert not all(torch.equal(P_new.query.state_dict()[k], v) for k, v in query_before.items())
    # the stored side is unchanged: an index of these images gets the vectors the training aimed at
    assert torch.allclose(P_new(bank.vectors, "archive"), projected.vectors, atol=1e-6)
