"""The Python API: build and grow an index of an archive, open it with its model bundle, query it with sketches.

This is the stable surface (`s2m_retrieval.__all__`); every other module of the package is internal and may
change. Conventions: images are uint8 numpy arrays, RGB `[H, W, 3]`; a sketch is dark strokes on white paper,
grey `[H, W]` (RGB and RGBA are accepted, transparent is paper), a PIL image, or the path of an image file.
Distances and scores are lower-is-better. Every error is an `S2MError` with a one-line message. Heavy imports
(torch, FAISS, SQL) happen on first use, so `import s2m_retrieval` is instant.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Union

from s2m_retrieval.errors import BadInputError

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

PathLike = Union[str, os.PathLike]
SketchLike = Union["np.ndarray", "Image.Image", str, os.PathLike]
# progress(done, total): images encoded so far and images to encode in this call (unchanged files are skipped).
Progress = Callable[[int, int], None]
# = ranking.DEFAULT_ALPHA (a test keeps them equal); importing it would load numpy with `import s2m_retrieval`.
DEFAULT_ALPHA = 1.0


@dataclass(frozen=True)
class Hit:
    """One ranked result of a query."""

    rank: int                          # 1 = best
    id: int                            # the image's id in the index (`Index.like` takes it)
    archive_id: str                    # the archive's name for it: its labels.csv `id`, else its file stem
    path: str                          # the archive file, absolute
    score: float                       # alpha * latent + (1 - alpha) * perceptual, each min-max normalised over
                                       # the re-ranked candidates, in [0, 1]
    latent_distance: float             # distance to the query's code in the index's space (weighted W+, or the
                                       # projector's unit sphere: 0..2), Euclidean, unitless
    perceptual_distance: float | None  # x̂ (or the "like" image) vs the image's thumbnail; None when alpha = 1
    labels: dict                       # the image's labels.csv row: the clinical metadata


@dataclass(frozen=True)
class BuildReport:
    """What `build_index` or `add_images` did to an index."""

    name: str
    added: int
    replaced: int                      # files whose content changed since they were indexed
    skipped: int                       # unchanged files (same sha256): nothing to do
    removed: int
    excluded: int                      # archive files left out because they were removed (`remove_images`)
    relabelled: int                    # unchanged files whose labels.csv row changed (labels updated in SQL)
    bad: tuple[tuple[str, str], ...]   # (file, reason) of each file that could not be read
    missing: tuple[str, ...]           # indexed files gone from disk (still indexed; remove them to drop them)
    total: int                         # images in the index afterwards
    seconds: float

    @property
    def images_per_s(self) -> float:
        """Encoded images per second of wall time."""
        return (self.added + self.replaced) / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class Bundle:
    """A model bundle: the networks' checkpoints in one folder and what bundle.json says about them."""

    name: str
    path: Path
    networks: dict[str, Path]          # checkpoint file per network present (segmenter, generator, encoder, ...)
    missing: tuple[str, ...]           # networks the folder lacks
    manifest: dict                     # bundle.json ({} without one): configs, versions, training, metrics

    @property
    def metrics(self) -> dict:
        """The held-out measurements `s2m train all` recorded (domain FD, sketch -> image, inversion)."""
        return self.manifest.get("metrics", {})


def load_bundle(name_or_path: PathLike | Bundle | None = None, home: PathLike | None = None) -> Bundle:
    """A model bundle by name (under HOME/models/, see `s2m models list`) or folder; None: the shipped one."""
    from s2m_retrieval.model.bundle import bundle_name, network_files, read_manifest

    folder = _models_folder(name_or_path, home)
    files = network_files(folder)
    return Bundle(name=bundle_name(folder), path=folder, networks={k: p for k, p in files.items() if p is not None},
                  missing=tuple(k for k, p in files.items() if p is None), manifest=read_manifest(folder) or {})


def make_phantoms(out: PathLike, n: int, *, size: int = 64, seed: int = 0) -> Path:
    """Write a procedural throat archive of `n` phantoms (`images/`, `masks/`, `labels.csv`, `classes.json`) into
    `out`; `size` px square (32, 64, 128 or 256). Same arguments, byte-identical files. Returns `out`."""
    from s2m_retrieval.data.phantom_archive import write_phantom_archive

    return Path(write_phantom_archive(out, n=n, size=size, seed=seed))


