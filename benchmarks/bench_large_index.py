"""Benchmark: a million-vector index through the real build path; memory per image and recall@10 vs exact.

Vectors are synthetic W+ codes shaped like the inverter's: w = the shipped generator's mapping network of a
random z, each W+ entry w plus an offset drawn from the same W distribution (0.25 x (w' - w_avg)), then
weighted and flattened by the default LatentWeighting (dim 2560 at 64 px). They enter `build_index` through
a synthetic engine standing in for decode + encode, so everything else is the real path: plan, shard files,
SQL rows, the automatic factory, training on a sample, FAISS adds and saves. A second process then opens the
index memory-mapped as `retrieve` does, and measures RSS, single-query latency and recall@10 against exact
search over the stored float vectors, for a grid of nprobe and refine settings.

    python benchmarks/bench_large_index.py --n 1000000 --out results.json

Real inverter codes instead: build an index of phantoms with `s2m index build` (resumable), a second small one of
other phantoms for the queries, and measure the first with the second's stored vectors as queries:

    python benchmarks/bench_large_index.py --home H --index big --query-index held --queries 200

or with sketch queries as `s2m retrieve` encodes them (`--query-sketches MANIFEST` of `s2m eval make-queries`).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from timing import rss_mib

CHUNK = 500  # vectors per generated batch (= the largest build batch)
SPACES = ("wplus", "projector")


class SyntheticCodes:
    """Deterministic synthetic weighted W+ vectors: row i depends only on (seed, i // CHUNK). `space="projector"`:
    those vectors through the shipped projector's archive head (256-d unit vectors, what the shipped bundle
    indexes), else the 2,560-d weighted W+ of a bundle without a projector (the widest vectors, the most memory)."""

    def __init__(self, seed: int = 0, space: str = "wplus") -> None:
        import torch

        from s2m_retrieval.networks.checkpoint import shipped_weights
        from s2m_retrieval.model.latent_space import DEFAULT_WEIGHTING
        from s2m_retrieval.networks.projector import load_projector
        from s2m_retrieval.networks.stylegan2 import load_generator

        if space not in SPACES:
            raise SystemExit(f"--space must be one of {SPACES}, got {space!r}")
        self.torch = torch
        self.G = load_generator(shipped_weights("generator"))
        self.P = load_projector(shipped_weights("projector")) if space == "projector" else None
        self.w_avg = self.G.w_avg.numpy()
        self.weighting = DEFAULT_WEIGHTING
        self.seed = seed
        self.pool = self._mapped(16384, seed + 10_000_000) - self.w_avg  # [P, w_dim] offsets within W
        self.dim = self.P.config.dim if self.P is not None else self.weighting.dim(self.G.num_ws, self.G.config.w_dim)

    def _mapped(self, n: int, seed: int) -> np.ndarray:
        g = self.torch.Generator().manual_seed(seed)
        with self.torch.no_grad():
            return self.G.mapping_network(self.torch.randn(n, self.G.config.z_dim, generator=g)).numpy()

    def chunk(self, number: int) -> np.ndarray:
        """Vectors of rows [number * CHUNK, (number + 1) * CHUNK) as float32 `[CHUNK, dim]`."""
        from s2m_retrieval.model.latent_space import w_plus_to_vectors

        w = self._mapped(CHUNK, self.seed * 1_000_003 + number)
        rng = np.random.default_rng((self.seed, number))
        w_plus = w[:, None, :] + 0.25 * self.pool[rng.integers(0, len(self.pool), (CHUNK, self.G.num_ws))]
        vectors = w_plus_to_vectors(w_plus, self.w_avg, self.weighting)
        if self.P is None:
            return vectors
        with self.torch.no_grad():
            return self.P(self.torch.from_numpy(vectors), "archive").numpy()

    def rows(self, first: int, n: int) -> np.ndarray:
        """Vectors of rows [first, first + n)."""
        chunks = range(first // CHUNK, (first + n - 1) // CHUNK + 1)
        block = np.concatenate([self.chunk(c) for c in chunks])
        start = first - chunks[0] * CHUNK
        return block[start:start + n]


class SyntheticEncoder:
    """Just the encoder facts the index stamps (no model runs: the engine supplies the vectors)."""

    name = "synthetic"
    metric = "none"
    resolution = 64
    config: dict = {}

    def __init__(self, codes: SyntheticCodes) -> None:
        self.dim = codes.dim
        self.weighting = codes.weighting.stamp()
        self.version = f"synthetic-wplus-{codes.seed}"


class SyntheticEngine:
    """A build engine whose files are names only: hashes from the name, vectors from SyntheticCodes."""

    def __init__(self, codes: SyntheticCodes) -> None:
        self.codes = codes

    def hashes(self, entries) -> dict[str, str]:
        """A fixed fake sha256 per path (no file is read)."""
        return {os.path.abspath(e.path): f"{int(Path(e.path).stem):064x}" for e in entries}

    def encoded_batches(self, encoder, todo, batch_size, stats, *, policy, keep_tags):
        """Batches of rows in plan order; file i gets row i."""
        for start in range(0, len(todo), batch_size):
            items = list(todo[start:start + batch_size])
            first = int(Path(items[0].path).stem)
            assert [int(Path(i.path).stem) for i in items] == list(range(first, first + len(items)))
            stats.read += len(items)
            yield items, {"vectors": self.codes.rows(first, len(items))}, [(64, 64)] * len(items)


def build(home: Path, n: int, factory: str | None, space: str = "wplus") -> dict:
    """Build the n-vector index under `home`; returns timings and this process's peak RSS."""
    from index.store import VectorStore
    from s2m_retrieval.data.archive import ArchiveEntry
    from s2m_retrieval.ingest.runner import BuildOptions, build_index

    trained = {}
    original_train = VectorStore.train_chunked

    def timed_train(self, n, read):
        peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        t0 = time.perf_counter()
        original_train(self, n, read)
        trained.update(train_s=time.perf_counter() - t0, train_n=n, peak_rss_before_train_mib=peak_before,
                       peak_rss_after_train_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)

    VectorStore.train_chunked = timed_train  # measure only; the training itself is untouched
    codes = SyntheticCodes(seed=0, space=space)
    source_rss = rss_mib()
    entries = [ArchiveEntry(path=Path(f"/synthetic/{i:07d}.png"), stem=f"{i:07d}", rel=f"{i:07d}.png")
               for i in range(n)]
    t0 = time.perf_counter()
    summary = build_index(None, SyntheticEncoder(codes), home=home, entries=entries,
                          options=BuildOptions(batch_size=CHUNK, factory=factory, checkpoint_s=600),
                          engine=SyntheticEngine(codes))
    return {"n": n, "space": space, "dim": codes.dim, "factory": summary.factory,
            "build_s": time.perf_counter() - t0,
            **trained, "build_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "source_rss_mib": source_rss["RssAnon"] + source_rss["RssFile"],
            "added": summary.added}


