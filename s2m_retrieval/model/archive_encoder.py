"""The mapper of index builds: an ArchiveEncoder turns decoded images into stored vectors and thumbnails."""

from __future__ import annotations

import os
from typing import Protocol, runtime_checkable

import numpy as np

from s2m_retrieval.errors import BadInputError, lookup


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


def load_encoder(spec: str, model: str | os.PathLike | None = None, fit: str | None = None,
                 home: str | os.PathLike | None = None) -> ArchiveEncoder:
    """An encoder by spec: 'inverter[:models=DIR,perceptual=..,coarse=..,...]' (the real one) or 'fake[:...]' (tests).

    The inverter reads the bundle `model` (a name or folder, see `bundle.resolve_model`; default: the shipped one,
    which while inverter.pt is not shipped is a one-line CheckpointError) and squares archive images by `fit`
    (default: as the bundle was trained, else crop).
    """
    name, _, opts = spec.partition(":")
    return lookup(ENCODERS, name, "encoder")(_parse_options(opts), model, fit, home)


def _fake(options: dict, model, fit, home) -> ArchiveEncoder:
    from s2m_retrieval.testing.fake_encoder import FakeEncoder

    if model is not None or fit is not None:
        raise BadInputError("--model and --fit apply to the inverter encoder, not the fake one")
    return FakeEncoder.from_options(options)


def _inverter(options: dict, model, fit, home) -> ArchiveEncoder:
    from s2m_retrieval.model.bundle import resolve_model, training_fit
    from s2m_retrieval.model.inverter_encoder import InverterEncoder

    if model is not None:
        if "models" in options:
            raise BadInputError("give the model bundle once: --model, or models= in --encoder")
        options["models"] = os.fspath(resolve_model(model, home))
    options.setdefault("fit", fit or training_fit(resolve_model(options.get("models"), home)))
    return InverterEncoder.from_options(options)


# spec name -> loader(options, model, fit, home)
ENCODERS = {"inverter": _inverter, "fake": _fake}
