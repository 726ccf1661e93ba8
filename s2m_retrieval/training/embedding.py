"""Training of the learned embedding baseline on the same (sketch, image) pairs as E: symmetric InfoNCE."""

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
from s2m_retrieval.networks.embedding import load_embedding  # noqa: F401  (re-exported)
from s2m_retrieval.networks.embedding import EmbeddingConfig, SketchImageEmbedding
from s2m_retrieval.training.index_space import draw_pairs, hard_batch_indices
from s2m_retrieval.training.latent import (start_run, check_finite, optimizer_step, TrainProgress, check_rates,
                                           check_steps, finish_step, out_path, pairs_data, run_record, save_state)
from s2m_retrieval.training.pairs import PairSet

EMBEDDING_FILE = "embedding.pt"
KIND = "embedding"


@dataclass(frozen=True)
class EmbeddingTrainConfig:
    """Hyper-parameters: every other pair in a batch is a negative, so batches are larger than E's."""

    steps: int = 3000
    batch: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    xflip: bool = True               # same augmentation as E's pairs: the comparison stays fair
    hard_fraction: float = 0.25      # with a code bank: share of a batch drawn as look-alikes, as for E
    shift: int = 2                   # whole-pixel sketch shift, as for E
    seed: int = 0
    snapshot_every: int = 500
    sample_every: int = 500

    def __post_init__(self) -> None:
        check_steps(self.steps, self.batch, self.snapshot_every, self.sample_every)
        if self.batch < 2:
            raise BadInputError("the embedding needs batches of at least 2 pairs (the others are the negatives)")
        if not 0 <= self.hard_fraction <= 0.5 or self.shift < 0:
            raise BadInputError("hard_fraction must be in [0, 0.5] and shift >= 0")
        check_rates("the embedding", {"lr": self.lr}, {"weight_decay": self.weight_decay})


def contrastive_loss(logits: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over a [N, N] logit matrix whose diagonal holds the matching pairs."""
    target = torch.arange(len(logits), device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def train_embedding(pairs: PairSet, out_dir: str | os.PathLike, config: EmbeddingConfig | None = None,
                    train_config: EmbeddingTrainConfig = EmbeddingTrainConfig(), device: str | torch.device = "cpu",
                    resume: bool = True, progress: Callable[[TrainProgress], None] | None = None,
                    hard: torch.Tensor | None = None) -> Path:
    """Train both towers on (sketch, image) pairs; return embedding.pt's path (latest.pt resumes). `hard`
    [N, K] (a code bank's nearest stored neighbours) puts look-alike images in the same batches, as E's
    index-space training does."""
    tc = train_config
    cfg = config or EmbeddingConfig(img_resolution=pairs.resolution)
    if cfg.img_resolution != pairs.resolution:
        raise BadInputError(f"pairs are {pairs.resolution} px, the embedding config {cfg.img_resolution} px")
    device = torch.device(device)
    out_dir = out_path(out_dir)
    torch.manual_seed(tc.seed)
    data_gen = torch.Generator().manual_seed(tc.seed)
    net = SketchImageEmbedding(cfg).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    networks, optimizers = {"embedding": net}, {"embedding": opt}
    configs = {"embedding": cfg, **run_record(tc, pairs_data(pairs))}
    state_path, step, curves, report = start_run(out_dir, KIND, networks, optimizers, configs, data_gen,
                                                 device, resume, progress, "train embedding", tc.steps)
    if hard is not None and len(hard) != len(pairs):
        raise BadInputError(f"hard negatives cover {len(hard)} images, the pairs {len(pairs)}: use one source")

    def draw(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        idx = hard_batch_indices(gen, len(pairs), tc.batch, hard, tc.hard_fraction)
        return draw_pairs(pairs, idx, gen, tc.xflip, tc.shift)[:2]

    meta = {"seed": tc.seed, "train_config": config_to_dict(tc), "data": {**pairs.info, "num_pairs": len(pairs)},
            "hard_negatives": hard is not None}

    def snapshot(final: bool) -> Path:
        save_state(state_path, KIND, step, networks, optimizers, configs, data_gen, device)
        if not final:
            return state_path
        return save_checkpoint(out_dir / EMBEDDING_FILE, kind=KIND, config=cfg, state_dict=net.state_dict(),
                               meta={**meta, "step": step})

    net.train()
    while step < tc.steps:
        t0 = time.perf_counter()
        sketch, image = (t.to(device) for t in draw(data_gen))
        # Cosine decay to 0, a function of the step alone so a resumed run continues the same schedule.
        for group in opt.param_groups:
            group["lr"] = tc.lr * 0.5 * (1 + math.cos(math.pi * step / tc.steps))
        logits = net(sketch, image)
        loss = contrastive_loss(logits)
        fitted = optimizer_step(opt, loss)
        with torch.no_grad():
            net.log_scale.clamp_(0.0, math.log(100.0))  # CLIP's cap: a runaway temperature stalls training
        step += 1
        check_finite("embedding", step, fitted)
        accuracy = (logits.argmax(dim=1) == torch.arange(len(logits), device=device)).float().mean().item()
        report(TrainProgress(step, tc.steps, fitted, {"batch_acc": accuracy}, time.perf_counter() - t0))
        finish_step(step, tc.steps, tc.sample_every, tc.snapshot_every, lambda: None, snapshot, curves)
    return snapshot(final=True)
