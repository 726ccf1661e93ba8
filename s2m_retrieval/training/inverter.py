"""The archive inverter: image -> W+ (e4e-style encoder with ReStyle iterations), its training and `invert`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch

from s2m_retrieval.errors import BadInputError
from s2m_retrieval.networks.encoders import EncoderConfig, LatentDiscriminatorConfig, encoder_config_for
from s2m_retrieval.networks.stylegan2 import Generator
from s2m_retrieval.model.perceptual import PerceptualDistance
from s2m_retrieval.model.inversion import invert  # noqa: F401  (re-exported for training code)
from s2m_retrieval.training.encoder import EncoderTrainConfig, fit_w_encoder
from s2m_retrieval.training.gan import check_images
from s2m_retrieval.training.latent import SAMPLE_ROWS, TrainProgress, as_float, data_record

INVERTER_TRAIN_CONFIG = EncoderTrainConfig(iterations=3)  # ReStyle trains with a few iterations per batch


def image_batches(images: torch.Tensor, batch: int, xflip: bool):
    """Random (image, image) batches [B, 3, R, R] from uint8 or float images: the input is its own target."""
    def draw(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        x = images[torch.randint(len(images), (batch,), generator=gen)]
        x = as_float(x) if x.dtype == torch.uint8 else x
        if xflip:
            x = torch.where((torch.rand(batch, generator=gen) < 0.5).view(-1, 1, 1, 1), x.flip(3), x)
        return x, x
    return draw


def train_inverter(images: torch.Tensor, G: Generator, out_dir: str | os.PathLike,
                   encoder_config: EncoderConfig | None = None, d_config: LatentDiscriminatorConfig | None = None,
                   train_config: EncoderTrainConfig = INVERTER_TRAIN_CONFIG,
                   perceptual: PerceptualDistance | None = None, device: str | torch.device = "cpu",
                   resume: bool = True, progress: Callable[[TrainProgress], None] | None = None,
                   source: dict | None = None) -> Path:
    """Train the inverter on archive images [N, 3, R, R] (uint8 or [-1, 1]) with G frozen; return inverter.pt's path.
    `source`: the key of the source they came from (pair_source.source_key), which a resume must match."""
    # e4e's latent D keeps the codes among G's mapped w's, where distances between codes mean something; the
    # default config reads concat(image, current reconstruction) when train_config.iterations > 1 (ReStyle).
    data = check_images(images, G.config)
    enc_cfg = encoder_config or encoder_config_for(G.config, in_channels=G.config.img_channels,
                                                   extra_channels=G.config.img_channels
                                                   if train_config.iterations > 1 else 0)
    if enc_cfg.in_channels != G.config.img_channels:
        raise BadInputError(f"the inverter takes {G.config.img_channels}-channel images, "
                            f"its config has in_channels={enc_cfg.in_channels}")
    n = min(SAMPLE_ROWS, len(data))
    fixed_x = as_float(data[:n]) if data.dtype == torch.uint8 else data[:n]
    info = {"num_images": int(len(data))}
    record = data_record(source, {**info, "resolution": int(data.shape[-1])})
    return fit_w_encoder("inverter", image_batches(data, train_config.batch, train_config.xflip), (fixed_x, fixed_x),
                         G, out_dir, enc_cfg, d_config, train_config, perceptual, device, resume, progress, info,
                         record)


