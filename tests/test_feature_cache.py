"""The cacheable seg-pool8 metric: pooled fp16 features, stored per image at build time, read by the re-rank."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from retrieval_helpers import phantom_sketch

from index.row_reader import ShardRowReader
from s2m_retrieval.networks.checkpoint import save_checkpoint
from s2m_retrieval.errors import IndexCorruptError, VersionMismatchError
from s2m_retrieval.networks.segmenter import Segmenter, SegmenterConfig
from s2m_retrieval.model.perceptual import load_perceptual
from s2m_retrieval.query.ranking import to_model_input
from s2m_retrieval.query.engine import RetrievalEngine

RES = 32  # the tiny random G's resolution


def write_segmenter(folder):
    torch.manual_seed(0)
    model = Segmenter(SegmenterConfig(base_channels=8, depth=3, img_resolution=RES))
    return save_checkpoint(folder / "segmenter.pt", kind="segmenter", config=model.config,
                           state_dict=model.state_dict())


@pytest.fixture(scope="module")
def pooled(setup, tmp_path_factory):
    """The tiny random models plus a segmenter, and an index built over the phantoms for seg-pool8."""
    from s2m_retrieval.model.archive_encoder import load_encoder
    from s2m_retrieval.ingest.runner import BuildOptions, build_index

    base = tmp_path_factory.mktemp("pooled")
    models = shutil.copytree(setup.models, base / "models")
    write_segmenter(models)
    home = base / "home"
    build_index(setup.archive, load_encoder(f"inverter:models={models},perceptual=seg-pool8"), home=home,
                options=BuildOptions(batch_size=8))
    return models, home


def test_pooled_metric_is_its_own_version_and_packs_losslessly(tmp_path):
    path = write_segmenter(tmp_path)
    exact, metric = load_perceptual("seg", checkpoint=path), load_perceptual("seg-pool8", checkpoint=path)
    assert metric.version.startswith("seg-pool8:") and metric.version.split(":")[1] == exact.version.split(":")[1]
    assert metric.cacheable and not exact.cacheable
    x = torch.rand(3, 3, RES, RES, generator=torch.Generator().manual_seed(0)) * 2 - 1
    feats = metric.features(x)
    shapes = [tuple(f.shape[1:]) for f in feats]
    assert shapes == [(8, 8, 8), (16, 8, 8), (32, 8, 8), (32, 4, 4)]  # 32/16 px layers pooled, 8/4 px kept
    rows = metric.pack(feats)
    assert rows.dtype == np.float16 and rows.shape == (3, sum(c * h * w for c, h, w in shapes))
    back = metric.unpack(rows, shapes)
    assert all(torch.equal(a, b) for a, b in zip(feats, back))  # features are fp16-rounded: storing loses nothing
    assert torch.allclose(metric.distance_from_features(back, feats), torch.zeros(3))
    assert metric.distance(x[:1], x[1:2]).item() > 0
    with pytest.raises(ValueError, match="expected"):
        metric.unpack(rows[:, :-1], shapes)
    with pytest.raises(ValueError, match="no compact features"):
        exact.pack(exact.features(x))


def test_build_stores_the_features_of_each_thumb(pooled):
    from index.shards import ShardStore

    models, home = pooled
    root = home / "indexes" / "default"
    stamp = json.loads((root / "manifest.json").read_text())
    assert stamp["metric"].startswith("seg-pool8:") and "features" in stamp["arrays"]
    shards = ShardStore(root / "shards")
    shard = sorted(shards.names())[0]
    thumbs, stored = np.array(shards.read(shard, "thumbs")), shards.read(shard, "features")
    metric = load_perceptual("seg-pool8", checkpoint=models / "segmenter.pt")
    with torch.inference_mode():
        expected = metric.pack(metric.features(to_model_input(thumbs)))
    assert stored.dtype == np.float16 and stored.shape == expected.shape
    np.testing.assert_allclose(stored.astype(np.float32), expected.astype(np.float32), atol=2e-3)


def test_rerank_reads_cached_features_not_thumbs(pooled, monkeypatch):
    import s2m_retrieval.query.engine as retrieval

    models, home = pooled
    with RetrievalEngine.open(home=home, models=models) as engine:
        assert engine.metric.name == "seg-pool8" and engine.feature_shapes is not None
        reads = []
        original = ShardRowReader.rows

        def spy(self, key, locations):
            reads.append((key, len(locations)))
            return original(self, key, locations)
        monkeypatch.setattr(ShardRowReader, "rows", spy)
        monkeypatch.setattr(retrieval, "perceptual_distances", lambda *a, **k: pytest.fail("recomputed from thumbs"))
        result = engine.query_sketch(phantom_sketch(), k=3, n_candidates=20, alpha=0.5)
        assert reads == [("features", 20), ("thumbs", 3)]  # thumbs only for the hits shown
        # The distances are the metric's between x_hat (float, as the query made it) and each hit's thumb.
        with torch.inference_mode():
            x_hat = engine.pipeline.generate(phantom_sketch(), steps=engine.default_steps)[2]
            direct = engine.metric.distance(x_hat.expand(3, -1, -1, -1), to_model_input(result.thumbs))
        got = np.array([h.perceptual_distance for h in result.hits])
        np.testing.assert_allclose(got, direct.numpy(), rtol=2e-2, atol=1e-3)


def test_metric_mismatch_and_missing_features_are_errors(pooled, setup, tmp_path):
    models, home = pooled
    with pytest.raises(VersionMismatchError, match="perceptual metric seg-pool8:"):
        RetrievalEngine.open(home=home, models=models, perceptual="seg")
    with pytest.raises(VersionMismatchError, match="perceptual metric random"):
        RetrievalEngine.open(home=setup.home, models=models, perceptual="seg-pool8")
    broken = shutil.copytree(home, tmp_path / "home")
    manifest = broken / "indexes" / "default" / "manifest.json"
    stamp = json.loads(manifest.read_text())
    del stamp["arrays"]["features"]
    manifest.write_text(json.dumps(stamp))
    with pytest.raises(IndexCorruptError, match="stores no features"):
        RetrievalEngine.open(home=broken, models=models)
