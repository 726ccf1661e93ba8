"""Benchmark: index build throughput (fake encoder; the real inverter at 1-3 ReStyle iterations, seg vs seg-pool8,
against the inversion as it was before channels_last G and the skipped last G forward) and FAISS single-query
latency, flat vs HNSW/IVF, RAM/disk."""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from index.store import VectorStore
from timing import rss_mib


def bench_build(n: int, dim: int, batch: int) -> None:
    """Images/s of reading alone, hashing alone, the fake encoder alone, and a whole build."""
    from s2m_retrieval.data.archive import ReadStats, iter_batches, scan_archive
    from s2m_retrieval.data.phantom_archive import write_phantom_archive
    from s2m_retrieval.testing.fake_encoder import FakeEncoder, FakeEncoderConfig
    from s2m_retrieval.ingest.reader import file_sha256
    from s2m_retrieval.ingest.runner import BuildOptions, build_index

    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "archive"
        write_phantom_archive(archive, n=n, size=64, seed=0)
        encoder = FakeEncoder(FakeEncoderConfig(dim=dim))
        entries = scan_archive(archive)

        t0 = time.perf_counter()
        batches = [b.images for b in iter_batches(entries, batch, 64, stats=ReadStats())]
        t_read = time.perf_counter() - t0
        t0 = time.perf_counter()
        for e in entries:
            file_sha256(e.path)
        t_hash = time.perf_counter() - t0
        t0 = time.perf_counter()
        for images in batches:
            encoder.encode(images)
        t_encode = time.perf_counter() - t0

        home = Path(tmp) / "home"
        t0 = time.perf_counter()
        summary = build_index(archive, encoder, home=home, options=BuildOptions(batch_size=batch))
        t_build = time.perf_counter() - t0
        t0 = time.perf_counter()
        again = build_index(archive, encoder, home=home)
        t_noop = time.perf_counter() - t0
        assert summary.added == n and again.skipped == n

        print(f"\n== build: {n} phantoms 64 px, fake encoder dim {dim}, batch {batch} ==")
        print(f"read+decode only   {n / t_read:8.0f} images/s")
        print(f"sha256 only        {n / t_hash:8.0f} images/s")
        print(f"fake encoder only  {n / t_encode:8.0f} images/s")
        print(f"full build         {n / t_build:8.0f} images/s  ({t_build:.2f} s; writer+db+faiss overhead "
              f"{(t_build - t_read - t_hash - t_encode) / n * 1e3:.2f} ms/image)")
        print(f"no-op rebuild      {n / t_noop:8.0f} images/s  ({t_noop:.2f} s, all {n} skipped by sha256)")
        shard_mib = sum(p.stat().st_size for p in (home / "indexes" / "default" / "shards").iterdir()) / 2**20
        print(f"shards on disk     {shard_mib:.1f} MiB ({shard_mib * 2**20 / n / 1024:.1f} KiB/image)")


def bench_inverter_build(n: int, batch: int) -> None:
    """Images/s of whole builds with the real inverter (default 64 px configs, random weights: speed only)."""
    import copy

    import torch
    from bench_retrieval import make_models

    from s2m_retrieval.data.phantom_archive import write_phantom_archive
    from s2m_retrieval.ingest.runner import BuildOptions, build_index
    from s2m_retrieval.model.inverter_encoder import InverterEncoder
    from s2m_retrieval.model.pipeline import image_batch
    from s2m_retrieval.training.encoder import encode_iterations

    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "archive"
        write_phantom_archive(archive, n=n, size=64, seed=0)
        models = make_models(Path(tmp) / "models")
        print(f"\n== build with the inverter: {n} phantoms 64 px, batch {batch}, {torch.get_num_threads()} torch "
              "thread(s), random weights ==")
        encoder = InverterEncoder.load(models, perceptual="seg")
        # Baseline in the same run: the inversion as it was (G in NCHW, a G forward after every iteration).
        old_G = copy.deepcopy(encoder.G).to(memory_format=torch.contiguous_format)
        images = np.random.default_rng(0).integers(0, 256, (batch, 64, 64, 3), np.uint8)
        x = image_batch(images, 64)
        rates = {}
        with torch.no_grad():
            for name, fn in (("inversion before (NCHW G, last G kept)",
                              lambda: encode_iterations(encoder.inverter, old_G, x, 3)),
                             ("inversion now (channels_last G, no last G)", lambda: encoder.w_plus(images))):
                fn()
                t0 = time.perf_counter()
                fn()
                rates[name] = batch / (time.perf_counter() - t0)
        base = next(iter(rates.values()))
        for name, rate in rates.items():
            print(f"{name:<46} {rate:6.1f} images/s  x{rate / base:.2f}")
        for metric, iterations in (("seg", 3), ("seg-pool8", 3), ("seg-pool8", 2), ("seg-pool8", 1)):
            enc = InverterEncoder.load(models, perceptual=metric, iterations=iterations)
            t0 = time.perf_counter()
            summary = build_index(archive, enc, home=Path(tmp) / f"home-{metric}-{iterations}",
                                  options=BuildOptions(batch_size=batch))
            rate = summary.added / (time.perf_counter() - t0)
            print(f"full build, {metric:<9} {iterations} iteration(s)            {rate:6.1f} images/s  "
                  f"x{rate / base:.2f} vs inversion before")


