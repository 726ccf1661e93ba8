"""Training of the UNIT baseline on unpaired sketches and images: VAE reconstruction + KL, translation through the
shared code judged by multi-scale LSGAN discriminators, and cycle reconstruction + KL (Liu et al.'s weights)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from s2m_retrieval.networks.checkpoint import config_to_dict
from s2m_retrieval.networks.cyclegan import PatchGAN, PatchGANConfig
from s2m_retrieval.networks.unit import UNIT, UNITConfig
from s2m_retrieval.training.latent import TrainProgress, check_rates
from s2m_retrieval.training.pairs import PairSet
from s2m_retrieval.training.unpaired import (UnpairedMethod, UnpairedNets, UnpairedTrainConfig, adam,
                                             build_networks, lsgan_d, lsgan_g, train_unpaired)

UNIT_FILE = "unit.pt"
KIND = "unit"


@dataclass(frozen=True)
class UNITTrainConfig(UnpairedTrainConfig):
    """UNIT's settings: Adam 1e-4 with weight decay 1e-4; reconstruction and cycle L1 x 10, both KLs x 0.01."""

    lr: float = 1e-4
    weight_decay: float = 1e-4
    recon: float = 10.0
    kl: float = 0.01
    kl_cycle: float = 0.01

    def __post_init__(self) -> None:
        super().__post_init__()
        check_rates("UNIT", {}, {"weight_decay": self.weight_decay, "recon": self.recon, "kl": self.kl,
                                 "kl_cycle": self.kl_cycle})


def unit_config_for(resolution: int, **overrides) -> UNITConfig:
    """The two VAEs for `resolution`: UNIT's 64 base channels at 256 px, a quarter of the side below (16 at 64 px);
    2 downs and 3 + 1 shared residual blocks at every size."""
    base = overrides.pop("base_channels", min(64, resolution // 4))
    return UNITConfig(img_resolution=resolution, base_channels=base, **overrides)


def unit_d_config_for(resolution: int, **overrides) -> PatchGANConfig:
    """The image domain's multi-scale D, no normalisation as UNIT's: 2 scales below 256 px, 3 from 256 px; 64 base
    channels from 128 px, half the side below."""
    base = overrides.pop("base_channels", min(64, resolution // 2))
    layers = overrides.pop("layers", 2 if resolution < 128 else 3)
    scales = overrides.pop("scales", 2 if resolution < 256 else 3)
    norm = overrides.pop("norm", "none")
    return PatchGANConfig(img_resolution=resolution, base_channels=base, layers=layers, scales=scales, norm=norm,
                          **overrides)


def _kl(mu: torch.Tensor) -> torch.Tensor:
    # KL(N(mu, I) || N(0, I)) up to a constant and a factor: UNIT's encoders fix the variance at one.
    return mu.square().mean()


def train_unit(pairs: PairSet, out_dir: str | os.PathLike, config: UNITConfig | None = None,
               d_config: PatchGANConfig | None = None, train_config: UNITTrainConfig = UNITTrainConfig(),
               device: str | torch.device = "cpu", resume: bool = True,
               progress: Callable[[TrainProgress], None] | None = None) -> Path:
    """Train both VAEs and both discriminators (d_config is the image one; the sketch one reads 1 channel) on
    unpaired halves of `pairs`; return unit.pt's path (latest.pt resumes)."""
    tc = train_config
    device = torch.device(device)
    cfg, d_cfg, model, D_image, D_sketch = build_networks(
        pairs, KIND, "UNIT", config, d_config, unit_config_for, unit_d_config_for, tc.seed, device,
        UNIT, PatchGAN)
    opt_G = adam([model], tc, tc.weight_decay)
    opt_D = adam([D_image, D_sketch], tc, tc.weight_decay)

    def sample(mu: torch.Tensor) -> torch.Tensor:
        return mu + torch.randn_like(mu)                                 # z ~ N(mu, I)

    def step(sketch: torch.Tensor, image: torch.Tensor) -> tuple[float, dict]:
        mu_s, mu_i = model.encode_sketch(sketch), model.encode_image(image)
        z_s, z_i = sample(mu_s), sample(mu_i)
        fake_image, fake_sketch = model.decode_image(z_s), model.decode_sketch(z_i)
        # the translations' codes, decoded back into their own domain: the cycle
        mu_s2, mu_i2 = model.encode_image(fake_image), model.encode_sketch(fake_sketch)
        recon = F.l1_loss(model.decode_sketch(z_s), sketch) + F.l1_loss(model.decode_image(z_i), image)
        cyc_sketch = F.l1_loss(model.decode_sketch(sample(mu_s2)), sketch)
        cyc_image = F.l1_loss(model.decode_image(sample(mu_i2)), image)
        kl, kl_cycle = _kl(mu_s) + _kl(mu_i), _kl(mu_s2) + _kl(mu_i2)
        D_image.requires_grad_(False)
        D_sketch.requires_grad_(False)
        adv = lsgan_g(D_image(fake_image)) + lsgan_g(D_sketch(fake_sketch))
        opt_G.zero_grad(set_to_none=True)
        (tc.adv * adv + tc.recon * recon + tc.kl * kl + tc.cycle * (cyc_sketch + cyc_image)
         + tc.kl_cycle * kl_cycle).backward()
        opt_G.step()
        # D on this step's translations (detached): one G forward serves both updates.
        D_image.requires_grad_(True)
        D_sketch.requires_grad_(True)
        d_loss = (lsgan_d(D_image(image), D_image(fake_image.detach()))
                  + lsgan_d(D_sketch(sketch), D_sketch(fake_sketch.detach())))
        opt_D.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_D.step()
        cyc = 0.5 * (cyc_sketch.item() + cyc_image.item())
        return cyc, {"cycle_sketch": cyc_sketch.item(), "cycle_image": cyc_image.item(), "recon": recon.item(),
                     "kl": kl.item(), "kl_cycle": kl_cycle.item(), "adv": adv.item(), "d": d_loss.item()}

    nets = UnpairedNets(KIND, UNIT_FILE, model, {"G": model, "D_image": D_image, "D_sketch": D_sketch},
                        {"G": opt_G, "D": opt_D}, {"translator": cfg, "discriminator": d_cfg}, step,
                        {"discriminator": config_to_dict(d_cfg)})
    return train_unpaired(nets, pairs, out_dir, tc, device, resume, progress)


METHOD = UnpairedMethod(KIND, UNIT_FILE, unit_config_for, unit_d_config_for, UNITTrainConfig, train_unit)
