"""`s2m data ...`: phantom archives and contact sheets."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="Make and inspect archives (phantoms, contact sheets).", no_args_is_help=True)


@app.command("phantom")
def phantom(
    out: Path = typer.Option(..., "--out", help="Folder to write the archive into (must be empty)."),
    n: int = typer.Option(1000, "--n", help="Number of phantom images."),
    size: int = typer.Option(64, "--size", help="Image size in pixels: 32, 64, 128 or 256."),
    seed: int = typer.Option(0, "--seed", min=0, help="Archive seed; same seed, byte-identical files."),
    start: int = typer.Option(0, "--start", help="Index of the first phantom (to extend an archive)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a phantom archive in --out."),
    extend: bool = typer.Option(False, "--extend", help="Add to the phantom archive in --out (same seed, size)."),
    workers: int = typer.Option(0, "--workers", min=0, help="Processes (0: one per CPU core)."),
) -> None:
    """Write a procedural pharyngeal archive: images/, masks/, labels.csv, classes.json."""
    import time

    from tqdm import tqdm

    from s2m_retrieval.data.phantom_archive import write_phantom_archive

    t0 = time.perf_counter()
    with tqdm(total=n, unit="img", desc="phantoms", disable=None) as bar:
        write_phantom_archive(out, n=n, size=size, seed=seed, start=start, overwrite=overwrite,
                              extend=extend, workers=workers or None, progress=bar.update)
    dt = time.perf_counter() - t0
    typer.echo(f"wrote {n} phantoms ({size}x{size}, seed {seed}) to {out} in {dt:.1f} s ({n / dt:.0f} images/s)")


@app.command("sheet")
def sheet(
    archive: Path = typer.Argument(..., help="Archive folder."),
    out: Path = typer.Option(..., "--out", help="PNG file to write."),
    n: int = typer.Option(32, "--n", help="Number of images on the sheet."),
    cols: int = typer.Option(8, "--cols", help="Tiles per row."),
    tile: int = typer.Option(96, "--tile", help="Tile size in pixels."),
    masks: bool = typer.Option(False, "--masks", help="Show each image's label map beside it."),
    sketches: bool = typer.Option(False, "--sketches", help="Show each image's sketch beside it."),
) -> None:
    """Write a contact sheet of an archive's first images (optionally with masks and sketches)."""
    from s2m_retrieval.data.archive import ReadStats, load_archive_arrays
    from s2m_retrieval.viz import colour_labels, contact_sheet

    from s2m_retrieval.errors import ArchiveError, BadInputError

    if n < 1 or cols < 1 or tile < 16:
        raise BadInputError(f"--n and --cols must be >= 1 and --tile >= 16 (got {n}, {cols}, {tile})")
    need_masks = masks or sketches
    if need_masks and not (archive / "masks").is_dir():
        raise ArchiveError(f"{archive} has no masks/ folder; drop --masks/--sketches")
    stats = ReadStats()
    images, label_maps, entries = load_archive_arrays(archive, tile, with_masks=need_masks, limit=n, stats=stats)
    tiles, captions = [], []
    for i, entry in enumerate(entries):
        tiles.append(images[i])
        captions.append(entry.stem)
        if masks:
            tiles.append(colour_labels(label_maps[i]))
            captions.append("mask")
        if sketches:
            from s2m_retrieval.data.sketch import sketch_from_mask

            tiles.append(sketch_from_mask(label_maps[i]))
            captions.append("sketch")
    per_item = 1 + int(masks) + int(sketches)
    out.parent.mkdir(parents=True, exist_ok=True)
    contact_sheet(tiles, captions, cols=cols * per_item if per_item > 1 else cols, tile_size=tile).save(out)
    skipped = f", skipped {stats.n_bad} bad files" if stats.n_bad else ""
    typer.echo(f"wrote {out} ({len(entries)} images{skipped})")
