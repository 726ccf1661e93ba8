"""The CycleGAN baseline (Zhu et al. 2017): two ResNet generators, sketch -> image and image -> sketch, and
unconditional PatchGAN discriminators (also UNIT's, with several scales)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from s2m_retrieval.errors import BadInputError
from s2m_retrieval.networks.checkpoint import load_network


def check_translator(res: int, n_down: int, channels: tuple[int, ...], what: str) -> None:
    """Shared validation of the unpaired translators' configs: a power-of-two side, downs that leave >= 4 px."""
    if res < 16 or res & (res - 1):
        raise BadInputError(f"{what} img_resolution must be a power of two >= 16, got {res}")
    if n_down < 1 or res // 2 ** n_down < 4:
        raise BadInputError(f"{what} n_down must be 1..log2({res})-2, got {n_down}")
    if min(channels) < 1:
        raise BadInputError(f"{what} channel and block counts must be >= 1")


def grey_rgb(sketch: torch.Tensor, channels: int) -> torch.Tensor:
    """Sketches [N, 1, R, R] as grey images [N, channels, R, R]: both generators then read both domains, which the
    identity losses need (G_image(image) ~ image, G_sketch(sketch) ~ sketch)."""
    return sketch.expand(-1, channels, -1, -1)


def check_input(x: torch.Tensor, channels: int, res: int, what: str) -> None:
    if x.ndim != 4 or tuple(x.shape[1:]) != (channels, res, res):
        raise ValueError(f"{what} expects [N, {channels}, {res}, {res}], got {list(x.shape)}")


@dataclass(frozen=True)
class CycleGANConfig:
    """Shape of both ResNet generators: a 7x7 stem, `n_down` stride-2 downs (widths base * 2^i), `n_res` residual
    blocks at the bottleneck, mirrored transposed-conv ups and a 7x7 head (Johnson et al.'s network)."""

    img_resolution: int = 64
    sketch_channels: int = 1
    image_channels: int = 3
    base_channels: int = 32
    n_down: int = 2
    n_res: int = 6

    def __post_init__(self) -> None:
        check_translator(self.img_resolution, self.n_down,
                         (self.sketch_channels, self.image_channels, self.base_channels, self.n_res), "CycleGAN")


