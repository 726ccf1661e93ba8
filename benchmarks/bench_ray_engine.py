"""Benchmark: index build images/s, local engine vs the Ray engine, on a phantom archive.

Encoders: the fake one (almost free: shows the engines' own overhead) and the real inverter code path with
tiny random models (what a model's cost looks like, scaled down). Ray runs on this machine (`ray.init` with
every core); its start-up is timed apart. On 2 cores expect no gain: the local engine already overlaps
decoding with encoding, and Ray adds process hops and its own daemons.

    OMP_NUM_THREADS=1 python benchmarks/bench_ray_engine.py --n 400
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from functools import partial
from pathlib import Path


def run(archive: Path, spec: str, engine, home: Path, batch: int) -> tuple[float, float]:
    """(images/s of one full build into a fresh home, seconds of the no-op rebuild that follows it)."""
    from s2m_retrieval.model.archive_encoder import load_encoder
    from s2m_retrieval.ingest.runner import BuildOptions, build_index

    encoder = load_encoder(spec)
    t0 = time.perf_counter()
    summary = build_index(archive, encoder, home=home, options=BuildOptions(batch_size=batch), engine=engine)
    seconds = time.perf_counter() - t0
    assert summary.added == len(list((archive / "images").iterdir())), summary
    t0 = time.perf_counter()
    assert build_index(archive, encoder, home=home, engine=engine).skipped == summary.added
    return summary.added / seconds, time.perf_counter() - t0


def main() -> None:
    """Build the same archive with each engine and encoder; print images/s."""
    import ray

    from s2m_retrieval.data.phantom_archive import write_phantom_archive
    from s2m_retrieval.model.archive_encoder import load_encoder
    from s2m_retrieval.testing.random_models import write_random_models
    from s2m_retrieval.ingest.ray_engine import RayEngine, RayOptions

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=400)
    p.add_argument("--batch", type=int, default=32)
    args = p.parse_args()
    cpus = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        archive = tmp / "archive"
        write_phantom_archive(archive, n=args.n, size=64, seed=0)
        models = write_random_models(tmp / "models", seed=0)
        specs = {"fake (dim 2560)": "fake:dim=2560", "inverter, tiny random models": f"inverter:models={models},"
                                                                                      "perceptual=random"}
        t0 = time.perf_counter()
        ray.init(num_cpus=cpus, include_dashboard=False, _node_ip_address="127.0.0.1",
                 logging_level=logging.WARNING, log_to_driver=False)
        print(f"{cpus} cores, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; "
              f"ray.init {time.perf_counter() - t0:.1f} s; {args.n} phantoms 64 px, batch {args.batch}")
        for label, spec in specs.items():
            factory = partial(load_encoder, spec)  # what each actor calls once
            rates = {"local": run(archive, spec, None, tmp / f"h-{label}-local", args.batch)}
            for actors in sorted({1, max(1, cpus - 1), cpus}):
                with RayEngine(factory, RayOptions(num_actors=actors)) as engine:
                    rates[f"ray, {actors} actor(s)"] = run(archive, spec, engine, tmp / f"h-{label}-{actors}",
                                                          args.batch)
            print(f"{label:<30} " + "   ".join(f"{k}: {v:6.1f} images/s (no-op rebuild {t:4.1f} s)"
                                                for k, (v, t) in rates.items()))
        ray.shutdown()


if __name__ == "__main__":
    main()
