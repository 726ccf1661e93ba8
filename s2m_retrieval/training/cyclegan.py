"""Training of the CycleGAN baseline on unpaired sketches and images: LSGAN + cycle L1 (lambda 10) + identity L1
(0.5 lambda), D on a pool of 50 past fakes, as Zhu et al."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from s2m_retrieval.errors import BadInputError
from s2m_retrieval.networks.checkpoint import config_to_dict
from s2m_retrieval.networks.cyclegan import CycleGAN, CycleGANConfig, PatchGAN, PatchGANConfig, grey_rgb
from s2m_retrieval.training.latent import TrainProgress, check_rates
from s2m_retrieval.training.pairs import PairSet
from s2m_retrieval.training.unpaired import (FakePool, UnpairedMethod, UnpairedNets, UnpairedTrainConfig, adam,
                                             build_networks, lsgan_d, lsgan_g, train_unpaired)

CYCLEGAN_FILE = "cyclegan.pt"
KIND = "cyclegan"


@dataclass(frozen=True)
class CycleGANTrainConfig(UnpairedTrainConfig):
    """CycleGAN's weights: identity is a share of the cycle weight (lambda_identity 0.5); `pool` past fakes."""

    identity: float = 0.5
    pool: int = 50

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.pool < 0:
            raise BadInputError("CycleGAN needs pool >= 0")
        check_rates("CycleGAN", {}, {"identity": self.identity})


def cyclegan_config_for(resolution: int, **overrides) -> CycleGANConfig:
    """The generators for `resolution`: CycleGAN's 64 base channels at 256 px, a quarter of the side below (16 at
    64 px, what two CPU cores train); 6 residual blocks below 256 px, 9 from 256 px (CycleGAN's choice)."""
    base = overrides.pop("base_channels", min(64, resolution // 4))
    n_res = overrides.pop("n_res", 6 if resolution < 256 else 9)
    return CycleGANConfig(img_resolution=resolution, base_channels=base, n_res=n_res, **overrides)


def patchgan_config_for(resolution: int, **overrides) -> PatchGANConfig:
    """The image domain's PatchGAN: 34 px patches below 128 px, CycleGAN's 70 px from 128 px up; its 64 base
    channels from 128 px, half the side below (32 at 64 px)."""
    base = overrides.pop("base_channels", min(64, resolution // 2))
    layers = overrides.pop("layers", 2 if resolution < 128 else 3)
    return PatchGANConfig(img_resolution=resolution, base_channels=base, layers=layers, **overrides)


def train_cyclegan(pairs: PairSet, out_dir: str | os.PathLike, config: CycleGANConfig | None = None,
                   d_config: PatchGANConfig | None = None, train_config: CycleGANTrainConfig = CycleGANTrainConfig(),
                   device: str | torch.device = "cpu", resume: bool = True,
                   progress: Callable[[TrainProgress], None] | None = None) -> Path:
    """Train both generators and both PatchGANs (d_config is the image one; the sketch one reads 1 channel) on
    unpaired halves of `pairs`; return cyclegan.pt's path (latest.pt resumes)."""
    tc = train_config
    device = torch.device(device)
    cfg, d_cfg, model, D_image, D_sketch = build_networks(
        pairs, KIND, "CycleGAN", config, d_config, cyclegan_config_for, patchgan_config_for, tc.seed, device,
        CycleGAN, PatchGAN)
    res = cfg.img_resolution
    pool_image = FakePool(tc.pool, (cfg.image_channels, res, res)).to(device)
    pool_sketch = FakePool(tc.pool, (cfg.sketch_channels, res, res)).to(device)
    opt_G, opt_D = adam([model], tc), adam([D_image, D_sketch], tc)

    def step(sketch: torch.Tensor, image: torch.Tensor) -> tuple[float, dict]:
        grey = grey_rgb(sketch, cfg.image_channels)
        fake_image, fake_sketch = model.to_image(grey), model.to_sketch(image)
        # G: fool both Ds, come back through the other generator, leave the target domain's own inputs unchanged.
        D_image.requires_grad_(False)
        D_sketch.requires_grad_(False)
        adv = lsgan_g(D_image(fake_image)) + lsgan_g(D_sketch(fake_sketch))
        cyc_sketch = F.l1_loss(model.to_sketch(fake_image), sketch)
        cyc_image = F.l1_loss(model.to_image(grey_rgb(fake_sketch, cfg.image_channels)), image)
        idt = F.l1_loss(model.to_image(image), image) + F.l1_loss(model.to_sketch(grey), sketch)
        opt_G.zero_grad(set_to_none=True)
        (tc.adv * adv + tc.cycle * (cyc_sketch + cyc_image) + tc.identity * tc.cycle * idt).backward()
        opt_G.step()
        # D: reals against fakes from the history; CycleGAN halves D's loss to slow it down.
        D_image.requires_grad_(True)
        D_sketch.requires_grad_(True)
        d_loss = 0.5 * (lsgan_d(D_image(image), D_image(pool_image(fake_image)))
                        + lsgan_d(D_sketch(sketch), D_sketch(pool_sketch(fake_sketch))))
        opt_D.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_D.step()
        cyc = 0.5 * (cyc_sketch.item() + cyc_image.item())
        return cyc, {"cycle_sketch": cyc_sketch.item(), "cycle_image": cyc_image.item(), "identity": idt.item(),
                     "adv": adv.item(), "d": d_loss.item()}

    nets = UnpairedNets(KIND, CYCLEGAN_FILE, model,
                        {"G": model, "D_image": D_image, "D_sketch": D_sketch, "pool_image": pool_image,
                         "pool_sketch": pool_sketch},
                        {"G": opt_G, "D": opt_D}, {"translator": cfg, "discriminator": d_cfg, "pool": tc.pool}, step,
                        {"discriminator": config_to_dict(d_cfg)})
    return train_unpaired(nets, pairs, out_dir, tc, device, resume, progress)


METHOD = UnpairedMethod(KIND, CYCLEGAN_FILE, cyclegan_config_for, patchgan_config_for, CycleGANTrainConfig,
                        train_cyclegan)
