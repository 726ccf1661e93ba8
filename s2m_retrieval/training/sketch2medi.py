"""Sketch2MedI training entry points (E + D_latent, H, inverter) and the loaders of their checkpoints."""

from __future__ import annotations

import os

import torch

from s2m_retrieval.networks.checkpoint import read_payload, rebuild_module
from s2m_retrieval.networks.encoders import Encoder, EncoderConfig, LatentDiscriminator, LatentDiscriminatorConfig
from s2m_retrieval.networks.refiner import Refiner, RefinerConfig
from s2m_retrieval.training.encoder import EncoderTrainConfig, train_encoder
from s2m_retrieval.training.inverter import INVERTER_TRAIN_CONFIG, invert, train_inverter
from s2m_retrieval.training.latent import TrainProgress, model_version
from s2m_retrieval.training.pairs import PairSet, archive_pairs, make_pairs, phantom_pairs
from s2m_retrieval.training.refiner import RefinerTrainConfig, train_refiner

__all__ = [
    "EncoderTrainConfig", "INVERTER_TRAIN_CONFIG", "PairSet", "RefinerTrainConfig", "TrainProgress",
    "archive_pairs", "invert", "load_encoder", "load_inverter", "load_latent_discriminator", "load_refiner",
    "make_pairs", "model_version", "phantom_pairs", "read_payload", "train_encoder", "train_inverter",
    "train_refiner",
]


def _rebuild(path_or_payload, kind: str, config_cls, module_cls, device) -> torch.nn.Module:
    module = rebuild_module(read_payload(path_or_payload, kind), config_cls, module_cls)
    return module.to(device).eval().requires_grad_(False)


def load_encoder(path_or_payload: str | os.PathLike | dict, device: str | torch.device = "cpu") -> Encoder:
    """The sketch encoder E (eval mode, frozen) from a kind="encoder" checkpoint."""
    return _rebuild(path_or_payload, "encoder", EncoderConfig, Encoder, device)


def load_inverter(path_or_payload: str | os.PathLike | dict, device: str | torch.device = "cpu") -> Encoder:
    """The archive inverter (an Encoder over images) from a kind="inverter" checkpoint."""
    return _rebuild(path_or_payload, "inverter", EncoderConfig, Encoder, device)


def load_latent_discriminator(path_or_payload: str | os.PathLike | dict,
                              device: str | torch.device = "cpu") -> LatentDiscriminator:
    """D_latent from a kind="latent_discriminator" checkpoint."""
    return _rebuild(path_or_payload, "latent_discriminator", LatentDiscriminatorConfig, LatentDiscriminator, device)


def load_refiner(path_or_payload: str | os.PathLike | dict, device: str | torch.device = "cpu") -> Refiner:
    """The refiner H from a kind="refiner" checkpoint."""
    return _rebuild(path_or_payload, "refiner", RefinerConfig, Refiner, device)
