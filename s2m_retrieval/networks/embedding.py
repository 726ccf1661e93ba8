"""The learned sketch-image embedding baseline (standard SBIR): two small CNN towers into one unit sphere."""

from __future__ import annotations

import os
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from s2m_retrieval.networks.checkpoint import load_network


@dataclass(frozen=True)
class EmbeddingConfig:
    """Both towers: stride-2 conv stages of `widths` down from `img_resolution`, then a linear map to `dim`."""

    img_resolution: int = 64
    widths: tuple[int, ...] = (32, 64, 128, 128)
    dim: int = 128

    def __post_init__(self) -> None:
        if self.img_resolution < 2 ** len(self.widths) or self.img_resolution & (self.img_resolution - 1):
            raise ValueError(f"img_resolution {self.img_resolution} must be a power of two >= 2**{len(self.widths)}")
        if self.dim < 1 or min(self.widths) < 1:
            raise ValueError("widths and dim must be >= 1")


class Tower(nn.Module):
    """[N, C, R, R] in [-1, 1] -> unit vectors [N, dim]: conv stages, global average and max pooling, linear."""

    def __init__(self, in_channels: int, config: EmbeddingConfig) -> None:
        super().__init__()
        layers, c = [], in_channels
        for w in config.widths:
            layers += [nn.Conv2d(c, w, 3, stride=2, padding=1), nn.GroupNorm(min(8, w), w), nn.SiLU(),
                       nn.Conv2d(w, w, 3, padding=1), nn.SiLU()]
            c = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(2 * c, config.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)                                          # [N, C, R / 2**L, R / 2**L]
        pooled = torch.cat([f.mean(dim=(2, 3)), f.amax(dim=(2, 3))], dim=1)
        return F.normalize(self.head(pooled), dim=1)


class SketchImageEmbedding(nn.Module):
    """A sketch tower (1 channel) and an image tower (RGB) with a learned similarity temperature."""

    def __init__(self, config: EmbeddingConfig) -> None:
        super().__init__()
        self.config = config
        self.sketch = Tower(1, config)
        self.image = Tower(3, config)
        self.log_scale = nn.Parameter(torch.tensor(math.log(10.0)))  # logits = scale * cosine

    def forward(self, sketch: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """Similarity logits [N_sketch, N_image] between every sketch and every image."""
        return self.log_scale.exp() * self.sketch(sketch) @ self.image(image).T


def load_embedding(path_or_payload: str | os.PathLike | dict, device: str | torch.device = "cpu"
                   ) -> SketchImageEmbedding:
    """The embedding towers (eval mode, frozen) from a kind="embedding" checkpoint."""
    return load_network(path_or_payload, "embedding", EmbeddingConfig, SketchImageEmbedding, device)