def exact_top(reader, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k ids by squared L2 over every stored float vector, streamed shard by shard."""
    from sqlalchemy import select

    from s2m_retrieval.storage.models import Vector

    with reader.db.session() as s:
        rows = s.execute(select(Vector.shard, Vector.row, Vector.image_id)
                         .where(Vector.index_name == reader.stamp.name)).all()
    by_shard: dict[str, list[tuple[int, int]]] = {}
    for shard, row, iid in rows:
        by_shard.setdefault(shard, []).append((row, iid))
    best_d = np.full((len(queries), k), np.inf, np.float32)
    best_i = np.full((len(queries), k), -1, np.int64)
    q2 = (queries ** 2).sum(1, keepdims=True)
    for shard, members in by_shard.items():
        pos = np.array([r for r, _ in members])
        ids = np.array([i for _, i in members], dtype=np.int64)
        x = np.asarray(reader.shards.read(shard, "vectors")[pos], dtype=np.float32)
        d = q2 - 2 * queries @ x.T + (x ** 2).sum(1)[None]
        all_d = np.concatenate([best_d, d], axis=1)
        all_i = np.concatenate([best_i, np.broadcast_to(ids, d.shape)], axis=1)
        keep = np.argsort(all_d, axis=1, kind="stable")[:, :k]
        best_d, best_i = np.take_along_axis(all_d, keep, 1), np.take_along_axis(all_i, keep, 1)
    return best_i


def real_queries(home: Path, name: str, n: int) -> np.ndarray:
    """The first `n` stored vectors of index `name` (real inverter codes of images the measured index lacks)."""
    from s2m_retrieval.query.index_reader import open_index

    with open_index(home=home, name=name) as reader:
        ids = np.sort(reader.store.ids())[:n]
        return np.asarray(reader.arrays("vectors", ids), dtype=np.float32)


def sketch_queries(home: Path, name: str, manifest: Path, n: int) -> np.ndarray:
    """What `s2m retrieve` searches with at its defaults for the first `n` sketches of a make-queries manifest: E's
    code through the projector's query head, by the models index `name` was built with (the shipped bundle)."""
    import csv

    from s2m_retrieval.query.engine import RetrievalEngine, read_sketch

    with open(manifest, newline="") as f:
        paths = [manifest.parent / row["sketch"] for row in csv.DictReader(f)][:n]
    with RetrievalEngine.open(name, home=home) as engine:
        coded = engine.encode_sketches([read_sketch(p) for p in paths], steps=0, x_hat=False)
    return np.concatenate([c.vector for c in coded]).astype(np.float32)


def with_factory(reader, factory: str):
    """The opened index with its FAISS part replaced by a `factory` one trained and filled in memory from the
    stored vectors, as a build would (seeded sample, chunked training), so one set of stored codes measures
    several index types."""
    import dataclasses

    from index.store import VectorStore
    from s2m_retrieval.ingest.sync import sync_store
    from s2m_retrieval.storage import catalog

    with reader.db.session() as s:
        rows = catalog.stored_vectors(s, reader.stamp.name)
    store = VectorStore.create(reader.stamp.dim, factory, reader.stamp.faiss_metric)
    if sync_store(store, reader.shards, rows, synced_vector_id=0).pending:  # trains as a build does, then adds all
        raise SystemExit(f"{factory} needs more than the {len(rows)} stored vectors to train")
    return dataclasses.replace(reader, stamp=dataclasses.replace(reader.stamp, factory=factory,
                                                                 search=store.search_defaults), store=store)


def query(home: Path, n_queries: int, k: int, grid: list[tuple[int, int]], name: str = "default",
          query_index: str | None = None, factory: str | None = None, space: str = "wplus",
          query_sketches: Path | None = None) -> dict:
    """Open memory-mapped, measure RSS and per-query latency per (nprobe, refine), recall@k vs exact."""
    import faiss

    from s2m_retrieval.query.index_reader import open_index

    faiss.omp_set_num_threads(1)
    if query_sketches:
        queries = sketch_queries(home, name, query_sketches, n_queries)
    elif query_index:
        queries = real_queries(home, query_index, n_queries)
    else:
        # fresh codes from the same distribution, not stored ones
        queries = SyntheticCodes(seed=1, space=space).rows(0, n_queries)
    base = rss_mib()
    reader = open_index(home=home, name=name)
    if factory:
        reader = with_factory(reader, factory)
    opened = rss_mib()
    out = {"index": name, "n": reader.store.ntotal, "factory": reader.stamp.factory, "queries": len(queries),
           "query_source": (f"sketches of {query_sketches}" if query_sketches else query_index)
           or f"synthetic {space}", "rss_base_mib": base, "rss_open_mib": opened,
           "stamp_search": reader.stamp.search,
           "faiss_bytes": reader.paths.faiss_file.stat().st_size, "runs": []}
    found = {}
    for nprobe, refine in grid:
        reader.search(queries[:1], k, nprobe=nprobe, refine=refine)
        times, ids = [], []
        for q in queries:
            t0 = time.perf_counter()
            _, i = reader.search(q[None], k, nprobe=nprobe, refine=refine)
            times.append((time.perf_counter() - t0) * 1e3)
            ids.append(i[0])
        found[(nprobe, refine)] = np.stack(ids)
        out["runs"].append({"nprobe": nprobe, "refine": refine, "p50_ms": statistics.median(times),
                            "p95_ms": float(np.percentile(times, 95))})
    out["rss_searched_mib"] = rss_mib()  # (not ru_maxrss: Linux carries the parent's peak across fork + exec)
    t0 = time.perf_counter()
    truth = exact_top(reader, queries, k)
    out["exact_s"] = time.perf_counter() - t0
    for run in out["runs"]:
        got = found[(run["nprobe"], run["refine"])]
        run[f"recall@{k}"] = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(got, truth)]))
    reader.close()
    return out


