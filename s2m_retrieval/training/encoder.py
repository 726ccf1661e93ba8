"""Training of W+ encoders against a frozen G (sketch E; the inverter reuses the loop): L2, perceptual, W-norm, D."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from s2m_retrieval.networks.checkpoint import config_to_dict, save_checkpoint
from s2m_retrieval.errors import BadInputError
from s2m_retrieval.networks.encoders import (Encoder, EncoderConfig, LatentDiscriminator, LatentDiscriminatorConfig,
                                             encoder_config_for)
from s2m_retrieval.networks.stylegan2 import Generator
from s2m_retrieval.model.inversion import average_image, encode_iterations
from s2m_retrieval.model.perceptual import PerceptualDistance
from s2m_retrieval.training.gan import save_image_grid
from s2m_retrieval.training.latent import (start_run, check_finite, SAMPLE_ROWS, TrainProgress, adversarial_loss,
                                           as_float, check_rates, check_steps, delta_loss, finish_step, latent_d_step,
                                           model_version, out_path, pairs_data, real_w, reconstruction_loss,
                                           resolve_perceptual, run_record, save_state, sketch_rgb, wnorm_loss)
from s2m_retrieval.training.pairs import PairSet

ENCODER_FILE = "encoder.pt"
DISCRIMINATOR_FILE = "latent_discriminator.pt"

# A batch source: data generator -> (encoder input [B, C, R, R], target image [B, 3, R, R]), floats in [-1, 1].
DrawBatch = Callable[[torch.Generator], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class EncoderTrainConfig:
    """Hyper-parameters of E / inverter training; weights follow pSp and e4e (see the report in the README)."""

    steps: int = 10000
    batch: int = 16
    lr: float = 5e-4                 # Adam; higher than pSp's 1e-4: a small net trained from scratch, short runs
    d_lr: float = 1e-4
    l2: float = 1.0                  # pSp / e4e
    perceptual_weight: float = 0.8   # pSp / e4e lpips_lambda
    wnorm: float = 0.005             # pSp's sketch-to-image w_norm_lambda
    adv: float = 0.1                 # e4e's w_discriminator_lambda; 0 trains E alone (no D)
    delta_reg: float = 2e-4          # e4e's delta_norm_lambda
    r1_gamma: float = 10.0           # e4e's R1 on the latent D
    r1_interval: int = 16
    progressive_every: int = 0       # e4e progressive deltas: one more W+ entry freed every N steps; 0 = all at once
    iterations: int = 1              # ReStyle iterations per batch (needs extra_channels); the inverter uses 3
    perceptual: str = "seg"
    xflip: bool = True               # the throat is near-symmetric: mirrored pairs are valid pairs
    seed: int = 0
    snapshot_every: int = 500
    sample_every: int = 500

    def __post_init__(self) -> None:
        check_steps(self.steps, self.batch, self.snapshot_every, self.sample_every)
        if self.iterations < 1 or self.r1_interval < 1 or self.progressive_every < 0:
            raise BadInputError("iterations and r1_interval must be >= 1, progressive_every >= 0")
        check_rates("encoder training", {"lr": self.lr, "d_lr": self.d_lr},
                    {"l2": self.l2, "perceptual_weight": self.perceptual_weight, "wnorm": self.wnorm, "adv": self.adv,
                     "delta_reg": self.delta_reg, "r1_gamma": self.r1_gamma})


def active_deltas(tc: EncoderTrainConfig, step: int) -> int | None:
    """How many e4e deltas train at `step` (None: all)."""
    return None if tc.progressive_every == 0 else step // tc.progressive_every


def fit_w_encoder(kind: str, draw: DrawBatch, fixed: tuple[torch.Tensor, torch.Tensor], G: Generator,
                  out_dir: str | os.PathLike, enc_cfg: EncoderConfig, d_cfg: LatentDiscriminatorConfig | None,
                  tc: EncoderTrainConfig, perceptual: PerceptualDistance | None, device: str | torch.device,
                  resume: bool, progress: Callable[[TrainProgress], None] | None, data_info: dict,
                  data: dict) -> Path:
    """The shared loop: train an Encoder (and D_latent when tc.adv > 0) against frozen G; return the checkpoint.
    `data_info` goes into its meta, `data` (latent.data_record) into latest.pt."""
    device = torch.device(device)
    if (enc_cfg.img_resolution, enc_cfg.num_ws, enc_cfg.w_dim) != \
            (G.config.img_resolution, G.num_ws, G.config.w_dim):
        raise BadInputError(f"encoder config ({enc_cfg.img_resolution} px, {enc_cfg.num_ws} x {enc_cfg.w_dim}) "
                            f"does not match the generator ({G.config.img_resolution} px, "
                            f"{G.num_ws} x {G.config.w_dim})")
    if tc.iterations > 1 and not enc_cfg.extra_channels:
        raise BadInputError("ReStyle iterations > 1 need an encoder config with extra_channels=3")
    out_dir = out_path(out_dir)
    G = G.to(device).eval().requires_grad_(False)
    g_version = model_version(G)
    perceptual = resolve_perceptual(perceptual, tc.perceptual, device)
    d_cfg = d_cfg or LatentDiscriminatorConfig(w_dim=enc_cfg.w_dim)

    torch.manual_seed(tc.seed)
    data_gen = torch.Generator().manual_seed(tc.seed)
    E = Encoder(enc_cfg).to(device)
    E.w_avg.copy_(G.w_avg)
    opt_E = torch.optim.Adam(E.parameters(), lr=tc.lr)
    networks, optimizers = {"E": E}, {"E": opt_E}
    D = None
    if tc.adv > 0:
        D = LatentDiscriminator(d_cfg).to(device).requires_grad_(False)
        # Lazy R1 rescaling of lr and momentum, as StyleGAN2 does for its image D.
        c = tc.r1_interval / (tc.r1_interval + 1)
        opt_D = torch.optim.Adam(D.parameters(), lr=tc.d_lr * c, betas=(0.9 ** c, 0.999 ** c))
        networks["D"], optimizers["D"] = D, opt_D
    configs = {"encoder": enc_cfg, "discriminator": d_cfg if D is not None else None, "generator": g_version,
               **run_record(tc, data)}
    state_path, step, curves, report = start_run(out_dir, kind, networks, optimizers, configs, data_gen,
                                                 device, resume, progress, f"train {kind}", tc.steps)
    avg_image = average_image(G, E.w_avg) if enc_cfg.extra_channels else None
    meta = {"generator_version": g_version, "perceptual": perceptual.version, "seed": tc.seed,
            "train_config": config_to_dict(tc), "data": data_info}

    def write_samples() -> None:
        x, target = (t.to(device) for t in fixed)
        columns = [sketch_rgb(x)] if x.shape[1] == 1 else []
        columns += [x_hat for _, x_hat in encode_iterations(E, G, x, tc.iterations)] + [target]
        sheet = torch.stack(columns, dim=1).flatten(0, 1)                # rows of (input | x_hat per iter | target)
        save_image_grid(sheet, out_dir / "samples" / f"{kind}{step:07d}.png", len(columns))

    def snapshot(final: bool) -> Path:
        save_state(state_path, kind, step, networks, optimizers, configs, data_gen, device)
        if not final:
            return state_path
        if D is not None:
            save_checkpoint(out_dir / DISCRIMINATOR_FILE, kind="latent_discriminator", config=d_cfg,
                            state_dict=D.state_dict(), meta={**meta, "step": step, "trained_with": kind})
        return save_checkpoint(out_dir / (ENCODER_FILE if kind == "encoder" else f"{kind}.pt"), kind=kind,
                               config=enc_cfg, state_dict=E.state_dict(), w_avg=E.w_avg,
                               meta={**meta, "step": step, "with_latent_discriminator": D is not None})

    while step < tc.steps:
        t0 = time.perf_counter()
        x, target = (t.to(device) for t in draw(data_gen))
        active = active_deltas(tc, step)
        w, recon = None, (avg_image.expand(x.shape[0], -1, -1, -1) if avg_image is not None else None)
        opt_E.zero_grad(set_to_none=True)
        # ReStyle: a loss and a backward per iteration, the previous iteration's output detached.
        for _ in range(tc.iterations):
            w_plus = E(x, recon, w_start=w, active_deltas=active)
            x_hat = G(w_plus, noise_mode="const")
            loss, terms = reconstruction_loss(x_hat, target, perceptual, tc.l2, tc.perceptual_weight)
            fitted = loss.item()
            if tc.wnorm > 0:
                loss = loss + tc.wnorm * wnorm_loss(w_plus, E.w_avg)
            if tc.delta_reg > 0:
                loss = loss + tc.delta_reg * delta_loss(w_plus)
            if D is not None:
                adv = adversarial_loss(D, w_plus)
                loss = loss + tc.adv * adv
                terms["adv"] = adv.item()
            (loss / tc.iterations).backward()
            w = w_plus.detach()
            recon = x_hat.detach() if avg_image is not None else None
        opt_E.step()
        if D is not None:
            fake = w.reshape(-1, enc_cfg.w_dim)
            terms.update(latent_d_step(D, opt_D, real_w(G, fake.shape[0], device), fake,
                                       tc.r1_gamma, tc.r1_interval, step))
        step += 1
        check_finite(kind, step, fitted)
        report(TrainProgress(step, tc.steps, fitted, terms, time.perf_counter() - t0))
        finish_step(step, tc.steps, tc.sample_every, tc.snapshot_every, write_samples, snapshot, curves)
    return snapshot(final=True)


def _flip(gen: torch.Generator, *tensors: torch.Tensor) -> list[torch.Tensor]:
    flip = (torch.rand(tensors[0].shape[0], generator=gen) < 0.5).view(-1, 1, 1, 1)
    return [torch.where(flip, t.flip(3), t) for t in tensors]


def sketch_batches(pairs: PairSet, batch: int, xflip: bool) -> DrawBatch:
    """Random (sketch variant [B, 1, R, R], image [B, 3, R, R]) batches from a PairSet."""
    def draw(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(len(pairs), (batch,), generator=gen)
        var = torch.randint(pairs.sketches.shape[1], (batch,), generator=gen)
        sketch, image = as_float(pairs.sketches[idx, var][:, None]), as_float(pairs.images[idx])
        return tuple(_flip(gen, sketch, image)) if xflip else (sketch, image)
    return draw


def train_encoder(pairs: PairSet, G: Generator, out_dir: str | os.PathLike,
                  encoder_config: EncoderConfig | None = None, d_config: LatentDiscriminatorConfig | None = None,
                  train_config: EncoderTrainConfig = EncoderTrainConfig(),
                  perceptual: PerceptualDistance | None = None, device: str | torch.device = "cpu",
                  resume: bool = True, progress: Callable[[TrainProgress], None] | None = None) -> Path:
    """Train the sketch encoder E (and D_latent) on (sketch, image) pairs with G frozen; return encoder.pt's path."""
    if pairs.resolution != G.config.img_resolution:
        raise BadInputError(f"pairs are {pairs.resolution} px, the generator makes {G.config.img_resolution} px; "
                            "build the pairs at the generator's resolution")
    enc_cfg = encoder_config or encoder_config_for(G.config, in_channels=1)
    if enc_cfg.in_channels != 1:
        raise BadInputError(f"the sketch encoder takes 1-channel sketches, its config has {enc_cfg.in_channels}")
    n = min(SAMPLE_ROWS, len(pairs))
    fixed = (as_float(pairs.sketches[:n, 0][:, None]), as_float(pairs.images[:n]))
    info = {**pairs.info, "num_pairs": len(pairs)}
    return fit_w_encoder("encoder", sketch_batches(pairs, train_config.batch, train_config.xflip), fixed, G,
                         out_dir, enc_cfg, d_config, train_config, perceptual, device, resume, progress, info,
                         pairs_data(pairs))
