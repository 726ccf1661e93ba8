"""The retrieval methods the evaluation compares, each answering a sketch with ranked archive ids.

A method's `rank(sketch)` returns {variant name: archive ids, best first} so that one pass can serve several
ablations (Sketch2MedI: latent only / perceptual only / fused, refinement steps T, re-ranked candidates), and
`timed` names the variant whose cost the method's latency measures.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from s2m_retrieval.evaluation.archive_view import ArchiveView
from s2m_retrieval.model.pipeline import image_batch, sketch_batch, to_uint8
from s2m_retrieval.query.ranking import DEFAULT_ALPHA, DEFAULT_NORMALISATION, NORMALISATIONS, fuse
from s2m_retrieval.query.engine import DEFAULT_QUERY_CODE, QUERY_CODES

METHODS = ("sketch2medi", "edge", "pix2pix", "embedding", "cyclegan", "unit", "ugatit")
UNPAIRED_METHODS = ("cyclegan", "unit", "ugatit")   # ranked as pix2pix, by their sketch -> image generator
FEATURE_BATCH = 64


@dataclass
class Ranked:
    """One query's answer: ranked archive ids per variant, and the seconds spent on the timed variant."""

    lists: dict[str, list[str]]
    seconds: float


ALPHA_ABLATIONS = (0.5,)   # fused scores reported beside the chosen alpha (the re-rank's share)


@dataclass
class Sketch2MediMethod:
    """The engine's own path: E (+ H for T steps) -> FAISS candidates by W+ distance -> perceptual re-rank.

    Variants: `fused` (the engine's score at `alpha`; at alpha 1, the default, it is the latent order), `latent`
    (latent distance alone), `perceptual` (re-rank by perceptual distance alone), each at every T in `steps`,
    `fused` with fewer re-ranked candidates, and at the default T the other query codes, normalisations and
    the alphas of ALPHA_ABLATIONS.
    """

    engine: object
    view: ArchiveView
    steps: tuple[int, ...]
    candidates: tuple[int, ...] = (100,)
    alpha: float = DEFAULT_ALPHA
    normalisation: str = DEFAULT_NORMALISATION
    code: str = DEFAULT_QUERY_CODE
    name: str = "sketch2medi"
    recall_k: int = 10
    default_steps: int = field(init=False)

    def __post_init__(self) -> None:
        self.default_steps = self.engine.default_steps
        self.steps = tuple(sorted(set(self.steps) | {self.default_steps}))
        self.candidates = tuple(sorted(set(self.candidates)))
        self._exact = None
        self._overlaps: list[float] = []
        if not self.engine.reader.stamp.factory.startswith("Flat"):
            # An approximate index (IVF, HNSW, PQ...): compare its first stage with exact search on the stored
            # vectors, so the report separates index error from model error.
            import faiss

            vectors = self.engine.reader.arrays("vectors", self.view.image_ids).astype(np.float32)
            self._exact = faiss.IndexFlatL2(vectors.shape[1])
            self._exact.add(vectors)

    @property
    def faiss_recall(self) -> dict | None:
        """Mean share of the exact top-k (default T's query vectors) that the index returned; None when exact."""
        if self._exact is None or not self._overlaps:
            return None
        return {"k": self.recall_k, "value": float(np.mean(self._overlaps))}

    @property
    def timed(self) -> str:
        return self.variant("fused", self.default_steps, max(self.candidates))

    def variant(self, how: str, steps: int, n: int) -> str:
        return f"{how} T={steps} N={n}"

    def rank(self, sketch: np.ndarray) -> Ranked:
        n_max = max(self.candidates)
        lists: dict[str, list[str]] = {}
        seconds = 0.0
        for steps in self.steps:
            t0 = time.perf_counter()
            with torch.inference_mode():
                w_plus, _, x_hat = self.engine.pipeline.generate(sketch, steps=steps)
                vector = self.engine.sketch_vector(w_plus, x_hat, code=self.code)
            latent, ids, perceptual, stems, fused = self._stages(vector, x_hat, n_max)
            if steps == self.default_steps:
                # the engine skips the perceptual stage at alpha 1: so does the timed query
                seconds = time.perf_counter() - t0 - (self._perceptual_seconds if self.alpha == 1 else 0.0)
                if self._exact is not None:
                    _, exact = self._exact.search(np.ascontiguousarray(vector, np.float32), self.recall_k)
                    truth = set(self.view.image_ids[exact[0][exact[0] >= 0]].tolist())
                    self._overlaps.append(len(truth & set(ids[:self.recall_k].tolist())) / max(len(truth), 1))
            lists[self.variant("latent", steps, n_max)] = stems
            lists[self.variant("perceptual", steps, n_max)] = [stems[i] for i in np.lexsort((latent, perceptual))]
            lists[self.variant("fused", steps, n_max)] = fused
            for n in self.candidates[:-1]:
                sub = fuse(latent[:n], perceptual[:n], self.alpha, self.normalisation)
                lists[self.variant("fused", steps, n)] = [stems[i] for i in np.lexsort((latent[:n], sub))]
            if steps == self.default_steps:
                # Ablations of the query vector (the other codes) and of the fusion (the other normalisations).
                for code in QUERY_CODES:
                    if code == self.code:
                        continue
                    with torch.inference_mode():
                        other = self.engine.sketch_vector(w_plus, x_hat, code=code)
                    _, _, _, code_stems, code_fused = self._stages(other, x_hat, n_max)
                    lists[self.variant("latent", steps, n_max) + f" code={code}"] = code_stems
                    lists[self.variant("fused", steps, n_max) + f" code={code}"] = code_fused
                for how in NORMALISATIONS:
                    if how != self.normalisation:
                        order = np.lexsort((latent, fuse(latent, perceptual, self.alpha, how)))
                        lists[self.variant("fused", steps, n_max) + f" {how}"] = [stems[i] for i in order]
                for alpha in ALPHA_ABLATIONS:
                    if alpha != self.alpha:
                        order = np.lexsort((latent, fuse(latent, perceptual, alpha, self.normalisation)))
                        lists[self.variant("fused", steps, n_max) + f" alpha={alpha:g}"] = [stems[i] for i in order]
        return Ranked(lists, seconds)

    def _stages(self, vector: np.ndarray, x_hat, n: int):
        """The engine's two stages for one query vector: (latent distances, ids, perceptual distances, archive ids
        in latent order, archive ids in fused order)."""
        latent, ids, rows = self.engine.candidates(vector, n)
        t0 = time.perf_counter()
        perceptual = self.engine.perceptual_distances(x_hat, ids, rows)
        self._perceptual_seconds = time.perf_counter() - t0
        stems = self.view.stems_of(ids)
        order = np.lexsort((latent, fuse(latent, perceptual, self.alpha, self.normalisation)))
        return latent, ids, perceptual, stems, [stems[i] for i in order]


