"""Training of the retrieval-space projector P on E's codes of training sketches and the archive's stored codes.

E stays frozen: every training sketch (each variant, plain and mirrored, shifted like E's own training
sketches) is encoded once into a code table, cached beside the run and keyed by E, the pairs and the
weighting. P's two heads are then fitted with InfoNCE, query side (E's code) against archive side (the code
bank's stored vector of the sketched image), with the image's nearest stored neighbours sharing batches.
No network forward is left in a step, so thousands of steps cost minutes.
"""

from __future__ import annotations

import json
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
from s2m_retrieval.model.latent_space import LatentWeighting
from s2m_retrieval.networks.encoders import Encoder
from s2m_retrieval.networks.projector import KIND, LatentProjector, ProjectorConfig
from s2m_retrieval.training.index_space import CodeBank, _shift, hard_batch_indices, latent_vectors
from s2m_retrieval.training.latent import (start_run, check_finite, optimizer_step, TrainProgress, as_float,
                                           check_rates, check_steps, data_record, finish_step, model_version, out_path,
                                           run_record, save_state)
from s2m_retrieval.training.pairs import PairSet
from s2m_retrieval.training.state import atomic_save

PROJECTOR_FILE = "projector.pt"
CODES_FILE = "sketch_codes.pt"
CODES_FORMAT = "s2m-sketch-codes/1"


@dataclass(frozen=True)
class ProjectorTrainConfig:
    """Hyper-parameters: in-batch negatives (large batches), a fixed temperature on cosine logits."""

    steps: int = 3000
    batch: int = 512
    lr: float = 1e-3
    weight_decay: float = 1e-5
    tau: float = 0.05
    hard_fraction: float = 0.25      # share of a batch drawn as stored look-alikes of other anchors
    symmetric: bool = False          # also archive -> query InfoNCE
    shift: int = 2                   # whole-pixel sketch shift of the code table's entries, as for E
    seed: int = 0
    snapshot_every: int = 500
    sample_every: int = 500

    def __post_init__(self) -> None:
        check_steps(self.steps, self.batch, self.snapshot_every, self.sample_every)
        if self.batch < 2 or self.shift < 0:
            raise BadInputError("projector training needs batch >= 2 and shift >= 0")
        check_rates("projector training", {"lr": self.lr, "tau": self.tau}, {"weight_decay": self.weight_decay})
        if not 0 <= self.hard_fraction <= 0.5:
            raise BadInputError("hard_fraction must be in [0, 0.5]")


