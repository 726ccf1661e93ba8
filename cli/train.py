"""`s2m train ...`: train the networks on an archive, resumable, with progress bars."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="Train the networks (segmenter, generator, ...) on an archive.", no_args_is_help=True)


def _device(name: str) -> str:
    """'auto' picks CUDA when present, else the CPU."""
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@app.command("generator")
def generator(
    archive: Path = typer.Argument(..., help="Archive folder of training images."),
    out: Path = typer.Option(..., "--out", help="Run folder: latest.pt (resume state), samples/, generator.pt."),
    res: int = typer.Option(64, "--res", help="Image resolution (power of two: 64, 128, 256)."),
    kimg: float = typer.Option(500.0, "--kimg", help="Total thousands of images shown to D."),
    batch: int = typer.Option(32, "--batch", help="Batch size."),
    seed: int = typer.Option(0, "--seed", help="Training seed."),
    channel_base: int = typer.Option(1024, "--channel-base", help="Channels at resolution r = base / r ..."),
    channel_max: int = typer.Option(128, "--channel-max", help="... capped at this."),
    limit: int = typer.Option(None, "--limit", help="Use only the first N archive images."),
    snapshot_every: int = typer.Option(250, "--snapshot-every", help="Steps between resumable snapshots."),
    device: str = typer.Option("auto", "--device", help="cpu, cuda or auto."),
    fresh: bool = typer.Option(False, "--fresh", help="Ignore an existing latest.pt and start over."),
) -> None:
    """Train the StyleGAN2 generator G; rerun the same command to resume from the last snapshot."""
    import torch

    from s2m_retrieval.data.archive import ReadStats, load_archive_arrays
    from s2m_retrieval.networks.stylegan2 import GeneratorConfig
    from s2m_retrieval.training.gan import GanTrainConfig, train_generator

    stats = ReadStats()
    images, _, entries = load_archive_arrays(archive, res, limit=limit, stats=stats)
    typer.echo(f"training on {len(entries)} images from {archive}"
               + (f" ({stats.n_bad} bad files skipped)" if stats.n_bad else ""))
    data = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    g_config = GeneratorConfig(img_resolution=res, channel_base=channel_base, channel_max=channel_max)
    t_config = GanTrainConfig(batch=batch, total_kimg=kimg, seed=seed, snapshot_every=snapshot_every)
    path = train_generator(data, out, g_config=g_config, train_config=t_config, device=_device(device),
                           resume=not fresh)
    typer.echo(f"generator: {path}")


@app.command("segmenter")
def segmenter(
    archive: Path = typer.Argument(..., help="Archive folder with masks/ (label maps, same stems)."),
    out: Path = typer.Option(..., "--out", help="Checkpoint file to write."),
    res: int = typer.Option(64, "--res", help="Training resolution."),
    steps: int = typer.Option(2000, "--steps", help="Optimizer steps."),
    batch: int = typer.Option(16, "--batch", help="Batch size."),
    lr: float = typer.Option(5e-3, "--lr", help="Learning rate."),
    seed: int = typer.Option(0, "--seed", help="Training seed (also picks the held-out split)."),
    limit: int = typer.Option(None, "--limit", help="Use only the first N archive images."),
    threads: int = typer.Option(0, "--threads", help="Torch CPU threads (0: torch's default)."),
    device: str = typer.Option("auto", "--device", help="cpu, cuda or auto."),
) -> None:
    """Train the segmenter of the sketch synthesizer S; prints held-out DICE per class."""
    import torch
    from tqdm import tqdm

    from s2m_retrieval.data.archive import ReadStats, load_archive_arrays
    from s2m_retrieval.data.classes import CLASS_NAMES
    from s2m_retrieval.networks.segmenter import SegmenterConfig
    from s2m_retrieval.training.segmenter import SegTrainConfig, train_segmenter

    if threads:
        torch.set_num_threads(threads)
    stats = ReadStats()
    images, masks, entries = load_archive_arrays(archive, res, with_masks=True, limit=limit, stats=stats)
    typer.echo(f"training on {len(entries)} images with masks from {archive}"
               + (f" ({stats.n_bad} skipped: no mask or unreadable)" if stats.n_bad else ""))
    with tqdm(total=steps, unit="step", desc="train segmenter", disable=None) as bar:
        def progress(step, total, loss):
            bar.update(step - bar.n)
            bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

        metrics = train_segmenter(images, masks, SegTrainConfig(steps=steps, batch=batch, lr=lr, seed=seed),
                                  SegmenterConfig(img_resolution=res), out_path=out, device=_device(device),
                                  progress=progress)
    for k, d in enumerate(metrics["dice"]):
        typer.echo(f"  DICE {CLASS_NAMES.get(k, k):32s} {'n/a' if d is None else f'{d:.3f}'}")
    typer.echo(f"held-out mean DICE (without background): {metrics['mean_dice']:.3f} "
               f"on {metrics['n_val']} images; wrote {out}")
