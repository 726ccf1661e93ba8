"""Training of the refiner H with E and G frozen: L2 + perceptual to the target after each of T refinement steps."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from s2m_retrieval.networks.checkpoint import config_to_dict, save_checkpoint
from s2m_retrieval.errors import BadInputError
from s2m_retrieval.networks.encoders import Encoder
from s2m_retrieval.networks.refiner import Refiner, RefinerConfig, add_deltas, refine, refiner_config_for
from s2m_retrieval.networks.stylegan2 import Generator
from s2m_retrieval.model.perceptual import PerceptualDistance
from s2m_retrieval.training.encoder import sketch_batches
from s2m_retrieval.training.gan import save_image_grid
from s2m_retrieval.training.latent import (start_run, check_finite, SAMPLE_ROWS, TrainProgress, finish_step, as_float,
                                           check_rates, check_steps, model_version, out_path, pairs_data,
                                           reconstruction_loss, resolve_perceptual, run_record, save_state, sketch_rgb)
from s2m_retrieval.training.pairs import PairSet

REFINER_FILE = "refiner.pt"


@dataclass(frozen=True)
class RefinerTrainConfig:
    """Hyper-parameters of H training; loss weights as HyperStyle's L2 and LPIPS terms."""

    steps: int = 5000
    batch: int = 8                   # every refinement step runs G with per-sample weights (grouped conv): costly
    lr: float = 3e-4
    l2: float = 1.0
    perceptual_weight: float = 0.8
    refine_steps: int = 3            # T during training; inference may run more or fewer
    perceptual: str = "seg"
    xflip: bool = True
    seed: int = 0
    snapshot_every: int = 500
    sample_every: int = 500

    def __post_init__(self) -> None:
        check_steps(self.steps, self.batch, self.snapshot_every, self.sample_every)
        if self.refine_steps < 1:
            raise BadInputError("refine_steps must be >= 1")
        check_rates("refiner training", {"lr": self.lr}, {"l2": self.l2, "perceptual_weight": self.perceptual_weight})


def train_refiner(pairs: PairSet, G: Generator, E: Encoder, out_dir: str | os.PathLike,
                  refiner_config: RefinerConfig | None = None, train_config: RefinerTrainConfig = RefinerTrainConfig(),
                  perceptual: PerceptualDistance | None = None, device: str | torch.device = "cpu",
                  resume: bool = True, progress: Callable[[TrainProgress], None] | None = None,
                  init: Refiner | None = None) -> Path:
    """Train H on (sketch, image) pairs, starting from E's W+ each batch; return refiner.pt's path. `init`: an H to
    fine-tune (e.g. after E was retrained) instead of a fresh one."""
    tc = train_config
    device = torch.device(device)
    if pairs.resolution != G.config.img_resolution or E.config.img_resolution != G.config.img_resolution:
        raise BadInputError(f"pairs ({pairs.resolution} px), encoder ({E.config.img_resolution} px) and generator "
                            f"({G.config.img_resolution} px) must share one resolution")
    cfg = init.config if init is not None else refiner_config or refiner_config_for(G)
    out_dir = out_path(out_dir)
    G = G.to(device).eval().requires_grad_(False)
    E = E.to(device).eval().requires_grad_(False)
    g_version, e_version = model_version(G), model_version(E)
    perceptual = resolve_perceptual(perceptual, tc.perceptual, device)

    torch.manual_seed(tc.seed)
    data_gen = torch.Generator().manual_seed(tc.seed)
    H = Refiner(cfg).to(device)
    if init is not None:
        H.load_state_dict({k: v.float() for k, v in init.state_dict().items()})
    opt = torch.optim.Adam(H.parameters(), lr=tc.lr)
    networks, optimizers = {"H": H}, {"H": opt}
    configs = {"refiner": cfg, "generator": g_version, "encoder": e_version, **run_record(tc, pairs_data(pairs))}
    state_path, step, curves, report = start_run(out_dir, "refiner", networks, optimizers, configs, data_gen,
                                                 device, resume, progress, "train refiner", tc.steps)
    draw = sketch_batches(pairs, tc.batch, tc.xflip)
    n = min(SAMPLE_ROWS, len(pairs))
    fixed = (as_float(pairs.sketches[:n, 0][:, None]).to(device), as_float(pairs.images[:n]).to(device))
    meta = {"generator_version": g_version, "encoder_version": e_version, "perceptual": perceptual.version,
            "seed": tc.seed, "train_config": config_to_dict(tc), "data": {**pairs.info, "num_pairs": len(pairs)}}

    def write_samples() -> None:
        sketch, target = fixed
        with torch.no_grad():
            _, images = refine(H, G, E(sketch), sketch, tc.refine_steps)
        columns = [sketch_rgb(sketch)] + images + [target]              # sketch | after E | after each step | target
        sheet = torch.stack(columns, dim=1).flatten(0, 1)
        save_image_grid(sheet, out_dir / "samples" / f"refiner{step:07d}.png", len(columns))

    def snapshot(final: bool) -> Path:
        save_state(state_path, "refiner", step, networks, optimizers, configs, data_gen, device)
        if not final:
            return state_path
        return save_checkpoint(out_dir / REFINER_FILE, kind="refiner", config=cfg, state_dict=H.state_dict(),
                               meta={**meta, "step": step})

    while step < tc.steps:
        t0 = time.perf_counter()
        sketch, target = (t.to(device) for t in draw(data_gen))
        with torch.no_grad():
            w_plus = E(sketch)
            x_hat = G(w_plus, noise_mode="const")
        deltas = None
        terms = {}
        opt.zero_grad(set_to_none=True)
        # HyperStyle: one loss and backward per step; the image and the offsets so far enter the next step detached.
        for t in range(tc.refine_steps):
            deltas = add_deltas(deltas, H(sketch, x_hat))
            x_hat = G(w_plus, weight_deltas=deltas, noise_mode="const")
            loss, step_terms = reconstruction_loss(x_hat, target, perceptual, tc.l2, tc.perceptual_weight)
            (loss / tc.refine_steps).backward()
            terms.update({f"{k}_{t + 1}": v for k, v in step_terms.items()})
            x_hat = x_hat.detach()
            deltas = {name: d.detach() for name, d in deltas.items()}
        opt.step()
        fitted = loss.item()
        step += 1
        check_finite("refiner", step, fitted)
        report(TrainProgress(step, tc.steps, fitted, terms, time.perf_counter() - t0))
        finish_step(step, tc.steps, tc.sample_every, tc.snapshot_every, write_samples, snapshot, curves)
    return snapshot(final=True)
