"""Large-index path: OPQ + IVF-PQ through a real build, memory-mapped, PQ candidates re-ranked exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from index.refine import rerank_exact
from index.stamp import read_stamp
from index.layout import index_paths
from s2m_retrieval.testing.fake_encoder import FakeEncoder, FakeEncoderConfig
from s2m_retrieval.query.index_reader import open_index
from s2m_retrieval.ingest.report import verify_index
from s2m_retrieval.ingest.sync import remove_entries
from s2m_retrieval.ingest.runner import BuildOptions, add_files, build_index

ENC = FakeEncoder(FakeEncoderConfig(resolution=16, grid=4, thumb=4, dim=32))
FACTORY = "OPQ8_32,IVF4,PQ8x4"  # OPQ trains on 8-bit codes: 256 vectors at least


@pytest.fixture(scope="module")
def pq_home(tmp_path_factory):
    """A 300-image index built with the OPQ + IVF-PQ factory."""
    root = tmp_path_factory.mktemp("pq")
    (root / "archive" / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(300):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / "archive" / "images" /
                                                                                f"t{i:04d}.png")
    summary = build_index(root / "archive", ENC, home=root / "home",
                          options=BuildOptions(factory=FACTORY, batch_size=50))
    assert (summary.added, summary.total, summary.factory) == (300, 300, FACTORY)
    return root / "home"


def _stored(reader) -> tuple[np.ndarray, np.ndarray]:
    ids = np.sort(reader.store.ids())
    return ids, reader.arrays("vectors", ids)


def test_pq_index_round_trips_memory_mapped(pq_home):
    stamp = read_stamp(index_paths(pq_home, "default").manifest)
    assert stamp.search == {"nprobe": 4, "refine": 10} and stamp.count == 300
    with open_index(home=pq_home) as reader:
        assert reader.store.read_only
        ids, vectors = _stored(reader)
        d_pq, i_pq = reader.search(vectors[:30], 5, refine=1)
        d, i = reader.search(vectors[:30], 5)
        assert np.array_equal(i[:, 0], ids[:30]) and np.allclose(d[:, 0], 0, atol=1e-4)  # exact after re-rank
        assert (d_pq[:, 0] > 1e-3).mean() > 0.5  # PQ alone is approximate: a stored vector is not at distance 0
        # Noisy queries: recall@5 against brute force over the stored float vectors.
        q = vectors[::8] + 0.05 * np.random.default_rng(1).standard_normal(vectors[::8].shape).astype(np.float32)
        exact = ids[np.argsort(((q[:, None] - vectors[None]) ** 2).sum(-1), axis=1)[:, :5]]
        _, got = reader.search(q, 5)
        _, got_pq = reader.search(q, 5, refine=1)
        recall = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(got, exact)])
        recall_pq = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(got_pq, exact)])
        assert recall >= 0.95 and recall > recall_pq


def test_pq_index_removal_and_incremental_add(pq_home):
    with open_index(home=pq_home) as reader:
        ids, vectors = _stored(reader)
        path = reader.images([int(ids[7])])[int(ids[7])]["path"]
    report = remove_entries([path], home=pq_home)
    assert report.total == 299
    with open_index(home=pq_home) as reader:
        _, i = reader.search(vectors[7:8], 3)
        assert int(ids[7]) not in i[0].tolist()
    again = build_index(Path(path).parent.parent, ENC, home=pq_home)  # still in the archive: the removal sticks
    assert (again.added, again.excluded) == (0, 1)
    assert add_files([path], ENC, home=pq_home).added == 1  # added back incrementally into the trained PQ index
    assert verify_index(home=pq_home).ok


def test_rerank_exact_orders_and_pads():
    vectors = {5: [0.0, 0.0], 6: [1.0, 0.0], 9: [3.0, 0.0]}
    lookup = lambda ids: np.array([vectors[int(i)] for i in ids], np.float32)  # noqa: E731
    d, i = rerank_exact(np.array([[2.9, 0.0], [0.0, 0.0]]), np.array([[5, 9, 6], [-1, -1, -1]]), lookup, 2)
    assert i.tolist() == [[9, 6], [-1, -1]] and np.allclose(d[0], [0.01, 3.61])


@pytest.mark.parametrize("factory", ["OPQ8_32,IVF16,PQ8", "PCA16,Flat"])
def test_chunked_training_reads_in_chunks_and_finds_what_whole_training_finds(factory):
    """A transform index trains on chunks (never the whole sample at full size) and searches as well."""
    from index import factory as fac

    rng = np.random.default_rng(0)
    scale = np.linspace(3, 0.1, 64, dtype=np.float32)
    x = rng.standard_normal((3000, 64)).astype(np.float32) * scale
    q = x[:100] + 0.1 * rng.standard_normal((100, 64)).astype(np.float32)
    exact = np.argsort(((q[:, None] - x[None]) ** 2).sum(-1), axis=1)[:, :10]
    reads = []

    def read(positions):
        reads.append(len(positions))
        return x[positions]

    whole, chunked = fac.make_index(64, factory), fac.make_index(64, factory)
    fac.train(whole, x)
    fac.train_chunked(chunked, len(x), read, chunk=400, transform_n=1000)
    assert chunked.is_trained and max(reads) <= 1000 and sum(reads) == 1000 + len(x)
    reads.clear()
    small = fac.make_index(64, factory)
    fac.train_chunked(small, 900, read, chunk=400, transform_n=1000)  # no larger than the subset: read once, whole
    assert small.is_trained and reads == [900]
    recalls = []
    for index in (whole, chunked):
        index.add_with_ids(x, np.arange(len(x)))
        _, got = index.search(q, 10, params=fac.search_parameters(index, 10, nprobe=16))
        recalls.append(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, exact)]))
    assert recalls[1] >= recalls[0] - 0.05 and recalls[1] > 0.3, recalls


def test_ivf_pq_skips_the_polysemous_training():
    """Searches never filter by code Hamming distance: the costly polysemous step is off for PQ indexes."""
    from index import factory as fac

    assert not fac.core_index(fac.make_index(64, "OPQ8_32,IVF16,PQ8")).do_polysemous_training
    assert not fac.core_index(fac.make_index(64, "PQ8")).do_polysemous_training
