"""The mapper of index builds: an ArchiveEncoder turns decoded images into stored vectors and thumbnails."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from s2m_retrieval.errors import BadInputError


@runtime_checkable
class ArchiveEncoder(Protocol):
    """Images `[B, R, R, 3]` uint8 -> {"vectors": `[B, dim]` float32, "thumbs": `[B, h, w, 3]` uint8, ...}.

    `version` is the model version stamp (hash of weights + config), `metric` the perceptual metric the
    stored re-rank features are meant for, `weighting` how W+ entries were weighted before flattening.
    """

    name: str
    version: str
    metric: str
    dim: int
    resolution: int
    weighting: str
    config: dict

    def encode(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Encode one batch; every returned array has the batch size as its first axis."""
        ...


def check_outputs(encoder: ArchiveEncoder, images: np.ndarray, out: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Validate an encoder's outputs (keys, batch axis, vector shape, finiteness); returns them as arrays."""
    b = len(images)
    if "vectors" not in out:
        raise ValueError(f"encoder {encoder.name} returned no 'vectors' (keys: {sorted(out)})")
    arrays = {k: np.asarray(v) for k, v in out.items()}
    for key, array in arrays.items():
        if array.shape[:1] != (b,):
            raise ValueError(f"encoder {encoder.name}: {key!r} has shape {array.shape}, expected batch {b} first")
    vectors = arrays["vectors"]
    if vectors.shape != (b, encoder.dim):
        raise ValueError(f"encoder {encoder.name}: vectors have shape {vectors.shape}, expected ({b}, {encoder.dim})")
    if not np.isfinite(vectors).all():
        raise ValueError(f"encoder {encoder.name} produced non-finite vectors")
    arrays["vectors"] = vectors.astype(np.float32, copy=False)
    return arrays


def _parse_options(text: str) -> dict[str, str]:
    options = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise BadInputError(f"encoder option {item!r} must be key=value")
        options[key.strip()] = value.strip()
    return options


def load_encoder(spec: str) -> ArchiveEncoder:
    """An encoder by spec: 'inverter[:models=DIR,perceptual=..,coarse=..,...]' (the real one) or 'fake[:...]' (tests).

    Without a models folder the inverter reads the shipped weights; while generator.pt / inverter.pt are not
    shipped that is a one-line CheckpointError.
    """
    name, _, opts = spec.partition(":")
    if name == "fake":
        from s2m_retrieval.fake_encoder import FakeEncoder

        return FakeEncoder.from_options(_parse_options(opts))
    if name == "inverter":
        from s2m_retrieval.inverter_encoder import InverterEncoder

        return InverterEncoder.from_options(_parse_options(opts))
    raise BadInputError(f"unknown encoder {name!r} (inverter or fake)")
