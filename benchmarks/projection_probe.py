"""Would a learned metric on top of the W+ codes find the sketched image more often? With E frozen, fit two linear
maps (E's code -> 256-d, stored vector -> 256-d, InfoNCE over the batch) on training pairs, then rank each
manifest's queries exactly by cosine in that space beside the plain weighted-W+ L2 of the index (no re-rank).

    python benchmarks/projection_probe.py --pairs runs/idx/pairs.pt --bank runs/idx/e/code_bank.pt \
        --index eval runs/queries/manifest.csv runs/queries_traced/manifest.csv [--home HOME] [--encoder E.pt]

The pairs file and code bank are the ones `s2m train encoder --objective index` writes; E defaults to the shipped one.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch


def main() -> None:
    from s2m_retrieval.evaluation.archive_view import read_archive_view
    from s2m_retrieval.evaluation.manifest import read_manifest
    from s2m_retrieval.pipeline import sketch_batch
    from s2m_retrieval.retrieval import RetrievalEngine, read_sketch
    from s2m_retrieval.training.index_space import read_code_bank
    from s2m_retrieval.training.latent import as_float

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("manifests", nargs="+")
    ap.add_argument("--pairs", required=True)
    ap.add_argument("--bank", required=True)
    ap.add_argument("--index", default="default")
    ap.add_argument("--home", default=None)
    ap.add_argument("--encoder", default=None, help="E checkpoint (default: the index's bundle's)")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--tau", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)

    engine = RetrievalEngine.open(args.index, home=args.home)
    if args.encoder:
        from s2m_retrieval.training.sketch2medi import load_encoder
        E = load_encoder(args.encoder).eval()
    else:
        E = engine.pipeline.encoder.eval()

    def codes(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([torch.as_tensor(np.asarray(engine.encoder.vectors(E(x[i:i + 200]))))
                              for i in range(0, len(x), 200)])

    pairs = torch.load(args.pairs, map_location="cpu", weights_only=False)
    bank = read_code_bank(args.bank)
    n = bank.num_images
    variant = torch.randint(0, pairs["sketches"].shape[1], (n,))
    queries = codes(as_float(pairs["sketches"][torch.arange(n), variant][:, None]))
    stored = bank.vectors[:n]
    mu, sd = stored.mean(0), stored.std(0).mean()
    pq, pd = torch.nn.Linear(stored.shape[1], args.dim), torch.nn.Linear(stored.shape[1], args.dim)
    opt = torch.optim.Adam([*pq.parameters(), *pd.parameters()], lr=1e-3, weight_decay=1e-5)

    def embed(layer, v):
        return torch.nn.functional.normalize(layer((v - mu) / sd), dim=1)

    for step in range(args.steps):
        idx = torch.randint(0, n, (512,))
        logits = embed(pq, queries[idx]) @ embed(pd, stored[idx]).T / args.tau
        loss = torch.nn.functional.cross_entropy(logits, torch.arange(len(idx)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    print(f"fit on {n} training pairs, {args.steps} steps, final InfoNCE {loss.item():.3f}")

    view = read_archive_view(engine)
    position = dict(zip(view.archive_ids, range(len(view.archive_ids))))
    vectors = torch.as_tensor(engine.reader.arrays("vectors", view.image_ids).astype(np.float32))
    for manifest in args.manifests:
        rows = read_manifest(manifest)
        target = torch.as_tensor([position[r.target_id] for r in rows])
        q = codes(sketch_batch(np.stack([read_sketch(r.sketch) for r in rows]), engine.encoder.resolution))
        with torch.no_grad():
            ranked = {"weighted W+ L2": torch.cdist(q, vectors),
                      "learned projection": -(embed(pq, q) @ embed(pd, vectors).T)}
        for label, d in ranked.items():
            rank = (d < d[torch.arange(len(rows)), target][:, None]).sum(1).numpy()
            print(f"{manifest}  {label:18s}  acc@1 {np.mean(rank < 1):.3f}  acc@10 {np.mean(rank < 10):.3f}  "
                  f"found@100 {np.mean(rank < 100):.3f}")


if __name__ == "__main__":
    main()
