"""FAISS vector store, stamps and shards: round trips, atomic writes, mmap, selectors, damaged files."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from index import factory as fac
from index.shards import ShardStore
from index.stamp import IndexStamp, read_stamp, write_stamp
from index.store import VectorStore
from s2m_retrieval.errors import BadInputError, IndexCorruptError, VersionMismatchError

DIM = 32


def _data(n=400, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, DIM)).astype(np.float32), np.arange(1000, 1000 + n, dtype=np.int64)


def _filled(factory: str, n=400) -> tuple[VectorStore, np.ndarray, np.ndarray]:
    x, ids = _data(n)
    store = VectorStore.create(DIM, factory)
    store.train(x)
    store.add(ids, x)
    return store, x, ids


@pytest.mark.parametrize("factory", ["Flat", "IVF8,Flat", "IVF8,PQ8x4", "HNSW16", "PCA16,Flat"])
def test_round_trip_through_mmap(tmp_path, factory):
    store, x, ids = _filled(factory)
    store.save(tmp_path / "index.faiss")
    loaded = VectorStore.load(tmp_path / "index.faiss", factory, mmap=True, search_defaults={"nprobe": 8})
    assert loaded.read_only and loaded.ntotal == len(ids)
    assert sorted(loaded.ids().tolist()) == ids.tolist()
    d0, i0 = store.search(x[:20], 5, nprobe=8)
    d1, i1 = loaded.search(x[:20], 5)
    assert np.array_equal(i0, i1) and np.allclose(d0, d1)
    untyped = VectorStore.load(tmp_path / "index.faiss", mmap=True, search_defaults={"nprobe": 8})
    assert np.array_equal(untyped.search(x[:20], 5)[1], i0)  # mmap flags picked from the file's own type
    recall = np.mean(i1[:, 0] == ids[:20])
    assert recall >= (1.0 if factory in ("Flat", "IVF8,Flat") else 0.6)
    with pytest.raises(RuntimeError, match="read-only"):
        loaded.add(ids[:1], x[:1])


@pytest.mark.parametrize("factory", ["Flat", "IVF8,Flat", "PCA32,IVF8,Flat", "PCA32,Flat"])
def test_remove_keeps_search_ids_right(factory):
    # IDMap2 around IVF returned shifted ids after a removal; IVF now keeps the SQL ids itself.
    store, x, ids = _filled(factory)
    assert store.supports_remove
    for round_ in range(2):
        gone = ids[round_ * 10:(round_ + 1) * 10]
        assert store.remove(gone) == 10
        _, found = store.search(x[100:120], 1, nprobe=8)
        assert found[:, 0].tolist() == ids[100:120].tolist()
    store.add(ids[:20], x[:20])
    assert sorted(store.ids().tolist()) == ids.tolist()
    _, found = store.search(x[:20], 1, nprobe=8)
    assert found[:, 0].tolist() == ids[:20].tolist()


def test_hnsw_cannot_remove():
    hnsw, _, _ = _filled("HNSW16", 50)
    assert not hnsw.supports_remove


@pytest.mark.parametrize("factory", ["Flat", "IVF8,Flat", "HNSW16", "PCA16,IVF4,Flat"])
def test_selector_restricts_results(factory):
    store, x, ids = _filled(factory)
    allow = ids[[3, 50, 77, 200]]
    _, found = store.search(x[:4], 3, allow=allow, nprobe=8)
    hits = found[found >= 0]
    assert len(hits) and set(hits.tolist()) <= set(allow.tolist())
    assert found[0, 0] == ids[3]  # the query itself is allowed and nearest
    _, none = store.search(x[:1], 3, allow=np.array([], dtype=np.int64))
    assert (none == -1).all()


def test_single_query_runs_on_one_thread_and_restores():
    store, x, _ = _filled("Flat", 50)
    before = faiss.omp_get_max_threads()
    seen = []
    original = store.index.search

    def spy(*args, **kwargs):
        seen.append(faiss.omp_get_max_threads())
        return original(*args, **kwargs)

    store.index.search = spy
    store.search(x[0], 3)
    assert seen == [1] and faiss.omp_get_max_threads() == before


def test_save_is_atomic(tmp_path, monkeypatch):
    store, x, ids = _filled("Flat", 20)
    path = tmp_path / "index.faiss"
    store.save(path)
    before = path.read_bytes()

    def broken_write(index, name):
        with open(name, "wb") as fh:
            fh.write(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(faiss, "write_index", broken_write)
    store.add(ids[:1] + 10_000, x[:1])
    with pytest.raises(RuntimeError, match="disk full"):
        store.save(path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["index.faiss"]


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupt_faiss_file_is_one_line_error(tmp_path, damage):
    store, _, _ = _filled("Flat", 50)
    path = tmp_path / "index.faiss"
    store.save(path)
    data = path.read_bytes()
    path.write_bytes({"garbage": b"not a faiss index at all" * 10, "truncated": data[: len(data) // 2],
                      "empty": b""}[damage])
    for mmap in (False, True):
        with pytest.raises(IndexCorruptError) as err:
            VectorStore.load(path, mmap=mmap)
        assert "corrupt" in str(err.value) and "\n" not in str(err.value)
        assert "(Success)" not in str(err.value) and "failed:" not in str(err.value)  # no errno noise


def test_plain_faiss_index_is_rejected(tmp_path):
    faiss.write_index(faiss.IndexFlatL2(DIM), str(tmp_path / "plain.faiss"))
    with pytest.raises(IndexCorruptError, match="not an s2m index"):
        VectorStore.load(tmp_path / "plain.faiss")


def test_bad_factory_and_training_errors():
    with pytest.raises(BadInputError, match="Bogus"):
        VectorStore.create(DIM, "Bogus")
    store = VectorStore.create(DIM, "IVF64,Flat")
    assert store.training_size(1000)[0] == 64
    with pytest.raises(BadInputError, match="training"):
        store.train(_data(10)[0])


def test_auto_factory_thresholds():
    assert fac.auto_factory(500, 2560) == "Flat"
    assert fac.auto_factory(fac.FLAT_MAX - 1, 512) == "Flat"
    assert fac.auto_factory(100_000, 2560) == "IVF1024,Flat"
    # IVF-Flat holds every vector in RAM: past 2 GiB of them (~210k at 2,560-d) the build takes PQ codes
    assert fac.auto_factory(200_000, 2560) == "IVF2048,Flat"
    assert fac.auto_factory(300_000, 2560) == "OPQ64_256,IVF2048,PQ64"
    assert fac.auto_factory(999_999, 256) == "IVF4096,Flat"
    assert fac.auto_factory(2_000_000, 2560) == "OPQ64_256,IVF4096,PQ64"
    assert fac.auto_factory(1_000_000, 96) == "OPQ32_96,IVF4096,PQ32"
    assert fac.auto_factory(2_000_000, 100) == "IVF4096,Flat"
    for n in (10, 50_000, 3_000_000):
        VectorStore.create(2560, fac.auto_factory(n, 2560))


def _stamp(**kw) -> IndexStamp:
    base = dict(name="default", model_version="v1", model_name="fake", metric="lpips-alex", dim=DIM,
                factory="Flat", weighting="uniform", resolution=64)
    return IndexStamp(**(base | kw))


def test_stamp_round_trip_and_mismatch(tmp_path):
    path = tmp_path / "manifest.json"
    write_stamp(path, _stamp(arrays={"thumbs": [16, 16, 3]}))
    stamp = read_stamp(path)
    assert stamp.model_version == "v1" and stamp.arrays == {"thumbs": [16, 16, 3]} and stamp.created_at
    stamp.check(model_version="v1", metric="lpips-alex", dim=DIM)
    for kwargs in ({"model_version": "v2"}, {"metric": "lpips-vgg"}, {"dim": 64}):
        with pytest.raises(VersionMismatchError) as err:
            stamp.check(**kwargs)
        assert "--rebuild" in str(err.value) and "\n" not in str(err.value)


def test_damaged_stamp(tmp_path):
    path = tmp_path / "manifest.json"
    path.write_text("{not json")
    with pytest.raises(IndexCorruptError, match="unreadable"):
        read_stamp(path)
    path.write_text('{"format": "other"}')
    with pytest.raises(IndexCorruptError, match="format"):
        read_stamp(path)


def test_shards_write_gather_and_collect(tmp_path):
    shards = ShardStore(tmp_path / "shards")
    a = {"vectors": np.arange(12, dtype=np.float32).reshape(3, 4), "thumbs": np.zeros((3, 2, 2, 3), np.uint8)}
    b = {"vectors": -np.arange(8, dtype=np.float32).reshape(2, 4), "thumbs": np.ones((2, 2, 2, 3), np.uint8)}
    shards.write("000001-000000", a)
    shards.write("000001-000001", b)
    got = shards.gather("vectors", [("000001-000001", 1), ("000001-000000", 2), ("000001-000000", 0)])
    assert np.array_equal(got, np.stack([b["vectors"][1], a["vectors"][2], a["vectors"][0]]))
    assert shards.gather("thumbs", [("000001-000001", 0)]).shape == (1, 2, 2, 3)
    with pytest.raises(IndexCorruptError, match="row 5"):
        shards.gather("vectors", [("000001-000000", 5)])
    (tmp_path / "shards" / ".000009-000000.vectors.npy.tmp").write_bytes(b"half")
    assert shards.collect_garbage({"000001-000001"}) == 3
    assert set(shards.names()) == {"000001-000001"}
    with pytest.raises(IndexCorruptError, match="missing"):
        shards.read("000001-000000", "vectors")
