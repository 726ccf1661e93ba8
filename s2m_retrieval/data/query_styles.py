"""The sketch styles of the evaluation queries (`s2m eval make-queries`): how a held-out free-hand sketch is drawn
from a label mask, or traced from the image's own edges; `s2m eval sketch2medi` draws its held-out sets the same way."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from s2m_retrieval.errors import BadInputError


@dataclass(frozen=True)
class QueryStyle:
    """How make-queries draws a sketch from a label mask: contour simplification, canvas size, stroke width, and
    the free-hand augmentation strength (a multiple of FreehandConfig's defaults)."""

    smooth: int
    tolerance: float
    canvas: int
    width_factor: float
    freehand: float
    source: str = "mask"   # "mask": outlines of the label regions; "edges": traced from the image's own edges


# "unseen" differs from the training sketches in every knob E never saw varied: rounder, simpler outlines (drawn
# from memory), a 4x larger canvas as a browser canvas gives, thicker pen; its free-hand strength sits between
# the defaults and training's 2x. "train" is the training distribution itself (an optimistic reference).
QUERY_STYLES = {
    "unseen": QueryStyle(smooth=5, tolerance=1.0, canvas=256, width_factor=1.6, freehand=1.5),
    "train": QueryStyle(smooth=2, tolerance=0.4, canvas=0, width_factor=1.0, freehand=2.0),
    # "traced": a second held-out style by another model of drawing: the image's own brightness edges traced
    # with a pen (as a user tracing over a photograph), not the outlines of its label regions; it draws
    # highlights the masks do not have and misses boundaries of equal brightness.
    "traced": QueryStyle(smooth=0, tolerance=0.0, canvas=256, width_factor=1.0, freehand=0.0, source="edges"),
}
TRACE_SMOOTH = 3.0        # Gaussian sigma (canvas pixels) before edge detection: shading noise is not traced
TRACE_QUANTILES = (0.8, 0.9)
TRACE_MIN_LENGTH = 50     # canvas pixels: shorter edge pieces are not strokes anyone would trace


def trace_edges(image: np.ndarray, canvas: int) -> np.ndarray:
    """The "traced" style: Canny edges of the image's lightness at `canvas` px, short pieces dropped, drawn with
    a 3 px pen; uint8 [canvas, canvas], dark on white."""
    from PIL import Image
    from scipy import ndimage
    from skimage.color import rgb2lab
    from skimage.feature import canny

    big = np.asarray(Image.fromarray(image).resize((canvas, canvas), Image.BICUBIC), np.float32) / 255.0
    lightness = ndimage.gaussian_filter(rgb2lab(big)[..., 0], TRACE_SMOOTH)
    edges = canny(lightness, sigma=2.0, low_threshold=TRACE_QUANTILES[0], high_threshold=TRACE_QUANTILES[1],
                  use_quantiles=True)
    labels, count = ndimage.label(edges, structure=np.ones((3, 3), bool))
    if count:
        sizes = ndimage.sum(edges, labels, index=np.arange(1, count + 1))
        edges = np.isin(labels, 1 + np.flatnonzero(sizes >= TRACE_MIN_LENGTH))
    return np.where(ndimage.binary_dilation(edges, iterations=1), 0, 255).astype(np.uint8)


def draw_query(mask: np.ndarray, style: QueryStyle, seed: int, image: np.ndarray | None = None) -> np.ndarray:
    """A free-hand sketch uint8 [S, S] of a label mask (or, for an "edges" style, of the RGB image) in `style`
    (S: the style's canvas, else the mask's side)."""
    from s2m_retrieval.data.sketch import FreehandConfig, default_stroke_width, mask_contours, render_sketch

    if style.source == "edges":
        if image is None:
            raise BadInputError("the traced sketch style draws from the image: pass the image")
        return trace_edges(image, style.canvas)
    size = style.canvas or mask.shape[0]
    strokes = mask_contours(mask, smooth=style.smooth, tolerance=style.tolerance)
    freehand = FreehandConfig().scaled(style.freehand) if style.freehand > 0 else None
    return render_sketch(strokes, size, stroke_width=default_stroke_width(size) * style.width_factor,
                         freehand=freehand, rng=seed)
