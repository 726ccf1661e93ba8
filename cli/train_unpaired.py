"""`s2m train cyclegan|unit|ugatit`: the unpaired baselines, on the same pairs and options as `s2m train pix2pix`.

`cli.train` is imported when the commands are registered, not with this module, so `cli/train.py` may call
`register(app)` from its own last line.
"""

from __future__ import annotations

from pathlib import Path

import typer

# kind -> (training module, default learning rate, what it is); the rates are the papers' (and the train configs').
UNPAIRED = {
    "cyclegan": ("s2m_retrieval.training.cyclegan", 2e-4,
                 "CycleGAN (two ResNet generators + PatchGANs, LSGAN + cycle + identity)"),
    "unit": ("s2m_retrieval.training.unit", 1e-4,
             "UNIT (shared-latent VAE-GAN, reconstruction + KL + cycle + multi-scale LSGAN)"),
    "ugatit": ("s2m_retrieval.training.ugatit", 1e-4,
               "U-GAT-IT (CAM attention + AdaLIN generators, global and local CAM critics; adversarial, cycle, "
               "identity and CAM losses)"),
}


def _train(kind: str, archive: str, out: Path, res: int, steps: int, batch: int, lr: float, cycle: float, seed: int,
           pairs_per_image: int, pairs_cache: Path | None, limit: int | None, segmenter: Path | None,
           snapshot_every: int, threads: int, device: str, fresh: bool, config_json: str | None) -> None:
    import importlib

    from cli import train as common
    from s2m_retrieval.training.pair_source import source_size
    from s2m_retrieval.training.unpaired import check_unpaired_count, split_point

    method = importlib.import_module(UNPAIRED[kind][0]).METHOD
    dev = common._setup(threads, device)
    parts = common._overrides(config_json, {kind, "discriminator", "train"})
    cfg = common._replace(method.config_for(res), parts.get(kind, {}))
    d_cfg = common._replace(method.d_config_for(res), parts.get("discriminator", {}))
    tc = common._replace(method.train_config(steps=steps, batch=batch, lr=lr, cycle=cycle, seed=seed,
                                             snapshot_every=snapshot_every, sample_every=snapshot_every),
                         parts.get("train", {}))
    start = common._start(kind, out, tc, fresh, common._source_key(archive, res, pairs_per_image, limit, segmenter))
    if start is None:
        return
    check_unpaired_count(source_size(archive, limit))  # before any pair is drawn
    pairs = common._pairs(archive, res, pairs_per_image, limit, segmenter, out, pairs_cache, fresh)
    h = split_point(pairs)
    typer.echo(f"unpaired: the sketches of images 0..{h - 1}, the images {h}..{len(pairs) - 1}")
    report, last = common._progress(f"train {kind}", out, tc.steps, start)
    path = method.train(pairs, out, cfg, d_cfg, tc, dev, resume=not fresh, progress=report)
    common._done(kind, path, out, last)


def _command(kind: str, common):
    """The typer command training `kind`: pix2pix's options (`common` is cli.train, its shared options through
    `_shared_options`), the method's learning rate, `--cycle` for its main weight."""
    _, default_lr, what = UNPAIRED[kind]

    def command(
        archive: str = typer.Argument(..., help=common.SOURCE_HELP),
        out: Path = typer.Option(..., "--out", help=f"Run folder: latest.pt, pairs.pt, samples/, {kind}.pt."),
        res: int = common.PAIR_RES,
        steps: int = typer.Option(10000, "--steps", help=common.STEPS_HELP),
        batch: int = typer.Option(16, "--batch", help="Batch size (as many sketches and as many images)."),
        lr: float = typer.Option(default_lr, "--lr", help="Adam learning rate (beta1 0.5), generators and critics."),
        cycle: float = typer.Option(10.0, "--cycle", help="Weight of the cycle-consistency L1."),
        seed: int = typer.Option(0, "--seed", help="Training seed."),
        segmenter: Path = common.PAIR_SEGMENTER,
        *, pairs_per_image, pairs_cache, limit, snapshot_every, threads, device, fresh, config_json,
    ) -> None:
        _train(kind, archive, out, res, steps, batch, lr, cycle, seed, pairs_per_image, pairs_cache, limit,
               segmenter, snapshot_every, threads, device, fresh, config_json)

    command.__doc__ = (f"Train the {what} baseline on the pairs of pix2pix and E, unpaired: the sketches of the "
                       "first half of the images, the images of the second; rerun to resume.")
    return common._shared_options(command)


def register(app: typer.Typer) -> None:
    """Add `cyclegan`, `unit` and `ugatit` to a `s2m train` app."""
    from cli import train as common

    for kind in UNPAIRED:
        app.command(kind)(_command(kind, common))
