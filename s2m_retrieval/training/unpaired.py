"""What the unpaired baselines (CycleGAN, UNIT, U-GAT-IT) share: sketches and images from disjoint halves of a
PairSet, the LSGAN terms, the pool of past fakes, and the resumable loop each of them runs.

Unpaired means the sketches and the images a method trains on are never of the same phantom: the sketches of
images 0..h-1 and the images h..N-1 (h = N // 2), so a run on N images sees as many images as pix2pix on the
same PairSet. The paired images of the first half are never trained on; the sample grids and the held-out
`heldout/l1_to_pair` curve compare the translation of the first sketches with them.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from s2m_retrieval.errors import BadInputError
from s2m_retrieval.networks.checkpoint import config_to_dict, save_checkpoint
from s2m_retrieval.training.gan import save_image_grid
from s2m_retrieval.training.latent import (SAMPLE_ROWS, TrainProgress, as_float, check_finite, check_rates,
                                           check_steps, finish_step, out_path, pairs_data, run_record, save_state,
                                           sketch_rgb, start_run)
from s2m_retrieval.training.pairs import PairSet

DrawUnpaired = Callable[[torch.Generator], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class UnpairedTrainConfig:
    """The loop counters and optimizer every unpaired baseline shares (Adam, beta1 0.5 as in all three papers);
    `cycle` weighs the cycle-consistency L1 (10 in all three)."""

    steps: int = 5000
    batch: int = 16
    lr: float = 2e-4
    beta1: float = 0.5
    cycle: float = 10.0
    adv: float = 1.0
    xflip: bool = True               # same augmentation as pix2pix and E
    seed: int = 0
    snapshot_every: int = 500
    sample_every: int = 500

    def __post_init__(self) -> None:
        check_steps(self.steps, self.batch, self.snapshot_every, self.sample_every)
        if not 0 <= self.beta1 < 1:
            raise BadInputError("unpaired training needs 0 <= beta1 < 1")
        check_rates("unpaired training", {"lr": self.lr}, {"cycle": self.cycle, "adv": self.adv})


def split_point(pairs: PairSet) -> int:
    """h: sketches come from images 0..h-1, images from h..N-1."""
    check_unpaired_count(len(pairs))
    return len(pairs) // 2


def check_unpaired_count(n: int) -> None:
    """Unpaired training splits its images in two halves: it needs two at least."""
    if n < 2:
        raise BadInputError(f"unpaired training needs at least 2 images (sketches of one half, images of the other), "
                            f"got {n}")


def unpaired_batches(pairs: PairSet, batch: int, xflip: bool) -> DrawUnpaired:
    """Random (sketch variant [B, 1, R, R] of the first half, image [B, 3, R, R] of the second half), each
    flipped on its own."""
    h = split_point(pairs)

    def flip(gen: torch.Generator, x: torch.Tensor) -> torch.Tensor:
        mask = (torch.rand(len(x), generator=gen) < 0.5).view(-1, 1, 1, 1)
        return torch.where(mask, x.flip(3), x)

    def draw(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        si = torch.randint(h, (batch,), generator=gen)
        var = torch.randint(pairs.sketches.shape[1], (batch,), generator=gen)
        ii = h + torch.randint(len(pairs) - h, (batch,), generator=gen)
        sketch, image = as_float(pairs.sketches[si, var][:, None]), as_float(pairs.images[ii])
        return (flip(gen, sketch), flip(gen, image)) if xflip else (sketch, image)

    return draw


def lsgan_d(real: list[torch.Tensor], fake: list[torch.Tensor]) -> torch.Tensor:
    """Least-squares D loss summed over logit maps: reals to 1, fakes to 0."""
    return sum((r - 1).square().mean() + f.square().mean() for r, f in zip(real, fake))


def lsgan_g(fake: list[torch.Tensor]) -> torch.Tensor:
    """Least-squares generator loss summed over logit maps: fakes to 1."""
    return sum((f - 1).square().mean() for f in fake)


class FakePool(nn.Module):
    """Shrivastava et al.'s history of generated images, which CycleGAN's D trains on (half old, half new once
    full). The images are buffers, so latest.pt carries them and a resumed run sees the same history."""

    def __init__(self, size: int, shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.size = size
        self.register_buffer("images", torch.zeros(size, *shape))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    def forward(self, fakes: torch.Tensor) -> torch.Tensor:
        """The batch D sees instead of `fakes` [B, C, H, W] (detached), updating the history."""
        if self.size == 0:
            return fakes
        out = []
        for fake in fakes.detach():
            n = int(self.count)
            if n < self.size:
                self.images[n] = fake
                self.count += 1
                out.append(fake)
            elif torch.rand(()) < 0.5:
                j = int(torch.randint(self.size, ()))
                out.append(self.images[j].clone())
                self.images[j] = fake
            else:
                out.append(fake)
        return torch.stack(out)


def resolve_configs(pairs: PairSet, kind: str, name: str, config, d_config, config_for, d_config_for):
    """(translator config, image critic config): the given ones, else the defaults at the pairs' resolution;
    both must work at that resolution and map 1-channel sketches to RGB (`name` is the method's in messages)."""
    cfg = config or config_for(pairs.resolution)
    d_cfg = d_config or d_config_for(pairs.resolution)
    check_resolution(pairs, kind, cfg, d_cfg)
    if (cfg.sketch_channels, cfg.image_channels, d_cfg.in_channels) != (1, 3, 3):
        raise BadInputError(f"{name} maps 1-channel sketches to RGB; its image critic reads 3 channels")
    return cfg, d_cfg


def build_networks(pairs: PairSet, kind: str, name: str, config, d_config, config_for, d_config_for, seed: int,
                   device: torch.device, translator: type[nn.Module], critic: type[nn.Module]):
    """(config, image critic config, translator pair, image critic, sketch critic), seeded by `seed` in that order
    (same seed => same initial weights); the sketch critic is the image one reading the sketch's channels."""
    cfg, d_cfg = resolve_configs(pairs, kind, name, config, d_config, config_for, d_config_for)
    torch.manual_seed(seed)
    model = translator(cfg).to(device)
    D_image = critic(d_cfg).to(device)
    D_sketch = critic(dataclasses.replace(d_cfg, in_channels=cfg.sketch_channels)).to(device)
    return cfg, d_cfg, model, D_image, D_sketch


def check_resolution(pairs: PairSet, kind: str, *configs) -> None:
    """Every network config works at the pairs' resolution."""
    if any(c.img_resolution != pairs.resolution for c in configs):
        raise BadInputError(f"pairs are {pairs.resolution} px, the {kind} configs "
                            f"{sorted({c.img_resolution for c in configs})} px")


@dataclass
class UnpairedNets:
    """What one baseline trains: `model` (the translator pair its checkpoint holds, with image_of / sketch_of),
    everything latest.pt keeps, and `step` (sketch, image) -> (fitted loss, terms), one G and D update."""

    kind: str
    file: str
    model: nn.Module
    networks: dict[str, nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    configs: dict
    step: Callable[[torch.Tensor, torch.Tensor], tuple[float, dict]]
    meta: dict


def train_unpaired(nets: UnpairedNets, pairs: PairSet, out_dir: str | os.PathLike, tc: UnpairedTrainConfig,
                   device: torch.device, resume: bool = True,
                   progress: Callable[[TrainProgress], None] | None = None) -> Path:
    """The loop: resume from latest.pt, draw unpaired batches, step, report, sample and snapshot; return the
    checkpoint's path. The caller seeds torch and builds the networks first (same seed => same run)."""
    out_dir = out_path(out_dir)
    kind, model = nets.kind, nets.model
    data_gen = torch.Generator().manual_seed(tc.seed)
    configs = {**nets.configs, **run_record(tc, pairs_data(pairs))}
    state_path, step, curves, report = start_run(out_dir, kind, nets.networks, nets.optimizers, configs,
                                                 data_gen, device, resume, progress, f"train {kind}", tc.steps)
    draw = unpaired_batches(pairs, tc.batch, tc.xflip)
    h = split_point(pairs)
    n = min(SAMPLE_ROWS, h)
    fixed = (as_float(pairs.sketches[:n, 0][:, None]).to(device), as_float(pairs.images[:n]).to(device))
    meta = {"seed": tc.seed, "train_config": config_to_dict(tc), **nets.meta,
            "data": {**pairs.info, "num_pairs": len(pairs), "unpaired": {"sketches_of": [0, h],
                                                                         "images_of": [h, len(pairs)]}}}

    def write_samples() -> None:
        sketch, target = fixed
        model.eval()
        with torch.no_grad():
            fake = model.image_of(sketch)
            # sketch | translation | its cycle back | the paired image (never trained on) | that image as a sketch
            columns = [sketch_rgb(sketch), fake, sketch_rgb(model.sketch_of(fake)), target,
                       sketch_rgb(model.sketch_of(target))]
        model.train()
        curves.metrics(step, {"heldout/l1_to_pair": (fake - target).abs().mean().item()})
        save_image_grid(torch.stack(columns, dim=1).flatten(0, 1), out_dir / "samples" / f"{kind}{step:07d}.png",
                        len(columns))

    def snapshot(final: bool) -> Path:
        save_state(state_path, kind, step, nets.networks, nets.optimizers, configs, data_gen, device)
        if not final:
            return state_path
        return save_checkpoint(out_dir / nets.file, kind=kind, config=model.config, state_dict=model.state_dict(),
                               meta={**meta, "step": step})

    for module in nets.networks.values():
        module.train()
    while step < tc.steps:
        t0 = time.perf_counter()
        sketch, image = (t.to(device) for t in draw(data_gen))
        fitted, terms = nets.step(sketch, image)
        step += 1
        check_finite(kind, step, fitted, "cycle L1")
        report(TrainProgress(step, tc.steps, fitted, terms, time.perf_counter() - t0))
        finish_step(step, tc.steps, tc.sample_every, tc.snapshot_every, write_samples, snapshot, curves)
    return snapshot(final=True)


def adam(modules: list[nn.Module], tc: UnpairedTrainConfig, weight_decay: float = 0.0) -> torch.optim.Adam:
    """One Adam over the parameters of `modules` (G's pair, or D's), beta2 0.999 as in the papers."""
    params = [p for m in modules for p in m.parameters()]
    return torch.optim.Adam(params, lr=tc.lr, betas=(tc.beta1, 0.999), weight_decay=weight_decay)


@dataclass(frozen=True)
class UnpairedMethod:
    """One baseline as the CLI drives it: its default network and discriminator configs at a resolution, its train
    config class and its train function (pairs, out_dir, config, d_config, train_config, device, resume, progress)."""

    kind: str
    file: str
    config_for: Callable
    d_config_for: Callable
    train_config: type
    train: Callable
