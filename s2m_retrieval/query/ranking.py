"""Second stage of a query: perceptual distances to the candidates' stored thumbs, normalisation, fused score.

Fused score (lower is better, in [0, 1]):  score = alpha * n(latent) + (1 - alpha) * n(perceptual), where n
normalises over the candidate set of this query, because the two distances live on unrelated scales:
- "minmax" (default): (d - min) / (max - min); keeps how much closer the best candidates are, which rank
  normalisation throws away. A set whose distances are all equal gets 0 everywhere.
- "rank": the candidate's rank (ties averaged) / (N - 1); robust to one far outlier stretching the range.
- "zscore": (d - mean) / std over the set (not bounded to [0, 1]); a spread-aware middle ground.
- "rrf": 1 - K / (K + rank), K = 60: the weighted sum is then reciprocal rank fusion (lower is better).
Default alpha 1: the latent distance alone. On the validation queries (100 train-style sketches vs 1,000
phantoms of seed 2, never the held-out evaluation sketches) the perceptual re-rank lowered acc@10 (latent alone
0.75, fused at 0.5 0.64) and P@10 (0.506 vs 0.478), see README "Evaluation". alpha=1 skips the perceptual stage
entirely (its distances are then None); alpha < 1 re-ranks the candidates.
"""

from __future__ import annotations

import numpy as np

from s2m_retrieval.query.options import NORMALISATIONS

RRF_K = 60
DEFAULT_NORMALISATION = "minmax"
DEFAULT_ALPHA = 1.0
# Candidates per perceptual forward pass when features are recomputed from the stored uint8 thumbs (metrics
# without a cache, e.g. seg: its features take 464 KiB/image, 44 GiB per 100k images, against 12 KiB for a
# thumb). Batches of 10-50 run ~25% faster than one batch of 100 (feature maps stay in cache; seg, 64 px,
# 1 thread, benchmarks/bench_retrieval.py). Cacheable metrics (seg-pool8) read stored features instead.
RERANK_CHUNK = 25


def normalise(values: np.ndarray, how: str = DEFAULT_NORMALISATION) -> np.ndarray:
    """Values [N] mapped to [0, 1] over the set ("minmax" or "rank", see the module doc)."""
    v = np.asarray(values, dtype=np.float64)
    if how not in NORMALISATIONS:
        raise ValueError(f"normalisation must be one of {NORMALISATIONS}, got {how!r}")
    if len(v) < 2:
        return np.zeros_like(v)
    if how == "minmax":
        span = v.max() - v.min()
        return (v - v.min()) / span if span > 0 else np.zeros_like(v)
    if how == "zscore":
        std = v.std()
        return (v - v.mean()) / std if std > 0 else np.zeros_like(v)
    order = np.argsort(v, kind="stable")
    ranks = np.empty(len(v))
    ranks[order] = np.arange(len(v))
    _, inverse, counts = np.unique(v, return_inverse=True, return_counts=True)
    ranks = np.bincount(inverse, ranks)[inverse] / counts[inverse]  # ties share their mean rank
    return ranks / (len(v) - 1) if how == "rank" else 1.0 - RRF_K / (RRF_K + ranks)


def fuse(latent: np.ndarray, perceptual: np.ndarray | None, alpha: float = DEFAULT_ALPHA,
         how: str = DEFAULT_NORMALISATION) -> np.ndarray:
    """Fused scores [N] (lower is better) of latent and perceptual distances over one candidate set."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    score = normalise(latent, how)
    if perceptual is None:
        return score
    return alpha * score + (1.0 - alpha) * normalise(perceptual, how)


def to_model_input(images: np.ndarray):
    """uint8 RGB [N, R, R, 3] -> float tensor [N, 3, R, R] in [-1, 1]."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def perceptual_distances(metric, query, thumbs: np.ndarray, chunk: int = RERANK_CHUNK) -> np.ndarray:
    """Distances [N] between one query image (tensor [1, 3, R, R] in [-1, 1]) and thumbs uint8 [N, R, R, 3]."""
    import torch

    out = np.empty(len(thumbs), dtype=np.float32)
    with torch.inference_mode():
        device = next(metric.parameters()).device
        fq = metric.features(query.to(device))
        for start in range(0, len(thumbs), chunk):
            batch = to_model_input(thumbs[start:start + chunk]).to(device)
            d = metric.distance_from_features(fq, metric.features(batch))
            out[start:start + len(batch)] = d.float().cpu().numpy()
    return out


def cached_perceptual_distances(metric, query, stored: np.ndarray, shapes: list[tuple[int, int, int]]) -> np.ndarray:
    """Distances [N] between one query image (tensor [1, 3, R, R] in [-1, 1]) and candidates' stored features
    [N, D] (a cacheable metric's `pack` rows, per-layer `shapes`): only the query's features are computed."""
    import torch

    with torch.inference_mode():
        fq = metric.features(query.to(next(metric.parameters()).device))
        return metric.distance_from_features(fq, metric.unpack(stored, shapes)).float().cpu().numpy()