def draw_sketch(image: np.ndarray | Image.Image | PathLike, *, mask: np.ndarray | PathLike | None = None,
                size: int = 64, freehand: bool = False, seed: int = 0, models: PathLike | Bundle | None = None,
                home: PathLike | None = None) -> np.ndarray:
    """The outline sketch a clinician would draw of `image`: the boundaries of its anatomy as dark strokes on white,
    grey uint8 `[size, size]`. The anatomy comes from `mask` (a label map `[H, W]` of the image, array or file),
    else from the segmenter of bundle `models` (default: the shipped one). `freehand` imitates a hand-drawn
    line (wobble, gaps, overshoot; seeded by `seed`)."""
    from s2m_retrieval.data.archive import fit_square, read_image, read_mask
    from s2m_retrieval.data.sketch import FreehandConfig, is_blank_sketch, sketch_from_mask

    if size < 8 or size > 2048 or size % 8:
        raise BadInputError(f"size must be a multiple of 8 between 8 and 2048, got {size}")
    if seed < 0:
        raise BadInputError(f"seed must be >= 0, got {seed}")
    name = os.fspath(image) if isinstance(image, (str, os.PathLike)) else "the image"
    pixels = read_image(image) if isinstance(image, (str, os.PathLike)) else _rgb(image)
    if mask is not None:
        import numpy as np

        labels = read_mask(mask) if isinstance(mask, (str, os.PathLike)) else np.asarray(mask)
        if labels.ndim != 2 or labels.shape != pixels.shape[:2]:
            raise BadInputError(f"the mask is {list(labels.shape)}, {name} is {list(pixels.shape[:2])}: give the "
                                "label map of this image")
        label = fit_square(labels.astype(np.uint8), size, nearest=True)
    else:
        from s2m_retrieval.model.files import segmenter_file
        from s2m_retrieval.model.segmentation import check_sketchable, segment_images

        check_sketchable(pixels, name)
        label = segment_images([fit_square(pixels, size)], checkpoint=segmenter_file(_models_folder(models, home)))[0]
    drawing = sketch_from_mask(label, size=size, freehand=FreehandConfig() if freehand else None, seed=seed)
    if is_blank_sketch(drawing):
        raise BadInputError(f"no anatomy outlines found in {name}: nothing to draw")
    return drawing


def build_index(archive: PathLike, name: str = "default", *, home: PathLike | None = None,
                models: PathLike | Bundle | None = None, progress: Progress | None = None,
                factory: str | None = None, fit: str | None = None, perceptual: str | None = None,
                rebuild: bool = False, db_url: str | None = None) -> BuildReport:
    """Index the images of an archive folder with a bundle's inverter (default: the shipped bundle): new files are
    added, changed ones replaced, unchanged ones skipped, so a rerun after a crash or on a grown archive only does
    what is left. `home`: the index home (default $S2M_HOME or ~/.s2m); `factory`: a FAISS factory string (default:
    by size); `fit`: crop or pad non-square images (default: as the bundle was trained); `perceptual`: the
    re-rank metric stored with the index (default seg-pool8); `db_url`: PostgreSQL instead of SQLite."""
    from s2m_retrieval.ingest.runner import BuildOptions, build_index as run

    return _build(run, archive, name, home, models, progress, fit, perceptual, db_url,
                  BuildOptions(name=name, factory=factory, rebuild=rebuild))


def add_images(files: Sequence[PathLike], name: str = "default", *, home: PathLike | None = None,
               models: PathLike | Bundle | None = None, progress: Progress | None = None, fit: str | None = None,
               perceptual: str | None = None, db_url: str | None = None) -> BuildReport:
    """Add image files (without labels) to an index, as `build_index` does for a folder (an open `Index` sees
    them after `refresh()`)."""
    from s2m_retrieval.ingest.runner import BuildOptions, add_files

    return _build(add_files, list(files), name, home, models, progress, fit, perceptual, db_url,
                  BuildOptions(name=name))


