"""The UNIT baseline (Liu et al. 2017): a shared-latent VAE-GAN. Each domain has an encoder and a generator; the
encoders share their last residual blocks and the generators their first, so a sketch and an image of the same
anatomy are meant to land on one code z."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from s2m_retrieval.networks.checkpoint import load_network
from s2m_retrieval.networks.cyclegan import (ResnetBlock, check_input, check_translator, conv_in_relu, rgb_head,
                                             up_in_relu)


@dataclass(frozen=True)
class UNITConfig:
    """Shape of the two VAEs: per domain a 7x7 stem, `n_down` downs and `n_res` residual blocks; then `n_shared`
    shared blocks ending the encoders (their output is the mean of z) and `n_shared` beginning the generators."""

    img_resolution: int = 64
    sketch_channels: int = 1
    image_channels: int = 3
    base_channels: int = 32
    n_down: int = 2
    n_res: int = 3
    n_shared: int = 1

    def __post_init__(self) -> None:
        check_translator(self.img_resolution, self.n_down, (self.sketch_channels, self.image_channels,
                                                            self.base_channels, self.n_res, self.n_shared), "UNIT")

    @property
    def latent_channels(self) -> int:
        return self.base_channels * 2 ** self.n_down


def _encoder_front(config: UNITConfig, in_channels: int) -> nn.Sequential:
    widths = [config.base_channels * 2 ** i for i in range(config.n_down + 1)]
    layers = conv_in_relu(in_channels, widths[0], 7)
    for i in range(config.n_down):
        layers += conv_in_relu(widths[i], widths[i + 1], 3, stride=2)
    return nn.Sequential(*layers, *(ResnetBlock(widths[-1]) for _ in range(config.n_res)))


def _generator_back(config: UNITConfig, out_channels: int) -> nn.Sequential:
    widths = [config.base_channels * 2 ** i for i in range(config.n_down + 1)]
    layers: list[nn.Module] = [ResnetBlock(widths[-1]) for _ in range(config.n_res)]
    for i in reversed(range(config.n_down)):
        layers += up_in_relu(widths[i + 1], widths[i])
    return nn.Sequential(*layers, *rgb_head(widths[0], out_channels))


class UNIT(nn.Module):
    """Encoders E_sketch, E_image -> the shared code z [N, C, R/2^n_down, ...] -> generators G_sketch, G_image.

    `encode_*` returns the code's mean (UNIT's VAE has unit variance: training adds N(0, 1) noise, KL = mean mu^2);
    forward(sketch [N, 1, R, R]) = G_image(E_sketch(sketch)) [N, 3, R, R], the baseline's answer.
    """

    def __init__(self, config: UNITConfig) -> None:
        super().__init__()
        self.config = config
        width = config.latent_channels
        self.enc_sketch = _encoder_front(config, config.sketch_channels)
        self.enc_image = _encoder_front(config, config.image_channels)
        self.enc_shared = nn.Sequential(*(ResnetBlock(width) for _ in range(config.n_shared)))
        self.gen_shared = nn.Sequential(*(ResnetBlock(width) for _ in range(config.n_shared)))
        self.gen_sketch = _generator_back(config, config.sketch_channels)
        self.gen_image = _generator_back(config, config.image_channels)

    def encode_sketch(self, sketch: torch.Tensor) -> torch.Tensor:
        check_input(sketch, self.config.sketch_channels, self.config.img_resolution, "UNIT")
        return self.enc_shared(self.enc_sketch(sketch))

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        check_input(image, self.config.image_channels, self.config.img_resolution, "UNIT")
        return self.enc_shared(self.enc_image(image))

    def decode_sketch(self, z: torch.Tensor) -> torch.Tensor:
        return self.gen_sketch(self.gen_shared(z))

    def decode_image(self, z: torch.Tensor) -> torch.Tensor:
        return self.gen_image(self.gen_shared(z))

    def image_of(self, sketch: torch.Tensor) -> torch.Tensor:
        return self.decode_image(self.encode_sketch(sketch))

    def sketch_of(self, image: torch.Tensor) -> torch.Tensor:
        return self.decode_sketch(self.encode_image(image))

    def forward(self, sketch: torch.Tensor) -> torch.Tensor:
        return self.image_of(sketch)


def load_unit(path_or_payload: str | os.PathLike | dict, device: str | torch.device = "cpu") -> UNIT:
    """The UNIT VAE pair (eval mode, frozen) from a kind="unit" checkpoint."""
    return load_network(path_or_payload, "unit", UNITConfig, UNIT, device)
