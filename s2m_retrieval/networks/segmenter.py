"""The segmenter of S: a small U-Net from an RGB image to per-pixel anatomy logits."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from s2m_retrieval.errors import BadInputError, CheckpointError
from s2m_retrieval.networks.checkpoint import config_from_dict, load_checkpoint


@dataclass(frozen=True)
class SegmenterConfig:
    """Shape of the U-Net; `img_resolution` is the side it is trained and run at."""

    in_channels: int = 3
    num_classes: int = 7
    base_channels: int = 16
    depth: int = 3              # down-samplings; inputs must be multiples of 2**depth
    img_resolution: int = 64

    def __post_init__(self):
        if min(self.in_channels, self.num_classes, self.base_channels, self.depth) < 1:
            raise ValueError("SegmenterConfig fields must be >= 1")
        if self.img_resolution % (2 ** self.depth):
            raise ValueError(f"img_resolution {self.img_resolution} is not a multiple of 2**depth")

    def channels(self, level: int) -> int:
        """Width at a level; it stops doubling at the bottom to keep the net at a few 100 K params."""
        return self.base_channels * 2 ** min(level, self.depth - 1)


class ConvBlock(nn.Module):
    """Two 3x3 conv + GroupNorm + SiLU; GroupNorm because batches are small and eval must match train."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        groups = max(1, out_channels // 8)
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.GroupNorm(groups, out_channels), nn.SiLU(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.GroupNorm(groups, out_channels), nn.SiLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Segmenter(nn.Module):
    """U-Net: [N, in_channels, H, W] in [-1, 1] -> logits [N, num_classes, H, W]."""

    def __init__(self, config: SegmenterConfig = SegmenterConfig()):
        super().__init__()
        self.config = config
        c = config.channels
        self.stem = ConvBlock(config.in_channels, c(0))
        self.down = nn.ModuleList(ConvBlock(c(i), c(i + 1)) for i in range(config.depth))
        self.up = nn.ModuleList(ConvBlock(c(i + 1) + c(i), c(i)) for i in reversed(range(config.depth)))
        self.head = nn.Conv2d(c(0), config.num_classes, 1)

    def encoder_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The contracting path's feature maps, finest first (domain features for distances)."""
        self._check(x)
        feats = [self.stem(x)]
        for block in self.down:
            feats.append(block(F.max_pool2d(feats[-1], 2)))
        return feats

    def _check(self, x: torch.Tensor) -> None:
        cfg = self.config
        n, ch, h, w = x.shape
        if ch != cfg.in_channels or h % 2 ** cfg.depth or w % 2 ** cfg.depth:
            raise ValueError(f"Segmenter expects [N, {cfg.in_channels}, H, W] with H, W multiples of "
                             f"{2 ** cfg.depth}, got {list(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = self.encoder_features(x)             # [N, c_i, H / 2**i, W / 2**i] per level
        y = skips.pop()                              # [N, c_depth, H / 2**depth, W / 2**depth]
        for block in self.up:
            skip = skips.pop()
            y = block(torch.cat([F.interpolate(y, size=skip.shape[-2:], mode="nearest"), skip], 1))
        return self.head(y)                          # [N, num_classes, H, W]


def as_uint8(array, name: str, ndim: int) -> torch.Tensor:
    tensor = array if isinstance(array, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(array))
    if tensor.dtype != torch.uint8 or tensor.ndim != ndim:
        raise BadInputError(f"{name} must be uint8 with {ndim} dims, got {tensor.dtype} {list(tensor.shape)}")
    return tensor.cpu()


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [N, 3, H, W] -> float [N, 3, size, size] in [-1, 1]."""
    x = images.float() / 127.5 - 1.0
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.clamp(-1, 1)


@torch.no_grad()
def predict_labels(model: Segmenter, x: torch.Tensor, size: tuple[int, int], batch: int) -> np.ndarray:
    """Labels uint8 [N, *size] for float images [N, C, R, R] at the model side."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(x), batch):
        logits = model(x[start:start + batch].to(device))
        if tuple(logits.shape[-2:]) != size:
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        out.append(logits.argmax(1).to(torch.uint8).cpu())
    model.train(was_training)
    return torch.cat(out).numpy()


def segment(model: Segmenter, images, batch: int = 32) -> np.ndarray:
    """uint8 RGB images [N, H, W, 3] (or one [H, W, 3]) -> uint8 label maps [N, H, W] (or [H, W]) at their size."""
    array = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(images))
    single = array.ndim == 3
    array = as_uint8(array[None] if single else array, "images", 4)
    if array.shape[-1] != model.config.in_channels:
        raise BadInputError(f"images have {array.shape[-1]} channels, the segmenter takes {model.config.in_channels}")
    x = resize_images(array.permute(0, 3, 1, 2), model.config.img_resolution)
    labels = predict_labels(model, x, tuple(array.shape[1:3]), batch)
    return labels[0] if single else labels


def load_segmenter(path: str | os.PathLike, device: str | torch.device = "cpu") -> Segmenter:
    """Rebuild a Segmenter (eval mode) from a `kind="segmenter"` checkpoint."""
    payload = load_checkpoint(path, kind="segmenter")
    try:
        model = Segmenter(config_from_dict(SegmenterConfig, payload["config"]))
        model.load_state_dict(payload["state_dict"])
    except (TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"checkpoint {path} does not match its segmenter config ({str(exc)[:120]})") from exc
    return model.to(device).eval()