def remove_images(keys: Sequence[int | str], name: str = "default", *, home: PathLike | None = None,
                  db_url: str | None = None) -> int:
    """Remove images from an index by id, path, file stem or labels.csv id; returns how many were removed (a key
    naming no image is skipped, one naming several is an error)."""
    from s2m_retrieval.ingest.sync import remove_entries

    return len(remove_entries([str(k) for k in keys], name=name, home=home, db_url=db_url).removed)


def open_index(name: str = "default", *, home: PathLike | None = None, models: PathLike | Bundle | None = None,
               device: str = "cpu", db_url: str | None = None) -> Index:
    """Open index `name` with the bundle that built it (default: the shipped one): models loaded and the index
    memory-mapped once, queries answered warm from that snapshot (`Index.refresh` takes in later changes). Use it
    as a context manager or call `close()`."""
    from s2m_retrieval.query.engine import RetrievalEngine

    return Index(RetrievalEngine.open(name, home=home, db_url=db_url, models=_models_folder(models, home),
                                      device=device, cli=False))


def generate(sketch: SketchLike, *, models: PathLike | Bundle | None = None, steps: int | None = None,
             home: PathLike | None = None, device: str = "cpu") -> np.ndarray:
    """What the model makes of a sketch: x̂ = G(E(sketch)) after `steps` refinement steps of H (default: H's
    trained T, 0 without a refiner), uint8 RGB `[R, R, 3]` at the bundle's resolution. Loads the models on every
    call; `Index.generate` reuses an open index's."""
    from s2m_retrieval.model.files import model_files
    from s2m_retrieval.model.pipeline import DEFAULT_REFINE_STEPS, Sketch2MedI
    from s2m_retrieval.query.options import check_steps

    grey = _sketch(sketch)
    files = model_files(_models_folder(models, home), ("generator", "encoder"), "generating from a sketch")
    steps = (DEFAULT_REFINE_STEPS if files["refiner"] is not None else 0) if steps is None else steps
    check_steps(steps, cli=False)
    model = Sketch2MedI.from_checkpoints(files["generator"], files["encoder"], files["refiner"] if steps else None,
                                         None, perceptual=None, device=device)
    return _x_hat(model, grey, steps)


class Index:
    """An opened index and its models (from `open_index`): sketch queries, "more like this", x̂ of a sketch."""

    def __init__(self, engine) -> None:
        self._engine = engine

    @property
    def name(self) -> str:
        """The index name."""
        return self._engine.reader.stamp.name

    @property
    def models(self) -> Path | None:
        """The bundle folder the models came from."""
        return self._engine.models_folder

    def __len__(self) -> int:
        return int(self._engine.reader.store.ntotal)

    def __repr__(self) -> str:
        return f"Index({self.name!r}, {len(self)} images, models={str(self.models)!r})"

    def query(self, sketch: SketchLike, k: int = 10, *, steps: int | None = None, candidates: int = 100,
              alpha: float = DEFAULT_ALPHA, where: str | None = None, max_distance: float | None = None) -> list[Hit]:
        """The k archive images most like a sketch: E's code through the index's space, FAISS returns `candidates`
        by latent distance; `alpha` < 1 re-ranks them by the perceptual distance of x̂ (E + `steps` of H, default
        H's trained T, made only then: hits carry no x̂, `generate` shows it), fused as
        alpha * latent + (1 - alpha) * perceptual (default 1: latent distance only). `where` filters on labels ("tonsil_grade>=3, mallampati=2"), `max_distance`
        drops candidates farther in W+."""
        result = self._engine.query_sketch(_sketch(sketch), k=k, n_candidates=candidates, steps=steps, alpha=alpha,
                                           where=where, max_distance=max_distance, x_hat=False,  # hits only
                                           cli=False)
        return _hits(result)

    def like(self, image: int | PathLike, k: int = 10, *, candidates: int = 100, alpha: float = DEFAULT_ALPHA,
             where: str | None = None, max_distance: float | None = None) -> list[Hit]:
        """"More like this": the k images most like an indexed image (its id, path, file stem or labels.csv id),
        or like an image file outside the index (inverted as archive images are); E and H are not used."""
        key = image if isinstance(image, int) else os.fspath(image)
        return _hits(self._engine.query_like(key, k=k, n_candidates=candidates, alpha=alpha, where=where,
                                             max_distance=max_distance, cli=False))

    def generate(self, sketch: SketchLike, steps: int | None = None) -> np.ndarray:
        """x̂ of a sketch with this index's models, uint8 RGB `[R, R, 3]` (see `generate`)."""
        from s2m_retrieval.query.options import check_steps

        steps = self._engine.default_steps if steps is None else steps
        check_steps(steps, cli=False)
        return _x_hat(self._engine.pipeline, _sketch(sketch), steps)

    def refresh(self) -> bool:
        """Pick up what a build, add or remove changed since the index was opened (the models stay loaded); True
        when something had. An index rebuilt with other models is an error: open it again."""
        return self._engine.refresh()

    def close(self) -> None:
        """Release the database connections."""
        self._engine.close()

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _models_folder(models, home) -> Path:
    from s2m_retrieval.model.bundle import resolve_model

    return models.path if isinstance(models, Bundle) else resolve_model(models, home)


