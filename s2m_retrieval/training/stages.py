"""The stages of `s2m train all`: each trains one network into the bundle folder, resuming from its run folder."""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from s2m_retrieval.training.budgets import GENERATOR_CHANNELS, TrainAllOptions

RUNS = "train"
PAIRS = "pairs.pt"

# progress(stage, step, total_steps, loss): after every optimizer step of a stage.
Progress = Callable[[str, int, int, float], None]


@dataclass
class StageRun:
    """One `train all` invocation as the stages see it: options, bundle folder, device, where to report."""

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


def _frozen_generator(run: StageRun):
    """The generator stage's G, frozen, for the stages trained against it."""
    from s2m_retrieval.networks.stylegan2 import load_generator

    return load_generator(run.out / "generator.pt", run.device).requires_grad_(False)


def _publish(run: StageRun, run_dir: Path, path: Path, stage: str) -> None:
    """Put a finished stage's network (and its last sample grid) into the bundle folder."""
    _latest_sample(run_dir, run.out, stage)
    _place(path, run.out / f"{stage}.pt")


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


def _segmenter_stage(run: StageRun) -> None:
    from s2m_retrieval.networks.checkpoint import load_checkpoint
    from s2m_retrieval.data.archive import ReadStats, load_archive_arrays
    from s2m_retrieval.networks.segmenter import SegmenterConfig
    from s2m_retrieval.model.segmentation import segmenter_path
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
                              cfg, out_path=run_dir / "segmenter.pt", device=run.device, progress=progress,
                              curves_dir=run_dir)
    _segmenter_grid(load_segmenter(run_dir / "segmenter.pt"), images, run_dir / "samples" / "segmenter.png")
    run.echo(f"segmenter: held-out mean DICE {metrics['mean_dice']:.3f} on {metrics['n_val']} images")
    _latest_sample(run_dir, run.out, "segmenter")
    _place(run_dir / "segmenter.pt", dst)


def _generator_stage(run: StageRun) -> None:
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


def stage_metric(run: StageRun):
    """The perceptual metric the E/H/inverter stages train with (seg: over the bundle's own segmenter)."""
    from s2m_retrieval.model.perceptual import load_perceptual

    name = run.options.perceptual
    return load_perceptual(name, run.device, checkpoint=run.out / "segmenter.pt" if name == "seg" else None)


def _pairs(run: StageRun):
    from s2m_retrieval.training.pair_source import source_pairs

    o = run.options
    # The bundle's own cache (its plan.json guards the settings): drawn again when the archive's files changed.
    return source_pairs(o.archive, o.res, variants=o.pairs_per_image, limit=run.n_train,
                        segmenter=run.out / "segmenter.pt", cache=run.out / RUNS / PAIRS, policy=o.fit, replace=True)


def _encoder_stage(run: StageRun) -> None:
    from s2m_retrieval.networks.encoders import LatentDiscriminatorConfig, encoder_config_for
    from s2m_retrieval.training.encoder import DISCRIMINATOR_FILE, EncoderTrainConfig, train_encoder

    o = run.options
    G = _frozen_generator(run)
    enc_cfg = encoder_config_for(G.config, in_channels=1, **o.part("encoder"))
    d_cfg = dataclasses.replace(LatentDiscriminatorConfig(w_dim=G.config.w_dim), **o.part("discriminator"))
    tc = EncoderTrainConfig(steps=o.steps("encoder"), batch=o.batch("encoder"), seed=o.seed, perceptual=o.perceptual,
                            snapshot_every=o.snapshot_every, sample_every=max(o.snapshot_every, 500))
    run_dir = run.run_dir("encoder")
    path = train_encoder(_pairs(run), G, run_dir, enc_cfg, d_cfg, tc, stage_metric(run), run.device, resume=True,
                         progress=run.report("encoder"))
    _place(run_dir / DISCRIMINATOR_FILE, run.out / "latent_discriminator.pt")
    _publish(run, run_dir, path, "encoder")


def _refiner_stage(run: StageRun) -> None:
    from s2m_retrieval.networks.refiner import refiner_config_for
    from s2m_retrieval.training.refiner import RefinerTrainConfig, train_refiner
    from s2m_retrieval.training.sketch2medi import load_encoder

    o = run.options
    G = _frozen_generator(run)
    E = load_encoder(run.out / "encoder.pt", run.device)
    cfg = refiner_config_for(G, **o.part("refiner"))
    tc = RefinerTrainConfig(steps=o.steps("refiner"), batch=o.batch("refiner"), seed=o.seed, perceptual=o.perceptual,
                            snapshot_every=o.snapshot_every, sample_every=max(o.snapshot_every, 500))
    run_dir = run.run_dir("refiner")
    path = train_refiner(_pairs(run), G, E, run_dir, cfg, tc, stage_metric(run), run.device, resume=True,
                         progress=run.report("refiner"))
    _publish(run, run_dir, path, "refiner")


def _inverter_stage(run: StageRun) -> None:
    from s2m_retrieval.networks.encoders import LatentDiscriminatorConfig, encoder_config_for
    from s2m_retrieval.training.encoder import EncoderTrainConfig
    from s2m_retrieval.training.inverter import train_inverter
    from s2m_retrieval.training.pair_source import source_images, source_key

    o = run.options
    G = _frozen_generator(run)
    channels = G.config.img_channels
    enc_cfg = encoder_config_for(G.config, in_channels=channels, extra_channels=channels, **o.part("inverter"))
    d_cfg = dataclasses.replace(LatentDiscriminatorConfig(w_dim=G.config.w_dim), **o.part("discriminator"))
    tc = EncoderTrainConfig(steps=o.steps("inverter"), batch=o.batch("inverter"), seed=o.seed, iterations=3,
                            perceptual=o.perceptual, snapshot_every=o.snapshot_every,
                            sample_every=max(o.snapshot_every, 500))
    images = source_images(o.archive, o.res, limit=run.n_train, policy=o.fit)
    run_dir = run.run_dir("inverter")
    path = train_inverter(images, G, run_dir, enc_cfg, d_cfg, tc, stage_metric(run), run.device, resume=True,
                          progress=run.report("inverter"),
                          source=source_key(o.archive, o.res, limit=run.n_train, policy=o.fit))
    _publish(run, run_dir, path, "inverter")


STAGE_RUNNERS = {"segmenter": _segmenter_stage, "generator": _generator_stage, "encoder": _encoder_stage,
                 "refiner": _refiner_stage, "inverter": _inverter_stage}