def main() -> None:
    """Build in this process, query in a fresh one (so its RSS is only what a query process holds)."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--factory", default=None, help="FAISS factory (default: the automatic choice for --n; with "
                                                   "--index: measure this factory, built in memory from the "
                                                   "index's stored vectors, instead of the index's own)")
    p.add_argument("--space", default="wplus", choices=SPACES,
                   help="Synthetic vectors: 2,560-d weighted W+ (no projector; the most memory) or the shipped "
                        "projector's 256-d archive vectors (what the shipped bundle indexes)")
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--grid", default="64:1,256:1,256:10,512:1,512:10,512:30,1024:10,1024:30",
                   help="nprobe:refine pairs to measure")
    p.add_argument("--home", default=None, help="Work folder (default: a temporary one, deleted after)")
    p.add_argument("--out", default=None, help="Write the figures as JSON here too")
    p.add_argument("--index", default=None,
                   help="Measure this existing index under --home instead of building synthetic codes (e.g. one "
                        "built by `s2m index build` from real phantoms)")
    p.add_argument("--query-index", default=None,
                   help="With --index: take the queries from this index's stored vectors (real inverter codes of "
                        "images the measured index lacks)")
    p.add_argument("--query-sketches", type=Path, default=None,
                   help="With --index: the queries are the sketches of this make-queries manifest, encoded as "
                        "`s2m retrieve` encodes them (E's code through the projector's query head)")
    p.add_argument("--query-only", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    grid = [tuple(int(v) for v in pair.split(":")) for pair in args.grid.split(",")]
    if args.index and not (args.home and (args.query_index or args.query_sketches)):
        p.error("--index needs --home (where it is) and --query-index or --query-sketches (where the queries come "
                "from)")
    if args.query_only or args.index:
        queried = query(Path(args.home), args.queries, args.k, grid, args.index or "default", args.query_index,
                        args.factory if args.index else None, args.space, args.query_sketches)
        print(json.dumps(queried, indent=None if args.query_only else 1))
        if args.index:
            report_queries(queried)
            if args.out:
                Path(args.out).write_text(json.dumps(queried, indent=1) + "\n")
        return
    home = Path(args.home or tempfile.mkdtemp(prefix="s2m-large-"))
    try:
        built = build(home, args.n, args.factory, args.space)
        print(json.dumps(built), flush=True)
        out = subprocess.run([sys.executable, __file__, "--query-only", "--home", str(home), "--space", args.space,
                              "--queries",
                              str(args.queries), "--k", str(args.k), "--grid", args.grid],
                             capture_output=True, text=True, check=True)
        queried = json.loads(out.stdout.strip().splitlines()[-1])
        shard_bytes = sum(f.stat().st_size for f in (home / "indexes" / "default" / "shards").iterdir())
        result = {"build": built, "query": queried, "shard_bytes": shard_bytes}
        print(json.dumps(result, indent=1))
        report(result)
        if args.out:
            Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    finally:
        if args.home is None:
            shutil.rmtree(home, ignore_errors=True)


def report(r: dict) -> None:
    """Human summary of the figures."""
    b, q, n = r["build"], r["query"], r["build"]["n"]
    mib = 2 ** 20
    print(f"\n== {n} vectors ({b.get('space', 'wplus')}), dim {b['dim']}, factory {b['factory']} ==")
    if "train_s" in b:
        print(f"peak RSS before the training {b['peak_rss_before_train_mib']:.0f} MiB, after it "
              f"{b['peak_rss_after_train_mib']:.0f} MiB")
    print(f"build {b['build_s']:.0f} s (training {b.get('train_s', 0):.0f} s on {b.get('train_n', 0)} vectors), "
          f"peak RSS of the build process {b['build_peak_rss_mib']:.0f} MiB ({b['source_rss_mib']:.0f} MiB of it the "
          "synthetic source's torch and generator, before the build)")
    print(f"index.faiss {q['faiss_bytes'] / mib:.0f} MiB = {q['faiss_bytes'] / n:.1f} bytes/vector; float vectors in "
          f"shards (disk, read per candidate) {r['shard_bytes'] / mib:.0f} MiB")
    anon = q["rss_searched_mib"]["RssAnon"] - q["rss_base_mib"]["RssAnon"]
    file_ = q["rss_searched_mib"]["RssFile"] - q["rss_base_mib"]["RssFile"]
    print(f"query process: +{anon:.0f} MiB anon (= {anon * mib / n:.0f} bytes/image), +{file_:.0f} MiB file-backed "
          f"after all searches; total RSS {q['rss_searched_mib']['RssAnon'] + q['rss_searched_mib']['RssFile']:.0f}"
          f" MiB (torch and the generator included); exact search for the truth {q['exact_s']:.0f} s")
    report_queries(q)


def report_queries(q: dict) -> None:
    """The recall and latency lines of a query run."""
    print(f"index {q['index']!r}: {q['n']} vectors, factory {q['factory']}, stamped search {q['stamp_search']}; "
          f"{q['queries']} queries ({q['query_source']})")
    for run in q["runs"]:
        recall = next(v for key, v in run.items() if key.startswith("recall@"))
        print(f"nprobe {run['nprobe']:5d} refine {run['refine']:3d}: recall {recall:.3f}  "
              f"p50 {run['p50_ms']:7.1f} ms  p95 {run['p95_ms']:7.1f} ms")


if __name__ == "__main__":
    main()
