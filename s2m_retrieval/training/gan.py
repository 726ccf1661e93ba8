"""GAN training of G: non-saturating loss, lazy R1, EMA generator, DiffAugment, sample grids, resumable snapshots."""

from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from s2m_retrieval.networks.checkpoint import config_to_dict, save_checkpoint
from s2m_retrieval.errors import BadInputError, CheckpointError
from s2m_retrieval.networks.stylegan2 import Discriminator, DiscriminatorConfig, Generator, GeneratorConfig
from s2m_retrieval.training.augment import POLICIES, diff_augment
from s2m_retrieval.training.curves import TrainCurves
from s2m_retrieval.training.latent import check_kind, check_out_dir, check_replaced, finish_step
from s2m_retrieval.training.state import STATE_FORMAT, atomic_save, load_train_state, rng_state, set_rng_state

STATE_FILE = "latest.pt"
GENERATOR_FILE = "generator.pt"
SAMPLE_GRID = (8, 4)  # columns, rows of the fixed-seed sample sheets


@dataclass(frozen=True)
class GanTrainConfig:
    """Training hyper-parameters; snapshot_every and sample_every count optimizer steps."""

    batch: int = 32
    g_lr: float = 0.0025
    d_lr: float = 0.0025
    betas: tuple[float, float] = (0.0, 0.99)
    r1_gamma: float = 0.05
    r1_interval: int = 16
    style_mixing_prob: float = 0.9
    ema_kimg: float = 10.0
    ema_rampup: float | None = 0.05
    total_kimg: float = 500.0
    seed: int = 0
    snapshot_every: int = 500
    sample_every: int = 250
    augment: tuple[str, ...] = ("color", "translation", "cutout")
    xflip: bool = True

    def __post_init__(self) -> None:
        if min(self.batch, self.r1_interval, self.snapshot_every, self.sample_every) < 1:
            raise BadInputError("batch, r1_interval, snapshot_every and sample_every must be >= 1")
        if self.total_kimg < 0 or self.r1_gamma < 0 or self.ema_kimg <= 0 or min(self.g_lr, self.d_lr) <= 0:
            raise BadInputError("total_kimg and r1_gamma must be >= 0; ema_kimg and learning rates > 0")
        unknown = set(self.augment) - set(POLICIES)
        if unknown:
            raise BadInputError(f"unknown augmentation {sorted(unknown)}; choose from {list(POLICIES)}")


@dataclass(frozen=True)
class TrainProgress:
    """What the loop reports after each step."""

    step: int
    total_steps: int
    kimg: float
    loss_g: float
    loss_d: float
    r1: float | None
    sec_per_step: float


def discriminator_config_for(g_config: GeneratorConfig) -> DiscriminatorConfig:
    """The discriminator matching a generator's resolution, channels and widths."""
    return DiscriminatorConfig(img_resolution=g_config.img_resolution, img_channels=g_config.img_channels,
                               channel_base=g_config.channel_base, channel_max=g_config.channel_max)


def check_images(images: torch.Tensor, g_config: GeneratorConfig) -> torch.Tensor:
    """Check a training tensor [N, C, res, res], uint8 (kept as is, 4x smaller) or float in [-1, 1]."""
    res, ch = g_config.img_resolution, g_config.img_channels
    if images.ndim != 4 or tuple(images.shape[1:]) != (ch, res, res) or images.shape[0] == 0:
        raise BadInputError(f"training images must be a non-empty [N, {ch}, {res}, {res}] tensor, "
                            f"got {list(images.shape)}; resize the archive to {res} px")
    if images.dtype == torch.uint8:
        return images
    if not images.is_floating_point():
        raise BadInputError(f"training images must be uint8 or float, got {images.dtype}")
    lo, hi = images.min().item(), images.max().item()
    if lo < -1.01 or hi > 1.01 or not math.isfinite(lo + hi):
        raise BadInputError(f"float training images must lie in [-1, 1], got [{lo:.3g}, {hi:.3g}]")
    return images.float()


def _as_float(batch: torch.Tensor) -> torch.Tensor:
    return batch.float() / 127.5 - 1.0 if batch.dtype == torch.uint8 else batch


