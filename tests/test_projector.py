"""The retrieval-space projector P: the network, its training (learns, resumes bit-identically, CLI), and indexes
built and searched in its space."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from retrieval_helpers import PERCEPTUAL, phantom_sketch
from s2m_retrieval.errors import BadInputError, CheckpointError, VersionMismatchError
from s2m_retrieval.networks.projector import LatentProjector, ProjectorConfig, load_projector
from s2m_retrieval.training.index_space import CodeBank
from s2m_retrieval.training.projector import ProjectorTrainConfig, projector_loss, train_projector

WEIGHTING = "coarse=1,medium=0.5,fine=0.1"


def test_heads_give_unit_vectors_per_side_and_refuse_unknown_sides():
    P = LatentProjector(ProjectorConfig(in_dim=12, weighting=WEIGHTING, dim=4, hidden=6))
    P.fit_input(torch.randn(50, 12) * 3 + 1)
    x = torch.randn(5, 12)
    q, a = P(x, "query"), P(x, "archive")
    assert q.shape == a.shape == (5, 4)
    assert torch.allclose(q.norm(dim=1), torch.ones(5), atol=1e-5) and not torch.allclose(q, a)
    with pytest.raises(ValueError, match="side"):
        P(x, "sketch")
    with pytest.raises(ValueError, match="sizes"):
        ProjectorConfig(in_dim=0, weighting=WEIGHTING)


def _toy_data(n: int = 64, variants: int = 2, dim: int = 12, seed: int = 0):
    """Stored codes of n images (+ mirrors) and noisy 'sketch codes' of each: a learnable pairing."""
    gen = torch.Generator().manual_seed(seed)
    stored = torch.randn(2 * n, dim, generator=gen)
    mixing = torch.randn(dim, dim, generator=gen)
    rows = stored.view(2, n, dim).permute(1, 0, 2)                                   # [n, 2 (mirror), dim]
    codes = (rows[:, None] @ mixing + 0.3 * torch.randn(n, variants, 2, dim, generator=gen)).half()
    hard = torch.stack([torch.roll(torch.arange(n), s) for s in (1, 2)], dim=1)
    bank = CodeBank(stored, hard, {"weighting": WEIGHTING, "inverter_version": "toy", "num_images": n})
    return codes, bank


def _retrieval_accuracy(P: LatentProjector, codes: torch.Tensor, bank: CodeBank) -> float:
    n = bank.num_images
    with torch.no_grad():
        sims = P(codes[:, 0, 0].float(), "query") @ P(bank.vectors[:n], "archive").T
    return (sims.argmax(1) == torch.arange(n)).float().mean().item()


def test_training_learns_the_pairing_and_resumes_bit_identically(tmp_path):
    codes, bank = _toy_data()
    config = ProjectorConfig(in_dim=12, weighting=WEIGHTING, dim=8)
    tc = ProjectorTrainConfig(steps=60, batch=32, lr=1e-2, snapshot_every=30, sample_every=30)
    untrained = LatentProjector(config)
    untrained.fit_input(bank.vectors[:64])
    path = train_projector(codes, bank, tmp_path / "straight", config, tc, {"encoder_version": "e"},
                           progress=lambda p: None)
    P = load_projector(path)
    assert _retrieval_accuracy(P, codes, bank) > max(0.5, 3 * _retrieval_accuracy(untrained, codes, bank))
    payload = torch.load(path, weights_only=True)
    assert payload["meta"]["encoder_version"] == "e" and payload["meta"]["step"] == 60

    class Stop(Exception):
        pass

    def killed(p) -> None:  # the run dies at step 31, after its step-30 snapshot
        if p.step == 31:
            raise Stop

    with pytest.raises(Stop):
        train_projector(codes, bank, tmp_path / "resumed", config, tc, progress=killed)
    resumed = load_projector(train_projector(codes, bank, tmp_path / "resumed", config, tc, progress=lambda p: None))
    for name, tensor in P.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), name


def test_training_refuses_codes_that_do_not_fit_the_bank(tmp_path):
    codes, bank = _toy_data()
    config = ProjectorConfig(in_dim=12, weighting=WEIGHTING, dim=8)
    tc = ProjectorTrainConfig(steps=2, batch=8)
    with pytest.raises(BadInputError, match="covers 32 images"):
        train_projector(codes[:32], bank, tmp_path, config, tc, progress=lambda p: None)
    with pytest.raises(BadInputError, match="reads 10-d"):
        train_projector(codes, bank, tmp_path, ProjectorConfig(in_dim=10, weighting=WEIGHTING), tc,
                        progress=lambda p: None)
    with pytest.raises(BadInputError, match="weighting"):
        train_projector(codes, bank, tmp_path, ProjectorConfig(in_dim=12, weighting="coarse=1,medium=0,fine=0"),
                        tc, progress=lambda p: None)


def test_loss_prefers_matching_pairs():
    P = LatentProjector(ProjectorConfig(in_dim=6, weighting=WEIGHTING, dim=6))
    with torch.no_grad():
        P.query.weight.copy_(torch.eye(6))
        P.archive.weight.copy_(torch.eye(6))
        P.query.bias.zero_()
        P.archive.bias.zero_()
    x = torch.eye(6)
    matched, acc = projector_loss(P, x, x, 0.1, symmetric=True)
    shuffled, _ = projector_loss(P, x, torch.roll(x, 1, 0), 0.1, symmetric=False)
    assert acc == 1.0 and matched < 0.01 < shuffled


@pytest.fixture(scope="module")
def projected(tmp_path_factory, phantom_archive):
    """Random models with a projector, and an index of the test archive built with and one without it."""
    from s2m_retrieval.model.archive_encoder import load_encoder
    from s2m_retrieval.ingest.runner import BuildOptions, build_index
    from s2m_retrieval.testing.random_models import write_random_models

    base = tmp_path_factory.mktemp("projected")
    models = write_random_models(base / "models", seed=0, projector_dim=8)
    spec = f"inverter:models={models},perceptual={PERCEPTUAL}"
    build_index(phantom_archive, load_encoder(spec), home=base / "home",
                options=BuildOptions(name="p", batch_size=8))
    build_index(phantom_archive, load_encoder(spec + ",projector=0"), home=base / "home",
                options=BuildOptions(name="w", batch_size=8))
    return base, models


def test_an_index_of_a_bundle_with_a_projector_lives_in_its_space(projected):
    from s2m_retrieval.query.engine import RetrievalEngine

    base, models = projected
    with RetrievalEngine.open("p", home=base / "home", models=models, perceptual=PERCEPTUAL) as eng:
        assert eng.reader.stamp.dim == 8 and eng.encoder.config["projector"] == eng.pipeline.versions["projector"]
        result = eng.query_sketch(phantom_sketch(), k=5, steps=1, alpha=1.0)
        assert len(result.hits) == 5
        stored = eng.reader.arrays("vectors", [hit.id for hit in result.hits])
        np.testing.assert_allclose(np.linalg.norm(stored, axis=1), 1.0, atol=1e-5)
        # the sketch searches with P's query head over E's weighted code; stored images went through the archive head
        from s2m_retrieval.model.latent_space import w_plus_to_vectors

        w_plus = eng.pipeline.sketch_to_latent(phantom_sketch())
        query = eng.sketch_vector(w_plus, None)
        raw = torch.from_numpy(w_plus_to_vectors(w_plus, eng.encoder.w_avg, eng.encoder.latent_weighting))
        np.testing.assert_allclose(query, eng.pipeline.projector(raw, "query").numpy(), atol=1e-6)
        assert not np.allclose(query, eng.pipeline.projector(raw, "archive").numpy(), atol=1e-3)
        distances = [hit.latent_distance for hit in result.hits]
        assert distances == sorted(distances) and 0 <= distances[0] and distances[-1] <= 2.0 + 1e-5  # chords


def test_an_index_built_without_the_projector_is_searched_in_weighted_w_plus(projected):
    from s2m_retrieval.query.engine import RetrievalEngine

    base, models = projected
    with RetrievalEngine.open("w", home=base / "home", models=models, perceptual=PERCEPTUAL) as eng:
        assert eng.encoder.projector is None and "projector" not in eng.encoder.config
        from s2m_retrieval.ingest.report import index_info

        assert index_info(name="w", home=base / "home")["projector"] is None
        assert index_info(name="p", home=base / "home")["projector"] == eng.pipeline.versions["projector"]
        assert eng.reader.stamp.dim == eng.encoder.w_plus_dim > 8
        assert len(eng.query_sketch(phantom_sketch(), k=3, steps=1).hits) == 3


def test_a_projected_index_refuses_models_without_its_projector(projected, tmp_path):
    from s2m_retrieval.testing.random_models import write_random_models
    from s2m_retrieval.query.engine import RetrievalEngine

    base, models = projected
    bare = tmp_path / "bare"
    shutil.copytree(models, bare)
    (bare / "projector.pt").unlink()
    with pytest.raises(VersionMismatchError, match="no projector.pt"):
        RetrievalEngine.open("p", home=base / "home", models=bare, perceptual=PERCEPTUAL)
    other = write_random_models(tmp_path / "other", seed=0, projector_dim=4)  # same G/E/inverter, another P
    with pytest.raises(VersionMismatchError, match="have projector"):
        RetrievalEngine.open("p", home=base / "home", models=other, perceptual=PERCEPTUAL)


def test_a_projector_of_another_encoder_or_weighting_is_refused(projected, tmp_path):
    from s2m_retrieval.networks.checkpoint import load_checkpoint, save_checkpoint
    from s2m_retrieval.model.archive_encoder import load_encoder
    from s2m_retrieval.testing.random_models import write_random_models

    _, models = projected
    mixed = tmp_path / "mixed"
    write_random_models(mixed, seed=1)
    shutil.copy(models / "projector.pt", mixed / "projector.pt")
    with pytest.raises(CheckpointError, match="projector was trained against"):
        load_encoder(f"inverter:models={mixed},perceptual={PERCEPTUAL}")
    with pytest.raises(CheckpointError, match="weighting"):
        load_encoder(f"inverter:models={models},perceptual={PERCEPTUAL},fine=0.3")
    payload = load_checkpoint(models / "projector.pt", kind="projector")
    with pytest.raises(BadInputError, match="projector='2' must be 0 or 1"):
        load_encoder(f"inverter:models={models},perceptual={PERCEPTUAL},projector=2")
    assert payload["meta"]["inverter_version"]
    save_checkpoint(tmp_path / "x.pt", kind="projector", config=payload["config"], state_dict={}, meta={})
    with pytest.raises(CheckpointError, match="does not rebuild"):
        load_projector(tmp_path / "x.pt")


def test_train_projector_cli_writes_a_checkpoint_the_engine_can_use(runner, tmp_path):
    from cli.main import app
    from s2m_retrieval.testing.random_models import write_random_models

    models = write_random_models(tmp_path / "models", seed=0)
    out = tmp_path / "proj"
    args = ["train", "projector", "phantom:6:3", "--out", str(out), "--generator", str(models / "generator.pt"),
            "--encoder", str(models / "encoder.pt"), "--inverter", str(models / "inverter.pt"),
            "--pairs-per-image", "1", "--batch", "4", "--dim", "4", "--snapshot-every", "2", "--threads", "1"]
    result = runner.invoke(app, [*args, "--steps", "2"])
    assert result.exit_code == 0, result.output
    assert "sketch codes: (6, 1, 2)" in result.stdout and "train projector: step 2/2" in result.stderr
    result = runner.invoke(app, [*args, "--steps", "4"])
    assert result.exit_code == 0 and "at step 2 of 4" in result.stdout, result.output
    P = load_projector(out / "projector.pt")
    assert P.config.dim == 4
    shutil.copy(out / "projector.pt", models / "projector.pt")
    from s2m_retrieval.model.archive_encoder import load_encoder

    encoder = load_encoder(f"inverter:models={models},perceptual={PERCEPTUAL}")
    assert encoder.dim == 4 and encoder.config["projector"]
    # E fine-tuned in P's space: new E and P, a pair the strict loader accepts; a P of another E is refused
    from s2m_retrieval.networks.checkpoint import load_checkpoint, version_hash
    from s2m_retrieval.model.pipeline import Sketch2MedI

    tuned = tmp_path / "ep"
    e_args = ["train", "encoder", "phantom:6:3", "--objective", "index", "--out", str(tuned), "--generator",
              str(models / "generator.pt"), "--inverter", str(models / "inverter.pt"), "--bank",
              str(out / "code_bank.pt"), "--pairs-per-image", "1", "--batch", "4", "--steps", "2",
              "--perceptual", PERCEPTUAL, "--threads", "1", "--projector", str(out / "projector.pt")]
    result = runner.invoke(app, [*e_args, "--init", str(models / "generator.pt")])
    assert result.exit_code != 0
    other = tmp_path / "other_encoder.pt"
    write_random_models(tmp_path / "other", seed=1)
    shutil.copy(tmp_path / "other" / "encoder.pt", other)
    result = runner.invoke(app, [*e_args, "--init", str(other)])
    assert result.exit_code != 0 and "the projector was trained on encoder" in result.output
    result = runner.invoke(app, [*e_args, "--init", str(models / "encoder.pt")])
    assert result.exit_code == 0, result.output
    new_p = load_checkpoint(tuned / "projector.pt", kind="projector")
    assert new_p["meta"]["encoder_version"] == version_hash(load_checkpoint(tuned / "encoder.pt", kind="encoder"))
    assert new_p["meta"]["inverter_version"] == load_checkpoint(out / "projector.pt")["meta"]["inverter_version"]
    Sketch2MedI.from_checkpoints(models / "generator.pt", tuned / "encoder.pt", None, models / "inverter.pt",
                                 perceptual=None, projector=tuned / "projector.pt")
    with pytest.raises(CheckpointError, match="the projector was trained against encoder"):
        Sketch2MedI.from_checkpoints(models / "generator.pt", models / "encoder.pt", None, models / "inverter.pt",
                                     perceptual=None, projector=tuned / "projector.pt")
