"""The retrieval engine: sketch -> E -> H (T steps) -> x_hat; FAISS top-N by latent distance; perceptual re-rank.

An engine loads the models and opens the index once (`RetrievalEngine.open`), then answers queries warm.
It is a snapshot: the FAISS file is memory-mapped as it was at open time; reopen it after a build.
Vectors and the latent distance: `latent_space` (weighted W+) and, for indexes of a bundle with a projector, its
retrieval space (`networks.projector`: chord distance between unit vectors, 0..2); normalisation and fused score:
`ranking`; the options' checks and limits: `options`;
`--where` filters: `metadata_filter`; model/index compatibility checks: `engine_setup`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from s2m_retrieval.data.canonical import as_grey_sketch
from s2m_retrieval.data.sketch import is_blank_sketch
from s2m_retrieval.errors import BadImageError, BadInputError, IndexCorruptError, VersionMismatchError
from s2m_retrieval.query.options import check_options, check_steps, option_name
from s2m_retrieval.query.result_view import Hit
from s2m_retrieval.query.ranking import (DEFAULT_ALPHA, DEFAULT_NORMALISATION, cached_perceptual_distances, fuse,
                                         perceptual_distances)

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)
DEFAULT_K = 10
DEFAULT_CANDIDATES = 100
# Sketches per forward of a batch query: with the shipped E + H + G on one CPU thread, 256 px sketches take ~1.5x
# fewer ms each at 16 a batch than one at a time.
QUERY_BATCH = 16


@dataclass
class Result:
    """Ranked hits plus what a person or a sheet needs: the query, x_hat, hit thumbs, timings, provenance."""

    hits: list[Hit]
    query: np.ndarray                # the sketch [H, W] uint8, or the query image [R, R, 3] for "more like this"
    x_hat: np.ndarray | None         # generated image [R, R, 3] uint8 (sketch queries)
    thumbs: np.ndarray               # stored thumbnails of the hits [k, R, R, 3] uint8
    candidates: int                  # FAISS candidates re-ranked (after --where and --max-distance)
    timings_ms: dict[str, float]
    provenance: dict

    def to_dict(self) -> dict:
        """JSON-ready: hits, candidates, timings, provenance (no image arrays)."""
        return {"hits": [asdict(h) for h in self.hits], "candidates": self.candidates,
                "timings_ms": {k: round(v, 2) for k, v in self.timings_ms.items()}, "provenance": self.provenance}


@dataclass
class SketchCode:
    """A sketch after the batched stage of a query: its index vector and x_hat, ready for FAISS and the re-rank."""

    grey: np.ndarray                 # the checked sketch [H, W] uint8
    vector: np.ndarray               # index vector [1, D]
    x_hat: torch.Tensor | None       # generated image [1, 3, R, R] in [-1, 1] (None: not asked for)
    image: np.ndarray | None         # x_hat as uint8 [R, R, 3]
    steps: int
    code: str
    timings_ms: dict[str, float]     # its share of the batch's generate and code times


def check_sketch(sketch, name: str | os.PathLike | None = None) -> np.ndarray:
    """The sketch as grey uint8 [H, W]; a blank one (no strokes) is a BadInputError (naming the file if given)."""
    grey = as_grey_sketch(sketch)
    if is_blank_sketch(grey):
        what = f"sketch {name}" if name is not None else "sketch"
        raise BadInputError(f"{what} is empty: draw the outlines to search for (dark strokes on white paper)")
    return grey


def read_sketch(path: str | os.PathLike) -> np.ndarray:
    """A sketch file as grey uint8 [H, W], decoded as HTTP uploads and archive images are (`image_io`: any mode,
    EXIF orientation); a missing, unreadable or refused file raises BadImageError naming it."""
    from s2m_retrieval.data.image_io import decode_pixels, input_file

    return as_grey_sketch(decode_pixels(input_file(path, "sketch", BadImageError)))


# How a sketch query becomes an index vector (see RetrievalEngine.sketch_vector): E's own code ("sketch"), x̂
# inverted as archive images are ("reinvert"), or the mean of both ("blend"). The README's evaluation table
# measures all three; the default is the best on the validation queries (runs of seed-2 phantoms, never the
# held-out ones) for the shipped E, which is trained for the index space; it also skips the re-inversion.
QUERY_CODES = ("sketch", "reinvert", "blend")
DEFAULT_QUERY_CODE = "sketch"


def _check_code(code: str) -> None:
    if code not in QUERY_CODES:
        raise BadInputError(f"--code must be one of {', '.join(QUERY_CODES)}, got {code!r}")


class RetrievalEngine:
    """Models + index opened once; `query_sketch` and `query_like` answer queries warm."""

    def __init__(self, reader, pipeline, metric, encoder, models_folder: Path | None = None) -> None:
        from index.row_reader import ShardRowReader
        from s2m_retrieval.query.filters import LabelFilter

        self.reader = reader        # IndexReader: stamp, memory-mapped FAISS, SQL, shards
        self.pipeline = pipeline    # Sketch2MedI: G, E, H (optional), inverter
        self.metric = metric        # PerceptualDistance the index was built for
        self.encoder = encoder      # InverterEncoder: the index's weighting and inversion settings
        self.models_folder = models_folder  # the bundle the pipeline came from (None: a pipeline handed in)
        self.labels = LabelFilter(reader.db, reader.stamp.name)
        self.rows = ShardRowReader(reader.shards)
        # A cacheable metric re-ranks from the "features" stored at build time, never from the thumbs.
        self.feature_shapes = _feature_shapes(metric, encoder.resolution, reader.stamp) if metric.cacheable else None
        self._manifest_mtime = _mtime(reader.paths.manifest)
        self._refresh_lock = threading.Lock()

    @classmethod
    def open(cls, name: str = "default", home=None, db_url: str | None = None, models=None,
             perceptual=None, device: str = "cpu", cli: bool = True) -> RetrievalEngine:
        """Open index `name` and load the models (a model bundle's name or folder, see `bundle.resolve_model`, with
        names under `home`; a Sketch2MedI; or None for the shipped bundle) and the perceptual metric (a backend
        name, a loaded PerceptualDistance, or None for the index's own backend).

        The index is opened first (a missing one fails fast), then the models; then the index's model version
        and perceptual metric must match them (VersionMismatchError telling to rebuild otherwise; `cli`: its hints
        name --model and --db, else the Python API's models and db_url).
        """
        from s2m_retrieval.model.bundle import resolve_model
        from s2m_retrieval.query.open import index_encoder, load_metric, load_pipeline, stored_config
        from s2m_retrieval.query.index_reader import open_index
        from s2m_retrieval.model.pipeline import Sketch2MedI

        reader = open_index(name=name, home=home, db_url=db_url)
        try:
            if not isinstance(models, Sketch2MedI):
                models = resolve_model(models, home)  # bundle names are looked up under this home
            folder = None if isinstance(models, Sketch2MedI) else models
            # Models before the stamp: "weights not shipped" is the real reason when an index was built
            # with a test encoder, and rebuilding would not help.
            pipeline = models if isinstance(models, Sketch2MedI) else load_pipeline(models, device)
            config = stored_config(reader, cli=cli)
            metric = load_metric(perceptual, reader.stamp, folder, device)
            encoder = index_encoder(pipeline, metric, config, reader.stamp, device, home=home, cli=cli)
        except BaseException:
            reader.close()
            raise
        return cls(reader, pipeline, metric, encoder, folder)

    @property
    def default_steps(self) -> int:
        """Refinement steps when none are given: H's trained T, or 0 without a refiner."""
        from s2m_retrieval.model.pipeline import DEFAULT_REFINE_STEPS

        return DEFAULT_REFINE_STEPS if self.pipeline.refiner is not None else 0

    @property
    def refiner_note(self) -> str | None:
        """Why sketch queries run E alone (T=0) when no refiner is loaded, naming the missing file; else None."""
        if self.pipeline.refiner is not None:
            return None
        return f"no refiner H ({self._refiner_absence()}): sketch queries run E alone (T=0)"

    def _refiner_absence(self) -> str:
        return f"{Path(self.models_folder) / 'refiner.pt'} is missing" if self.models_folder else "none is loaded"

    def sketch_vector(self, w_plus, x_hat, code: str = DEFAULT_QUERY_CODE) -> np.ndarray:
        """The index vector of a sketch query: the W+ code E gave the sketch ("sketch", through the projector's
        query head when the index has one), x̂ inverted exactly as archive images are ("reinvert", an image code:
        the archive head), or the mean of the two vectors ("blend", back on the unit sphere with a projector).

        E trained for the index space lands its code next to the stored vector of the sketched image; re-inversion
        puts both sides through the same inverter, so its biases cancel, and carries H's refinement (which adjusts
        G's weights, not W+) into the first stage.
        """
        from s2m_retrieval.model.pipeline import to_uint8

        _check_code(code)
        own = self.encoder.query_vectors(w_plus)
        if code == "sketch":
            return own
        again = self.encoder.vectors(self.encoder.w_plus(to_uint8(x_hat)))
        if code == "reinvert":
            return again
        mean = (own + again) / 2
        if self.encoder.projector is not None:
            mean /= np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)
        return mean

    def sketch_steps(self, steps: int | None, *, cli: bool = True) -> tuple[int, str | None]:
        """(T, note) of a sketch query: `steps`, or H's trained T with `refiner_note` when None; a T outside
        0..MAX_STEPS, or above 0 without H, is a BadInputError (`cli`: see `check_options`)."""
        note = self.refiner_note if steps is None else None
        steps = self.default_steps if steps is None else int(steps)
        check_steps(steps, cli=cli)
        if steps > 0 and self.pipeline.refiner is None:
            flag = option_name("steps", cli)
            zero = "--steps 0" if cli else "steps=0"
            raise BadInputError(f"{flag} {steps} needs the refiner H, but {self._refiner_absence()}; add it to the "
                                f"bundle, or query with {zero} (E alone)")
        return steps, note

    def encode_sketches(self, greys: list[np.ndarray], steps: int, code: str = DEFAULT_QUERY_CODE,
                        x_hat: bool = True) -> list[SketchCode]:
        """The batched half of sketch queries: checked grey sketches (`check_sketch`, any sizes) through E, H (T
        steps), G and the query code in one forward; each sketch's timings are its share of the batch's.
        `x_hat=False` where nothing wants the image (no re-rank, no picture): with the "sketch" code E alone runs,
        since H and G only make x_hat, and the vectors are the same."""
        import torch

        from s2m_retrieval.model.pipeline import to_uint8

        _check_code(code)
        if not greys:
            return []
        t0 = time.perf_counter()
        with torch.inference_mode():
            if x_hat or code != "sketch":
                w_plus, _, images = self.pipeline.generate(list(greys), steps=steps)  # x_hat [B, 3, R, R]
            else:
                w_plus, images = self.pipeline.sketch_to_latent(list(greys)), None   # W+ [B, num_ws, w_dim]
        generate_ms = _ms(t0) / len(greys)
        t0 = time.perf_counter()
        with torch.inference_mode():
            vectors = self.sketch_vector(w_plus, images, code)                         # [B, D]
        code_ms = _ms(t0) / len(greys)
        pictures = None if images is None else to_uint8(images)
        return [SketchCode(grey, vectors[i:i + 1], None if images is None else images[i:i + 1],
                           None if pictures is None else pictures[i], steps, code,
                           {"generate": generate_ms, "code": code_ms}) for i, grey in enumerate(greys)]

    def rank_sketch(self, coded: SketchCode, k: int = DEFAULT_K, n_candidates: int = DEFAULT_CANDIDATES,
                    alpha: float = DEFAULT_ALPHA, where: str | None = None, max_distance: float | None = None,
                    normalisation: str = DEFAULT_NORMALISATION, note: str | None = None, cli: bool = True) -> Result:
        """The per-query half: FAISS candidates, re-rank and fused score for one sketch of `encode_sketches`, with
        its own options (`note`: the provenance's note, see `sketch_steps`; `cli`: see `query_sketch`)."""
        check_options(k, n_candidates, alpha, max_distance, normalisation, cli=cli)
        if coded.x_hat is None and alpha < 1:
            raise ValueError("the re-rank of alpha < 1 compares x_hat: encode the sketch with x_hat=True")
        result = self._rank(coded.vector, coded.x_hat, k, n_candidates, alpha, where, max_distance, normalisation,
                            dict(coded.timings_ms), cli)
        result.query, result.x_hat = coded.grey, coded.image
        result.provenance |= {"query": "sketch", "steps": coded.steps, "code": coded.code} | (
            {"note": note} if note else {})
        return result

    def query_sketch(self, sketch, k: int = DEFAULT_K, n_candidates: int = DEFAULT_CANDIDATES,
                     steps: int | None = None, alpha: float = DEFAULT_ALPHA, where: str | None = None,
                     max_distance: float | None = None, normalisation: str = DEFAULT_NORMALISATION,
                     code: str = DEFAULT_QUERY_CODE, x_hat: bool = True, cli: bool = True) -> Result:
        """Top-k archive images for a uint8 sketch (dark strokes on white; grey, RGB or RGBA). `x_hat=False`
        where the caller shows no x_hat: at alpha 1 with E's code only E runs (the same hits, without H and G).
        `cli`: messages name the CLI's flags (`--k`), else the Python API's parameters (`k`)."""
        check_options(k, n_candidates, alpha, max_distance, normalisation, cli=cli)
        _check_code(code)
        grey = check_sketch(sketch)
        steps, note = self.sketch_steps(steps, cli=cli)
        coded, = self.encode_sketches([grey], steps, code, x_hat=x_hat or alpha < 1)
        return self.rank_sketch(coded, k, n_candidates, alpha, where, max_distance, normalisation, note, cli)

    def query_sketches(self, sketches, k: int = DEFAULT_K, n_candidates: int = DEFAULT_CANDIDATES,
                       steps: int | None = None, alpha: float = DEFAULT_ALPHA, where: str | None = None,
                       max_distance: float | None = None, normalisation: str = DEFAULT_NORMALISATION,
                       code: str = DEFAULT_QUERY_CODE, batch_size: int = QUERY_BATCH,
                       x_hat: bool = True) -> list[Result]:
        """`query_sketch` for many sketches, results in their order and as it gives them one by one: E, H, G and
        the query code run on batches of up to `batch_size` sketches (of any sizes), FAISS, the re-rank and the fused
        score per query. Every sketch is checked first (a blank one is a BadInputError naming its position); each
        result's generate and code timings are its share of its batch's."""
        check_options(k, n_candidates, alpha, max_distance, normalisation)
        _check_code(code)
        if batch_size < 1:
            raise BadInputError(f"batch size must be >= 1, got {batch_size}")
        greys = []
        for i, sketch in enumerate(sketches):
            try:
                greys.append(check_sketch(sketch))
            except BadInputError as exc:
                raise BadInputError(f"sketch {i}: {exc}") from None
        steps, note = self.sketch_steps(steps)
        results: list[Result | None] = [None] * len(greys)
        # A batch may mix sizes: E's input is canonicalised page by page (`pipeline.sketch_batch`).
        for batch in (range(s, min(s + batch_size, len(greys))) for s in range(0, len(greys), batch_size)):
            for i, coded in zip(batch, self.encode_sketches([greys[i] for i in batch], steps, code,
                                                            x_hat=x_hat or alpha < 1)):
                results[i] = self.rank_sketch(coded, k, n_candidates, alpha, where, max_distance, normalisation,
                                              note)
        return results

    def query_like(self, key: int | str | os.PathLike, k: int = DEFAULT_K, n_candidates: int = DEFAULT_CANDIDATES,
                   alpha: float = DEFAULT_ALPHA, where: str | None = None, max_distance: float | None = None,
                   normalisation: str = DEFAULT_NORMALISATION, cli: bool = True) -> Result:
        """"More like this": an indexed image (id or path) uses its stored vector and thumb, skipping E and H;
        an image file outside the index is inverted like archive images are (`cli`: see `query_sketch`)."""
        from s2m_retrieval.query.ranking import to_model_input

        check_options(k, n_candidates, alpha, max_distance, normalisation, cli=cli)
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        image_id, path = self._find(key, "--like" if cli else "image")
        if image_id is not None:
            vector = self.reader.arrays("vectors", [image_id])
            thumb = self.reader.arrays("thumbs", [image_id])[0]
        else:
            from s2m_retrieval.data.archive import fit_square, read_image

            thumb = np.array(fit_square(read_image(path), self.encoder.resolution, self.encoder.fit))  # writable
            vector = self.encoder.vectors(self.encoder.w_plus(thumb[None]))
        timings["encode"] = _ms(t0)
        result = self._rank(vector, to_model_input(thumb[None]), k, n_candidates, alpha, where, max_distance,
                            normalisation, timings, cli)
        result.query = thumb
        result.provenance |= {"query": "like", "like": str(key), "like_id": image_id}
        return result

    def candidates(self, vector: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, dict]:
        """The unfiltered first stage: top-n (W+ distances, image ids, their rows) for a vector."""
        latent, ids = self._search(vector, n, None)
        return self._still_indexed(latent, ids)

    def perceptual_distances(self, query_image, ids: np.ndarray, rows: dict) -> np.ndarray:
        """The re-rank's distances [N] between x̂ (tensor [1, 3, R, R]) and candidates, as queries compute them."""
        thumbs, stored = self._rerank_inputs(ids, rows)
        return self._perceptual(query_image, thumbs, stored)

    def _still_indexed(self, latent: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
        """Candidates with their rows, less those removed after this engine opened its FAISS snapshot."""
        rows = self._locations(ids.tolist()) if len(ids) else {}
        if len(rows) < len(ids):
            log.warning("%d candidates are no longer in the index; reopen the engine", len(ids) - len(rows))
            keep = np.array([int(i) in rows for i in ids], dtype=bool)
            latent, ids = latent[keep], ids[keep]
        return latent, ids, rows

    def _rerank_inputs(self, ids: np.ndarray, rows: dict) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(thumbs, None) to recompute features from, or (None, stored features) for a cacheable metric."""
        if self.feature_shapes is not None:
            return None, self.rows.rows("features", [(rows[int(i)][0], rows[int(i)][3]) for i in ids])
        return self._thumbs(ids, rows), None

    def _perceptual(self, query_image, thumbs: np.ndarray | None, stored: np.ndarray | None) -> np.ndarray:
        if stored is not None:
            return cached_perceptual_distances(self.metric, query_image, stored, self.feature_shapes)
        return perceptual_distances(self.metric, query_image, thumbs)

    def _find(self, key, what: str) -> tuple[int | None, str | None]:
        """(image id in the index, None) or (None, path of an image file outside the index).

        A key names an indexed image by id, path, file stem or labels `id` (as `s2m index remove` reads keys);
        else an existing image file is a query from outside the index. `what`: how messages name the key.
        """
        from s2m_retrieval.data.archive import frame_prefix
        from s2m_retrieval.storage import catalog

        text = str(key)
        name = self.reader.stamp.name
        image_id = catalog.as_image_id(key)
        with self.reader.db.session() as s:
            if image_id is not None:
                found = catalog.find_image(s, name, image_id)
                matches = {} if found is None else {found: None}
            elif isinstance(key, int):
                matches = {}
            else:
                paths = sorted({os.path.abspath(text), os.path.realpath(text)})
                frames = [frame_prefix(p) for p in paths]  # a multi-frame file's entries are its frames
                matches = catalog.match_images(s, name, text, paths, frames)
                if not matches and not Path(text).is_file():  # a file name as the tables show it
                    matches = catalog.match_images(s, name, Path(text).stem, paths, frames)
        if len(matches) > 1:
            raise BadInputError(f"{what} {text!r} names {len(matches)} images of index {name!r}; give the id (or the "
                                "full path of a file that is one image)")
        if matches:
            return next(iter(matches)), None
        if not isinstance(key, int) and Path(text).is_file():
            return None, text
        raise BadInputError(f"{what} {text!r}: no image with that id, path, file name or labels id in index "
                            f"{name!r}, and no such file")

    def _locations(self, ids: list[int]) -> dict[int, tuple[str, str, dict, int]]:
        """image id -> (shard, path, labels, row) for ids still in the index."""
        from s2m_retrieval.storage.catalog import entry_locations

        with self.reader.db.session() as s:
            return entry_locations(s, self.reader.stamp.name, ids)

    def _thumbs(self, ids: np.ndarray, rows: dict) -> np.ndarray:
        """Stored thumbnails [N, R, R, 3] uint8 of these candidates, from the shards (never the archive files)."""
        if not len(ids):
            r = self.encoder.resolution
            return np.zeros((0, r, r, 3), np.uint8)
        return self.rows.rows("thumbs", [(rows[int(i)][0], rows[int(i)][3]) for i in ids])

    def _search(self, vector: np.ndarray, n: int, allow: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Top-n (distances, ids) by latent distance (Euclidean, not squared), within `allow` if given."""
        from index.factory import ivf_nlist

        store = self.reader.store
        n = min(n, store.ntotal if allow is None else len(allow))
        if n <= 0:
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        nlist = ivf_nlist(store.index)
        nprobe = store.search_defaults.get("nprobe") if nlist else None
        while True:
            d2, ids = self.reader.search(vector, n, allow=allow, **({"nprobe": nprobe} if nprobe else {}))
            keep = ids[0] >= 0
            # IVF probes only some lists: a selective filter can leave fewer than n allowed ids in them.
            if keep.sum() >= n or not nprobe or nprobe >= nlist:
                return np.sqrt(np.maximum(d2[0][keep], 0.0)), ids[0][keep]
            nprobe = min(nlist, nprobe * 4)

    def _rank(self, vector: np.ndarray, query_image, k: int, n_candidates: int, alpha: float, where: str | None,
              max_distance: float | None, how: str, timings: dict[str, float], cli: bool = True) -> Result:
        """FAISS candidates (filtered) -> perceptual distances to their thumbs -> fused score -> top k (`cli`: see
        `query_sketch`)."""
        from s2m_retrieval.query.filters import parse_where

        t0 = time.perf_counter()
        conditions = parse_where(where, cli=cli)
        allow = self.labels.allowed(conditions, cli=cli) if conditions else None
        timings["filter"] = _ms(t0)
        t0 = time.perf_counter()
        latent, ids = self._search(vector, max(n_candidates, k), allow)
        if max_distance is not None:
            keep = latent.astype(np.float64) <= max_distance  # a bound beyond float32's range must not overflow
            latent, ids = latent[keep], ids[keep]
        timings["search"] = _ms(t0)
        t0 = time.perf_counter()
        latent, ids, rows = self._still_indexed(latent, ids)
        rerank = alpha < 1 and len(ids) > 0
        # Only the k shown thumbs are read, unless the re-rank recomputes features from all candidates' thumbs.
        thumbs, stored = self._rerank_inputs(ids, rows) if rerank else (None, None)
        timings["fetch"] = _ms(t0)
        t0 = time.perf_counter()
        perceptual = self._perceptual(query_image, thumbs, stored) if rerank else None
        timings["rerank"] = _ms(t0)
        scores = fuse(latent, perceptual, alpha, how)
        order = np.lexsort((latent, scores))[:k]  # ties in score go to the latent-closer candidate
        thumbs = thumbs[order] if thumbs is not None else self._thumbs(ids[order], rows)
        hits = [Hit(rank=r + 1, id=int(ids[i]), path=rows[int(ids[i])][1], latent_distance=float(latent[i]),
                    perceptual_distance=None if perceptual is None else float(perceptual[i]),
                    score=float(scores[i]), labels=rows[int(ids[i])][2]) for r, i in enumerate(order)]
        timings["total"] = sum(timings.values())
        return Result(hits=hits, query=np.zeros((0, 0), np.uint8), x_hat=None, thumbs=thumbs,
                      candidates=len(ids), timings_ms=timings, provenance=self._provenance(alpha, how, n_candidates,
                                                                                           conditions, max_distance))

    def _provenance(self, alpha, how, n_candidates, conditions, max_distance) -> dict:
        stamp = self.reader.stamp
        return {"index": stamp.name, "model_version": stamp.model_version, "models": dict(self.pipeline.versions),
                "perceptual": self.metric.version, "weighting": stamp.weighting, "factory": stamp.factory,
                "index_size": self.reader.store.ntotal, "alpha": alpha, "normalisation": how,
                "n_candidates": n_candidates, "where": [str(c) for c in conditions], "max_distance": max_distance}

    def refresh(self) -> bool:
        """Reopen the index if a build, add or remove rewrote its manifest since it was opened (the models stay
        loaded); True when it did. An index rebuilt with other models is a VersionMismatchError."""
        from index.row_reader import ShardRowReader
        from s2m_retrieval.query.index_reader import open_index
        from s2m_retrieval.query.filters import LabelFilter

        with self._refresh_lock:
            seen = _mtime(self.reader.paths.manifest)
            if seen is None or seen == self._manifest_mtime:
                return False
            old = self.reader
            new = open_index(name=old.stamp.name, home=old.paths.home, db_url=old.db.url)
            fields = ("model_version", "metric", "dim", "weighting", "resolution")
            if any(getattr(new.stamp, f) != getattr(old.stamp, f) for f in fields):
                new.close()
                raise VersionMismatchError(f"index {old.stamp.name!r} was rebuilt with other models since it was "
                                           "opened; restart to load them")
            self.reader, self.labels, self.rows = new, LabelFilter(new.db, new.stamp.name), ShardRowReader(new.shards)
            self._manifest_mtime = seen
            old.close()  # queries still running on it finish: disposing keeps checked-out connections
            return True

    def close(self) -> None:
        """Release the database connections."""
        self.reader.close()

    def __enter__(self) -> RetrievalEngine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _feature_shapes(metric, resolution: int, stamp) -> list[tuple[int, int, int]]:
    """Per-layer [C, H, W] of a cacheable metric's features at `resolution`; the index must store them."""
    import torch

    with torch.inference_mode():
        shapes = [tuple(f.shape[1:]) for f in metric.features(torch.zeros(1, 3, resolution, resolution,
                                                                         device=next(metric.parameters()).device))]
    want = [sum(c * h * w for c, h, w in shapes)]
    if stamp.arrays and stamp.arrays.get("features") != want:  # no arrays yet: an index with no images
        raise IndexCorruptError(f"index {stamp.name!r} is stamped for metric {metric.version} but stores no "
                                f"features of shape {want} (it has {stamp.arrays.get('features')}); rebuild it: "
                                f"{stamp.rebuild_hint()}")
    return shapes


def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1e3
