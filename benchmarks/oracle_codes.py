"""Do the stored codes limit retrieval? Oracle queries: each manifest target's own stored vector plus Gaussian
noise (a fraction of the archive's per-dimension spread), searched exactly in the index; found@100 and acc@k per
noise level. If even small noise loses the target, the inverter's codes (not E) cap what E can reach.

    python benchmarks/oracle_codes.py runs/queries/manifest.csv --index eval [--home HOME] [--noise 0,0.1,0.25,0.5]
"""

from __future__ import annotations

import argparse

import numpy as np


def main() -> None:
    from s2m_retrieval.evaluation.archive_view import read_archive_view
    from s2m_retrieval.evaluation.manifest import read_manifest
    from s2m_retrieval.query.engine import RetrievalEngine

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("manifest")
    ap.add_argument("--index", default="default")
    ap.add_argument("--home", default=None)
    ap.add_argument("--noise", default="0,0.5,1,2,4")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    engine = RetrievalEngine.open(args.index, home=args.home)
    reader = engine.reader
    view = read_archive_view(engine)
    ids = dict(zip(view.archive_ids, view.image_ids.tolist()))
    queries = [q for q in read_manifest(args.manifest) if q.target_id in ids]
    target_ids = np.array([ids[q.target_id] for q in queries])
    every = np.array(sorted(ids.values()))
    archive = reader.arrays("vectors", every).astype(np.float32)
    spread = archive.std(axis=0, keepdims=True)                          # [1, dim]
    own = reader.arrays("vectors", target_ids).astype(np.float32)
    rng = np.random.default_rng(args.seed)
    def report(label: str, query: np.ndarray) -> None:
        d2 = (query ** 2).sum(1, keepdims=True) + (archive ** 2).sum(1)[None] - 2 * query @ archive.T
        rank = (d2 < d2[np.arange(len(query)), np.searchsorted(every, target_ids)][:, None]).sum(1)
        print(f"{label} | {np.mean(rank < 1):.3f} | {np.mean(rank < 10):.3f} | {np.mean(rank < 100):.3f}")

    print(f"{len(queries)} oracle queries vs {len(every)} stored vectors (dim {archive.shape[1]})")
    print("query | acc@1 | acc@10 | found@100")
    for level in (float(x) for x in args.noise.split(",")):
        report(f"stored + noise {level:g}", own + level * spread * rng.standard_normal(own.shape).astype(np.float32))
    # The reinvert path's ceiling: the target's own reconstruction G(stored code), inverted again.
    import torch

    from s2m_retrieval.model.latent_space import vectors_to_w_plus
    from s2m_retrieval.model.pipeline import to_uint8

    G = engine.pipeline.G
    w = torch.from_numpy(vectors_to_w_plus(own, G.w_avg.numpy(), G.num_ws, engine.encoder.latent_weighting))
    with torch.inference_mode():
        again = engine.encoder.vectors(engine.encoder.w_plus(to_uint8(G(w, noise_mode="const"))))
    report("G(stored) re-inverted", np.asarray(again, np.float32))
    engine.close()


if __name__ == "__main__":
    main()
