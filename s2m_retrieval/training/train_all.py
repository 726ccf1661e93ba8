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
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from s2m_retrieval.errors import ArchiveError, BadInputError, CheckpointError
from s2m_retrieval.training.budgets import BATCH, BUDGETS, GENERATOR_CHANNELS, RESOLUTIONS, STAGES

RUNS = "train"
PLAN = "plan.json"
PAIRS = "pairs.pt"
# Config parts --config-json may override (tests use tiny networks), besides "steps" and "batch" per stage.
CONFIG_PARTS = ("segmenter", "generator", "encoder", "discriminator", "refiner", "inverter")

# progress(stage, step, total_steps, loss): after every optimizer step of a stage.
Progress = Callable[[str, int, int, float], None]


@dataclass(frozen=True)
class TrainAllOptions:
    """What `s2m train all` was asked for; everything but device and threads is the run's plan."""

    archive: Path
    res: int = 64
    budget: str = "small"
    fit: str = "crop"
    perceptual: str = "seg"
    segmenter: Path | None = None     # for archives without masks (default: the shipped phantom segmenter)
    seed: int = 0
    pairs_per_image: int = 4
    held_out: int | None = None       # default: 5 % of the archive, between 2 and 200 images
    snapshot_every: int = 100         # optimizer steps between resume snapshots
    overrides: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        from s2m_retrieval.data.archive import FIT_POLICIES

        if self.res not in RESOLUTIONS:
            raise BadInputError(f"--res must be one of {', '.join(map(str, RESOLUTIONS))}, got {self.res}")
        if self.budget not in BUDGETS:
            raise BadInputError(f"--budget must be one of {', '.join(BUDGETS)}, got {self.budget!r}")
        if self.fit not in FIT_POLICIES:
            raise BadInputError(f"--fit must be crop or pad, got {self.fit!r}")
        if self.pairs_per_image < 1 or self.snapshot_every < 1 or (self.held_out is not None and self.held_out < 2):
            raise BadInputError("--pairs-per-image and --snapshot-every must be >= 1, --held-out >= 2")
        unknown = set(self.overrides) - set(CONFIG_PARTS) - {"steps", "batch"}
        if unknown:
            raise BadInputError(f"--config-json: unknown parts {sorted(unknown)} "
                                f"(known: {', '.join(CONFIG_PARTS)}, steps, batch)")

    def steps(self, stage: str) -> int:
        """Optimizer steps of a stage: the budget's, unless overridden."""
        return int(self.overrides.get("steps", {}).get(stage, BUDGETS[self.budget].steps[stage]))

    def batch(self, stage: str) -> int:
        """Batch size of a stage."""
        return int(self.overrides.get("batch", {}).get(stage, BATCH[stage]))

    def part(self, name: str) -> dict:
        """Config field overrides of one network."""
        return {k: tuple(v) if isinstance(v, list) else v for k, v in self.overrides.get(name, {}).items()}


@dataclass
class _Run:
    """One `train all` invocation: options, bundle folder, device, where to report."""

    options: TrainAllOptions
    out: Path
    device: str
    echo: Callable[[str], None]
    progress: Progress | None
    n_train: int = 0
    has_masks: bool = False

    def run_dir(self, stage: str) -> Path:
        return self.out / RUNS / stage

    def done(self, network: str) -> bool:
        return (self.out / f"{network}.pt").is_file()

    def report(self, stage: str) -> Callable:
        progress = self.progress

        def report(p) -> None:  # a GAN or a latent-loop TrainProgress
            if progress is not None:
                progress(stage, p.step, p.total_steps, p.loss_g if hasattr(p, "loss_g") else p.loss)
        return report


