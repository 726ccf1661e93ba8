"""End-of-training metrics of a bundle on held-out archive images: domain FD, sketch -> image quality, inversion."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from s2m_retrieval.data.archive import ArchiveEntry, iter_batches
from s2m_retrieval.data.sketch import FreehandConfig, sketch_from_mask
from s2m_retrieval.errors import ArchiveError
from s2m_retrieval.model.perceptual import PerceptualDistance
from s2m_retrieval.generation.sketch_quality import EVAL_SKETCH_STREAM, HeldOut

NA = "n/a"
REFINE_STEPS = 3


def _round(value: float) -> float:
    return float(f"{value:.5g}")


def held_out_archive(entries: Sequence[ArchiveEntry], reference: np.ndarray, size: int, policy: str,
                     segmenter, seed: int = 0) -> HeldOut:
    """Held-out archive entries as sketches (default free-hand strength, seeds never used in training), their
    masks (the archive's when all have one, else the segmenter's) and images; `reference` are training images."""
    from s2m_retrieval.networks.segmenter import segment

    with_masks = all(e.mask_path is not None for e in entries)
    images, masks, kept = [], [], []
    for batch in iter_batches(entries, 64, size, with_masks=with_masks, policy=policy):
        images.append(batch.images)
        kept += batch.entries
        if with_masks:
            masks.append(batch.masks)
    if len(kept) < 2:
        raise ArchiveError(f"only {len(kept)} held-out images are readable; at least 2 are needed for the metrics")
    images = np.concatenate(images)
    masks = np.concatenate(masks) if with_masks else segment(segmenter, images)
    sketches = []
    for index, mask in enumerate(masks):
        stream = int(np.random.SeedSequence([seed, index, EVAL_SKETCH_STREAM]).generate_state(1)[0])
        sketches.append(sketch_from_mask(mask, size, freehand=FreehandConfig(), seed=stream))
    n = min(len(reference), len(images))
    info = {"n": len(images), "files": [e.rel for e in kept], "masks": "archive" if with_masks else "segmenter",
            "sketches": "free-hand, default strength (training drew them at twice that)"}
    return HeldOut(np.stack(sketches), masks, images, reference[:n], info)


@torch.no_grad()
def bundle_metrics(folder: str | os.PathLike, held: HeldOut, metric: PerceptualDistance, segmenter,
                   device: str | torch.device = "cpu", seed: int = 0) -> dict:
    """The manifest's metrics: FD of G's samples in the segmenter's feature space (with the real-vs-real floor),
    perceptual distance and DICE of sketch -> x_hat against the held-out images, inversion quality."""
    from s2m_retrieval.generation.report import generation_report
    from s2m_retrieval.networks.stylegan2 import load_generator
    from s2m_retrieval.generation.sketch_quality import Models, generate_all, invert_quality, mean_distance, sketch_dice
    from s2m_retrieval.networks.segmenter import segment
    from s2m_retrieval.networks.encoders import load_encoder, load_inverter
    from s2m_retrieval.networks.refiner import load_refiner

    folder = Path(folder)
    files = {n: folder / f"{n}.pt" for n in ("generator", "encoder", "refiner", "inverter")}
    G = load_generator(files["generator"], device).requires_grad_(False)
    models = Models(G)
    if files["encoder"].is_file():
        models.encoder = load_encoder(files["encoder"], device)
        if files["refiner"].is_file():
            models.refiner, models.refiner_base = load_refiner(files["refiner"], device), "E + D"
    if files["inverter"].is_file():
        models.inverter = load_inverter(files["inverter"], device)
    metric = metric.to(device)

    report = generation_report(G, held.images, held.reference, segmenter, seed=seed)
    out = {"held_out": held.info, "perceptual_metric": metric.version,
           "domain_fd": {"generated": _round(report["fd_generated"]),
                         "real_vs_real_floor": _round(report["fd_floor_real_vs_real"]),
                         "blurred_real_baseline": _round(report["fd_baseline_blurred_real"])}}
    rows = {}
    if models.encoder is None:
        rows["E"] = NA + " (no encoder.pt)"
    else:
        outputs = generate_all(models, held.sketches, REFINE_STEPS if models.refiner is not None else 0, 32)
        for name, fake in outputs.items():
            label = name.replace("E + D", "E")
            rows[label] = {"perceptual": _round(mean_distance(metric, fake, held.images)),
                           "dice": _round(sketch_dice(segment(segmenter, fake), held.masks))}
    out["sketch_to_image"] = rows
    out["real_image_dice"] = _round(sketch_dice(segment(segmenter, held.images), held.masks))
    if models.inverter is None:
        out["inversion"] = NA + " (no inverter.pt)"
    else:
        row = invert_quality(models, held.images, {"metric": metric}, 0, 32)[-1]
        out["inversion"] = {"iterations": row["iterations"], "perceptual": _round(row["perceptual"]["metric"]),
                            "psnr": _round(row["psnr"])}
    return out