def save_image_grid(images: torch.Tensor, path: str | os.PathLike, cols: int) -> Path:
    """Write images [N, C, H, W] in [-1, 1] as one PNG sheet with `cols` columns."""
    from PIL import Image

    n, c, h, w = images.shape
    rows = math.ceil(n / cols)
    pix = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    sheet = torch.zeros(rows * cols, c, h, w, dtype=torch.uint8)
    sheet[:n] = pix
    sheet = sheet.view(rows, cols, c, h, w).permute(0, 3, 1, 4, 2).reshape(rows * h, cols * w, c)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sheet.squeeze(-1).numpy() if c == 1 else sheet.numpy()).save(path)
    return path


def _mixed_w_plus(G: Generator, n: int, mixing_prob: float, device: torch.device) -> torch.Tensor:
    # Style mixing keeps neighbouring W+ entries from being relied on jointly, which per-layer retrieval needs.
    z = torch.randn(n, G.config.z_dim, device=device)
    ws = G.mapping(z, update_w_avg=True)
    if mixing_prob > 0 and torch.rand([]).item() < mixing_prob:
        cutoff = int(torch.randint(1, G.num_ws, []).item())
        ws2 = G.mapping(torch.randn_like(z), update_w_avg=True)
        ws = torch.cat([ws[:, :cutoff], ws2[:, cutoff:]], dim=1)
    return ws


def _r1_penalty(D: Discriminator, reals: torch.Tensor, policy: tuple[str, ...]) -> torch.Tensor:
    reals = reals.detach().requires_grad_(True)
    logits = D(diff_augment(reals, policy))
    (grad,) = torch.autograd.grad(logits.sum(), reals, create_graph=True)
    return grad.square().sum(dim=(1, 2, 3)).mean()


@torch.no_grad()
def _ema_update(G_ema: Generator, G: Generator, beta: float) -> None:
    for p_ema, p in zip(G_ema.parameters(), G.parameters()):
        p_ema.lerp_(p, 1.0 - beta)
    for b_ema, b in zip(G_ema.buffers(), G.buffers()):
        b_ema.copy_(b)


def _default_progress(total_steps: int, start: int) -> Callable[[TrainProgress], None]:
    from tqdm import tqdm

    bar = tqdm(total=total_steps, initial=start, unit="step", desc="train G", dynamic_ncols=True)

    def report(p: TrainProgress) -> None:
        bar.update(p.step - bar.n)
        bar.set_postfix(kimg=f"{p.kimg:.1f}", G=f"{p.loss_g:.3f}", D=f"{p.loss_d:.3f}", refresh=False)
        if p.step >= p.total_steps:
            bar.close()

    return report