def _build(run, source, name, home, models, progress, fit, perceptual, db_url, options) -> BuildReport:
    """Load the bundle's inverter and run an indexing call; progress reports running totals."""
    from s2m_retrieval.model.archive_encoder import load_encoder

    encoder = load_encoder("inverter" + (f":perceptual={perceptual}" if perceptual else ""),
                           _models_folder(models, home), fit, home)
    done = 0

    def report(n: int, total: int) -> None:
        nonlocal done
        done += n
        progress(done, total)

    summary = run(source, encoder, home=home, db_url=db_url, options=options,
                  progress=report if progress is not None else None)
    return BuildReport(name=summary.name, added=summary.added, replaced=summary.replaced, skipped=summary.skipped,
                       removed=summary.removed, excluded=summary.excluded, relabelled=summary.relabelled,
                       bad=tuple(tuple(b) for b in summary.bad),
                       missing=tuple(summary.missing), total=summary.total, seconds=summary.seconds)


def _rgb(image) -> np.ndarray:
    """An RGB uint8 array [H, W, 3] from a PIL image or an array."""
    import numpy as np
    from PIL import Image

    from s2m_retrieval.data.image_io import composite, mode_to_uint8

    pixels = mode_to_uint8(image) if isinstance(image, Image.Image) else np.asarray(image)
    if pixels.ndim == 3 and pixels.shape[-1] == 4:
        pixels = composite(pixels, background=0)
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[-1] != 3:
        raise BadInputError(f"an image must be uint8 RGB [H, W, 3], got {pixels.dtype} {list(pixels.shape)}")
    return pixels


def _sketch(sketch: SketchLike) -> np.ndarray:
    """A sketch as grey uint8 [H, W]; a blank one is a BadInputError."""
    from PIL import Image

    from s2m_retrieval.query.engine import check_sketch, read_sketch

    if isinstance(sketch, (str, os.PathLike)):
        return check_sketch(read_sketch(sketch), sketch)
    if isinstance(sketch, Image.Image):
        from s2m_retrieval.data.image_io import mode_to_uint8

        sketch = mode_to_uint8(sketch)
    return check_sketch(sketch)


def _x_hat(model, grey: np.ndarray, steps: int) -> np.ndarray:
    """x̂ [R, R, 3] uint8 of one sketch through a loaded Sketch2MedI."""
    import torch

    from s2m_retrieval.model.pipeline import to_uint8

    with torch.inference_mode():
        _, _, x_hat = model.generate(grey, steps=steps)
    return to_uint8(x_hat)[0]


def _hits(result) -> list[Hit]:
    return [Hit(rank=h.rank, id=h.id, archive_id=str(h.labels.get("id", Path(h.path).stem)), path=h.path,
                score=h.score, latent_distance=h.latent_distance, perceptual_distance=h.perceptual_distance,
                labels=dict(h.labels)) for h in result.hits]
