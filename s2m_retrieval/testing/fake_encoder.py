"""A deterministic FAKE archive encoder (downsampled pixels x fixed random projection) for tests only."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass

import numpy as np

from s2m_retrieval.errors import BadInputError


@dataclass(frozen=True)
class FakeEncoderConfig:
    """Input resolution, pixel grid projected to `dim`, thumbnail size, projection seed."""

    resolution: int = 64
    grid: int = 8
    dim: int = 256
    thumb: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        for what, size in (("grid", self.grid), ("thumb", self.thumb)):
            if size < 1 or self.resolution % size:
                raise BadInputError(f"fake encoder: resolution {self.resolution} is not a multiple of {what} {size}")
        if self.dim < 1:
            raise BadInputError(f"fake encoder: dim must be positive, got {self.dim}")


def _area_downsample(images: np.ndarray, size: int) -> np.ndarray:
    """[B, R, R, C] -> [B, size, size, C] float32 by block means."""
    b, r, _, c = images.shape
    f = r // size
    # Sum rows of each block first, then columns: contiguous reductions, ~6x faster than mean(axis=(2, 4)).
    rows = images.reshape(b * size, f, size * f * c).astype(np.float32).sum(axis=1)
    return rows.reshape(b, size, size, f, c).sum(axis=3) / (f * f)


class FakeEncoder:
    """Not a model: stands in for the inverter so storage, builds and CLI can be tested offline.

    Vectors are an 8x8 (default) block-mean of the image in [-1, 1], projected by a seeded Gaussian
    matrix; thumbnails are block means. Same config, same outputs, same `version`.
    """

    name = "fake"
    metric = "fake-thumbnail-l2"
    weighting = "uniform (fake encoder: random projection of block-mean pixels, no W+)"

    def __init__(self, config: FakeEncoderConfig = FakeEncoderConfig(), delay_s: float = 0.0) -> None:
        self.cfg = config
        # Test knob only (slows batches so a build can be killed mid-way); not part of the version.
        self.delay_s = delay_s
        n_in = config.grid * config.grid * 3
        rng = np.random.default_rng(config.seed)
        self._projection = (rng.standard_normal((n_in, config.dim)) / np.sqrt(n_in)).astype(np.float32)

    @classmethod
    def from_options(cls, options: dict[str, str]) -> FakeEncoder:
        """Build from CLI-style options, e.g. {"dim": "64", "delay": "0.05"}."""
        fields = {f.name for f in dataclasses.fields(FakeEncoderConfig)}
        options = dict(options)
        try:
            delay = float(options.pop("delay", 0.0))
            unknown = set(options) - fields
            if unknown:
                raise BadInputError(f"fake encoder: unknown options {sorted(unknown)} (known: {sorted(fields)}, delay)")
            return cls(FakeEncoderConfig(**{k: int(v) for k, v in options.items()}), delay_s=delay)
        except ValueError as exc:
            raise BadInputError(f"fake encoder: bad option value ({exc})") from None

    @property
    def config(self) -> dict:
        """The config as a dict (stored in model_versions)."""
        return dataclasses.asdict(self.cfg)

    @property
    def version(self) -> str:
        """Version stamp derived from the config (there are no weights)."""
        blob = json.dumps({"encoder": "fake/1", **self.config}, sort_keys=True).encode()
        return "fake-" + hashlib.sha256(blob).hexdigest()[:12]

    @property
    def dim(self) -> int:
        """Vector size."""
        return self.cfg.dim

    @property
    def resolution(self) -> int:
        """Input image size the reader squares archive images to."""
        return self.cfg.resolution

    def encode(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """[B, R, R, 3] uint8 -> {"vectors": [B, dim] float32, "thumbs": [B, t, t, 3] uint8}."""
        r = self.cfg.resolution
        if images.ndim != 4 or images.shape[1:] != (r, r, 3) or images.dtype != np.uint8:
            raise ValueError(f"fake encoder expects uint8 [B, {r}, {r}, 3], got {images.dtype} {images.shape}")
        if self.delay_s:
            time.sleep(self.delay_s)
        pixels = _area_downsample(images, self.cfg.grid).reshape(len(images), -1) / 127.5 - 1.0
        thumbs = np.clip(_area_downsample(images, self.cfg.thumb) + 0.5, 0, 255).astype(np.uint8)
        return {"vectors": pixels @ self._projection, "thumbs": thumbs}
