"""Top-level `s2m` commands: sketch, demo."""

from __future__ import annotations

from pathlib import Path

import typer


def sketch(
    image: Path = typer.Argument(..., help="Image to turn into a line sketch."),
    out: Path = typer.Option(..., "--out", help="PNG file to write."),
    mask: Path = typer.Option(None, "--mask", help="Label map of the image; without it the segmenter finds one."),
    freehand: bool = typer.Option(False, "--freehand", help="Imitate a free-hand drawing (wobble, gaps, ...)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the free-hand augmentation."),
    size: int = typer.Option(64, "--size", help="Sketch size in pixels (the model resolution)."),
    segmenter: Path = typer.Option(None, "--segmenter", help="Segmenter checkpoint (default: the shipped one)."),
) -> None:
    """Draw the outlines of the anatomy in IMAGE, the way a clinician sketches it."""
    from PIL import Image

    from s2m_retrieval.data.archive import fit_square, read_image, read_mask
    from s2m_retrieval.data.sketch import FreehandConfig, sketch_from_mask

    if mask is not None:
        label = fit_square(read_mask(mask), size, nearest=True)
        source = f"mask {mask}"
    else:
        from s2m_retrieval.segmentation import segment_images

        label = segment_images([fit_square(read_image(image), size)], checkpoint=segmenter)[0]
        source = "segmenter"
    drawing = sketch_from_mask(label, size=size, freehand=FreehandConfig() if freehand else None, seed=seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(drawing).save(out)
    typer.echo(f"wrote {out} ({size}x{size}, outlines from {source}{', free-hand' if freehand else ''})")


def demo(
    out: Path = typer.Option(Path("s2m-demo"), "--out", help="Folder for everything the demo makes."),
    n: int = typer.Option(2000, "--n", help="Archive size."),
    seed: int = typer.Option(0, "--seed", help="Seed of the archive and the sketches."),
) -> None:
    """Run the main job end to end on the embedded defaults (offline, shipped weights only)."""
    from s2m_retrieval.demo import run_demo

    summary = run_demo(out, n=n, seed=seed, echo=typer.echo)
    typer.echo(summary)


def register(app: typer.Typer) -> None:
    """Add the top-level commands to the `s2m` app."""
    app.command("sketch")(sketch)
    app.command("demo")(demo)
    app.command("generate")(generate)


def generate(
    out: Path = typer.Option(..., "--out", help="PNG file to write."),
    seed: int = typer.Option(0, "--seed", help="Sampling seed."),
    n: int = typer.Option(32, "--n", help="Number of samples in the grid."),
    cols: int = typer.Option(8, "--cols", help="Samples per row."),
    truncation: float = typer.Option(1.0, "--truncation", help="Truncation psi towards w_avg (1: none)."),
    generator: Path = typer.Option(None, "--generator", help="Generator checkpoint (default: the shipped one)."),
) -> None:
    """Write a grid of generator samples."""
    from s2m_retrieval.checkpoint import shipped_weights
    from s2m_retrieval.generation_report import generate_images
    from s2m_retrieval.networks.stylegan2 import load_generator
    from s2m_retrieval.viz import contact_sheet

    G = load_generator(generator or shipped_weights("generator"))
    images = generate_images(G, n, seed, truncation_psi=truncation)
    tile = max(64, G.config.img_resolution)
    out.parent.mkdir(parents=True, exist_ok=True)
    contact_sheet(list(images), cols=cols, tile_size=tile, pad=2).save(out)
    typer.echo(f"wrote {out} ({n} samples, seed {seed}, psi {truncation})")
