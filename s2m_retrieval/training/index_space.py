"""E trained for the space it is searched in: a bank of the training archive's stored vectors, distillation and
contrastive losses in the index metric, hard negatives, and the fine-tuning loop.

The index stores each archive image as the inverter's W+ code mapped by the latent weighting
(`latent_space.w_plus_to_vectors`); FAISS ranks by squared L2 between such vectors. So E's sketch code is
trained in exactly that space: pulled onto its image's stored vector (distillation) and pushed away from the
stored vectors of other images (InfoNCE over the bank, with each image's nearest stored neighbours among the
negatives). Neither loss needs a G forward; an image loss on a sub-batch every few steps keeps x̂ faithful.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from s2m_retrieval.networks.checkpoint import config_to_dict, save_checkpoint
from s2m_retrieval.errors import BadInputError
from s2m_retrieval.model.latent_space import DEFAULT_WEIGHTING, LatentWeighting, vector_layout
from s2m_retrieval.networks.encoders import Encoder
from s2m_retrieval.networks.projector import KIND as PROJECTOR_KIND, LatentProjector
from s2m_retrieval.networks.stylegan2 import Generator
from s2m_retrieval.model.perceptual import PerceptualDistance
from s2m_retrieval.training.gan import save_image_grid
from s2m_retrieval.training.latent import (start_run, check_finite, optimizer_step, SAMPLE_ROWS, TrainProgress,
                                           as_float, check_rates, check_steps, finish_step, model_version, out_path,
                                           pairs_data, reconstruction_loss, resolve_perceptual, run_record, save_state,
                                           sketch_rgb)
from s2m_retrieval.training.pairs import PairSet
from s2m_retrieval.training.state import atomic_save

BANK_FILE = "code_bank.pt"
BANK_FORMAT = "s2m-code-bank/1"


@dataclass(frozen=True, eq=False)
class CodeBank:
    """Stored vectors of a training archive: rows 0..N-1 the images, rows N..2N-1 their mirror images
    (float32 [2N, dim]), and `hard` [N, K]: each image's K nearest other images by stored vector."""

    vectors: torch.Tensor
    hard: torch.Tensor
    info: dict

    @property
    def num_images(self) -> int:
        return len(self.vectors) // 2

    @property
    def mean_sq_norm(self) -> float:
        """Mean squared norm of the stored vectors: the distillation loss's unit."""
        return float(self.vectors.square().sum(1).mean())


def latent_vectors(w_plus: torch.Tensor, w_avg: torch.Tensor, weighting: LatentWeighting) -> torch.Tensor:
    """Differentiable `w_plus_to_vectors`: W+ [B, num_ws, w_dim] -> index vectors [B, dim]."""
    keep, scale = vector_layout(weighting, w_plus.shape[1])
    scale_t = torch.from_numpy(scale).to(w_plus).view(1, -1, 1)
    return ((w_plus[:, torch.from_numpy(keep).to(w_plus.device)] - w_avg.view(1, 1, -1)) * scale_t).flatten(1)


def _nearest(vectors: torch.Tensor, k: int, chunk: int = 1024) -> torch.Tensor:
    """Indices [N, k] of each row's k nearest other rows by L2 (exact, chunked)."""
    norms = vectors.square().sum(1)
    out = []
    for start in range(0, len(vectors), chunk):
        part = vectors[start:start + chunk]
        d2 = norms[start:start + chunk, None] + norms[None] - 2 * part @ vectors.T   # [chunk, N]
        d2[torch.arange(len(part)), torch.arange(start, start + len(part))] = float("inf")
        out.append(d2.topk(k, dim=1, largest=False).indices)
    return torch.cat(out)


