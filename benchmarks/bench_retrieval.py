"""Benchmark: warm query latency (sketch -> top-10 with T refinement steps and perceptual re-rank of 100) at 10k and
100k entries, against the encoder-only query (T=0, no re-rank) in the same run; re-rank from thumbs (seg) vs cached
features (seg-pool8); where filters; inverter throughput; cold `retrieve` CLI time; RAM of a 100k index.
`--precision` instead compares the candidate order of seg-pool8 with exact seg on real phantoms (shipped segmenter).

Models: the default 64 px configs (G, E, H, inverter, seg metric's segmenter) with RANDOM weights: speed does not
depend on the weights, results do, so only timings here mean anything. Index entries are synthetic: W+ codes from
G's mapping network (plus per-entry noise) weighted by the real code path, noise thumbnails, random labels,
written as real shards, SQL rows and FAISS file (the factory chosen by size, as a build would).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from timing import rss_mib

REPO = Path(__file__).resolve().parents[1]


def make_models(folder: Path, projector_dim: int = 0, projector_hidden: int = 0) -> Path:
    """Default-config 64 px models with random weights, plus a random default segmenter for the seg metric, and
    a random projector into `projector_dim` dims when it is > 0 (the shipped bundle's retrieval space: 256, heads
    with one hidden layer of 512 units)."""
    from s2m_retrieval.networks.checkpoint import save_checkpoint
    from s2m_retrieval.networks.segmenter import Segmenter, SegmenterConfig
    from s2m_retrieval.networks.stylegan2 import GeneratorConfig
    from s2m_retrieval.testing.random_models import write_random_models

    write_random_models(folder, g_config=GeneratorConfig(), seed=0, projector_dim=projector_dim,
                        projector_hidden=projector_hidden)
    torch.manual_seed(0)
    save_checkpoint(folder / "segmenter.pt", kind="segmenter", config=SegmenterConfig(),
                    state_dict=Segmenter(SegmenterConfig()).state_dict(), meta={"random": True})
    return folder


def synth_index(home: Path, encoder, n: int, factory: str | None, batch: int = 64, seed: int = 0) -> str:
    """Write an index of n synthetic entries through shards, catalog and VectorStore; returns its factory."""
    from index.factory import auto_factory
    from index.stamp import IndexStamp, write_stamp
    from index.store import VectorStore
    from s2m_retrieval.ingest.sync import open_for_write, save_index
    from s2m_retrieval.storage import catalog
    from s2m_retrieval.storage.catalog import ImageRecord

    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    r, G = encoder.resolution, encoder.G
    factory = factory or auto_factory(n, encoder.dim)
    thumbs = rng.integers(0, 256, (512, r, r, 3), dtype=np.uint8)
    arrays, features = {"vectors": [encoder.dim], "thumbs": [r, r, 3]}, None
    if encoder.perceptual.cacheable:  # each distinct thumb's stored features, computed as a build does
        features = np.concatenate([encoder.encode(thumbs[i:i + 64])["features"] for i in range(0, len(thumbs), 64)])
        arrays["features"] = [features.shape[1]]
    stamp = IndexStamp(name="default", model_version=encoder.version, model_name=encoder.name, metric=encoder.metric,
                       dim=encoder.dim, factory=factory, weighting=encoder.weighting, resolution=r, arrays=arrays)
    ids, vectors = [], []
    with open_for_write(home, "default") as h:
        write_stamp(h.paths.manifest, stamp)
        with h.db.session(write=True) as s:
            mv = catalog.get_or_create_model_version(s, version=encoder.version, name=encoder.name, dim=encoder.dim,
                                                     metric=encoder.metric, config=encoder.config)
            build_id = catalog.start_build(s, "default", mv.id, factory, "synthetic")
        for b, start in enumerate(range(0, n, batch)):
            m = min(batch, n - start)
            with torch.no_grad():
                w = G.mapping(torch.randn(m, G.config.z_dim, generator=gen))
                w = w + 0.3 * torch.randn(w.shape, generator=gen)  # W+ codes differ per entry, as inverted ones do
            vec = encoder.vectors(w)
            shard = f"{build_id:06d}-{b:06d}"
            pick = rng.integers(0, len(thumbs), m)
            h.shards.write(shard, {"vectors": vec, "thumbs": thumbs[pick]}
                           | ({"features": features[pick]} if features is not None else {}))
            labels = [{"tonsil_grade": int(rng.integers(0, 5)), "mallampati": int(rng.integers(1, 5)),
                       "follicles": int(rng.integers(0, 2))} for _ in range(m)]
            records = [ImageRecord(path=f"/synthetic/img{start + i:07d}.png", stem=f"img{start + i:07d}",
                                   sha256=f"{start + i:064x}", width=r, height=r, labels=labels[i]) for i in range(m)]
            with h.db.session(write=True) as s:
                stored = catalog.record_batch(s, "default", mv.id, shard, records)
            ids += [iid for iid, _, _ in stored]
            vectors.append(vec)
        x = np.concatenate(vectors)
        store = VectorStore.create(encoder.dim, factory)
        if not store.is_trained:
            store.train(x[rng.choice(n, store.training_size(n)[1], replace=False)])
        store.add(np.asarray(ids, np.int64), x)
        with h.db.session() as s:
            last = max(v.vector_id for v in catalog.stored_vectors(s, "default"))
        save_index(h.paths, store, stamp, last)
        with h.db.session(write=True) as s:
            catalog.finish_build(s, build_id, "done", n_added=n)
    return factory


def sketches(n: int) -> list[np.ndarray]:
    """Free-hand phantom sketches at 64 px (content does not change speed; several avoid a lucky cache)."""
    from s2m_retrieval.data.phantom import make_phantom
    from s2m_retrieval.data.sketch import FreehandConfig, sketch_from_mask

    return [sketch_from_mask(make_phantom(5, i, 64)[1], 64, freehand=FreehandConfig(), seed=i) for i in range(n)]


def latency(engine, queries, runs: int, **kw) -> tuple[float, float, dict]:
    """p50, p95 (ms) of engine.query_sketch over `runs` warm calls, and the median of each stage."""
    for q in queries[:3]:
        engine.query_sketch(q, **kw)
    times, stages = [], {}
    for i in range(runs):
        t0 = time.perf_counter()
        result = engine.query_sketch(queries[i % len(queries)], **kw)
        times.append((time.perf_counter() - t0) * 1e3)
        for k, v in result.timings_ms.items():
            stages.setdefault(k, []).append(v)
    return (statistics.median(times), float(np.percentile(times, 95)),
            {k: statistics.median(v) for k, v in stages.items()})


def bench_queries(engine, n: int, runs: int) -> float:
    """Full query vs the encoder-only baseline, and filtered queries, on one index; returns the full query's p50."""
    qs = sketches(8)
    base = latency(engine, qs, runs, k=10, steps=0, alpha=1.0)
    full = latency(engine, qs, runs, k=10, steps=3)                      # the defaults (alpha 1: no re-rank)
    lean = latency(engine, qs, runs, k=10, steps=3, x_hat=False)         # the same, no x_hat shown: E alone
    rerank = latency(engine, qs, runs, k=10, n_candidates=100, steps=3, alpha=0.5)
    print(f"\n== warm queries, {n} entries ({engine.reader.stamp.factory}, dim {engine.reader.stamp.dim}, "
          f"metric {engine.metric.name}), {runs} runs ==")
    for name, (p50, p95, stages) in (("encoder only (T=0, no re-rank)", base), ("defaults (T=3, alpha 1)", full),
                                     ("defaults, no x_hat shown", lean), ("T=3, re-rank 100, alpha 0.5", rerank)):
        split = ", ".join(f"{k} {v:.1f}" for k, v in stages.items() if k != "total")
        print(f"{name:<32} p50 {p50:7.1f} ms  p95 {p95:7.1f} ms   [{split}]")
    print(f"defaults / encoder-only p50: x{full[0] / base[0]:.1f}; no x_hat / defaults: x{lean[0] / full[0]:.2f}; "
          f"re-rank / defaults: x{rerank[0] / full[0]:.1f}")
    for where in ("tonsil_grade>=3", "tonsil_grade=4, mallampati=4, follicles=1"):
        p50, p95, stages = latency(engine, qs, max(5, runs // 3), k=10, steps=3, where=where)
        print(f"where {where!r:<44} p50 {p50:7.1f} ms  p95 {p95:7.1f} ms   [filter {stages['filter']:.1f}, "
              f"search {stages['search']:.1f}]")
    return full[0]


def bench_rerank(metric, pooled, resolution: int, runs: int) -> None:
    """Perceptual re-rank of 100 candidates: recompute from thumbs (chunk sizes) vs cached features, full (seg) and
    pooled (seg-pool8, stored fp16 rows as the engine reads them)."""
    from s2m_retrieval.query.ranking import cached_perceptual_distances, perceptual_distances, to_model_input

    rng = np.random.default_rng(0)
    thumbs = rng.integers(0, 256, (100, resolution, resolution, 3), dtype=np.uint8)
    query = to_model_input(thumbs[:1])

    def med(fn):
        fn()
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)

    print(f"\n== re-rank of 100 candidates at {resolution} px, metric {metric.version} ==")
    recompute = {}
    for chunk in (10, 25, 50, 100):
        recompute[chunk] = med(lambda: perceptual_distances(metric, query, thumbs, chunk))
        print(f"recompute from uint8 thumbs, chunk {chunk:<3}  {recompute[chunk]:7.1f} ms")
    with torch.inference_mode():
        cached = metric.features(to_model_input(thumbs))
        per_image = sum(f[0].numel() for f in cached) * 4
        ms = med(lambda: metric.distance_from_features(metric.features(query), cached))
    print(f"with cached candidate features      {ms:7.1f} ms  (features {per_image / 1024:.0f} KiB/image fp32 = "
          f"{per_image * 100_000 / 2**30:.0f} GiB per 100k images; thumbs {resolution * resolution * 3 / 1024:.0f} "
          "KiB/image)")
    with torch.inference_mode():
        rows = pooled.pack(pooled.features(to_model_input(thumbs)))
        shapes = [tuple(f.shape[1:]) for f in pooled.features(query)]
    ms = med(lambda: cached_perceptual_distances(pooled, query, rows, shapes))
    print(f"{pooled.name} from stored fp16 rows       {ms:7.1f} ms  ({rows[0].nbytes / 1024:.0f} KiB/image = "
          f"{rows[0].nbytes * 100_000 / 2**30:.1f} GiB per 100k images) = x{recompute[25] / ms:.0f} faster than seg from thumbs")


def bench_inverter(encoder, runs: int = 3) -> None:
    """Archive encoding throughput of the inverter (ReStyle iterations, no optimisation), batch 64."""
    images = np.random.default_rng(0).integers(0, 256, (64, encoder.resolution, encoder.resolution, 3), np.uint8)
    encoder.encode(images[:8])
    t0 = time.perf_counter()
    for _ in range(runs):
        encoder.encode(images)
    rate = runs * 64 / (time.perf_counter() - t0)
    print(f"\n== inverter encode ({encoder.iterations} ReStyle iterations, batch 64): {rate:.0f} images/s ==")


def bench_precision(n_images: int = 1100, n_queries: int = 100, n_candidates: int = 100) -> None:
    """How seg-pool8 orders candidates compared with exact seg: Spearman, top-10 overlap and same top-1 over
    random candidate sets of real phantom images, with the shipped segmenter (no trained E needed)."""
    from scipy.stats import spearmanr

    from s2m_retrieval.data.phantom import make_phantom
    from s2m_retrieval.model.perceptual import load_perceptual
    from s2m_retrieval.query.ranking import to_model_input

    exact, pooled = load_perceptual("seg"), load_perceptual("seg-pool8")
    images = to_model_input(np.stack([make_phantom(7, i, 64)[0] for i in range(n_images)]))
    with torch.inference_mode():
        fe = [torch.cat(f) for f in zip(*(exact.features(images[i:i + 100]) for i in range(0, n_images, 100)))]
        fp = [torch.cat(f) for f in zip(*(pooled.features(images[i:i + 100]) for i in range(0, n_images, 100)))]
    rng = np.random.default_rng(0)
    rho, top10, top1 = [], [], []
    for q in range(n_queries):
        cand = rng.choice(np.arange(n_queries, n_images), n_candidates, replace=False)
        d_exact = exact.distance_from_features([f[q:q + 1] for f in fe], [f[cand] for f in fe]).numpy()
        d_pooled = pooled.distance_from_features([f[q:q + 1] for f in fp], [f[cand] for f in fp]).numpy()
        rho.append(spearmanr(d_exact, d_pooled)[0])
        top10.append(len(set(np.argsort(d_exact)[:10]) & set(np.argsort(d_pooled)[:10])) / 10)
        top1.append(np.argmin(d_exact) == np.argmin(d_pooled))
    print(f"== seg-pool8 vs seg ({exact.version}), {n_queries} phantom queries x {n_candidates} phantom "
          f"candidates ==\nSpearman {np.mean(rho):.3f} (min {np.min(rho):.3f}); top-10 overlap {np.mean(top10):.3f} "
          f"(min {np.min(top10):.2f}); same top-1 {np.mean(top1):.2f}")


def _timed(cmd: list[str], runs: int = 3) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, cwd=REPO)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_cold_cli(home: Path, models: Path, sketch: Path, threads: int) -> None:
    """Wall time of a whole `retrieve` process vs importing torch alone and `s2m --help`."""
    py = sys.executable
    t_torch = _timed([py, "-c", "import torch"])
    t_help = _timed([py, "-m", "cli", "--help"])
    t_cli = _timed([py, "-m", "cli", "retrieve", str(sketch), "--home", str(home), "--model", str(models),
                    "--k", "10", "--threads", str(threads)])
    print("\n== cold CLI (median of 3 processes) ==")
    print(f"`s2m --help` {t_help:.2f} s; `import torch` alone {t_torch:.2f} s; `s2m retrieve` top-10 (load models "
          f"+ open index + one query) {t_cli:.2f} s = x{t_cli / t_torch:.1f} import torch")


