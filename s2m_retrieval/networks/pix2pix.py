"""The pix2pix baseline (Isola et al. 2017): a U-Net from sketch to image and a PatchGAN discriminator."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from s2m_retrieval.networks.checkpoint import load_network

from s2m_retrieval.errors import BadInputError


def _norm(channels: int) -> nn.GroupNorm:
    # pix2pix uses BatchNorm at batch 1, i.e. per-image statistics; GroupNorm keeps that at any batch size and
    # stays defined at the 2x2 maps where InstanceNorm would see four numbers.
    return nn.GroupNorm(max(1, channels // 8), channels)


def _check_resolution(res: int, depth: int, what: str) -> None:
    if res < 8 or res & (res - 1):
        raise BadInputError(f"{what} img_resolution must be a power of two >= 8, got {res}")
    if depth < 1 or res // 2 ** depth < 1:
        raise BadInputError(f"{what} depth must be 1..log2({res}), got {depth}")


@dataclass(frozen=True)
class Pix2PixConfig:
    """Shape of the U-Net generator: `depth` stride-2 downs (to 1x1 at 64 px), widths base * 2^i capped."""

    img_resolution: int = 64
    in_channels: int = 1             # the sketch
    out_channels: int = 3            # RGB
    base_channels: int = 32
    max_channels: int = 128
    depth: int = 6
    dropout: float = 0.5             # in the three decoder blocks above the innermost one, as pix2pix's noise

    def __post_init__(self) -> None:
        _check_resolution(self.img_resolution, self.depth, "pix2pix")
        if min(self.in_channels, self.out_channels, self.base_channels, self.max_channels) < 1:
            raise BadInputError("pix2pix channel counts must be >= 1")
        if not 0 <= self.dropout < 1:
            raise BadInputError(f"pix2pix dropout must be in [0, 1), got {self.dropout}")

    def channels(self, level: int) -> int:
        """Width of the map after down-sampling `level` (0 = first)."""
        return min(self.base_channels * 2 ** level, self.max_channels)


@dataclass(frozen=True)
class PatchDiscriminatorConfig:
    """Shape of the PatchGAN: `layers` stride-2 convs; 2 gives 34 px patches (pix2pix's 70 px needs 3)."""

    img_resolution: int = 64
    in_channels: int = 4             # sketch + image, conditioned as in pix2pix
    base_channels: int = 64
    max_channels: int = 256
    layers: int = 2

    def __post_init__(self) -> None:
        _check_resolution(self.img_resolution, self.layers, "PatchGAN")
        if min(self.in_channels, self.base_channels, self.max_channels) < 1:
            raise BadInputError("PatchGAN channel counts must be >= 1")

    @property
    def receptive_field(self) -> int:
        """Side in pixels of the input patch each output logit sees."""
        rf = 1
        for stride in [1, 1] + [2] * self.layers:  # walking back from the output: two stride-1 4x4 convs first
            rf = (rf - 1) * stride + 4
        return rf


class UNetGenerator(nn.Module):
    """Sketch [N, 1, R, R] in [-1, 1] -> image [N, 3, R, R] in [-1, 1], with skips between mirrored levels."""

    def __init__(self, config: Pix2PixConfig) -> None:
        super().__init__()
        self.config = config
        depth = config.depth
        widths = [config.channels(i) for i in range(depth)]
        self.downs = nn.ModuleList()
        in_ch = config.in_channels
        for i, ch in enumerate(widths):
            layers: list[nn.Module] = [] if i == 0 else [nn.LeakyReLU(0.2)]
            layers.append(nn.Conv2d(in_ch, ch, 4, 2, 1))
            if 0 < i < depth - 1:  # no norm on the raw input nor at the 1x1 bottleneck, as pix2pix
                layers.append(_norm(ch))
            self.downs.append(nn.Sequential(*layers))
            in_ch = ch
        self.ups = nn.ModuleList()
        for i in reversed(range(depth)):  # up i restores the side of down i's input
            in_ch = widths[i] if i == depth - 1 else 2 * widths[i]
            layers = [nn.ReLU(), nn.ConvTranspose2d(in_ch, widths[i - 1] if i else config.out_channels, 4, 2, 1)]
            if i == 0:
                layers.append(nn.Tanh())
            else:
                layers.append(_norm(widths[i - 1]))
                if config.dropout > 0 and depth - 4 <= i < depth - 1:
                    layers.append(nn.Dropout(config.dropout))
            self.ups.append(nn.Sequential(*layers))

    def forward(self, sketch: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        res = cfg.img_resolution
        if sketch.ndim != 4 or tuple(sketch.shape[1:]) != (cfg.in_channels, res, res):
            raise ValueError(f"pix2pix expects sketches [N, {cfg.in_channels}, {res}, {res}], got {list(sketch.shape)}")
        skips = []
        x = sketch
        for down in self.downs:
            x = down(x)                                                  # halves the side
            skips.append(x)
        x = skips.pop()                                                  # the bottleneck [N, C, R/2^depth, ...]
        for j, up in enumerate(self.ups):
            if j:
                x = torch.cat([x, skips.pop()], dim=1)                   # skip from the mirrored down level
            x = up(x)                                                    # doubles the side
        return x


class PatchDiscriminator(nn.Module):
    """(sketch, image) [N, 1 + 3, R, R] -> real/fake logits per patch [N, 1, r, r]."""

    def __init__(self, config: PatchDiscriminatorConfig) -> None:
        super().__init__()
        self.config = config
        width = [min(config.base_channels * 2 ** i, config.max_channels) for i in range(config.layers + 1)]
        layers: list[nn.Module] = [nn.Conv2d(config.in_channels, width[0], 4, 2, 1), nn.LeakyReLU(0.2)]
        for i in range(1, config.layers + 1):
            stride = 2 if i < config.layers else 1  # the last widening conv keeps the side, as pix2pix's n_layers
            layers += [nn.Conv2d(width[i - 1], width[i], 4, stride, 1), _norm(width[i]), nn.LeakyReLU(0.2)]
        layers.append(nn.Conv2d(width[-1], 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, sketch: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        x = torch.cat([sketch, image], dim=1)
        if x.ndim != 4 or x.shape[1] != cfg.in_channels or x.shape[-1] != cfg.img_resolution:
            raise ValueError(f"PatchGAN expects sketch + image with {cfg.in_channels} channels at "
                             f"{cfg.img_resolution} px, got {list(sketch.shape)} and {list(image.shape)}")
        return self.net(x)


def load_pix2pix(path_or_payload: str | os.PathLike | dict, device: str | torch.device = "cpu") -> UNetGenerator:
    """The pix2pix U-Net (eval mode, frozen) from a kind="pix2pix" checkpoint."""
    return load_network(path_or_payload, "pix2pix", Pix2PixConfig, UNetGenerator, device)