def _place(src: Path, dst: Path) -> None:
    """Copy a finished network into the bundle atomically: its presence marks the stage as done."""
    fd, tmp = tempfile.mkstemp(prefix=dst.name + ".", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _latest_sample(run_dir: Path, out: Path, stage: str) -> None:
    grids = sorted((run_dir / "samples").glob(f"{'fakes' if stage == 'generator' else stage}*.png"))
    if grids:
        (out / "samples").mkdir(exist_ok=True)
        _place(grids[-1], out / "samples" / f"{stage}.png")


def _segmenter_grid(model, images, path: Path) -> None:
    """Sample sheet of the segmenter: images over the sketches drawn from its label maps."""
    import numpy as np
    import torch

    from s2m_retrieval.data.sketch import sketch_from_mask
    from s2m_retrieval.training.gan import save_image_grid
    from s2m_retrieval.training.segmenter import segment

    shown = images[:8]
    size = shown.shape[1]
    sketches = np.stack([sketch_from_mask(m, size) for m in segment(model, shown)])
    tiles = torch.cat([torch.from_numpy(shown).permute(0, 3, 1, 2),
                       torch.from_numpy(sketches)[:, None].expand(-1, 3, -1, -1)]).float() / 127.5 - 1
    save_image_grid(tiles, path, len(shown))


def _segmenter_stage(run: _Run) -> None:
    from s2m_retrieval.checkpoint import load_checkpoint
    from s2m_retrieval.data.archive import ReadStats, load_archive_arrays
    from s2m_retrieval.networks.segmenter import SegmenterConfig
    from s2m_retrieval.segmentation import segmenter_path
    from s2m_retrieval.training.segmenter import SegTrainConfig, load_segmenter, train_segmenter

    o, dst = run.options, run.out / "segmenter.pt"
    if not run.has_masks:
        src = Path(segmenter_path(o.segmenter))
        load_checkpoint(src, kind="segmenter")
        which = "the given" if o.segmenter else "the shipped phantom"
        hint = "" if o.segmenter else "; for another anatomy give a segmenter trained on it with --segmenter"
        run.echo(f"segmenter: skipped, the archive has no masks/; {which} segmenter {src} draws the training "
                 f"sketches{hint}")
        _place(src, dst)
        return
    stats = ReadStats()
    images, masks, _ = load_archive_arrays(o.archive, o.res, with_masks=True, limit=run.n_train, policy=o.fit,
                                           stats=stats)
    run.echo(f"segmenter: {len(images)} images with masks" + (f" ({stats.n_bad} skipped)" if stats.n_bad else ""))
    cfg = dataclasses.replace(SegmenterConfig(img_resolution=o.res), **o.part("segmenter"))
    run_dir = run.run_dir("segmenter")
    run_dir.mkdir(parents=True, exist_ok=True)
    steps = o.steps("segmenter")

    def progress(step: int, total: int, loss: float) -> None:
        if run.progress is not None:
            run.progress("segmenter", step, total, loss)

    metrics = train_segmenter(images, masks, SegTrainConfig(steps=steps, batch=o.batch("segmenter"), seed=o.seed),
                              cfg, out_path=run_dir / "segmenter.pt", device=run.device, progress=progress)
    _segmenter_grid(load_segmenter(run_dir / "segmenter.pt"), images, run_dir / "samples" / "segmenter.png")
    run.echo(f"segmenter: held-out mean DICE {metrics['mean_dice']:.3f} on {metrics['n_val']} images")
    _latest_sample(run_dir, run.out, "segmenter")
    _place(run_dir / "segmenter.pt", dst)


def _generator_stage(run: _Run) -> None:
    import torch

    from s2m_retrieval.data.archive import load_archive_arrays
    from s2m_retrieval.networks.stylegan2 import GeneratorConfig
    from s2m_retrieval.training.gan import GanTrainConfig, train_generator

    o = run.options
    images, _, _ = load_archive_arrays(o.archive, o.res, limit=run.n_train, policy=o.fit)
    base, cap = GENERATOR_CHANNELS[o.res]
    g_cfg = dataclasses.replace(GeneratorConfig(img_resolution=o.res, channel_base=base, channel_max=cap),
                                **o.part("generator"))
    batch = o.batch("generator")
    every = o.snapshot_every
    tc = GanTrainConfig(batch=batch, total_kimg=o.steps("generator") * batch / 1000, seed=o.seed,
                        snapshot_every=every, sample_every=max(every, 500))
    data = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    path = train_generator(data, run.run_dir("generator"), g_config=g_cfg, train_config=tc, device=run.device,
                           resume=True, progress=run.report("generator"))
    _latest_sample(run.run_dir("generator"), run.out, "generator")
    _place(path, run.out / "generator.pt")


def _metric(run: _Run):
    from s2m_retrieval.perceptual import load_perceptual

    name = run.options.perceptual
    return load_perceptual(name, run.device, checkpoint=run.out / "segmenter.pt" if name == "seg" else None)


def _pairs(run: _Run):
    from s2m_retrieval.training.pair_source import source_pairs

    o = run.options
    return source_pairs(o.archive, o.res, variants=o.pairs_per_image, limit=run.n_train,
                        segmenter=run.out / "segmenter.pt", cache=run.out / RUNS / PAIRS, policy=o.fit)


def _encoder_stage(run: _Run) -> None:
    from s2m_retrieval.networks.encoders import LatentDiscriminatorConfig, encoder_config_for
    from s2m_retrieval.networks.stylegan2 import load_generator
    from s2m_retrieval.training.encoder import DISCRIMINATOR_FILE, EncoderTrainConfig, train_encoder

    o = run.options
    G = load_generator(run.out / "generator.pt", run.device).requires_grad_(False)
    enc_cfg = encoder_config_for(G.config, in_channels=1, **o.part("encoder"))
    d_cfg = dataclasses.replace(LatentDiscriminatorConfig(w_dim=G.config.w_dim), **o.part("discriminator"))
    tc = EncoderTrainConfig(steps=o.steps("encoder"), batch=o.batch("encoder"), seed=o.seed, perceptual=o.perceptual,
                            snapshot_every=o.snapshot_every, sample_every=max(o.snapshot_every, 500))
    run_dir = run.run_dir("encoder")
    path = train_encoder(_pairs(run), G, run_dir, enc_cfg, d_cfg, tc, _metric(run), run.device, resume=True,
                         progress=run.report("encoder"))
    _latest_sample(run_dir, run.out, "encoder")
    _place(run_dir / DISCRIMINATOR_FILE, run.out / "latent_discriminator.pt")
    _place(path, run.out / "encoder.pt")


def _refiner_stage(run: _Run) -> None:
    from s2m_retrieval.networks.refiner import refiner_config_for
    from s2m_retrieval.networks.stylegan2 import load_generator
    from s2m_retrieval.training.refiner import RefinerTrainConfig, train_refiner
    from s2m_retrieval.training.sketch2medi import load_encoder

    o = run.options
    G = load_generator(run.out / "generator.pt", run.device).requires_grad_(False)
    E = load_encoder(run.out / "encoder.pt", run.device)
    cfg = refiner_config_for(G, **o.part("refiner"))
    tc = RefinerTrainConfig(steps=o.steps("refiner"), batch=o.batch("refiner"), seed=o.seed, perceptual=o.perceptual,
                            snapshot_every=o.snapshot_every, sample_every=max(o.snapshot_every, 500))
    run_dir = run.run_dir("refiner")
    path = train_refiner(_pairs(run), G, E, run_dir, cfg, tc, _metric(run), run.device, resume=True,
                         progress=run.report("refiner"))
    _latest_sample(run_dir, run.out, "refiner")
    _place(path, run.out / "refiner.pt")


def _inverter_stage(run: _Run) -> None:
    from s2m_retrieval.networks.encoders import LatentDiscriminatorConfig, encoder_config_for
    from s2m_retrieval.networks.stylegan2 import load_generator
    from s2m_retrieval.training.encoder import EncoderTrainConfig
    from s2m_retrieval.training.inverter import train_inverter
    from s2m_retrieval.training.pair_source import source_images

    o = run.options
    G = load_generator(run.out / "generator.pt", run.device).requires_grad_(False)
    channels = G.config.img_channels
    enc_cfg = encoder_config_for(G.config, in_channels=channels, extra_channels=channels, **o.part("inverter"))
    d_cfg = dataclasses.replace(LatentDiscriminatorConfig(w_dim=G.config.w_dim), **o.part("discriminator"))
    tc = EncoderTrainConfig(steps=o.steps("inverter"), batch=o.batch("inverter"), seed=o.seed, iterations=3,
                            perceptual=o.perceptual, snapshot_every=o.snapshot_every,
                            sample_every=max(o.snapshot_every, 500))
    images = source_images(o.archive, o.res, limit=run.n_train, policy=o.fit)
    run_dir = run.run_dir("inverter")
    path = train_inverter(images, G, run_dir, enc_cfg, d_cfg, tc, _metric(run), run.device, resume=True,
                          progress=run.report("inverter"))
    _latest_sample(run_dir, run.out, "inverter")
    _place(path, run.out / "inverter.pt")


STAGE_RUNNERS = {"segmenter": _segmenter_stage, "generator": _generator_stage, "encoder": _encoder_stage,
                 "refiner": _refiner_stage, "inverter": _inverter_stage}


def archive_fingerprint(entries) -> str:
    """sha256 over every image's relative path and content hash, with its mask's and labels.csv's."""
    import hashlib

    from s2m_retrieval.build_reader import file_sha256

    h = hashlib.sha256()
    for entry in entries:
        h.update(f"{entry.rel}\0{file_sha256(entry.path)}\0".encode())
        if entry.mask_path is not None:
            h.update(f"mask\0{file_sha256(entry.mask_path)}\0".encode())
        h.update(json.dumps(entry.labels, sort_keys=True, default=str).encode())
    return h.hexdigest()


def _plan(o: TrainAllOptions, n_images: int, n_held: int, has_masks: bool, fingerprint: str) -> dict:
    from s2m_retrieval.checkpoint import load_checkpoint, version_hash
    from s2m_retrieval.segmentation import segmenter_path

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
    from s2m_retrieval.bundle import build_manifest, write_manifest
    from s2m_retrieval.data.archive import scan_archive

    o = dataclasses.replace(options, archive=Path(options.archive).resolve())
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise BadInputError(f"--out {out} is a file, not a folder")
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
    run = _Run(o, out, device, echo, progress, n_train=n - n_held, has_masks=has_masks)
    echo(f"training a model bundle in {out} on {n - n_held} of {n} images from {o.archive} "
         f"({n_held} held out for the metrics), {o.res} px, budget {o.budget}")
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


def _measure(run: _Run, held_entries) -> dict:
    from s2m_retrieval.bundle_metrics import bundle_metrics, held_out_archive
    from s2m_retrieval.data.archive import load_archive_arrays
    from s2m_retrieval.training.segmenter import load_segmenter

    o = run.options
    segmenter = load_segmenter(run.out / "segmenter.pt", run.device)
    reference, _, _ = load_archive_arrays(o.archive, o.res, limit=min(run.n_train, len(held_entries)), policy=o.fit)
    held = held_out_archive(held_entries, reference, o.res, o.fit, segmenter, seed=o.seed)
    return bundle_metrics(run.out, held, _metric(run), segmenter, run.device, seed=o.seed)