def conv_in_relu(in_ch: int, out_ch: int, kernel: int, stride: int = 1) -> list[nn.Module]:
    """Reflection-padded conv + InstanceNorm + ReLU (no bias: the norm removes it)."""
    return [nn.ReflectionPad2d(kernel // 2), nn.Conv2d(in_ch, out_ch, kernel, stride, 0, bias=False),
            nn.InstanceNorm2d(out_ch), nn.ReLU()]


def up_in_relu(in_ch: int, out_ch: int) -> list[nn.Module]:
    """Stride-2 transposed conv (doubles the side) + InstanceNorm + ReLU."""
    return [nn.ConvTranspose2d(in_ch, out_ch, 3, 2, 1, output_padding=1, bias=False), nn.InstanceNorm2d(out_ch),
            nn.ReLU()]


def rgb_head(in_ch: int, out_ch: int) -> list[nn.Module]:
    """The 7x7 output conv to [-1, 1]."""
    return [nn.ReflectionPad2d(3), nn.Conv2d(in_ch, out_ch, 7), nn.Tanh()]


class ResnetBlock(nn.Module):
    """x + (conv3 IN ReLU conv3 IN)(x), reflection padded: keeps [N, C, H, W]."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(*conv_in_relu(channels, channels, 3), *conv_in_relu(channels, channels, 3)[:-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """[N, in, R, R] -> [N, out, R, R] in [-1, 1] through a residual bottleneck at R / 2^n_down."""

    def __init__(self, config: CycleGANConfig, in_channels: int, out_channels: int) -> None:
        super().__init__()
        widths = [config.base_channels * 2 ** i for i in range(config.n_down + 1)]
        layers = conv_in_relu(in_channels, widths[0], 7)
        for i in range(config.n_down):
            layers += conv_in_relu(widths[i], widths[i + 1], 3, stride=2)
        layers += [ResnetBlock(widths[-1]) for _ in range(config.n_res)]
        for i in reversed(range(config.n_down)):
            layers += up_in_relu(widths[i + 1], widths[i])
        self.net = nn.Sequential(*layers, *rgb_head(widths[0], out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CycleGAN(nn.Module):
    """The translator pair: `to_image` reads grey sketches or images and draws images, `to_sketch` reads images or
    grey sketches and draws 1-channel sketches; forward(sketch [N, 1, R, R]) is the baseline's image [N, 3, R, R]."""

    def __init__(self, config: CycleGANConfig) -> None:
        super().__init__()
        self.config = config
        self.to_image = ResnetGenerator(config, config.image_channels, config.image_channels)
        self.to_sketch = ResnetGenerator(config, config.image_channels, config.sketch_channels)

    def image_of(self, sketch: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        check_input(sketch, cfg.sketch_channels, cfg.img_resolution, "CycleGAN")
        return self.to_image(grey_rgb(sketch, cfg.image_channels))

    def sketch_of(self, image: torch.Tensor) -> torch.Tensor:
        check_input(image, self.config.image_channels, self.config.img_resolution, "CycleGAN")
        return self.to_sketch(image)

    def forward(self, sketch: torch.Tensor) -> torch.Tensor:
        return self.image_of(sketch)


@dataclass(frozen=True)
class PatchGANConfig:
    """Shape of an unconditional PatchGAN: `layers` stride-2 convs (2: 34 px patches, 3: CycleGAN's 70 px), at
    `scales` resolutions (1, 1/2, ... of the image, each with its own weights: UNIT's multi-scale D)."""

    img_resolution: int = 64
    in_channels: int = 3
    base_channels: int = 64
    max_channels: int = 512
    layers: int = 2
    scales: int = 1
    norm: str = "instance"          # "instance" (CycleGAN) or "none" (UNIT)

    def __post_init__(self) -> None:
        if self.img_resolution < 16 or self.img_resolution & (self.img_resolution - 1):
            raise BadInputError(f"PatchGAN img_resolution must be a power of two >= 16, got {self.img_resolution}")
        if self.layers < 1 or self.scales < 1 or self.img_resolution // 2 ** (self.layers + self.scales - 1) < 4:
            raise BadInputError(f"PatchGAN layers {self.layers} at {self.scales} scales leave under 4 px of "
                                f"{self.img_resolution}; use fewer")
        if min(self.in_channels, self.base_channels, self.max_channels) < 1 or self.norm not in ("instance", "none"):
            raise BadInputError("PatchGAN channel counts must be >= 1 and norm 'instance' or 'none'")


def _patch_net(config: PatchGANConfig) -> nn.Sequential:
    width = [min(config.base_channels * 2 ** i, config.max_channels) for i in range(config.layers + 1)]
    layers: list[nn.Module] = [nn.Conv2d(config.in_channels, width[0], 4, 2, 1), nn.LeakyReLU(0.2)]
    for i in range(1, config.layers + 1):
        stride = 2 if i < config.layers else 1  # the last widening conv keeps the side, as pix2pix's n_layers
        layers.append(nn.Conv2d(width[i - 1], width[i], 4, stride, 1))
        if config.norm == "instance":
            layers.append(nn.InstanceNorm2d(width[i]))
        layers.append(nn.LeakyReLU(0.2))
    layers.append(nn.Conv2d(width[-1], 1, 4, 1, 1))
    return nn.Sequential(*layers)


class PatchGAN(nn.Module):
    """Images [N, C, R, R] -> one real/fake logit map per scale, [[N, 1, r_s, r_s], ...] (r_s ~ R / 2^(layers+s))."""

    def __init__(self, config: PatchGANConfig) -> None:
        super().__init__()
        self.config = config
        self.scales = nn.ModuleList(_patch_net(config) for _ in range(config.scales))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        check_input(x, self.config.in_channels, self.config.img_resolution, "PatchGAN")
        logits = []
        for i, net in enumerate(self.scales):
            if i:
                x = F.avg_pool2d(x, 3, 2, 1, count_include_pad=False)   # halves the side for the next scale
            logits.append(net(x))
        return logits


def load_cyclegan(path_or_payload: str | os.PathLike | dict, device: str | torch.device = "cpu") -> CycleGAN:
    """The CycleGAN translator pair (eval mode, frozen) from a kind="cyclegan" checkpoint."""
    return load_network(path_or_payload, "cyclegan", CycleGANConfig, CycleGAN, device)
