"""The learned sketch-image embedding baseline: loss, training through the CLI, resume, checkpoint."""

from __future__ import annotations

import pytest
import torch

from s2m_retrieval.networks.embedding import EmbeddingConfig, SketchImageEmbedding
from s2m_retrieval.training.embedding import contrastive_loss, load_embedding

TINY = '{"embedding": {"widths": [4, 8], "dim": 8}}'


def test_contrastive_loss_prefers_the_matching_pairs():
    matched = torch.eye(4) * 10
    shuffled = torch.roll(torch.eye(4), 1, dims=1) * 10
    assert contrastive_loss(matched) < 0.01 < contrastive_loss(shuffled)


def test_towers_give_unit_vectors_and_a_logit_matrix():
    net = SketchImageEmbedding(EmbeddingConfig(img_resolution=16, widths=(4, 8), dim=8))
    logits = net(torch.rand(3, 1, 16, 16), torch.rand(5, 3, 16, 16))
    assert logits.shape == (3, 5)
    assert torch.allclose(net.image(torch.rand(2, 3, 16, 16)).norm(dim=1), torch.ones(2), atol=1e-5)


def test_train_embedding_cli_logs_resumes_and_writes_a_checkpoint(runner, tmp_path):
    from cli.main import app

    out = tmp_path / "emb"
    args = ["train", "embedding", "phantom:6:3", "--out", str(out), "--res", "32", "--batch", "4",
            "--pairs-per-image", "1", "--snapshot-every", "2", "--config-json", TINY, "--threads", "1"]
    result = runner.invoke(app, [*args, "--steps", "4"])
    assert result.exit_code == 0, result.output
    assert "train embedding: step 4/4" in result.stderr      # no terminal: plain progress lines
    first = load_embedding(out / "embedding.pt")
    result = runner.invoke(app, [*args, "--steps", "6"])
    assert result.exit_code == 0, result.output
    assert "resuming" in result.stdout and "at step 4 of 6" in result.stdout
    second = load_embedding(out / "embedding.pt")
    assert not torch.equal(first.image.head.weight, second.image.head.weight)  # two more steps were taken


def test_train_embedding_with_hard_negatives_from_a_code_bank(tmp_path):
    from s2m_retrieval.errors import BadInputError
    from s2m_retrieval.networks.embedding import EmbeddingConfig
    from s2m_retrieval.training.embedding import EmbeddingTrainConfig, train_embedding
    from s2m_retrieval.training.pairs import phantom_pairs

    pairs = phantom_pairs(6, 32, seed=3, variants=1)
    hard = torch.tensor([[1, 2], [0, 2], [3, 1], [2, 4], [5, 3], [4, 0]])
    cfg = EmbeddingConfig(img_resolution=32, widths=(4, 8), dim=8)
    tc = EmbeddingTrainConfig(steps=2, batch=4, snapshot_every=10, sample_every=10)
    path = train_embedding(pairs, tmp_path, cfg, tc, progress=lambda p: None, hard=hard)
    from s2m_retrieval.networks.checkpoint import load_checkpoint

    assert load_checkpoint(path)["meta"]["hard_negatives"] is True
    with pytest.raises(BadInputError, match="hard negatives cover"):
        train_embedding(pairs, tmp_path / "b", cfg, tc, progress=lambda p: None, hard=hard[:3])