def probe_ram(home: str, models: str, metric_name: str, threads: int) -> None:
    """(subprocess) RSS after loading models, after opening the index, after 20 queries, as JSON on stdout."""
    from s2m_retrieval.query.open import load_pipeline
    from s2m_retrieval.model.perceptual import load_perceptual
    from s2m_retrieval.query.engine import RetrievalEngine

    torch.set_num_threads(threads)
    pipeline = load_pipeline(models)
    metric = load_perceptual(metric_name, checkpoint=Path(models) / "segmenter.pt")
    stages = {"models": rss_mib()}
    engine = RetrievalEngine.open(home=home, models=pipeline, perceptual=metric)
    stages["open"] = rss_mib()
    for q in sketches(20):
        engine.query_sketch(q)
    stages["queries"] = rss_mib()
    print(json.dumps(stages))


def bench_ram(home: Path, models: Path, metric: str, threads: int) -> None:
    """Memory of a warm engine on the index, from a fresh process."""
    out = subprocess.run([sys.executable, __file__, "--probe-ram", str(home), str(models), metric,
                          "--threads", str(threads)],
                         check=True, capture_output=True, text=True, cwd=REPO)
    s = json.loads(out.stdout.strip().splitlines()[-1])
    root = home / "indexes" / "default"
    shards = sum(p.stat().st_size for p in (root / "shards").iterdir())
    files = {"index.faiss": (root / "index.faiss").stat().st_size, "shards": shards,
             "s2m.db": sum(p.stat().st_size for p in home.glob("s2m.db*"))}

    def delta(a, b, key):
        return s[b][key] - s[a][key]
    print(f"\n== RAM of the index (fresh process; models alone: anon {s['models']['RssAnon']:.0f} MiB) ==")
    print(f"open index: anon +{delta('models', 'open', 'RssAnon'):.0f} MiB, file-backed +"
          f"{delta('models', 'open', 'RssFile'):.0f} MiB; after 20 queries: anon +"
          f"{delta('models', 'queries', 'RssAnon'):.0f} MiB, file-backed (mmap'd FAISS lists, shards) +"
          f"{delta('models', 'queries', 'RssFile'):.0f} MiB")
    print("on disk: " + ", ".join(f"{k} {v / 2**20:.0f} MiB" for k, v in files.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--projector-dim", type=int, default=256,
                        help="Random projector into this many dims, as the shipped bundle's (0: weighted W+ vectors).")
    parser.add_argument("--projector-hidden", type=int, default=512,
                        help="Hidden units of the random projector's heads, as the shipped bundle's (0: linear).")
    parser.add_argument("--threads", type=int, default=1, help="Torch threads (FAISS uses 1 per single query).")
    parser.add_argument("--factory", default=None, help="FAISS factory (default: chosen by size, as a build does).")
    parser.add_argument("--workdir", type=Path, default=None, help="Keep the models and indexes here.")
    parser.add_argument("--reuse", action="store_true", help="Reuse indexes of the same size left in --workdir.")
    parser.add_argument("--metrics", nargs="+", default=["seg", "seg-pool8"],
                        help="Perceptual metrics to build an index for at each size (the first is the baseline).")
    parser.add_argument("--precision", action="store_true",
                        help="Only compare seg-pool8's candidate order with seg's on phantoms (shipped segmenter).")
    parser.add_argument("--probe-ram", nargs=3, metavar=("HOME", "MODELS", "METRIC"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.probe_ram:
        probe_ram(*args.probe_ram, args.threads)
        return
    if args.precision:
        bench_precision()
        return
    from PIL import Image

    from s2m_retrieval.model.inverter_encoder import InverterEncoder
    from s2m_retrieval.model.perceptual import load_perceptual
    from s2m_retrieval.query.engine import RetrievalEngine

    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        models = make_models(work / "models", args.projector_dim, args.projector_hidden)
        encoders = {m: InverterEncoder.load(models, perceptual=m) for m in args.metrics}
        encoder = encoders[args.metrics[0]]
        print(f"default 64 px model configs with RANDOM weights (timings only); torch {torch.__version__}, "
              f"{args.threads} torch thread(s), {os.cpu_count()} CPUs; metrics {', '.join(args.metrics)}; vectors "
              f"{encoder.weighting} -> dim {encoder.dim}")
        bench_inverter(encoder)
        pooled = load_perceptual("seg-pool8", checkpoint=models / "segmenter.pt")
        bench_rerank(load_perceptual("seg", checkpoint=models / "segmenter.pt"), pooled, encoder.resolution, args.runs)
        sketch = work / "sketch.png"
        Image.fromarray(sketches(1)[0]).save(sketch)
        for n in args.sizes:
            p50 = {}
            for metric, encoder in encoders.items():
                home = work / f"home{n}-{metric}"
                manifest = home / "indexes" / "default" / "manifest.json"
                if args.reuse and manifest.is_file() and json.loads(manifest.read_text())["count"] == n:
                    print(f"\n(reusing the synthetic index of {n} entries in {home})")
                else:
                    shutil.rmtree(home, ignore_errors=True)
                    t0 = time.perf_counter()
                    factory = synth_index(home, encoder, n, args.factory)
                    print(f"\n(synthetic index of {n} entries, {factory}, {metric}, written in "
                          f"{time.perf_counter() - t0:.0f} s)")
                with RetrievalEngine.open(home=home, models=models) as engine:
                    p50[metric] = bench_queries(engine, n, args.runs)
                if n == min(args.sizes) and metric == args.metrics[-1]:
                    bench_cold_cli(home, models, sketch, args.threads)
                if n == max(args.sizes):
                    bench_ram(home, models, metric, args.threads)
            first = args.metrics[0]
            print(f"\nfull query p50 at {n}: " + ", ".join(f"{m} {v:.1f} ms (x{p50[first] / v:.2f} vs {first})"
                                                         for m, v in p50.items()))


if __name__ == "__main__":
    main()