def _top(scores: np.ndarray, view: ArchiveView, n: int) -> list[str]:
    """Archive ids of the n lowest scores (ties: archive order)."""
    order = np.argsort(scores, kind="stable")[:n]
    return [view.archive_ids[i] for i in order]


@dataclass
class EdgeMethod:
    """Edge matching: the segmenter's region outlines of every archive thumb against the sketch's strokes, by
    symmetric chamfer distance (distance transforms, truncated so one stray stroke cannot dominate)."""

    view: ArchiveView
    n: int = 100
    segmenter: object = None
    name: str = "edge"
    timed: str = "edge"

    def __post_init__(self) -> None:
        from scipy.ndimage import distance_transform_edt

        from s2m_retrieval.data.sketch import mask_contours, render_sketch
        from s2m_retrieval.model.segmentation import segment_images

        r = self.view.resolution
        self.cap = r / 8.0
        masks = np.concatenate([segment_images(self.view.thumbs[i:i + 256], self.segmenter)
                                for i in range(0, len(self.view), 256)])
        edges = np.stack([render_sketch(mask_contours(m), r) < 128 for m in masks])   # [N, R, R] bool
        self.edges = edges.reshape(len(edges), -1).astype(np.float32)
        self.edge_counts = np.maximum(self.edges.sum(axis=1), 1.0)
        self.edge_dt = np.stack([np.minimum(distance_transform_edt(~e), self.cap) for e in edges])
        self.edge_dt = self.edge_dt.reshape(len(edges), -1).astype(np.float32)

    def rank(self, sketch: np.ndarray) -> Ranked:
        from scipy.ndimage import distance_transform_edt

        t0 = time.perf_counter()
        ink = (sketch_batch(sketch, self.view.resolution)[0, 0] < 0).numpy()               # [R, R] bool
        ink_flat = ink.reshape(-1).astype(np.float32)
        sketch_dt = np.minimum(distance_transform_edt(~ink), self.cap).reshape(-1).astype(np.float32)
        # mean distance from the sketch's ink to the nearest archive edge, and from each edge back to the ink
        score = self.edge_dt @ ink_flat / max(ink_flat.sum(), 1.0) + self.edges @ sketch_dt / self.edge_counts
        top = _top(score, self.view, self.n)
        return Ranked({self.timed: top}, time.perf_counter() - t0)


@dataclass
class Pix2PixMethod:
    """pix2pix (or an unpaired baseline's sketch -> image generator: `name` cyclegan, unit, ugatit) translates the
    sketch into an image, then every archive thumb is ranked by perceptual distance to it (the archive's features
    are computed once)."""

    view: ArchiveView
    net: torch.nn.Module
    metric: object
    n: int = 100
    name: str = "pix2pix"
    timed: str = "pix2pix"

    def __post_init__(self) -> None:
        with torch.inference_mode():
            parts = [self.metric.features(image_batch(self.view.thumbs[i:i + FEATURE_BATCH], self.view.resolution))
                     for i in range(0, len(self.view), FEATURE_BATCH)]
        self.features = [torch.cat(layer) for layer in zip(*parts)]

    def rank(self, sketch: np.ndarray) -> Ranked:
        t0 = time.perf_counter()
        with torch.inference_mode():
            fake = self.net(sketch_batch(sketch, self.net.config.img_resolution))
            fq = self.metric.features(image_batch(to_uint8(fake), self.view.resolution))
            scores = torch.cat([self.metric.distance_from_features(fq, [f[i:i + FEATURE_BATCH] for f in self.features])
                                for i in range(0, len(self.view), FEATURE_BATCH)]).numpy()
        return Ranked({self.timed: _top(scores, self.view, self.n)}, time.perf_counter() - t0)


@dataclass
class EmbeddingMethod:
    """The learned sketch-image embedding: archive thumbs and the sketch in one space, ranked by cosine."""

    view: ArchiveView
    net: torch.nn.Module
    n: int = 100
    name: str = "embedding"
    timed: str = "embedding"

    def __post_init__(self) -> None:
        res = self.net.config.img_resolution
        with torch.inference_mode():
            self.archive = torch.cat([self.net.image(image_batch(self.view.thumbs[i:i + FEATURE_BATCH], res))
                                      for i in range(0, len(self.view), FEATURE_BATCH)])

    def rank(self, sketch: np.ndarray) -> Ranked:
        t0 = time.perf_counter()
        with torch.inference_mode():
            q = self.net.sketch(sketch_batch(sketch, self.net.config.img_resolution))
            scores = -(self.archive @ q[0]).numpy()
        return Ranked({self.timed: _top(scores, self.view, self.n)}, time.perf_counter() - t0)

