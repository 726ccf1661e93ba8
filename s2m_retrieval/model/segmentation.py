"""Label maps for images without masks: the shipped (or a given) segmenter, loaded once."""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

import numpy as np

from s2m_retrieval.networks.checkpoint import shipped_weights
from s2m_retrieval.errors import BadInputError, CheckpointError

SHIPPED_SEGMENTER = "segmenter"
MIN_SIDE = 16          # px: smaller images hold no anatomy to outline
MIN_CONTRAST = 2.0     # grey-level standard deviation below which an image is one colour
MAX_ROUGHNESS = 0.7    # mean neighbour difference / standard deviation: photos 0.1-0.3, pixel noise ~1.1


@functools.lru_cache(maxsize=4)
def _load(path: str):
    from s2m_retrieval.networks.segmenter import load_segmenter

    return load_segmenter(path)


def cached_segmenter(checkpoint: str | os.PathLike | None = None):
    """The segmenter of `checkpoint` (default: shipped), loaded once per process."""
    return _load(segmenter_path(checkpoint))


def segmenter_path(checkpoint: str | os.PathLike | None = None) -> str:
    """The checkpoint to use: the given one, else the shipped phantom segmenter."""
    path = shipped_weights(SHIPPED_SEGMENTER) if checkpoint is None else checkpoint
    if not os.path.isfile(path):
        raise CheckpointError(f"segmenter weights not found at {path}; train one with `s2m train segmenter`")
    return str(path)


def segment_images(images: Sequence[np.ndarray] | np.ndarray,
                   checkpoint: str | os.PathLike | None = None) -> np.ndarray:
    """Label maps uint8 `[N, H, W]` for RGB uint8 images `[N, H, W, 3]` of one size."""
    from s2m_retrieval.networks.segmenter import segment

    return segment(cached_segmenter(checkpoint), np.stack(list(images)))


def check_sketchable(image: np.ndarray, name: str | os.PathLike) -> None:
    """Refuse an RGB uint8 image [H, W, 3] the segmenter would invent outlines for: too small, one colour
    (blank, black) or pixel noise; one BadInputError line naming the file."""
    h, w = image.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise BadInputError(f"image {name} is {w}x{h} pixels; an image to sketch needs at least {MIN_SIDE} px a side")
    grey = image.astype(np.float64).mean(axis=2)
    spread = float(grey.std())
    if spread < MIN_CONTRAST:
        raise BadInputError(f"image {name} is one colour (blank or black): no anatomy to outline")
    roughness = (np.abs(np.diff(grey, axis=0)).mean() + np.abs(np.diff(grey, axis=1)).mean()) / 2 / spread
    if roughness > MAX_ROUGHNESS:
        raise BadInputError(f"image {name} looks like pixel noise (neighbour differences {roughness:.2f} of its "
                            f"contrast, photographs stay under {MAX_ROUGHNESS}): no anatomy to outline")