def train_generator(images: torch.Tensor, out_dir: str | os.PathLike, g_config: GeneratorConfig = GeneratorConfig(),
                    d_config: DiscriminatorConfig | None = None, train_config: GanTrainConfig = GanTrainConfig(),
                    device: str | torch.device = "cpu", resume: bool = True,
                    progress: Callable[[TrainProgress], None] | None = None) -> Path:
    """Train G on images [N, C, res, res]; write latest.pt, samples/ and the EMA generator; return its path."""
    tc = train_config
    device = torch.device(device)
    d_config = d_config or discriminator_config_for(g_config)
    if (d_config.img_resolution, d_config.img_channels) != (g_config.img_resolution, g_config.img_channels):
        raise BadInputError("discriminator and generator configs disagree on resolution or channels")
    data = check_images(images, g_config)
    out_dir = Path(out_dir)
    check_out_dir(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state_path = out_dir / STATE_FILE

    torch.manual_seed(tc.seed)
    data_gen = torch.Generator().manual_seed(tc.seed)
    G = Generator(g_config).to(device).train()
    D = Discriminator(d_config).to(device).train()
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    opt_G = torch.optim.Adam(G.parameters(), lr=tc.g_lr, betas=tc.betas)
    # Lazy R1: the regularized D steps are fewer, so lr and momentum are rescaled as in StyleGAN2.
    c = tc.r1_interval / (tc.r1_interval + 1)
    opt_D = torch.optim.Adam(D.parameters(), lr=tc.d_lr * c, betas=(tc.betas[0] ** c, tc.betas[1] ** c))
    step, nimg = 0, 0
    if not resume and state_path.exists():
        check_replaced(state_path, "generator")
    if resume and state_path.exists():
        state = load_train_state(state_path)
        check_kind(state, state_path, "generator")
        if state["g_config"] != config_to_dict(g_config) or state["d_config"] != config_to_dict(d_config):
            raise CheckpointError(f"{state_path} was trained with other network configs; start over (--fresh, or "
                                  "resume=False in Python) or train into a new --out")
        G.load_state_dict(state["G"])
        G_ema.load_state_dict(state["G_ema"])
        D.load_state_dict(state["D"])
        opt_G.load_state_dict(state["opt_G"])
        opt_D.load_state_dict(state["opt_D"])
        set_rng_state(state["rng"], data_gen, device)
        step, nimg = state["step"], state["nimg"]
    else:
        cols, rows = SAMPLE_GRID
        save_image_grid(_as_float(data[:cols * rows]), out_dir / "samples" / "reals.png", cols)

    fixed_z = None
    total_steps = step + max(0, math.ceil((tc.total_kimg * 1000 - nimg) / tc.batch))
    curves = TrainCurves(out_dir, step, {"G": opt_G, "D": opt_D})
    report = curves.wrap(progress or _default_progress(total_steps, step))

    def snapshot() -> Path:
        atomic_save({"format": STATE_FORMAT, "step": step, "nimg": nimg,
                      "g_config": config_to_dict(g_config), "d_config": config_to_dict(d_config),
                      "train_config": config_to_dict(tc), "G": G.state_dict(), "G_ema": G_ema.state_dict(),
                      "D": D.state_dict(), "opt_G": opt_G.state_dict(), "opt_D": opt_D.state_dict(),
                      "rng": rng_state(data_gen, device)}, state_path)
        meta = {"kimg": nimg / 1000, "step": step, "seed": tc.seed, "num_images": int(data.shape[0]),
                "train_config": config_to_dict(tc), "d_config": config_to_dict(d_config)}
        return save_checkpoint(out_dir / GENERATOR_FILE, kind="generator", config=g_config,
                               state_dict=G_ema.state_dict(), w_avg=G_ema.w_avg, meta=meta)

    def write_samples() -> None:
        nonlocal fixed_z
        if fixed_z is None:  # built lazily so the sample latents never consume training randomness
            fixed_z = torch.randn(SAMPLE_GRID[0] * SAMPLE_GRID[1], g_config.z_dim,
                                  generator=torch.Generator().manual_seed(tc.seed)).to(device)
        with torch.no_grad():
            fakes = G_ema(G_ema.mapping(fixed_z), noise_mode="const")
        save_image_grid(fakes, out_dir / "samples" / f"fakes{step:07d}.png", SAMPLE_GRID[0])

    while step < total_steps:
        t0 = time.perf_counter()
        idx = torch.randint(data.shape[0], (tc.batch,), generator=data_gen)
        reals = _as_float(data[idx])
        if tc.xflip:
            flip = torch.rand(tc.batch, generator=data_gen) < 0.5
            reals = torch.where(flip.view(-1, 1, 1, 1), reals.flip(3), reals)
        reals = reals.to(device)

        fakes = G(_mixed_w_plus(G, tc.batch, tc.style_mixing_prob, device), noise_mode="random")
        D.requires_grad_(True)
        loss_d = (F.softplus(D(diff_augment(fakes.detach(), tc.augment))).mean()
                  + F.softplus(-D(diff_augment(reals, tc.augment))).mean())
        opt_D.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_D.step()
        r1 = None
        if tc.r1_gamma > 0 and step % tc.r1_interval == 0:
            r1 = _r1_penalty(D, reals, tc.augment)
            opt_D.zero_grad(set_to_none=True)
            (r1 * (tc.r1_gamma / 2 * tc.r1_interval)).backward()
            opt_D.step()

        # G is scored by the D that was just updated, reusing this step's fakes to save one G forward.
        D.requires_grad_(False)
        loss_g = F.softplus(-D(diff_augment(fakes, tc.augment))).mean()
        opt_G.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_G.step()

        step += 1
        nimg += tc.batch
        ema_nimg = tc.ema_kimg * 1000
        if tc.ema_rampup is not None:
            ema_nimg = min(ema_nimg, nimg * tc.ema_rampup)
        _ema_update(G_ema, G, 0.5 ** (tc.batch / max(ema_nimg, 1e-8)))

        report(TrainProgress(step, total_steps, nimg / 1000, loss_g.item(), loss_d.item(),
                             None if r1 is None else r1.item(), time.perf_counter() - t0))
        finish_step(step, total_steps, tc.sample_every, tc.snapshot_every, write_samples, lambda final: snapshot(),
                    curves)
    return snapshot()