def clustered(n: int, dim: int, seed: int) -> np.ndarray:
    """Synthetic vectors with cluster structure (like codes of similar images), float32 [n, dim]."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(16, n // 500), dim)).astype(np.float32)
    x = centres[rng.integers(0, len(centres), n)] + 0.5 * rng.standard_normal((n, dim)).astype(np.float32)
    return x


def latency_ms(store: VectorStore, queries: np.ndarray, k: int) -> tuple[list[float], np.ndarray]:
    """Per-query wall times (single queries, as the CLI makes them) and the returned ids."""
    for q in queries[:5]:
        store.search(q[None], k)
    times, found = [], []
    for q in queries:
        t0 = time.perf_counter()
        _, ids = store.search(q[None], k)
        times.append((time.perf_counter() - t0) * 1e3)
        found.append(ids[0])
    return times, np.stack(found)


def bench_search(n: int, dim: int, factories: list[str], n_queries: int, k: int, measure_ram: bool) -> None:
    """p50/p95 single-query latency per factory, ratio and recall@k against flat in the same run."""
    x = clustered(n, dim, seed=1)
    ids = np.arange(1, n + 1, dtype=np.int64)
    rng = np.random.default_rng(2)
    queries = x[rng.integers(0, n, n_queries)] + 0.3 * rng.standard_normal((n_queries, dim)).astype(np.float32)
    print(f"\n== search: {n} vectors, dim {dim}, k {k}, {n_queries} single queries, 1 thread ==")
    flat_p50, flat_ids = None, None
    for factory in ["Flat"] + [f for f in factories if f != "Flat"]:
        store = VectorStore.create(dim, factory)
        t0 = time.perf_counter()
        store.train(x[:min(n, 50_000)])
        store.add(ids, x)
        t_build = time.perf_counter() - t0
        times, found = latency_ms(store, queries, k)
        p50, p95 = statistics.median(times), float(np.percentile(times, 95))
        if factory == "Flat":
            flat_p50, flat_ids = p50, found
        recall = np.mean([len(set(a) & set(b)) / k for a, b in zip(found, flat_ids)])
        print(f"{factory:<16} build {t_build:7.1f} s   p50 {p50:8.3f} ms   p95 {p95:8.3f} ms   "
              f"x{flat_p50 / p50:7.1f} faster than flat   recall@{k} {recall:.3f}")
        if measure_ram and factory == "Flat":
            report_ram_disk(store)
        del store


def report_ram_disk(store: VectorStore) -> None:
    """Disk size of the saved index, time and RAM to open it copied vs memory-mapped."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "index.faiss"
        store.save(path)
        disk = path.stat().st_size / 2**20
        q = np.zeros((1, store.dim), np.float32)
        for mmap in (False, True):
            before = rss_mib()
            t0 = time.perf_counter()
            loaded = VectorStore.load(path, mmap=mmap)
            t_open = (time.perf_counter() - t0) * 1e3
            opened = rss_mib()
            loaded.search(q, 10)
            searched = rss_mib()
            print(f"  {'mmap' if mmap else 'read'}: open {t_open:8.1f} ms; RSS anon +{opened['RssAnon'] - before['RssAnon']:.0f}"
                  f" MiB, file +{searched['RssFile'] - before['RssFile']:.0f} MiB after one search "
                  f"(index file {disk:.0f} MiB)")
            del loaded


def main() -> None:
    """Parse flags and run the selected benchmarks."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--build-n", type=int, default=2000, help="Archive size for the build benchmark (0 skips it).")
    p.add_argument("--build-dim", type=int, default=2560)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--inverter-n", type=int, default=512, help="Archive size for the inverter build (0 skips it).")
    p.add_argument("--sizes", default="10000,100000", help="Index sizes for the search benchmark ('' skips it).")
    p.add_argument("--dims", default="512,2560")
    p.add_argument("--factories", default="Flat,HNSW32,IVF1024,Flat")
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--k", type=int, default=100, help="Candidates per query (the re-rank's N).")
    args = p.parse_args()
    faiss.omp_set_num_threads(os.cpu_count() or 1)  # building uses every core; queries drop to one
    print(f"faiss {faiss.__version__}, {os.cpu_count()} cores")
    if args.build_n:
        bench_build(args.build_n, args.build_dim, args.batch)
    if args.inverter_n:
        bench_inverter_build(args.inverter_n, args.batch)
    factories = [f.strip() for f in args.factories.replace(",Flat", "+Flat").split(",")]
    factories = [f.replace("+Flat", ",Flat") for f in factories]
    for n in [int(s) for s in args.sizes.split(",") if s]:
        for dim in [int(d) for d in args.dims.split(",")]:
            bench_search(n, dim, factories, args.queries, args.k, measure_ram=n == max(int(s) for s in
                                                                                  args.sizes.split(",")))


if __name__ == "__main__":
    main()