@torch.no_grad()
def sketch_code_table(pairs: PairSet, E: Encoder, weighting: LatentWeighting, shift: int = 2, seed: int = 0,
                      batch: int = 256, device: str | torch.device = "cpu",
                      progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """E's weighted codes of every training sketch: float16 [N, V, 2, dim] (variant, plain | mirrored), each
    sketch shifted by a seeded random whole-pixel offset of at most `shift`."""
    E = E.to(device).eval()
    n, variants = pairs.sketches.shape[:2]
    gen = torch.Generator().manual_seed(seed)
    offsets = torch.randint(-shift, shift + 1, (n, variants, 2, 2), generator=gen).tolist()
    flat = [(i, v, m) for i in range(n) for v in range(variants) for m in range(2)]
    table = None
    for start in range(0, len(flat), batch):
        items = flat[start:start + batch]
        sketches = []
        for i, v, m in items:
            s = as_float(pairs.sketches[i, v][None])
            s = s.flip(2) if m else s
            dy, dx = offsets[i][v][m]
            sketches.append(_shift(s, dy, dx) if shift else s)
        w_plus = E(torch.stack(sketches).to(device))
        codes = latent_vectors(w_plus, E.w_avg, weighting).cpu().half()
        if table is None:
            table = torch.empty(n, variants, 2, codes.shape[1], dtype=torch.float16)
        for (i, v, m), code in zip(items, codes):
            table[i, v, m] = code
        if progress is not None:
            progress(min(start + batch, len(flat)), len(flat))
    return table


def cached_code_table(path: str | os.PathLike, pairs: PairSet, E: Encoder, weighting: LatentWeighting,
                      shift: int = 2, seed: int = 0, **kwargs) -> torch.Tensor:
    """The code table at `path` when it was made by this E from these pairs; else compute and store it."""
    path = Path(path)
    key = {"encoder_version": model_version(E), "weighting": weighting.spec(), "pairs": pairs.info,
           "num_pairs": len(pairs), "variants": int(pairs.sketches.shape[1]), "shift": shift, "seed": seed}
    key_text = json.dumps(key, sort_keys=True, default=str)
    if path.is_file():
        try:
            stored = torch.load(path, map_location="cpu", weights_only=True)
            if stored.get("format") == CODES_FORMAT and stored["key"] == key_text:
                return stored["codes"]
        except Exception:  # a damaged table is only minutes of E forwards: compute it again
            pass
    codes = sketch_code_table(pairs, E, weighting, shift, seed, **kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save({"format": CODES_FORMAT, "key": key_text, "codes": codes}, path)
    return codes


def projector_loss(P: LatentProjector, queries: torch.Tensor, stored: torch.Tensor, tau: float,
                   symmetric: bool) -> tuple[torch.Tensor, float]:
    """(InfoNCE, batch top-1 accuracy) of query codes [B, D] against the stored codes of their images [B, D]."""
    logits = P(queries, "query") @ P(stored, "archive").T / tau
    target = torch.arange(len(logits), device=logits.device)
    loss = F.cross_entropy(logits, target)
    if symmetric:
        loss = 0.5 * (loss + F.cross_entropy(logits.T, target))
    return loss, (logits.argmax(1) == target).float().mean().item()


def train_projector(codes: torch.Tensor, bank: CodeBank, out_dir: str | os.PathLike, config: ProjectorConfig,
                    tc: ProjectorTrainConfig = ProjectorTrainConfig(), meta: dict | None = None,
                    device: str | torch.device = "cpu", resume: bool = True,
                    progress: Callable[[TrainProgress], None] | None = None) -> Path:
    """Fit P on a code table [N, V, 2, D] (`sketch_code_table`) and the code bank of the same images; return
    projector.pt's path (latest.pt resumes). `meta` (E, G, inverter versions) goes into the checkpoint."""
    n, variants = codes.shape[:2]
    if bank.num_images != n or codes.shape[2] != 2:
        raise BadInputError(f"the code table covers {n} images, the code bank {bank.num_images}: build both "
                            "from the same source")
    if codes.shape[3] != config.in_dim or bank.vectors.shape[1] != config.in_dim:
        raise BadInputError(f"the projector reads {config.in_dim}-d vectors, the codes are {codes.shape[3]}-d and "
                            f"the bank's {bank.vectors.shape[1]}-d")
    if bank.info.get("weighting") != config.weighting:
        raise BadInputError(f"the code bank was made with weighting {bank.info.get('weighting')}, the projector "
                            f"reads {config.weighting}")
    device = torch.device(device)
    out_dir = out_path(out_dir)
    torch.manual_seed(tc.seed)
    data_gen = torch.Generator().manual_seed(tc.seed)
    P = LatentProjector(config)
    P.fit_input(bank.vectors[:n])
    P = P.to(device).train()
    opt = torch.optim.AdamW(P.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    networks, optimizers = {"projector": P}, {"projector": opt}
    data = data_record(None, {"num_images": n, "variants": int(variants),
                              "bank_inverter": bank.info.get("inverter_version")})
    configs = {"projector": config, **run_record(tc, data)}
    state_path, step, curves, report = start_run(out_dir, KIND, networks, optimizers, configs, data_gen,
                                                 device, resume, progress, "train projector", tc.steps)
    meta = {**(meta or {}), "seed": tc.seed, "train_config": config_to_dict(tc), "bank": bank.info,
            "num_images": n, "variants": int(variants)}
    vectors = bank.vectors.to(device)

    def snapshot(final: bool) -> Path:
        save_state(state_path, KIND, step, networks, optimizers, configs, data_gen, device)
        if not final:
            return state_path
        return save_checkpoint(out_dir / PROJECTOR_FILE, kind=KIND, config=config, state_dict=P.state_dict(),
                               meta={**meta, "step": step})

    while step < tc.steps:
        t0 = time.perf_counter()
        for group in opt.param_groups:  # cosine decay, a function of the step alone (resume keeps it)
            group["lr"] = tc.lr * 0.5 * (1 + math.cos(math.pi * step / tc.steps))
        idx = hard_batch_indices(data_gen, n, tc.batch, bank.hard, tc.hard_fraction)
        variant = torch.randint(variants, (len(idx),), generator=data_gen)
        mirrored = torch.randint(2, (len(idx),), generator=data_gen)
        queries = codes[idx, variant, mirrored].to(device)
        stored = vectors[(idx + mirrored * n).to(device)]
        loss, accuracy = projector_loss(P, queries, stored, tc.tau, tc.symmetric)
        fitted = optimizer_step(opt, loss)
        step += 1
        check_finite("projector", step, fitted)
        report(TrainProgress(step, tc.steps, fitted, {"batch_acc": accuracy}, time.perf_counter() - t0))
        finish_step(step, tc.steps, tc.sample_every, tc.snapshot_every, lambda: None, snapshot, curves)
    return snapshot(final=True)
