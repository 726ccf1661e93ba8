"""Shared pieces of the E / H / inverter training loops: losses, latent D steps, resumable state, reports."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from s2m_retrieval.networks.checkpoint import config_to_dict, model_version  # noqa: F401  (model_version re-exported)
from s2m_retrieval.errors import BadInputError, CheckpointError
from s2m_retrieval.model.perceptual import PerceptualDistance, load_perceptual
from s2m_retrieval.training.curves import TrainCurves
from s2m_retrieval.training.state import STATE_FORMAT, atomic_save, load_train_state, rng_state, set_rng_state

STATE_FILE = "latest.pt"
SAMPLE_ROWS = 8


@dataclass(frozen=True)
class TrainProgress:
    """What a loop reports after each step; `loss` is the weighted reconstruction loss being fitted."""

    step: int
    total_steps: int
    loss: float
    terms: dict
    sec_per_step: float


def as_float(batch: torch.Tensor) -> torch.Tensor:
    """uint8 [N, C, H, W] -> float in [-1, 1]."""
    return batch.float() / 127.5 - 1.0


def resolve_perceptual(perceptual: PerceptualDistance | None, name: str, device: torch.device) -> PerceptualDistance:
    """The given metric, else the backend named in the train config."""
    return perceptual.to(device) if perceptual is not None else load_perceptual(name, device)


def check_steps(steps: int, batch: int, snapshot_every: int, sample_every: int) -> None:
    """Shared validation of the loop counters of every train config."""
    if min(steps, batch, snapshot_every, sample_every) < 1:
        raise BadInputError("steps, batch, snapshot_every and sample_every must be >= 1")


def reconstruction_loss(x_hat: torch.Tensor, target: torch.Tensor, perceptual: PerceptualDistance,
                        l2_weight: float, perceptual_weight: float) -> tuple[torch.Tensor, dict]:
    """l2_weight * MSE + perceptual_weight * mean perceptual distance, and both terms as floats."""
    l2 = F.mse_loss(x_hat, target)
    perc = perceptual.distance(x_hat, target).mean() if perceptual_weight > 0 else x_hat.new_zeros([])
    return l2_weight * l2 + perceptual_weight * perc, {"l2": l2.item(), "perceptual": perc.item()}


def wnorm_loss(w_plus: torch.Tensor, w_avg: torch.Tensor) -> torch.Tensor:
    """pSp's W-norm: mean over entries of ||w_i - w_avg||^2 / w_dim (keeps codes near G's mean)."""
    return (w_plus - w_avg.view(1, 1, -1)).square().mean()


def delta_loss(w_plus: torch.Tensor) -> torch.Tensor:
    """e4e's delta regularisation: sum over entries of ||w_i - w_0||, batch mean (keeps W+ close to W)."""
    return (w_plus[:, 1:] - w_plus[:, :1]).norm(dim=2).sum(dim=1).mean()


def real_w(G: torch.nn.Module, n: int, device: torch.device) -> torch.Tensor:
    """n single w's [n, w_dim] from G's mapping: the 'real' side of the latent discriminator."""
    with torch.no_grad():
        return G.mapping(torch.randn(n, G.config.z_dim, device=device))[:, 0]


def latent_d_step(D: torch.nn.Module, opt: torch.optim.Optimizer, real: torch.Tensor, fake: torch.Tensor,
                  r1_gamma: float, r1_interval: int, step: int) -> dict:
    """One non-saturating D step on w vectors [M, w_dim], with lazy R1 on the reals every r1_interval steps."""
    D.requires_grad_(True)
    loss = F.softplus(D(fake.detach())).mean() + F.softplus(-D(real)).mean()
    terms = {"d": loss.item()}
    if r1_gamma > 0 and step % r1_interval == 0:
        real = real.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(D(real).sum(), real, create_graph=True)
        r1 = grad.square().sum(dim=1).mean()
        loss = loss + r1 * (r1_gamma / 2 * r1_interval)
        terms["r1"] = r1.item()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    D.requires_grad_(False)
    return terms


