"""The retrieval-space projector P: weighted W+ vectors of sketches and of archive images into one unit sphere.

E's code of a sketch and the inverter's code of the sketched image agree on geometry, not on everything: the
stored code also carries appearance a sketch cannot predict, and E's residual is not spread evenly over W+.
P learns which directions to compare. Two heads over the same input (the index's weighted W+ vector,
`latent_space.w_plus_to_vectors`): `query` for E's codes of sketches, `archive` for the inverter's codes of
images (also of a re-inverted x̂). Both end on the unit sphere, so FAISS' squared L2 between a query and a
stored vector is 2 - 2 cos: the index stores `archive(v)` and a sketch searches with `query(v)`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from s2m_retrieval.networks.checkpoint import read_payload, rebuild_module

KIND = "projector"
SIDES = ("query", "archive")


@dataclass(frozen=True)
class ProjectorConfig:
    """in_dim: length of the weighted W+ vector it reads (under `weighting`); dim: retrieval-space size;
    hidden: 0 for linear heads, else the width of one hidden layer."""

    in_dim: int
    weighting: str
    dim: int = 256
    hidden: int = 0

    def __post_init__(self) -> None:
        if min(self.in_dim, self.dim) < 1 or self.hidden < 0:
            raise ValueError(f"projector sizes must be >= 1 (hidden >= 0), got in_dim={self.in_dim}, "
                             f"dim={self.dim}, hidden={self.hidden}")


def _head(config: ProjectorConfig) -> nn.Module:
    if not config.hidden:
        return nn.Linear(config.in_dim, config.dim)
    return nn.Sequential(nn.Linear(config.in_dim, config.hidden), nn.SiLU(), nn.Linear(config.hidden, config.dim))


class LatentProjector(nn.Module):
    """Weighted W+ vectors [N, in_dim] -> unit vectors [N, dim], by side (query: sketches, archive: images)."""

    def __init__(self, config: ProjectorConfig) -> None:
        super().__init__()
        self.config = config
        # Inputs are centred and scaled by the stored vectors' statistics (set before training).
        self.register_buffer("center", torch.zeros(config.in_dim))
        self.register_buffer("scale", torch.ones(()))
        self.query = _head(config)
        self.archive = _head(config)

    @torch.no_grad()
    def fit_input(self, stored: torch.Tensor) -> None:
        """Centre and scale from stored vectors [N, in_dim] (mean, and the mean per-dimension deviation)."""
        stored = stored.float()
        self.center.copy_(stored.mean(0))
        self.scale.copy_(stored.std(0).mean().clamp_min(1e-8))

    def forward(self, vectors: torch.Tensor, side: str) -> torch.Tensor:
        if side not in SIDES:
            raise ValueError(f"projector side must be one of {SIDES}, got {side!r}")
        head = self.query if side == "query" else self.archive
        return F.normalize(head((vectors.float() - self.center) / self.scale), dim=1)


def load_projector(path_or_payload: str | os.PathLike | dict, device: str | torch.device = "cpu") -> LatentProjector:
    """P (eval mode, frozen) from a kind="projector" checkpoint."""
    module = rebuild_module(read_payload(path_or_payload, KIND), ProjectorConfig, LatentProjector)
    return module.to(device).eval().requires_grad_(False)
