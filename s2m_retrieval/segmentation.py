"""Label maps for images without masks: the shipped (or a given) segmenter, loaded once."""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

import numpy as np

from s2m_retrieval.checkpoint import shipped_weights
from s2m_retrieval.errors import CheckpointError

SHIPPED_SEGMENTER = "segmenter"


@functools.lru_cache(maxsize=4)
def _load(path: str):
    from s2m_retrieval.training.segmenter import load_segmenter

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
    from s2m_retrieval.training.segmenter import segment

    return segment(cached_segmenter(checkpoint), np.stack(list(images)))
