"""Training of the U-GAT-IT baseline on unpaired sketches and images, its four losses as Kim et al.: adversarial
(LSGAN on the global and local critics' patch logits and CAM logits), cycle L1, identity L1 and the generators'
CAM loss (their attention classifier tells the source domain's features from the target's)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from s2m_retrieval.networks.checkpoint import config_to_dict
from s2m_retrieval.networks.cyclegan import grey_rgb
from s2m_retrieval.networks.ugatit import (UGATIT, UGATITConfig, UGATITDiscriminator, UGATITDiscriminatorConfig,
                                           clip_rho)
from s2m_retrieval.training.latent import TrainProgress, check_rates
from s2m_retrieval.training.pairs import PairSet
from s2m_retrieval.training.unpaired import (UnpairedMethod, UnpairedNets, UnpairedTrainConfig, adam,
                                             build_networks, lsgan_d, lsgan_g, train_unpaired)

UGATIT_FILE = "ugatit.pt"
KIND = "ugatit"


@dataclass(frozen=True)
class UGATITTrainConfig(UnpairedTrainConfig):
    """U-GAT-IT's settings: Adam 1e-4 with weight decay 1e-4; cycle and identity x 10, CAM x 1000."""

    lr: float = 1e-4
    weight_decay: float = 1e-4
    identity: float = 10.0
    cam: float = 1000.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_rates("U-GAT-IT", {}, {"weight_decay": self.weight_decay, "identity": self.identity, "cam": self.cam})


def ugatit_config_for(resolution: int, **overrides) -> UGATITConfig:
    """The generators for `resolution`: the authors' 64 base channels at 256 px, a quarter of the side below (16 at
    64 px); 4 residual blocks each side below 256 px, 6 from 256 px (the authors')."""
    base = overrides.pop("base_channels", min(64, resolution // 4))
    n_res = overrides.pop("n_res", 4 if resolution < 256 else 6)
    return UGATITConfig(img_resolution=resolution, base_channels=base, n_res=n_res, **overrides)


def ugatit_d_config_for(resolution: int, **overrides) -> UGATITDiscriminatorConfig:
    """The image domain's critics: the global one down to 8 px (5 downs at 256 px as the authors'), the local one
    two downs fewer (at least 2); 64 base channels from 128 px, half the side below."""
    base = overrides.pop("base_channels", min(64, resolution // 2))
    global_downs = overrides.pop("global_downs", int(math.log2(resolution)) - 3)
    local_downs = overrides.pop("local_downs", max(2, global_downs - 2))
    return UGATITDiscriminatorConfig(img_resolution=resolution, base_channels=base, global_downs=global_downs,
                                     local_downs=local_downs, **overrides)


def _maps(outputs: list[tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
    """The critics' patch logits and CAM logits as one list: each is pushed to 1 or 0 by LSGAN alike."""
    return [t for pair in outputs for t in pair]


def _cam_loss(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    # A generator's CAM logits say 1 on the domain it translates from and 0 on its own output domain's images.
    return (F.binary_cross_entropy_with_logits(source, torch.ones_like(source))
            + F.binary_cross_entropy_with_logits(target, torch.zeros_like(target)))


def train_ugatit(pairs: PairSet, out_dir: str | os.PathLike, config: UGATITConfig | None = None,
                 d_config: UGATITDiscriminatorConfig | None = None,
                 train_config: UGATITTrainConfig = UGATITTrainConfig(), device: str | torch.device = "cpu",
                 resume: bool = True, progress: Callable[[TrainProgress], None] | None = None) -> Path:
    """Train both generators and both domains' critic pairs (d_config is the image one's; the sketch one reads 1
    channel) on unpaired halves of `pairs`; return ugatit.pt's path (latest.pt resumes)."""
    tc = train_config
    device = torch.device(device)
    cfg, d_cfg, model, D_image, D_sketch = build_networks(
        pairs, KIND, "U-GAT-IT", config, d_config, ugatit_config_for, ugatit_d_config_for, tc.seed, device,
        UGATIT, UGATITDiscriminator)
    opt_G = adam([model], tc, tc.weight_decay)
    opt_D = adam([D_image, D_sketch], tc, tc.weight_decay)

    def step(sketch: torch.Tensor, image: torch.Tensor) -> tuple[float, dict]:
        grey = grey_rgb(sketch, cfg.image_channels)
        fake_image, cam_to_image, _ = model.to_image(grey)
        fake_sketch, cam_to_sketch, _ = model.to_sketch(image)
        same_image, cam_image_image, _ = model.to_image(image)
        same_sketch, cam_sketch_sketch, _ = model.to_sketch(grey)
        cyc_sketch = F.l1_loss(model.to_sketch(fake_image)[0], sketch)
        cyc_image = F.l1_loss(model.to_image(grey_rgb(fake_sketch, cfg.image_channels))[0], image)
        identity = F.l1_loss(same_image, image) + F.l1_loss(same_sketch, sketch)
        cam = _cam_loss(cam_to_image, cam_image_image) + _cam_loss(cam_to_sketch, cam_sketch_sketch)
        D_image.requires_grad_(False)
        D_sketch.requires_grad_(False)
        adv = lsgan_g(_maps(D_image(fake_image))) + lsgan_g(_maps(D_sketch(fake_sketch)))
        opt_G.zero_grad(set_to_none=True)
        (tc.adv * adv + tc.cycle * (cyc_sketch + cyc_image) + tc.identity * identity + tc.cam * cam).backward()
        opt_G.step()
        clip_rho(model)
        # The critics on this step's translations (detached): one G forward serves both updates.
        D_image.requires_grad_(True)
        D_sketch.requires_grad_(True)
        d_loss = (lsgan_d(_maps(D_image(image)), _maps(D_image(fake_image.detach())))
                  + lsgan_d(_maps(D_sketch(sketch)), _maps(D_sketch(fake_sketch.detach()))))
        opt_D.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_D.step()
        cyc = 0.5 * (cyc_sketch.item() + cyc_image.item())
        return cyc, {"cycle_sketch": cyc_sketch.item(), "cycle_image": cyc_image.item(),
                     "identity": identity.item(), "cam": cam.item(), "adv": adv.item(), "d": d_loss.item()}

    nets = UnpairedNets(KIND, UGATIT_FILE, model, {"G": model, "D_image": D_image, "D_sketch": D_sketch},
                        {"G": opt_G, "D": opt_D}, {"translator": cfg, "discriminator": d_cfg}, step,
                        {"discriminator": config_to_dict(d_cfg)})
    return train_unpaired(nets, pairs, out_dir, tc, device, resume, progress)


METHOD = UnpairedMethod(KIND, UGATIT_FILE, ugatit_config_for, ugatit_d_config_for, UGATITTrainConfig, train_ugatit)
