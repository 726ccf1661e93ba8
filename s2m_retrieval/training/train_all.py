"""`s2m train all`: every network of a model bundle trained in order on one archive, each stage resumable.

Layout of the bundle folder OUT: the networks (segmenter.pt, generator.pt, encoder.pt, latent_discriminator.pt,
refiner.pt, inverter.pt), bundle.json, samples/<stage>.png, and train/ (plan.json, pairs.pt, one run folder
per stage with its latest.pt). A network appears in OUT only when its stage has finished, so a stage is done
exactly when its file is there; an interrupted stage resumes from its run folder's latest.pt.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path

from s2m_retrieval.errors import ArchiveError, BadInputError, CheckpointError
from s2m_retrieval.training.budgets import STAGES, TrainAllOptions
from s2m_retrieval.training.stages import RUNS, STAGE_RUNNERS, Progress, StageRun, stage_metric

PLAN = "plan.json"
def archive_fingerprint(entries) -> str:
    """sha256 over every image's relative path and content hash, with its mask's and labels.csv's."""
    import hashlib

    from s2m_retrieval.ingest.reader import file_sha256

    h = hashlib.sha256()
    for entry in entries:
        h.update(f"{entry.rel}\0{file_sha256(entry.path)}\0".encode())
        if entry.mask_path is not None:
            h.update(f"mask\0{file_sha256(entry.mask_path)}\0".encode())
        h.update(json.dumps(entry.labels, sort_keys=True, default=str).encode())
    return h.hexdigest()


def _plan(o: TrainAllOptions, n_images: int, n_held: int, has_masks: bool, fingerprint: str) -> dict:
    from s2m_retrieval.networks.checkpoint import load_checkpoint, version_hash
    from s2m_retrieval.model.segmentation import segmenter_path

    segmenter = "trained on the archive's masks"
    if not has_masks:
        src = segmenter_path(o.segmenter)
        segmenter = f"{'given' if o.segmenter else 'shipped'} {version_hash(load_checkpoint(src, kind='segmenter'))}"
    return {"archive": str(o.archive), "fingerprint": fingerprint, "n_images": n_images, "n_held_out": n_held,
            "res": o.res, "budget": o.budget, "fit": o.fit, "perceptual": o.perceptual, "segmenter": segmenter,
            "seed": o.seed, "pairs_per_image": o.pairs_per_image,
            "steps": {s: o.steps(s) for s in STAGES}, "batch": {s: o.batch(s) for s in STAGES},
            "overrides": {k: v for k, v in o.overrides.items() if k not in ("steps", "batch")}}


def _check_plan(out: Path, plan: dict) -> None:
    """A bundle folder holds one training: a rerun must ask for the same, so finished stages stay valid."""
    path = out / RUNS / PLAN
    if path.is_file():
        try:
            before = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            raise CheckpointError(f"{path} is damaged; move {out} away and start again") from None
        changed = sorted(k for k in set(before) | set(plan) if before.get(k) != plan.get(k))
        if changed:
            what = ", ".join(f"{k} {before.get(k)!r} -> {plan.get(k)!r}" if k not in ("fingerprint", "overrides")
                             else f"{k} changed" for k in changed)
            raise BadInputError(f"{out} holds a training started with other settings ({what}); rerun with the "
                                f"same ones to resume, or choose a new --out")
        return
    if any((out / f"{s}.pt").exists() for s in STAGES) and not (out / RUNS).is_dir():
        raise BadInputError(f"{out} already holds networks not trained by `s2m train all`; choose a new --out")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(plan, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def train_all(options: TrainAllOptions, out: str | os.PathLike, device: str = "cpu",
              echo: Callable[[str], None] = print, progress: Progress | None = None,
              stage_start: Callable[[int, str, int], None] | None = None) -> Path:
    """Train every network of a bundle into `out` (resuming what a previous run left), measure it, write
    bundle.json; return its path. `stage_start(index, stage, total_steps)` is called before each stage runs."""
    from s2m_retrieval.model.bundle import build_manifest, write_manifest
    from s2m_retrieval.data.archive import scan_archive

    o = dataclasses.replace(options, archive=Path(options.archive).resolve())
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise BadInputError(f"--out {out} is a file, not a folder")
    if out.resolve().is_relative_to(o.archive):  # its sample grids would become archive images
        raise BadInputError(f"--out {out} is inside the archive {o.archive}; put the bundle elsewhere")
    entries = scan_archive(o.archive)
    n = len(entries)
    n_held = o.held_out if o.held_out is not None else min(200, max(2, round(0.05 * n)))
    if n - n_held < 2:
        raise ArchiveError(f"{o.archive} has {n} images; training needs at least {n_held + 2} "
                           f"({n_held} held out for the metrics)")
    train_entries = entries[:n - n_held]
    has_masks = sum(e.mask_path is not None for e in train_entries) >= 2
    fingerprint = archive_fingerprint(entries)
    plan = _plan(o, n, n_held, has_masks, fingerprint)
    out.mkdir(parents=True, exist_ok=True)
    _check_plan(out, plan)
    run = StageRun(o, out, device, echo, progress, n_train=n - n_held, has_masks=has_masks)
    echo(f"training a model bundle in {out} on {n - n_held} of {n} images from {o.archive} "
         f"({n_held} held out for the metrics), {o.res} px, budget {o.budget}")
    if o.res == 64:
        from s2m_retrieval.training.budgets import estimate_seconds

        steps = {s: o.steps(s) for s in STAGES}
        cpu = sum(estimate_seconds(steps, n - n_held, o.pairs_per_image).values()) / 3600
        gpu = sum(estimate_seconds(steps, n - n_held, o.pairs_per_image, gpu=True).values()) / 3600
        echo(f"expected time from scratch: ~{cpu:.1f} h on one CPU thread (measured per-step figures), "
             f"~{gpu:.1f} h on one GPU (an estimate)")
    for index, stage in enumerate(STAGES, start=1):
        if run.done(stage):
            echo(f"[{index}/{len(STAGES)}] {stage}: done earlier, kept")
            continue
        if stage_start is not None:
            stage_start(index, stage, o.steps(stage))
        STAGE_RUNNERS[stage](run)
    echo("measuring the bundle on the held-out images")
    metrics = _measure(run, entries[n - n_held:])
    manifest = build_manifest(out, name=out.resolve().name,
                              archive={"path": str(o.archive), "fingerprint": fingerprint, "n_images": n,
                                       "n_train": n - n_held, "n_held_out": n_held, "fit": o.fit,
                                       "masks": "archive" if has_masks else "none"},
                              training={k: plan[k] for k in ("res", "budget", "seed", "perceptual", "segmenter",
                                                             "pairs_per_image", "steps", "batch", "overrides")},
                              metrics=metrics)
    return write_manifest(out, manifest)


def _measure(run: StageRun, held_entries) -> dict:
    from s2m_retrieval.generation.bundle_metrics import bundle_metrics, held_out_archive
    from s2m_retrieval.data.archive import load_archive_arrays
    from s2m_retrieval.training.segmenter import load_segmenter

    o = run.options
    segmenter = load_segmenter(run.out / "segmenter.pt")  # on the CPU: the feature code reads CPU batches
    reference, _, _ = load_archive_arrays(o.archive, o.res, limit=min(run.n_train, len(held_entries)), policy=o.fit)
    held = held_out_archive(held_entries, reference, o.res, o.fit, segmenter, seed=o.seed)
    return bundle_metrics(run.out, held, stage_metric(run), segmenter, run.device, seed=o.seed)
