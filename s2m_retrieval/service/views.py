"""What the service shows of the index: stats, label columns for filters, image metadata, thumbnails and originals.

Only images that have a vector in the engine's index are served, looked up by id; a client never names a path.
"""

from __future__ import annotations

import io
import os

import numpy as np

from s2m_retrieval.errors import S2MError

LABEL_SAMPLE = 5000   # images whose labels describe the filter columns (the page's choices, not the filtering)
MAX_CHOICES = 12      # a column with at most this many distinct values is offered as a list of choices
HIDDEN_COLUMNS = ("id", "file")  # one value per image: nothing to filter on


class ImageNotFound(S2MError):
    """No image with that id in the served index, or its original file is gone."""


def png_bytes(array: np.ndarray) -> bytes:
    """A uint8 [H, W] or [H, W, 3] array as PNG file bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG")
    return buf.getvalue()


def index_stats(engine) -> dict:
    """Name, size, model and metric versions, weighting and resolution of the engine's index."""
    stamp = engine.reader.stamp
    return {"name": stamp.name, "images": int(engine.reader.store.ntotal), "model_version": stamp.model_version,
            "models": dict(engine.pipeline.versions), "perceptual": stamp.metric, "weighting": stamp.weighting,
            "factory": stamp.factory, "dim": stamp.dim, "resolution": stamp.resolution,
            "refiner": engine.pipeline.refiner is not None, "default_steps": engine.default_steps,
            "updated_at": stamp.updated_at}


def label_columns(engine) -> dict[str, dict]:
    """Label columns of the index for filters: {name: {kind, min, max, values}}; `values` lists the distinct
    values when there are few (else None), over the labels of up to LABEL_SAMPLE images."""
    from s2m_retrieval.storage.catalog import sample_labels

    with engine.reader.db.session() as s:
        rows = sample_labels(s, engine.reader.stamp.name, LABEL_SAMPLE)
    seen: dict[str, set] = {}
    for labels in rows:
        for key, value in (labels or {}).items():
            if key not in HIDDEN_COLUMNS and isinstance(value, (int, float, str)) and not isinstance(value, bool):
                seen.setdefault(key, set()).add(value)
    columns = {}
    for key in sorted(seen):
        numbers = sorted(v for v in seen[key] if not isinstance(v, str))
        texts = sorted(v for v in seen[key] if isinstance(v, str))
        if numbers and len(numbers) >= len(texts):
            columns[key] = {"kind": "number", "min": numbers[0], "max": numbers[-1],
                            "values": numbers if len(numbers) <= MAX_CHOICES else None}
        else:
            columns[key] = {"kind": "text", "min": None, "max": None,
                            "values": texts if len(texts) <= MAX_CHOICES else None}
    return columns


def _image_row(engine, image_id: int) -> dict:
    from s2m_retrieval.storage import catalog

    with engine.reader.db.session() as s:
        found = catalog.find_image(s, engine.reader.stamp.name, image_id)
    if found is None:
        raise ImageNotFound(f"image {image_id} is not in index {engine.reader.stamp.name!r}")
    return engine.reader.images([image_id])[image_id]


def image_meta(engine, image_id: int) -> dict:
    """Metadata of an indexed image: file name (not its server path), size and labels."""
    row = _image_row(engine, image_id)
    return {"id": image_id, "file": os.path.basename(row["path"]), "stem": row["stem"], "width": row["width"],
            "height": row["height"], "labels": row["labels"] or {}}


def image_png(engine, image_id: int, size: str) -> bytes:
    """The stored thumbnail ("thumb") or the archive file re-encoded ("original") of an indexed image, as PNG."""
    from s2m_retrieval.data.archive import read_image, split_frame_key

    row = _image_row(engine, image_id)
    if size == "thumb":
        return png_bytes(engine.reader.arrays("thumbs", [image_id])[0])
    path, frame = split_frame_key(row["path"])  # a frame of a multi-frame DICOM file is keyed PATH#frame=K
    if not os.path.isfile(path):
        raise ImageNotFound(f"the original file of image {image_id} is no longer in the archive; its thumbnail "
                            f"is still served (size=thumb)")
    return png_bytes(read_image(path, frame=frame))
