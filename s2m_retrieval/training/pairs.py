"""Training pairs for E and H: free-hand sketches of label masks beside their images, in pre-rendered variants."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from s2m_retrieval.networks.checkpoint import config_to_dict
from s2m_retrieval.data.canonical import CANONICAL_VERSION, canonical_sketch
from s2m_retrieval.data.sketch import FreehandConfig, mask_contours, render_sketch
from s2m_retrieval.errors import BadInputError

# Twice the default strengths (parts missing, displaced, rescaled), plus what hands add: partial drawings,
# bent outlines, any pen width, pencil grain.
TRAIN_FREEHAND = dataclasses.replace(FreehandConfig().scaled(2.0), partial=0.3, elastic=0.015, pen_spread=0.8,
                                     pencil=0.6)
# Contour simplification drawn per sketch: from the traced staircase to few-vertex polylines.
TRAIN_SMOOTH = (1, 3)
TRAIN_TOLERANCE = (0.3, 0.9)
DEFAULT_VARIANTS = 4  # a sketch costs ~20 ms to draw: a few variants per image, drawn once, keep steps cheap
SKETCH_RECIPE = f"freehand+simplify/2;{CANONICAL_VERSION}"  # changes when training sketches are drawn otherwise


@dataclass(frozen=True, eq=False)
class PairSet:
    """images uint8 [N, 3, R, R] and sketches uint8 [N, V, R, R] (V free-hand variants of each image's sketch)."""

    images: torch.Tensor
    sketches: torch.Tensor
    info: dict = field(default_factory=dict)  # source, seed, variants, freehand config: recorded in checkpoints
    key: dict | None = None  # pair_source.source_key of the source they were drawn from (None: made in memory)

    def __post_init__(self) -> None:
        im, sk = self.images, self.sketches
        if im.dtype != torch.uint8 or sk.dtype != torch.uint8 or im.ndim != 4 or sk.ndim != 4 or im.shape[1] != 3:
            raise BadInputError(f"a PairSet holds uint8 images [N, 3, R, R] and sketches [N, V, R, R], "
                                f"got {im.dtype} {list(im.shape)} and {sk.dtype} {list(sk.shape)}")
        if len(im) == 0 or len(im) != len(sk) or im.shape[-2:] != sk.shape[-2:] or sk.shape[1] < 1:
            raise BadInputError(f"images {list(im.shape)} and sketches {list(sk.shape)} do not pair up")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def resolution(self) -> int:
        return int(self.images.shape[-1])


def _sketch_seed(seed: int, index: int, variant: int) -> int:
    # One independent stream per (seed, image, variant): a subset of an archive gets the same sketches.
    return int(np.random.SeedSequence([seed, index, variant]).generate_state(1)[0])


def training_sketch(mask: np.ndarray, size: int, freehand: FreehandConfig, seed: int) -> np.ndarray:
    """One training sketch of a label mask: outlines simplified by a random amount, drawn free-hand, then
    canonicalised exactly as a query is (uint8 [size, size])."""
    rng = np.random.default_rng(seed)
    smooth = int(rng.integers(TRAIN_SMOOTH[0], TRAIN_SMOOTH[1] + 1))
    strokes = mask_contours(mask, smooth=smooth, tolerance=float(rng.uniform(*TRAIN_TOLERANCE)))
    return canonical_sketch(render_sketch(strokes, size, freehand=freehand, rng=rng), size)


def _resize_u8(images: np.ndarray, size: int) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> uint8 [N, 3, size, size] (antialiased)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        x = x.round().clamp(0, 255).to(torch.uint8)
    return x.contiguous()


def make_pairs(images, masks, size: int, *, variants: int = DEFAULT_VARIANTS,
               freehand: FreehandConfig = TRAIN_FREEHAND, seed: int = 0, indices=None,
               progress: Callable[[int, int], None] | None = None) -> PairSet:
    """Pairs from uint8 images [N, H, W, 3] and masks [N, H, W]: `variants` sketches seeded by (seed, index, v)."""
    # `indices` (default 0..N-1) number the images in the seeds, so a subset of an archive keeps its sketches.
    images, masks = np.asarray(images), np.asarray(masks)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8 or masks.shape != images.shape[:3]:
        raise BadInputError(f"make_pairs needs uint8 images [N, H, W, 3] and masks [N, H, W], "
                            f"got {images.dtype} {images.shape} and {masks.shape}")
    if variants < 1 or len(images) == 0:
        raise BadInputError("make_pairs needs at least one image and one variant")
    indices = range(len(images)) if indices is None else list(indices)
    sketches = np.empty((len(images), variants, size, size), np.uint8)
    for i, (index, mask) in enumerate(zip(indices, masks)):
        for v in range(variants):
            sketches[i, v] = training_sketch(mask, size, freehand, _sketch_seed(seed, int(index), v))
        if progress is not None:
            progress(i + 1, len(images))
    info = {"seed": seed, "variants": variants, "freehand": config_to_dict(freehand), "recipe": SKETCH_RECIPE}
    return PairSet(_resize_u8(images, size), torch.from_numpy(sketches), info)


def phantom_pairs(n: int, size: int = 64, *, seed: int = 0, start: int = 0, variants: int = DEFAULT_VARIANTS,
                  freehand: FreehandConfig = TRAIN_FREEHAND,
                  progress: Callable[[int, int], None] | None = None) -> PairSet:
    """Pairs from phantoms start..start+n-1 of the phantom archive with `seed`, generated on the fly."""
    from s2m_retrieval.data.phantom import make_phantom

    made = [make_phantom(seed, index, size)[:2] for index in range(start, start + n)]
    pairs = make_pairs(np.stack([m[0] for m in made]), np.stack([m[1] for m in made]), size, variants=variants,
                       freehand=freehand, seed=seed, indices=range(start, start + n), progress=progress)
    pairs.info.update(source="phantom", phantom_seed=seed, start=start, n=n)
    return pairs


def archive_pairs(root: str | os.PathLike, size: int = 64, *, variants: int = DEFAULT_VARIANTS,
                  freehand: FreehandConfig = TRAIN_FREEHAND, seed: int = 0, limit: int | None = None,
                  segmenter: str | os.PathLike | None = None,
                  progress: Callable[[int, int], None] | None = None, policy: str = "crop") -> PairSet:
    """Pairs from an archive folder (squared by `policy`): its masks/ when every image has one, else the
    segmenter's label maps."""
    from s2m_retrieval.data.archive import load_archive_arrays, scan_archive
    from s2m_retrieval.model.segmentation import segment_images

    entries = scan_archive(root)[:limit]
    with_masks = bool(entries) and all(e.mask_path is not None for e in entries)
    images, masks, _ = load_archive_arrays(root, size, with_masks=with_masks, limit=limit, policy=policy)
    source = "archive masks"
    if masks is None:
        masks, source = segment_images(images, segmenter), "segmenter"
    pairs = make_pairs(images, masks, size, variants=variants, freehand=freehand, seed=seed, progress=progress)
    pairs.info.update(source=f"{os.fspath(root)} ({source})", n=len(images))
    return pairs
