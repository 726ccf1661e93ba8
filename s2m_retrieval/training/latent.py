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
from s2m_retrieval.training.pair_source import KEY_LABELS
from s2m_retrieval.training.state import (STATE_FORMAT, atomic_save, describe_changes, load_train_state, rng_state,
                                          set_rng_state)

STATE_FILE = "latest.pt"
SAMPLE_ROWS = 8
# The train options a rerun may change: how long it runs and how often it snapshots and samples.
LOOP_FIELDS = ("steps", "snapshot_every", "sample_every")
# Entries of a state's configs beside the networks', which states written before they were recorded lack.
RECORDED = ("train", "data")


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


def check_rates(what: str, rates: dict[str, float], weights: dict[str, float]) -> None:
    """Shared validation of a train config's learning rates (finite, > 0) and loss weights (finite, >= 0): nan
    passes any comparison test, so finiteness is checked first."""
    top = float(torch.finfo(torch.float32).max)  # the optimizers hold them in float32: more overflows mid-step
    bad = [f"{name} {value}" for name, value in rates.items() if not (math.isfinite(value) and 0 < value <= top)]
    bad += [f"{name} {value}" for name, value in weights.items() if not (math.isfinite(value) and 0 <= value <= top)]
    if bad:
        raise BadInputError(f"{what} needs finite learning rates > 0 and finite loss weights >= 0 (at most "
                            f"{top:.3g}), got {', '.join(bad)}")


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


def run_record(train_config, data: dict | None = None) -> dict:
    """The entries of a trainer's configs that name its run beside its networks: the train options but the loop
    counters (a rerun with more steps continues), and what it trains on (`data_record`)."""
    train = {k: v for k, v in config_to_dict(train_config).items() if k not in LOOP_FIELDS}
    return {"train": train} if data is None else {"train": train, "data": data}


def data_record(key: dict | None, description: dict) -> dict:
    """What latest.pt records of a run's data: the key of the source it came from (pair_source.source_key) less the
    archive's file stamp (the pairs cache refuses a changed archive; a copy or a touch changes the stamp alone),
    else the data's own `description` (counts, resolution, how the pairs were made)."""
    if key is not None:
        return {k: v for k, v in key.items() if k != "stamp"}
    return {"description": description}


def pairs_data(pairs) -> dict:
    """`data_record` of a PairSet."""
    return data_record(pairs.key, {**pairs.info, "num_pairs": len(pairs), "resolution": pairs.resolution})


def state_kind(state: dict) -> str:
    """The method a latest.pt belongs to (the generator's states carry no kind)."""
    return state.get("kind") or ("generator" if "g_config" in state else "unknown")


def check_kind(state: dict, path: Path, kind: str) -> None:
    """A run folder holds one method's run: another method may neither resume nor replace it."""
    found = state_kind(state)
    if found != kind:
        raise CheckpointError(f"{path.parent} holds another method's run ({path} is the training state of {found!r}, "
                              f"not {kind!r}): train {kind} into a new --out (out_dir= in Python)")


def check_state(state: dict, path: Path, kind: str, configs: dict, partial: bool = False) -> None:
    """Refuse to resume a latest.pt of another method, or one whose configs differ from `configs`: the networks'
    configs and frozen networks' versions, and what `run_record` adds (judged where the state has it). `partial`:
    `configs` holds some entries only (the CLI checks train options and data before it draws the pairs)."""
    check_kind(state, path, kind)
    before, now = state.get("configs", {}), _plain(configs)
    labels = {**KEY_LABELS, "train": "", "description": "",
              **{k: f"{k} version" for k, v in now.items() if isinstance(v, str)}}
    changes = []
    networks = sorted((before.keys() | now.keys()) - set(RECORDED))
    net_before, net_now = ({k: c.get(k) for k in networks} for c in (before, now))
    if not partial and net_before != net_now:
        # A field one config lacks (code of another version) is a change too: say so when nothing else differs.
        changes.append(describe_changes(net_before, net_now, labels) or "the network configs")
    changes.append(describe_changes({k: before[k] for k in RECORDED if k in before},
                                    {k: now[k] for k in RECORDED if k in now}, labels))
    changes = "; ".join(c for c in changes if c)
    if changes:
        raise CheckpointError(f"{path} was trained with other settings ({changes}); resume with the same ones, or "
                              "start over (--fresh, or resume=False in Python) or in a new --out")


def check_out_dir(path: Path) -> None:
    """A run folder, not a file."""
    if path.exists() and not path.is_dir():
        raise BadInputError(f"--out {path} is a file; give a folder (out_dir= in Python)")


def resume_step(out_dir: str | os.PathLike, kind: str, configs: dict, resume: bool) -> int:
    """Check a run folder before anything is drawn or written there: the step its latest.pt resumes at (0: none, or
    starting over), after refusing another method's run (which starting over would replace too) and one whose
    recorded configs differ from `configs` (some of the trainer's: its `run_record`)."""
    out_dir = Path(out_dir)
    check_out_dir(out_dir)
    path = out_dir / STATE_FILE
    if not path.exists():
        return 0
    if not resume:
        check_replaced(path, kind)
        return 0
    state = load_train_state(path)
    check_state(state, path, kind, configs, partial=True)
    return int(state["step"])


def check_replaced(path: Path, kind: str) -> None:
    """Starting over replaces latest.pt: refused when it is another method's (an unreadable one is replaced)."""
    try:
        state = load_train_state(path)
    except CheckpointError:
        return
    check_kind(state, path, kind)


def check_weights(kind: str, step: int, networks: dict) -> None:
    """Non-finite weights stop the training with a one-line error before they are saved (the loss is checked
    before each update, so the last update is checked here)."""
    for name, module in networks.items():
        for key, tensor in module.state_dict().items():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise BadInputError(f"{kind} training diverged at step {step}: {name} has non-finite weights ({key}); "
                                    "nothing was saved at this step (a rerun resumes from the last snapshot, if "
                                    "any); lower the learning rate")


def save_state(path: Path, kind: str, step: int, networks: dict, optimizers: dict, configs: dict,
               data_gen: torch.Generator, device: torch.device) -> None:
    """Write latest.pt atomically: everything needed to continue at `step` (refused for non-finite weights)."""
    check_weights(kind, step, networks)
    atomic_save({"format": STATE_FORMAT, "kind": kind, "step": step,
                  "configs": _plain(configs),
                  "networks": {k: m.state_dict() for k, m in networks.items()},
                  "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
                  "rng": rng_state(data_gen, device)}, path)


def restore_state(path: Path, kind: str, networks: dict, optimizers: dict, configs: dict,
                  data_gen: torch.Generator, device: torch.device) -> int:
    """Load latest.pt into the networks and optimizers; return its step. Other configs are an error."""
    state = load_train_state(path)
    check_state(state, path, kind, configs)
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
    check_out_dir(path)
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
    if state_path.exists():
        if resume:
            step = restore_state(state_path, kind, networks, optimizers, configs, data_gen, device)
        else:
            check_replaced(state_path, kind)
    if step > total_steps:
        raise BadInputError(f"{state_path} is at step {step} already, past steps={total_steps}: nothing to train "
                            "(ask for more steps to continue, or start over with resume=False)")
    curves = TrainCurves(out_dir, step, optimizers)
    return state_path, step, curves, curves.wrap(progress or default_progress(desc, total_steps, step))