def build_code_bank(images: torch.Tensor, inverter: Encoder, G: Generator, weighting: LatentWeighting = DEFAULT_WEIGHTING,
                    hard_k: int = 16, batch: int = 64, device: str | torch.device = "cpu",
                    progress: Callable[[int, int], None] | None = None) -> CodeBank:
    """Invert uint8 images [N, 3, R, R] and their mirrors as the index does, map them to index vectors."""
    from s2m_retrieval.training.inverter import invert

    if images.dtype != torch.uint8 or images.ndim != 4 or len(images) < 2:
        raise BadInputError(f"a code bank needs uint8 images [N >= 2, 3, R, R], got {images.dtype} {list(images.shape)}")
    device = torch.device(device)
    inverter, G = inverter.to(device).eval(), G.to(device).eval()
    rows, done = [], 0
    for mirrored in (False, True):
        for start in range(0, len(images), batch):
            x = as_float(images[start:start + batch]).to(device)
            x = x.flip(3) if mirrored else x
            with torch.no_grad():
                rows.append(latent_vectors(invert(inverter, G, x), inverter.w_avg, weighting).cpu())
            done += len(x)
            if progress is not None:
                progress(done, 2 * len(images))
    vectors = torch.cat(rows).float().contiguous()
    hard = _nearest(vectors[:len(images)], min(hard_k, len(images) - 1))
    info = {"inverter_version": model_version(inverter), "generator_version": model_version(G),
            "weighting": weighting.spec(), "num_images": len(images), "hard_k": int(hard.shape[1])}
    return CodeBank(vectors, hard, info)


def read_code_bank(path: str | os.PathLike) -> CodeBank:
    """A stored code bank; a missing or damaged file is a one-line CheckpointError."""
    from s2m_retrieval.errors import CheckpointError

    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
        if stored.get("format") != BANK_FORMAT:
            raise ValueError(stored.get("format"))
        return CodeBank(stored["vectors"], stored["hard"], json.loads(stored["info"]))
    except Exception as exc:  # torch raises many types for a damaged file
        raise CheckpointError(f"{path} is not a readable code bank ({type(exc).__name__}); make one with "
                              "`s2m train encoder ... --objective index`") from None


def cached_code_bank(path: str | os.PathLike, images: torch.Tensor, inverter: Encoder, G: Generator,
                     weighting: LatentWeighting = DEFAULT_WEIGHTING, source: str = "", replace: bool = True,
                     **kwargs) -> CodeBank:
    """The code bank at `path` when it was made by this inverter, weighting and source; else build and store it.
    `replace` False (a bank the user named, which other runs may share): a file there that is no code bank, or a
    bank of other codes, is refused instead of replaced."""
    from s2m_retrieval.errors import CheckpointError
    from s2m_retrieval.training.state import describe_changes

    path = Path(path)
    key = {"inverter_version": model_version(inverter), "weighting": weighting.spec(), "source": source,
           "num_images": len(images)}
    if path.is_dir():
        raise BadInputError(f"the code bank {path} is a folder; give a file, e.g. {path / BANK_FILE}")
    if path.is_file():
        stored_key = None
        try:
            stored = torch.load(path, map_location="cpu", weights_only=True)
            if stored.get("format") == BANK_FORMAT:
                stored_key = json.loads(stored["key"])
                if stored_key == key:
                    return CodeBank(stored["vectors"], stored["hard"], json.loads(stored["info"]))
        except Exception:  # a damaged bank of the run's own is only lost minutes: build it again
            pass
        if not replace:
            what = "is not a code bank" if stored_key is None else (
                f"holds the codes of other images or models ({describe_changes(stored_key, key) or 'its key'})")
            raise CheckpointError(f"{path} {what}; it is kept: give another --bank path, or delete the file to "
                                  "make the bank there")
    bank = build_code_bank(images, inverter, G, weighting, **kwargs)
    bank.info["source"] = source
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save({"format": BANK_FORMAT, "key": json.dumps(key), "vectors": bank.vectors, "hard": bank.hard,
                 "info": json.dumps(bank.info)}, path)
    return bank


@torch.no_grad()
def project_bank(bank: CodeBank, P: LatentProjector, chunk: int = 4096) -> CodeBank:
    """The bank in P's retrieval space: every stored vector through P's archive head, as the index stores it,
    and each image's hard neighbours found again there."""
    device = P.center.device
    vectors = torch.cat([P(bank.vectors[i:i + chunk].to(device), "archive").cpu()
                         for i in range(0, len(bank.vectors), chunk)]).contiguous()
    hard = _nearest(vectors[:bank.num_images], bank.hard.shape[1])
    return CodeBank(vectors, hard, {**bank.info, "projector_version": model_version(P)})


