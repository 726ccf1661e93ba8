"""Sketch2MedI training entry points (E + D_latent, H, inverter); the loaders of their checkpoints live with the
networks (`networks.encoders`, `networks.refiner`) and are re-exported here for training code."""

from __future__ import annotations

from s2m_retrieval.model.inversion import invert
from s2m_retrieval.networks.checkpoint import model_version, read_payload
from s2m_retrieval.networks.encoders import load_encoder, load_inverter, load_latent_discriminator
from s2m_retrieval.networks.refiner import load_refiner
from s2m_retrieval.training.encoder import EncoderTrainConfig, train_encoder
from s2m_retrieval.training.inverter import INVERTER_TRAIN_CONFIG, train_inverter
from s2m_retrieval.training.latent import TrainProgress
from s2m_retrieval.training.pairs import PairSet, archive_pairs, make_pairs, phantom_pairs
from s2m_retrieval.training.refiner import RefinerTrainConfig, train_refiner

__all__ = [
    "EncoderTrainConfig", "INVERTER_TRAIN_CONFIG", "PairSet", "RefinerTrainConfig", "TrainProgress",
    "archive_pairs", "invert", "load_encoder", "load_inverter", "load_latent_discriminator", "load_refiner",
    "make_pairs", "model_version", "phantom_pairs", "read_payload", "train_encoder", "train_inverter",
    "train_refiner",
]
