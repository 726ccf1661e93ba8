"""Canonical sketches: any drawing (canvas size, pen width, pressure, pencil grain, grey level) redrawn the one way
E is trained on — binarised, thinned to a skeleton, redrawn at the training pen width, at the model's side.

The same function runs on training pairs and on every query, so what differs between hand styles (how wide, how
dark, how grainy a line is) never reaches the encoder; only where the lines are does.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage.morphology import skeletonize

from s2m_retrieval.errors import BadInputError

WORK_FACTOR = 4          # thinning runs at 4x the output side: sub-pixel line positions survive
CANONICAL_VERSION = "canonical/1"
INK_FRACTION = 0.25     # how far from paper towards the darkest ink a pixel must be to count as ink
MIN_CONTRAST = 0.12      # darkest ink vs paper, as a fraction of full scale; less is an empty page


def as_grey_sketch(sketch) -> np.ndarray:
    """A uint8 sketch [H, W], [H, W, 3] or [H, W, 4] as grey uint8 [H, W]: transparent is paper, any dark
    channel ink."""
    from s2m_retrieval.data.image_io import composite

    array = np.asarray(sketch)
    if array.dtype != np.uint8:
        raise BadInputError(f"a sketch must be a uint8 image, got {array.dtype}")
    if array.ndim == 3 and array.shape[-1] == 4:
        array = composite(array, background=255)
    if array.ndim == 3 and array.shape[-1] == 3:
        array = array.min(axis=2)
    if array.ndim != 2 or min(array.shape) == 0:
        raise BadInputError(f"a sketch must be an [H, W], [H, W, 3] or [H, W, 4] image, got shape {array.shape}")
    return array


def ink_mask(page: np.ndarray) -> np.ndarray:
    """Where the ink is on a grey page in [0, 1]: darker than the paper (the median: ink is sparse) by a quarter
    of the way to the darkest strokes; faint pencil and thin antialiased lines count as ink, paper grain not."""
    paper = float(np.median(page))
    dark = float(np.percentile(page, 0.2))
    if paper - dark < MIN_CONTRAST:
        return np.zeros(page.shape, bool)
    ink = page < paper - INK_FRACTION * (paper - dark)
    # pencil grain breaks a line into dots: a closing joins them before thinning
    return ndimage.binary_closing(ink, structure=np.ones((3, 3), bool), border_value=0) | ink


def canonical_sketch(sketch, size: int, width: float | None = None) -> np.ndarray:
    """Any drawing -> uint8 [size, size], dark lines of `width` output pixels (default: the training pen,
    `default_stroke_width(size)`) on white, antialiased. A page without ink comes back white."""
    from s2m_retrieval.data.sketch import default_stroke_width

    if size < 8:
        raise BadInputError(f"canonical sketch side must be >= 8, got {size}")
    work = size * WORK_FACTOR
    page = as_grey_sketch(sketch).astype(np.float32) / 255.0
    if page.shape != (work, work):
        page = np.asarray(Image.fromarray(page, mode="F").resize((work, work), Image.BILINEAR
                                                                  if min(page.shape) < work else Image.BOX))
    ink = ink_mask(page)
    # specks smaller than a dot of the pen are noise, not strokes
    labels, count = ndimage.label(ink, structure=np.ones((3, 3), bool))
    if count:
        sizes = ndimage.sum(ink, labels, index=np.arange(1, count + 1))
        ink = np.isin(labels, 1 + np.flatnonzero(sizes >= WORK_FACTOR * 2))
    if not ink.any():
        return np.full((size, size), 255, np.uint8)
    skeleton = skeletonize(ink)
    radius = WORK_FACTOR * (default_stroke_width(size) if width is None else float(width)) / 2
    distance = ndimage.distance_transform_edt(~skeleton)
    cover = np.clip(radius + 0.5 - distance, 0.0, 1.0)                    # [work, work], 1 on the line
    cover = cover.reshape(size, WORK_FACTOR, size, WORK_FACTOR).mean(axis=(1, 3))
    return np.round(255.0 * (1.0 - cover)).astype(np.uint8)
