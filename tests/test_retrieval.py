"""The retrieval engine with tiny random models: weighting math, filters, fusion, ranking, version checks, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from retrieval_helpers import PERCEPTUAL, labels_csv, phantom_sketch

from index.store import VectorStore
from s2m_retrieval.errors import (BadImageError, BadInputError, CheckpointError, IndexCorruptError, IndexMissingError,
                                  VersionMismatchError)
from s2m_retrieval.model.latent_space import LatentWeighting, vectors_to_w_plus, w_plus_to_vectors, weighted_distance
from s2m_retrieval.query.filters import Condition, LabelFilter, parse_where
from s2m_retrieval.query.ranking import fuse, normalise
from s2m_retrieval.query.engine import RetrievalEngine


# --- weighting math ------------------------------------------------------------------------------------------

# A 64 px G has 10 W+ entries: coarse 0-2 (4-8 px layers), medium 3-6 (16-32 px), fine 7-9 (64 px).
GROUPS_64 = {"coarse": [0, 1, 2], "medium": [3, 4, 5, 6], "fine": [7, 8, 9]}


def _by_hand(a: np.ndarray, b: np.ndarray, weights: dict) -> float:
    total = 0.0
    for group, entries in GROUPS_64.items():
        total += weights[group] * np.mean([np.sum((a[i] - b[i]) ** 2) for i in entries])
    return total


@pytest.mark.parametrize("weights", [dict(coarse=1.0, medium=0.5, fine=0.1), dict(coarse=2.0, medium=0.0, fine=0.3)])
def test_faiss_l2_is_the_weighted_w_plus_distance(weights):
    rng = np.random.default_rng(0)
    w_avg = rng.standard_normal(8).astype(np.float32)
    codes = rng.standard_normal((50, 10, 8)).astype(np.float32)
    weighting = LatentWeighting(**weights)
    vectors = w_plus_to_vectors(codes, w_avg, weighting)
    kept = sum(len(e) for g, e in GROUPS_64.items() if weights[g] > 0)  # zero-weight groups are dropped
    assert vectors.shape == (50, kept * 8) == (50, weighting.dim(10, 8))
    store = VectorStore.create(vectors.shape[1], "Flat")
    store.add(np.arange(100, 150), vectors)
    q = codes[:1] + 0.3 * rng.standard_normal((1, 10, 8)).astype(np.float32)
    d2, ids = store.search(w_plus_to_vectors(q, w_avg, weighting), 50)
    assert sorted(ids[0]) == list(range(100, 150)) and np.all(np.diff(d2[0]) >= 0)
    for dist, i in zip(d2[0], ids[0]):
        assert dist == pytest.approx(_by_hand(q[0], codes[i - 100], weights), rel=1e-4)
        assert np.sqrt(dist) == pytest.approx(weighted_distance(q, codes[i - 100][None], weighting)[0], rel=1e-4)


def test_vectors_give_back_w_plus_unless_entries_are_dropped():
    rng = np.random.default_rng(1)
    w_avg, codes = rng.standard_normal(8), rng.standard_normal((3, 10, 8))
    back = vectors_to_w_plus(w_plus_to_vectors(codes, w_avg), w_avg, 10)
    np.testing.assert_allclose(back, codes, atol=1e-5)
    no_fine = LatentWeighting(fine=0)
    with pytest.raises(BadInputError, match="cannot be recovered"):
        vectors_to_w_plus(w_plus_to_vectors(codes, w_avg, no_fine), w_avg, 10, no_fine)


def test_weighting_parse_stamp_and_validation():
    w = LatentWeighting.parse("coarse=2, fine=0")
    assert (w.coarse, w.medium, w.fine, w.drop_zero) == (2.0, 0.5, 0.0, True)
    assert LatentWeighting.parse(w.stamp()) == w and w.stamp() == "wplus:coarse=2,medium=0.5,fine=0"
    keep = LatentWeighting.parse("fine=0,keep_zero")
    assert keep.dim(10, 8) == 80 and LatentWeighting.from_dict(keep.to_dict()) == keep
    assert list(LatentWeighting().entry_weights(10)) == pytest.approx([1 / 3] * 3 + [0.5 / 4] * 4 + [0.1 / 3] * 3)
    assert LatentWeighting().kept_entries(8).tolist() == list(range(8))  # 32 px G: no fine entries
    for bad in ("coarse=-1", "coarse=0,medium=0,fine=0", "texture=1", "coarse=x", "coarse"):
        with pytest.raises(BadInputError):
            LatentWeighting.parse(bad)
    with pytest.raises(BadInputError, match="keeps no entry"):
        LatentWeighting(coarse=0, medium=0, fine=1).kept_entries(8)


# --- filters and fusion --------------------------------------------------------------------------------------

def test_parse_where():
    assert parse_where("tonsil_grade>=3, mallampati!=1 AND id='ph000003' and redness<0.5") == [
        Condition("tonsil_grade", ">=", 3.0), Condition("mallampati", "!=", 1.0), Condition("id", "=", "ph000003"),
        Condition("redness", "<", 0.5)]
    assert parse_where("name=abc")[0].value == "abc" and parse_where("n='3'")[0].value == "3"
    assert parse_where(None) == [] and parse_where("  ") == []
    for bad in ("tonsil_grade", "tonsil_grade>=", ">=3", "a=1,,b=2", "a=1,", "a==1", "a b=1", "3x=1"):
        with pytest.raises(BadInputError, match="--where"):
            parse_where(bad)


def test_normalise_and_fuse():
    assert normalise([2.0, 4.0, 3.0]).tolist() == [0.0, 1.0, 0.5]
    assert normalise([5.0, 5.0]).tolist() == [0.0, 0.0] and normalise([1.0]).tolist() == [0.0]
    assert normalise([10.0, 1.0, 1.0, 1000.0], "rank").tolist() == pytest.approx([2 / 3, 1 / 6, 1 / 6, 1.0])
    latent, perceptual = np.array([0.0, 1.0, 2.0]), np.array([3.0, 1.0, 2.0])
    assert fuse(latent, perceptual, 1.0).tolist() == [0.0, 0.5, 1.0]
    assert fuse(latent, perceptual, 0.0).tolist() == [1.0, 0.0, 0.5]
    assert fuse(latent, perceptual, 0.5).tolist() == [0.5, 0.25, 0.75]
    assert fuse(latent, None, 0.5).tolist() == [0.0, 0.5, 1.0]
    assert normalise([1.0, 2.0, 3.0], "zscore").tolist() == pytest.approx([-1.224745, 0.0, 1.224745])
    assert normalise([3.0, 1.0, 2.0], "rrf").tolist() == pytest.approx([1 - 60 / 62, 0.0, 1 - 60 / 61])
    # reciprocal rank fusion: the candidate first on both lists wins, then the one with the better worst rank
    rrf = fuse(np.array([0.0, 1.0, 2.0, 3.0]), np.array([0.0, 3.0, 1.0, 2.0]), 0.5, "rrf")
    assert np.argsort(rrf).tolist()[0] == 0 and rrf[2] < rrf[1]


# --- the engine ----------------------------------------------------------------------------------------------

def test_sketch_query_returns_k_rows_sorted_by_score(engine, setup):
    result = engine.query_sketch(phantom_sketch(), k=5, n_candidates=20, steps=2, alpha=0.5)
    assert [h.rank for h in result.hits] == [1, 2, 3, 4, 5] and result.candidates == 20
    scores = [h.score for h in result.hits]
    assert scores == sorted(scores) and 0.0 <= scores[0] and scores[-1] <= 1.0
    assert all(h.perceptual_distance is not None and h.latent_distance > 0 for h in result.hits)
    assert all(h.path.startswith(str(setup.archive)) and h.labels["id"] for h in result.hits)
    assert result.x_hat.shape == (32, 32, 3) and result.thumbs.shape == (5, 32, 32, 3)
    assert set(result.timings_ms) == {"generate", "code", "filter", "search", "fetch", "rerank", "total"}
    p = result.provenance
    assert (p["steps"], p["alpha"], p["perceptual"], p["index_size"]) == (2, 0.5, "random:0", 24)
    assert p["model_version"].startswith("inv-") and p["weighting"] == "wplus:coarse=1,medium=0.5,fine=0.1"
    json.dumps(result.to_dict())  # JSON-ready
    latent_only = engine.query_sketch(phantom_sketch(), k=5, n_candidates=20, steps=2)   # the default: alpha 1
    assert all(h.perceptual_distance is None for h in latent_only.hits)
    assert latent_only.provenance["alpha"] == 1.0
    assert [h.latent_distance for h in latent_only.hits] == sorted(h.latent_distance for h in latent_only.hits)


def test_the_query_vector_is_e_code_unless_asked_for_the_reinverted_x_hat(engine):
    import torch

    with torch.inference_mode():
        w_plus, _, x_hat = engine.pipeline.generate(phantom_sketch(), steps=2)
        from_x_hat = engine.sketch_vector(w_plus, x_hat, code="reinvert")
        from_e = engine.sketch_vector(w_plus, x_hat)
    # re-inversion is what archive images go through: x̂'s own thumb gives the same vector
    from s2m_retrieval.model.pipeline import to_uint8

    assert np.allclose(from_x_hat, engine.encoder.vectors(engine.encoder.w_plus(to_uint8(x_hat))), atol=1e-5)
    assert np.allclose(from_e, engine.encoder.vectors(w_plus)) and not np.allclose(from_e, from_x_hat)
    reinvert = engine.query_sketch(phantom_sketch(), k=5, steps=2, alpha=1.0, code="reinvert")
    sketch = engine.query_sketch(phantom_sketch(), k=5, steps=2, alpha=1.0)
    assert reinvert.provenance["code"] == "reinvert" and sketch.provenance["code"] == "sketch"
    assert [h.latent_distance for h in reinvert.hits] != [h.latent_distance for h in sketch.hits]


def test_a_query_that_shows_no_x_hat_runs_e_alone_with_the_same_hits(engine, monkeypatch):
    full = engine.query_sketch(phantom_sketch(), k=8, steps=2)
    calls = []
    monkeypatch.setattr(engine.pipeline, "generate", lambda *a, **kw: calls.append(1) or pytest.fail("H ran"))
    lean = engine.query_sketch(phantom_sketch(), k=8, steps=2, x_hat=False)
    assert lean.x_hat is None and not calls
    assert [(h.id, h.latent_distance) for h in lean.hits] == [(h.id, h.latent_distance)
                                                                    for h in full.hits]
    assert lean.provenance["steps"] == 2 and full.x_hat is not None
    monkeypatch.undo()
    # a re-rank, or the re-inverted code, needs x_hat whatever the caller shows
    fused = engine.query_sketch(phantom_sketch(), k=8, steps=2, alpha=0.5, x_hat=False)
    assert fused.x_hat is not None and all(h.perceptual_distance is not None for h in fused.hits)
    batch = engine.query_sketches([phantom_sketch(), phantom_sketch(seed=1)], k=8, steps=2, x_hat=False)
    assert [h.id for h in batch[0].hits] == [h.id for h in full.hits] and batch[1].x_hat is None


@pytest.mark.parametrize("image_id", [1, 7, 24])
def test_like_an_indexed_image_finds_itself_first(engine, image_id):
    result = engine.query_like(image_id, k=3)
    assert result.hits[0].id == image_id and result.hits[0].latent_distance == pytest.approx(0.0, abs=1e-5)
    assert result.hits[0].score == 0.0 and result.hits[1].latent_distance > 0
    by_path = engine.query_like(result.hits[0].path, k=1)
    assert by_path.hits[0].id == image_id and by_path.provenance["like_id"] == image_id
    name = Path(result.hits[0].path).name  # as the table shows it, and its stem (= the labels id here)
    for key in (name, Path(name).stem):
        assert engine.query_like(key, k=1).provenance["like_id"] == image_id


def test_like_an_outside_file_is_inverted_like_the_archive(engine, setup, tmp_path):
    outside = tmp_path / "copy.png"
    shutil.copy(setup.archive / "images" / "ph000005.png", outside)
    result = engine.query_like(outside, k=2)
    assert result.provenance["like_id"] is None
    assert result.hits[0].path.endswith("ph000005.png") and result.hits[0].latent_distance < 1e-3
    with pytest.raises(BadInputError, match="no image with that id, path, file name"):
        engine.query_like(tmp_path / "nowhere.png")
    with pytest.raises(BadInputError, match="no image with that id"):
        engine.query_like(999)
    (tmp_path / "bad.png").write_text("not an image")
    with pytest.raises(BadImageError):
        engine.query_like(tmp_path / "bad.png")


def test_where_filters_in_sql(engine, setup):
    truth = {stem for stem, row in labels_csv(setup.archive).items() if int(row["tonsil_grade"]) >= 3}
    result = engine.query_sketch(phantom_sketch(), k=50, where="tonsil_grade>=3")
    assert {h.labels["id"] for h in result.hits} == truth and result.candidates == len(truth)
    assert result.provenance["where"] == ["tonsil_grade>=3"]
    both = engine.query_sketch(phantom_sketch(), k=50, where="tonsil_grade>=3 AND follicles=0")
    assert all(h.labels["tonsil_grade"] >= 3 and h.labels["follicles"] == 0 for h in both.hits)
    assert [h.labels["id"] for h in engine.query_like(3, where="id=ph000010").hits] == ["ph000010"]
    assert engine.query_like(3, where="tonsil_grade>99").hits == []
    with pytest.raises(BadInputError, match="unknown column 'size'.*tonsil_grade"):
        engine.query_like(3, where="size>3")
    with pytest.raises(BadInputError, match="column 'tonsil_grade' holds numbers, not 'abc'"):
        engine.query_like(3, where="tonsil_grade=abc")
    with pytest.raises(BadInputError, match="separate conditions with ','"):
        engine.query_like(3, where="tonsil_grade=3;mallampati=2")
    with pytest.raises(BadInputError, match="column 'id' holds text, not 3.0"):
        engine.query_like(3, where="id=3")
    ids = LabelFilter(engine.reader.db, "default").allowed(parse_where("mallampati<2"))
    want = {stem for stem, row in labels_csv(setup.archive).items() if int(row["mallampati"]) < 2}
    assert {r["labels"]["id"] for r in engine.reader.images(ids.tolist()).values()} == want


def test_max_distance(engine):
    loose = engine.query_like(4, k=24, alpha=1.0)
    cut = loose.hits[5].latent_distance
    result = engine.query_like(4, k=24, max_distance=cut)
    assert all(h.latent_distance <= cut for h in result.hits) and len(result.hits) >= 6
    assert [h.id for h in engine.query_like(4, max_distance=0.0).hits] == [4]


def test_bad_queries(engine):
    with pytest.raises(BadInputError, match="sketch is empty"):
        engine.query_sketch(np.full((64, 64), 255, np.uint8))
    with pytest.raises(BadInputError, match="sketch is empty"):  # a transparent canvas is blank paper
        engine.query_sketch(np.zeros((64, 64, 4), np.uint8))
    for kw in (dict(k=0), dict(alpha=1.5), dict(max_distance=-1.0), dict(normalisation="z"), dict(steps=-1),
               dict(code="pixels")):
        with pytest.raises(BadInputError):
            engine.query_sketch(phantom_sketch(), **kw)


def test_version_mismatch_and_damaged_files(setup, tmp_path):
    with pytest.raises(VersionMismatchError, match="rebuild"):
        RetrievalEngine.open(home=setup.home, models=setup.other_models)
    with pytest.raises(IndexMissingError):
        RetrievalEngine.open(name="nope", home=setup.home, models=setup.models)

    home = setup.private_home(tmp_path / "home")
    manifest = home / "indexes" / "default" / "manifest.json"
    stamp = json.loads(manifest.read_text())
    manifest.write_text(json.dumps(stamp | {"metric": "random:1"}))
    with pytest.raises(VersionMismatchError, match="perceptual metric random:1"):
        RetrievalEngine.open(home=home, models=setup.models, perceptual=PERCEPTUAL)
    manifest.write_text(json.dumps(stamp))

    models = tmp_path / "models"
    shutil.copytree(setup.models, models)
    (models / "encoder.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="encoder.pt"):
        RetrievalEngine.open(home=home, models=models)

    faiss_file = home / "indexes" / "default" / "index.faiss"
    faiss_file.write_bytes(faiss_file.read_bytes()[:200])
    with pytest.raises(IndexCorruptError, match="corrupt or truncated"):
        RetrievalEngine.open(home=home, models=setup.models)


def test_fake_encoder_index_is_a_mismatch(setup, tmp_path):
    from s2m_retrieval.testing.fake_encoder import FakeEncoder
    from s2m_retrieval.ingest.runner import build_index

    build_index(setup.archive, FakeEncoder(), home=tmp_path)
    with pytest.raises(VersionMismatchError, match="'fake' encoder"):
        RetrievalEngine.open(home=tmp_path, models=setup.models)


def test_unshipped_weights_are_one_clear_error(setup, tmp_path, monkeypatch):
    import s2m_retrieval.model.bundle as bundle
    from s2m_retrieval.model.archive_encoder import load_encoder

    monkeypatch.setattr(bundle, "shipped_folder", lambda: tmp_path / "weights")
    with pytest.raises(CheckpointError, match="no trained generator and encoder and inverter are shipped yet"):
        RetrievalEngine.open(home=setup.home)
    with pytest.raises(CheckpointError, match="--encoder fake"):
        load_encoder("inverter")


# --- storage pieces of the query path ------------------------------------------------------------------------

def test_label_filter_types_on_sqlite_and_postgres(db_url):
    from s2m_retrieval.storage import catalog
    from s2m_retrieval.storage.catalog import ImageRecord
    from s2m_retrieval.storage import open_database

    db = open_database(url=db_url)
    try:
        labels = [{"a": 1}, {"a": "x"}, {"b": 2}, {"a": 2.5, "b": "y"}, {"a": True}, {"a": None}, {"a": "abc"}]
        records = [ImageRecord(path=f"/p/{i}.png", stem=str(i), sha256=f"{i:064x}", width=8, height=8, labels=lab)
                   for i, lab in enumerate(labels)]
        with db.session(write=True) as s:
            mv = catalog.get_or_create_model_version(s, version="v", name="n", dim=2, metric="m", config={})
            ids = [iid for iid, _, _ in catalog.record_batch(s, "ix", mv.id, "s0", records)]
        flt = LabelFilter(db, "ix")

        def stems(where):
            return [i - ids[0] for i in flt.allowed(parse_where(where)).tolist()]
        assert stems("a>=1") == [0, 3] and stems("a!=1") == [3]      # numbers only; true/null/text never match
        assert stems("a=x") == [1] and stems("a>abb") == [1, 6] and stems("a<b") == [6] and stems("a!='x'") == [6]
        assert stems("a>0, b=y") == [3] and stems("a>9") == [] and stems("b<3") == [2]
        with pytest.raises(BadInputError, match="unknown column 'c'.*known: a, b"):
            flt.allowed(parse_where("c=1"))
    finally:
        db.dispose()


def test_row_reader_matches_gather_and_reports_damage(tmp_path):
    from index.row_reader import ShardRowReader
    from index.shards import ShardStore

    shards = ShardStore(tmp_path)
    rng = np.random.default_rng(0)
    shards.write("a", {"thumbs": rng.integers(0, 255, (5, 4, 4, 3), dtype=np.uint8)})
    shards.write("b", {"thumbs": rng.integers(0, 255, (3, 4, 4, 3), dtype=np.uint8)})
    where = [("b", 2), ("a", 0), ("a", 4), ("b", 0), ("a", 0)]
    reader = ShardRowReader(shards)
    np.testing.assert_array_equal(reader.rows("thumbs", where), shards.gather("thumbs", where))
    np.testing.assert_array_equal(reader.rows("thumbs", where[:2]), shards.gather("thumbs", where[:2]))  # cached
    with pytest.raises(IndexCorruptError, match="SQL refers to row 3"):
        reader.rows("thumbs", [("b", 3)])
    with pytest.raises(IndexCorruptError, match="missing"):
        reader.rows("thumbs", [("c", 0)])
    shards.path("b", "thumbs").write_bytes(shards.path("b", "thumbs").read_bytes()[:200])
    with pytest.raises(IndexCorruptError, match="truncated"):
        ShardRowReader(shards).rows("thumbs", [("b", 2)])


def test_engine_on_postgres(postgres_url, setup, tmp_path):
    from s2m_retrieval.model.archive_encoder import load_encoder
    from s2m_retrieval.ingest.runner import BuildOptions, build_index

    build_index(setup.archive, load_encoder(setup.encoder_spec), home=tmp_path, db_url=postgres_url,
                options=BuildOptions(batch_size=10))
    with RetrievalEngine.open(home=tmp_path, db_url=postgres_url, models=setup.models) as engine:
        assert engine.query_like(5, k=1).hits[0].id == 5
        result = engine.query_sketch(phantom_sketch(), k=30, where="tonsil_grade>=3, id!=ph000010")
        want = {s for s, r in labels_csv(setup.archive).items() if int(r["tonsil_grade"]) >= 3} - {"ph000010"}
        assert {h.labels["id"] for h in result.hits} == want
