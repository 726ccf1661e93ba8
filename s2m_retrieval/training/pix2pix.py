"""Training of the pix2pix baseline on the same (sketch, image) pairs as E: L1 (lambda 100) + conditional GAN."""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from s2m_retrieval.networks.checkpoint import config_to_dict, save_checkpoint
from s2m_retrieval.errors import BadInputError
from s2m_retrieval.networks.pix2pix import load_pix2pix  # noqa: F401  (re-exported)
from s2m_retrieval.networks.pix2pix import PatchDiscriminator, PatchDiscriminatorConfig, Pix2PixConfig, UNetGenerator
from s2m_retrieval.training.encoder import sketch_batches
from s2m_retrieval.training.gan import save_image_grid
from s2m_retrieval.training.latent import (start_run, check_finite, SAMPLE_ROWS, TrainProgress, finish_step, as_float,
                                           check_rates, check_steps, out_path, pairs_data, run_record, save_state,
                                           sketch_rgb)
from s2m_retrieval.training.pairs import PairSet

PIX2PIX_FILE = "pix2pix.pt"
KIND = "pix2pix"


@dataclass(frozen=True)
class Pix2PixTrainConfig:
    """Hyper-parameters of pix2pix training; the paper's Adam (2e-4, beta1 0.5) and lambda_L1 = 100."""

    steps: int = 5000
    batch: int = 16
    lr: float = 2e-4
    beta1: float = 0.5
    l1: float = 100.0
    adv: float = 1.0
    xflip: bool = True               # same augmentation as E's pairs: the comparison stays fair
    seed: int = 0
    snapshot_every: int = 500
    sample_every: int = 500

    def __post_init__(self) -> None:
        check_steps(self.steps, self.batch, self.snapshot_every, self.sample_every)
        if not 0 <= self.beta1 < 1:
            raise BadInputError("pix2pix needs 0 <= beta1 < 1")
        check_rates("pix2pix", {"lr": self.lr}, {"l1": self.l1, "adv": self.adv})


def pix2pix_config_for(resolution: int, **overrides) -> Pix2PixConfig:
    """A U-Net config for `resolution`: downs to 1x1 (capped at 8 levels, pix2pix's 256 px U-Net)."""
    depth = overrides.pop("depth", min(8, int(math.log2(resolution))))
    return Pix2PixConfig(img_resolution=resolution, depth=depth, **overrides)


def patch_config_for(resolution: int, **overrides) -> PatchDiscriminatorConfig:
    """A PatchGAN config for `resolution`: 34 px patches below 128 px, pix2pix's 70 px from 128 px up."""
    layers = overrides.pop("layers", 2 if resolution < 128 else 3)
    return PatchDiscriminatorConfig(img_resolution=resolution, layers=layers, **overrides)


def train_pix2pix(pairs: PairSet, out_dir: str | os.PathLike, config: Pix2PixConfig | None = None,
                  d_config: PatchDiscriminatorConfig | None = None,
                  train_config: Pix2PixTrainConfig = Pix2PixTrainConfig(), device: str | torch.device = "cpu",
                  resume: bool = True, progress: Callable[[TrainProgress], None] | None = None) -> Path:
    """Train the U-Net and PatchGAN on (sketch, image) pairs; return pix2pix.pt's path (latest.pt resumes)."""
    tc = train_config
    device = torch.device(device)
    cfg = config or pix2pix_config_for(pairs.resolution)
    d_cfg = d_config or patch_config_for(pairs.resolution)
    if cfg.img_resolution != pairs.resolution or d_cfg.img_resolution != pairs.resolution:
        raise BadInputError(f"pairs are {pairs.resolution} px, the pix2pix configs {cfg.img_resolution} and "
                            f"{d_cfg.img_resolution} px")
    if (cfg.in_channels, cfg.out_channels) != (1, 3) or d_cfg.in_channels != 4:
        raise BadInputError("pix2pix maps 1-channel sketches to RGB; its PatchGAN reads both (4 channels)")
    out_dir = out_path(out_dir)
    torch.manual_seed(tc.seed)
    data_gen = torch.Generator().manual_seed(tc.seed)
    net, D = UNetGenerator(cfg).to(device), PatchDiscriminator(d_cfg).to(device)
    opt_G = torch.optim.Adam(net.parameters(), lr=tc.lr, betas=(tc.beta1, 0.999))
    opt_D = torch.optim.Adam(D.parameters(), lr=tc.lr, betas=(tc.beta1, 0.999))
    networks, optimizers = {"G": net, "D": D}, {"G": opt_G, "D": opt_D}
    configs = {"generator": cfg, "discriminator": d_cfg, **run_record(tc, pairs_data(pairs))}
    state_path, step, curves, report = start_run(out_dir, KIND, networks, optimizers, configs, data_gen,
                                                 device, resume, progress, "train pix2pix", tc.steps)
    draw = sketch_batches(pairs, tc.batch, tc.xflip)
    n = min(SAMPLE_ROWS, len(pairs))
    fixed = (as_float(pairs.sketches[:n, 0][:, None]).to(device), as_float(pairs.images[:n]).to(device))
    meta = {"seed": tc.seed, "train_config": config_to_dict(tc), "discriminator": config_to_dict(d_cfg),
            "data": {**pairs.info, "num_pairs": len(pairs)}}

    def write_samples() -> None:
        sketch, target = fixed
        net.eval()
        with torch.no_grad():
            columns = [sketch_rgb(sketch), net(sketch), target]         # sketch | pix2pix output | target
        net.train()
        save_image_grid(torch.stack(columns, dim=1).flatten(0, 1), out_dir / "samples" / f"{KIND}{step:07d}.png", 3)

    def snapshot(final: bool) -> Path:
        save_state(state_path, KIND, step, networks, optimizers, configs, data_gen, device)
        if not final:
            return state_path
        return save_checkpoint(out_dir / PIX2PIX_FILE, kind=KIND, config=cfg, state_dict=net.state_dict(),
                               meta={**meta, "step": step})

    net.train()
    D.train()
    while step < tc.steps:
        t0 = time.perf_counter()
        sketch, target = (t.to(device) for t in draw(data_gen))
        fake = net(sketch)
        # D: real (sketch, image) pairs against (sketch, U-Net output); pix2pix halves D's loss to slow it down.
        D.requires_grad_(True)
        d_loss = 0.5 * (F.softplus(-D(sketch, target)).mean() + F.softplus(D(sketch, fake.detach())).mean())
        opt_D.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_D.step()
        D.requires_grad_(False)
        adv = F.softplus(-D(sketch, fake)).mean()
        l1 = (fake - target).abs().mean()
        opt_G.zero_grad(set_to_none=True)
        (tc.adv * adv + tc.l1 * l1).backward()
        opt_G.step()
        step += 1
        fitted = l1.item()
        check_finite("pix2pix", step, fitted, "L1")
        terms = {"l1": fitted, "adv": adv.item(), "d": d_loss.item()}
        report(TrainProgress(step, tc.steps, fitted, terms, time.perf_counter() - t0))
        finish_step(step, tc.steps, tc.sample_every, tc.snapshot_every, write_samples, snapshot, curves)
    return snapshot(final=True)