def hard_batch_indices(gen: torch.Generator, n: int, batch: int, hard: torch.Tensor | None,
                       hard_fraction: float) -> torch.Tensor:
    """Image indices [batch]: random anchors, and for a `hard_fraction` of the batch, one of an anchor's nearest
    stored neighbours, so that look-alikes meet in one batch."""
    n_hard = 0 if hard is None else min(int(round(batch * hard_fraction)), batch // 2)
    anchors = torch.randint(n, (batch - n_hard,), generator=gen)
    if n_hard == 0:
        return anchors
    pick = torch.randint(hard.shape[1], (n_hard,), generator=gen)
    return torch.cat([anchors, hard[anchors[:n_hard], pick]])


def draw_pairs(pairs: PairSet, idx: torch.Tensor, gen: torch.Generator, xflip: bool, shift: int
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sketch [B, 1, R, R], image [B, 3, R, R], mirrored [B] bool) for images `idx`: a random variant each,
    mirrored at random, the sketch shifted by up to `shift` whole pixels (lines stay canonical)."""
    var = torch.randint(pairs.sketches.shape[1], (len(idx),), generator=gen)
    sketch, image = as_float(pairs.sketches[idx, var][:, None]), as_float(pairs.images[idx])
    mirrored = (torch.rand(len(idx), generator=gen) < 0.5) if xflip else torch.zeros(len(idx), dtype=torch.bool)
    flip = mirrored.view(-1, 1, 1, 1)
    sketch, image = torch.where(flip, sketch.flip(3), sketch), torch.where(flip, image.flip(3), image)
    if shift > 0:
        dy, dx = torch.randint(-shift, shift + 1, (2, len(idx)), generator=gen).tolist()
        sketch = torch.stack([_shift(s, a, b) for s, a, b in zip(sketch, dy, dx)])
    return sketch, image, mirrored


def _shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Shift [C, H, W] by whole pixels, filling with white paper (+1)."""
    out = torch.ones_like(x)
    h, w = x.shape[-2:]
    out[:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        x[:, max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def bank_losses(v: torch.Tensor, rows: torch.Tensor, bank: CodeBank, gen: torch.Generator, negatives: int,
                tau: float) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(distillation, InfoNCE, batch top-1 accuracy) of sketch vectors v [B, dim] whose images are bank `rows` [B].

    Distillation: mean squared index distance to the own stored vector, over the bank's mean squared norm.
    InfoNCE: logits -d^2 / tau over [own vector | its K hard neighbours' | `negatives` random] stored vectors.
    """
    vectors = bank.vectors.to(v.device)
    target = vectors[rows]                                                     # [B, dim]
    distill = (v - target).square().sum(1).mean() / bank.mean_sq_norm
    n = bank.num_images
    image = rows % n
    hard_rows = bank.hard.to(v.device)[image] + (rows - image)[:, None]        # neighbours, mirrored alike [B, K]
    rand = torch.randint(len(vectors), (negatives,), generator=gen).to(v.device)
    d2_own = (v - target).square().sum(1, keepdim=True)                        # [B, 1]
    d2_hard = (v[:, None] - vectors[hard_rows]).square().sum(2)               # [B, K]
    negs = vectors[rand]
    # |v|^2 + |c|^2 - 2 v.c: cdist's backward costs 3x more here
    d2_rand = v.square().sum(1, keepdim=True) + negs.square().sum(1)[None] - 2 * v @ negs.T   # [B, negatives]
    d2_rand = d2_rand.masked_fill(rand[None] == rows[:, None], float("inf"))  # a random pick of the own row
    logits = -torch.cat([d2_own, d2_hard, d2_rand], dim=1) / tau
    nce = F.cross_entropy(logits, torch.zeros(len(v), dtype=torch.long, device=v.device))
    accuracy = (logits.argmax(1) == 0).float().mean().item()
    return distill, nce, accuracy


def logit_tau(bank: CodeBank, target_std: float = 5.0, sample: int = 2048, seed: int = 0) -> float:
    """The temperature at which -d^2 / tau between random stored vectors has std `target_std`."""
    gen = torch.Generator().manual_seed(seed)
    a, b = (bank.vectors[torch.randint(len(bank.vectors), (sample,), generator=gen)] for _ in range(2))
    return float((a - b).square().sum(1).std() / target_std)


@dataclass(frozen=True)
class IndexEncoderTrainConfig:
    """Hyper-parameters of E's training in the index space (fine-tuned from an E, G and inverter frozen)."""

    steps: int = 6000
    batch: int = 32
    lr: float = 2e-4                 # Adam, cosine decay to 5 % over `steps`
    distill: float = 1.0             # weight of the distance to the own stored vector
    contrastive: float = 1.0         # weight of InfoNCE against the bank
    negatives: int = 4096            # random stored vectors per step, beside each sketch's hard neighbours
    logit_std: float = 5.0           # sets tau: logits between random stored vectors have this std
    tau: float = 0.0                 # > 0: this temperature instead of the one `logit_std` sets
    hard_fraction: float = 0.25      # share of a batch drawn as a nearest neighbour of another member
    image_every: int = 4             # every N steps an image loss on `image_batch` sketches (0: never)
    image_batch: int = 8
    image_weight: float = 0.1        # x (L2 + 0.8 perceptual) of G(E(sketch)) against the image
    shift: int = 2                   # whole-pixel sketch shift, on top of the drawing's own jitter
    xflip: bool = True
    perceptual: str = "seg"
    seed: int = 0
    snapshot_every: int = 500
    sample_every: int = 500

    def __post_init__(self) -> None:
        check_steps(self.steps, self.batch, self.snapshot_every, self.sample_every)
        if self.negatives < 1:
            raise BadInputError("index-space training needs negatives >= 1")
        check_rates("index-space training", {"lr": self.lr},
                    {"distill": self.distill, "contrastive": self.contrastive, "image_weight": self.image_weight,
                     "tau": self.tau})
        if not 0 <= self.hard_fraction <= 0.5 or self.image_every < 0 or self.image_batch < 1 or self.shift < 0:
            raise BadInputError("hard_fraction must be in [0, 0.5], image_every and shift >= 0, image_batch >= 1")


def train_index_encoder(pairs: PairSet, bank: CodeBank, E: Encoder, G: Generator, out_dir: str | os.PathLike,
                        tc: IndexEncoderTrainConfig = IndexEncoderTrainConfig(),
                        weighting: LatentWeighting = DEFAULT_WEIGHTING, perceptual: PerceptualDistance | None = None,
                        device: str | torch.device = "cpu", resume: bool = True, init_version: str | None = None,
                        progress: Callable[[TrainProgress], None] | None = None,
                        projector: LatentProjector | None = None, projector_meta: dict | None = None) -> Path:
    """Fine-tune sketch encoder E so its code lands on the stored vector of the sketched image; return encoder.pt.

    With `projector` (trained on `bank`'s codes; `projector_meta`: its checkpoint's meta) the losses run in its
    retrieval space, its query head is fine-tuned beside E, and OUT/projector.pt is written next to encoder.pt.
    """
    if bank.num_images != len(pairs):
        raise BadInputError(f"the code bank holds {bank.num_images} images, the pairs {len(pairs)}: "
                            "build both from the same source")
    if bank.info.get("weighting") != weighting.spec():
        raise BadInputError(f"the code bank was made with weighting {bank.info.get('weighting')}, "
                            f"not {weighting.spec()}")
    device = torch.device(device)
    out_dir = out_path(out_dir)
    G = G.to(device).eval().requires_grad_(False)
    E = E.to(device).train().requires_grad_(True)
    g_version = model_version(G)
    perceptual = resolve_perceptual(perceptual, tc.perceptual, device) if tc.image_every else None
    params, networks = list(E.parameters()), {"E": E}
    configs = {"encoder": E.config, "generator": g_version, "bank": bank.info.get("inverter_version"),
               **run_record(tc, pairs_data(pairs))}
    if projector is not None:
        if projector.config.in_dim != bank.vectors.shape[1] or projector.config.weighting != weighting.spec():
            raise BadInputError(f"the projector reads {projector.config.in_dim}-d vectors under "
                                f"{projector.config.weighting}, the code bank holds {bank.vectors.shape[1]}-d "
                                f"ones under {weighting.spec()}")
        projector = projector.to(device).train().requires_grad_(False)
        projector.query.requires_grad_(True)       # the archive head stays: it makes the index's vectors
        bank = project_bank(bank, projector)
        params += list(projector.query.parameters())
        networks["P"] = projector
        configs.update(projector=projector.config, projector_init=bank.info["projector_version"])
    tau = tc.tau or logit_tau(bank, tc.logit_std)
    torch.manual_seed(tc.seed)
    data_gen = torch.Generator().manual_seed(tc.seed)
    opt = torch.optim.Adam(params, lr=tc.lr)
    optimizers = {"E": opt}
    state_path, step, curves, report = start_run(out_dir, "index_encoder", networks, optimizers, configs, data_gen,
                                                 device, resume, progress, "train encoder (index space)", tc.steps)
    meta = {"generator_version": g_version, "inverter_version": bank.info.get("inverter_version"),
            "perceptual": None if perceptual is None else perceptual.version, "seed": tc.seed,
            "objective": "index" if projector is None else "projector", "init_version": init_version,
            "tau": tau, "weighting": weighting.spec(),
            "train_config": config_to_dict(tc), "bank": bank.info, "data": {**pairs.info, "num_pairs": len(pairs)},
            "sketch_input": pairs.info.get("recipe")}
    if projector is not None:
        meta["projector_init_version"] = bank.info["projector_version"]
    n_fixed = min(SAMPLE_ROWS, len(pairs))
    fixed = as_float(pairs.sketches[:n_fixed, 0][:, None]).to(device), as_float(pairs.images[:n_fixed]).to(device)

    def write_samples() -> None:
        with torch.no_grad():
            x_hat = G(E(fixed[0]), noise_mode="const")
        sheet = torch.stack([sketch_rgb(fixed[0]), x_hat, fixed[1]], dim=1).flatten(0, 1)
        save_image_grid(sheet, out_dir / "samples" / f"encoder{step:07d}.png", 3)

    def snapshot(final: bool) -> Path:
        save_state(state_path, "index_encoder", step, networks, optimizers, configs, data_gen, device)
        if not final:
            return state_path
        path = save_checkpoint(out_dir / "encoder.pt", kind="encoder", config=E.config, state_dict=E.state_dict(),
                               w_avg=E.w_avg, meta={**meta, "step": step})
        if projector is not None:
            save_checkpoint(out_dir / "projector.pt", kind=PROJECTOR_KIND, config=projector.config,
                            state_dict=projector.state_dict(),
                            meta={**(projector_meta or {}), "encoder_version": model_version(E), "step": step,
                                  "fine_tuned_with_encoder": {"init_version": bank.info["projector_version"],
                                                              "steps": step, "tau": tau}})
        return path

    while step < tc.steps:
        t0 = time.perf_counter()
        for group in opt.param_groups:  # a function of the step alone: a resumed run keeps the schedule
            group["lr"] = tc.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(step / tc.steps, 1.0))))
        idx = hard_batch_indices(data_gen, len(pairs), tc.batch, bank.hard, tc.hard_fraction)
        sketch, image, mirrored = draw_pairs(pairs, idx, data_gen, tc.xflip, tc.shift)
        sketch, image = sketch.to(device), image.to(device)
        rows = (idx + mirrored.long() * bank.num_images).to(device)
        w_plus = E(sketch)
        v = latent_vectors(w_plus, E.w_avg, weighting)
        if projector is not None:
            v = projector(v, "query")
        distill, nce, accuracy = bank_losses(v, rows, bank, data_gen, tc.negatives, tau)
        loss = tc.distill * distill + tc.contrastive * nce
        terms = {"distill": distill.item(), "nce": nce.item(), "batch_acc": accuracy}
        if tc.image_every and step % tc.image_every == 0:
            x_hat = G(w_plus[:tc.image_batch], noise_mode="const")
            recon, parts = reconstruction_loss(x_hat, image[:tc.image_batch], perceptual, 1.0, 0.8)
            loss = loss + tc.image_weight * recon
            terms.update(parts)
        fitted = optimizer_step(opt, loss)
        step += 1
        check_finite("index-space encoder", step, fitted)
        report(TrainProgress(step, tc.steps, fitted, terms, time.perf_counter() - t0))
        finish_step(step, tc.steps, tc.sample_every, tc.snapshot_every, write_samples, snapshot, curves)
    return snapshot(final=True)