def adversarial_loss(D: torch.nn.Module, w_plus: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator-side loss: every W+ entry should look like a mapped w to D."""
    return F.softplus(-D(w_plus.reshape(-1, w_plus.shape[-1]))).mean()


def _plain(configs: dict) -> dict:
    return {k: config_to_dict(v) if dataclasses.is_dataclass(v) else v for k, v in configs.items()}


def save_state(path: Path, kind: str, step: int, networks: dict, optimizers: dict, configs: dict,
               data_gen: torch.Generator, device: torch.device) -> None:
    """Write latest.pt atomically: everything needed to continue at `step`."""
    atomic_save({"format": STATE_FORMAT, "kind": kind, "step": step,
                  "configs": _plain(configs),
                  "networks": {k: m.state_dict() for k, m in networks.items()},
                  "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
                  "rng": rng_state(data_gen, device)}, path)


def restore_state(path: Path, kind: str, networks: dict, optimizers: dict, configs: dict,
                  data_gen: torch.Generator, device: torch.device) -> int:
    """Load latest.pt into the networks and optimizers; return its step. Other configs are an error."""
    state = load_train_state(path)
    if state.get("kind") != kind:
        raise CheckpointError(f"{path} is a {state.get('kind')!r} training state, not {kind!r}; "
                              "use a new output folder or train with resume off")
    if state["configs"] != _plain(configs):
        raise CheckpointError(f"{path} was trained with other network configs or another generator; "
                              "use a new output folder or train with resume off")
    for name, module in networks.items():
        module.load_state_dict(state["networks"][name])
    for name, opt in optimizers.items():
        opt.load_state_dict(state["optimizers"][name])
    set_rng_state(state["rng"], data_gen, device)
    return int(state["step"])


def default_progress(desc: str, total_steps: int, start: int) -> Callable[[TrainProgress], None]:
    """A tqdm bar showing the fitted loss."""
    from tqdm import tqdm

    bar = tqdm(total=total_steps, initial=start, unit="step", desc=desc, dynamic_ncols=True)

    def report(p: TrainProgress) -> None:
        bar.update(p.step - bar.n)
        bar.set_postfix(loss=f"{p.loss:.4f}", refresh=False)
        if p.step >= p.total_steps:
            bar.close()

    return report


def sketch_rgb(sketch: torch.Tensor) -> torch.Tensor:
    """Sketches [N, 1, H, W] as grey RGB [N, 3, H, W] for sample sheets."""
    return sketch.expand(-1, 3, -1, -1)


def out_path(out_dir: str | os.PathLike) -> Path:
    """The output folder, created."""
    path = Path(out_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


def finish_step(step: int, total: int, sample_every: int, snapshot_every: int,
                write_samples: Callable[[], None], snapshot: Callable[..., object],
                curves: TrainCurves | None = None) -> None:
    """The end of every loop step: sample grids on schedule and at the end, resumable snapshots between; the
    run's curves get each grid, are flushed with each snapshot and closed (curves.png) at the end."""
    if step % sample_every == 0 or step == total:
        write_samples()
        if curves is not None:
            curves.samples()
    if step % snapshot_every == 0 and step < total:
        snapshot(final=False)
        if curves is not None:
            curves.flush()
    if step == total and curves is not None:
        curves.close()


def optimizer_step(opt: torch.optim.Optimizer, loss: torch.Tensor) -> float:
    """One plain step (zero_grad, backward, step); the loss as a float."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()


def check_finite(what: str, step: int, fitted: float, name: str = "loss") -> None:
    """A non-finite loss stops the training with a one-line error (the last snapshot stays resumable)."""
    if not math.isfinite(fitted):
        raise BadInputError(f"{what} training diverged at step {step} ({name} {fitted}); lower the learning rate")


def start_run(out_dir: Path, kind: str, networks: dict, optimizers: dict, configs: dict, data_gen: torch.Generator,
              device: torch.device, resume: bool, progress: Callable[[TrainProgress], None] | None, desc: str,
              total_steps: int) -> tuple[Path, int, TrainCurves, Callable[[TrainProgress], None]]:
    """(state path, first step, curves, report) of a run: resumed from OUT/latest.pt when there is one."""
    state_path = out_dir / STATE_FILE
    step = 0
    if resume and state_path.exists():
        step = restore_state(state_path, kind, networks, optimizers, configs, data_gen, device)
    curves = TrainCurves(out_dir, step, optimizers)
    return state_path, step, curves, curves.wrap(progress or default_progress(desc, total_steps, step))
