"""Top-level `s2m` commands: sketch, demo."""

from __future__ import annotations

from pathlib import Path

import typer


def sketch(
    image: Path = typer.Argument(..., help="Image to turn into a line sketch."),
    out: Path = typer.Option(..., "--out", help="PNG file to write."),
    mask: Path = typer.Option(None, "--mask", help="Label map of the image; without it the segmenter finds one."),
    freehand: bool = typer.Option(False, "--freehand", help="Imitate a free-hand drawing (wobble, gaps, ...)."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed of the free-hand augmentation."),
    size: int = typer.Option(64, "--size", help="Sketch size in pixels (the model resolution)."),
    segmenter: Path = typer.Option(None, "--segmenter", help="Segmenter checkpoint (default: the model bundle's)."),
    model: str = typer.Option(None, "--model", help="Model bundle (name or folder) whose segmenter to use "
                                                    "(default: the shipped phantom bundle)."),
) -> None:
    """Draw the outlines of the anatomy in IMAGE, the way a clinician sketches it."""
    import os
    import tempfile

    from PIL import Image

    from s2m_retrieval.data.archive import fit_square, read_image, read_image_size, read_mask
    from s2m_retrieval.data.classes import NUM_CLASSES
    from s2m_retrieval.data.image_io import input_file
    from s2m_retrieval.data.sketch import FreehandConfig, is_blank_sketch, sketch_from_mask
    from s2m_retrieval.errors import BadInputError
    from s2m_retrieval.viz import output_image_format

    if size < 8 or size > 2048 or size % 8:
        raise BadInputError(f"--size must be a multiple of 8 between 8 and 2048, got {size}")
    fmt = output_image_format(out)
    inputs = [input_file(image)] + ([input_file(mask, "mask")] if mask is not None else [])
    if any(os.path.realpath(out) == os.path.realpath(p) for p in inputs):
        raise BadInputError(f"--out {out} is an input file; write the sketch somewhere else")
    if mask is not None:
        raw, (h, w) = read_mask(mask), read_image_size(image)
        if raw.shape[:2] != (h, w):
            raise BadInputError(f"mask {mask} is {raw.shape[1]}x{raw.shape[0]} pixels, image {image} is {w}x{h}; "
                                "give the mask of this image")
        label = fit_square(raw, size, nearest=True)
        if label.max() >= NUM_CLASSES:
            raise BadInputError(f"mask {mask} holds label {int(label.max())}; label maps use ids 0..{NUM_CLASSES - 1}")
        source = f"mask {mask}"
    else:
        from s2m_retrieval.model.files import segmenter_file
        from s2m_retrieval.model.segmentation import check_sketchable, segment_images

        pixels = read_image(image)
        check_sketchable(pixels, image)
        checkpoint = segmenter if segmenter is not None else segmenter_file(model)
        label = segment_images([fit_square(pixels, size)], checkpoint=checkpoint)[0]
        source = "segmenter"
    drawing = sketch_from_mask(label, size=size, freehand=FreehandConfig() if freehand else None, seed=seed)
    if is_blank_sketch(drawing):
        raise BadInputError(f"no anatomy outlines found in {source}; nothing to draw")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            Image.fromarray(drawing).save(fh, format=fmt)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    typer.echo(f"wrote {out} ({size}x{size}, outlines from {source}{', free-hand' if freehand else ''})")


def demo(
    out: Path = typer.Option(Path("s2m-demo"), "--out", help="Folder for everything the demo makes."),
    n: int = typer.Option(2000, "--n", help="Archive size."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed of the archive and the sketches."),
    threads: int = typer.Option(0, "--threads", help="Torch CPU threads (0: torch's default)."),
    model: str = typer.Option(None, "--model", help="Model bundle (name or folder; default: the shipped phantom "
                                                    "bundle)."),
    # Hidden: a perceptual backend instead of the bundle's default (tests with random models use "random").
    perceptual: str = typer.Option(None, "--perceptual", hidden=True),
) -> None:
    """Run the main job end to end on the embedded defaults (offline, shipped weights only): phantom archive,
    index, held-out free-hand sketches, retrieval, contact sheets."""
    from cli.runtime import setup_torch
    from s2m_retrieval.demo import run_demo

    from s2m_retrieval.model.bundle import resolve_model

    setup_torch(threads, "cpu")
    summary = run_demo(out, n=n, seed=seed, echo=typer.echo, models=resolve_model(model), perceptual=perceptual)
    typer.echo(summary)


def register(app: typer.Typer) -> None:
    """Add the top-level commands to the `s2m` app."""
    app.command("sketch")(sketch)
    app.command("demo")(demo)
    app.command("generate")(generate)


def generate(
    sketch: Path = typer.Argument(None, help="A sketch (dark strokes on white) to turn into an image; "
                                             "without it, a grid of generator samples."),
    out: Path = typer.Option(..., "--out", help="PNG file to write."),
    steps: int = typer.Option(3, "--steps", help="With a sketch: refinement steps T of H after E (0: E alone)."),
    only_final: bool = typer.Option(False, "--only-final",
                                    help="With a sketch: write x̂ alone, not the strip sketch | E | each H step."),
    encoder: Path = typer.Option(None, "--encoder", help="Sketch encoder E checkpoint (default: the shipped one)."),
    refiner: Path = typer.Option(None, "--refiner", help="Refiner H checkpoint (default: the shipped one)."),
    seed: int = typer.Option(0, "--seed", help="Sampling seed."),
    n: int = typer.Option(32, "--n", help="Number of samples in the grid."),
    cols: int = typer.Option(8, "--cols", help="Samples per row."),
    truncation: float = typer.Option(1.0, "--truncation", help="Truncation psi towards w_avg (1: none)."),
    generator: Path = typer.Option(None, "--generator", help="Generator checkpoint (default: the shipped one)."),
    model: str = typer.Option(None, "--model", help="Model bundle (name or folder) the networks come from, unless "
                                                    "given one by one (default: the shipped phantom bundle)."),
) -> None:
    """Show what the model makes of SKETCH (sketch | x̂ after E | after each H step), or a grid of G samples."""
    from s2m_retrieval.errors import BadInputError
    from s2m_retrieval.viz import output_image_format

    output_image_format(out)
    if n < 1 or cols < 1:
        raise BadInputError(f"--n and --cols must be >= 1, got {n} and {cols}")
    if sketch is not None:
        _generate_from_sketch(sketch, out, steps, only_final, generator, encoder, refiner, model)
        return
    from s2m_retrieval.model.files import bundle_or_given
    from s2m_retrieval.generation.report import generate_images
    from s2m_retrieval.networks.stylegan2 import load_generator
    from s2m_retrieval.viz import contact_sheet

    G = load_generator(bundle_or_given(generator, model, "generator", "sampling the generator"))
    images = generate_images(G, n, seed, truncation_psi=truncation)
    tile = max(64, G.config.img_resolution)
    out.parent.mkdir(parents=True, exist_ok=True)
    contact_sheet(list(images), cols=cols, tile_size=tile, pad=2).save(out)
    typer.echo(f"wrote {out} ({n} samples, seed {seed}, psi {truncation})")


def _generate_from_sketch(sketch: Path, out: Path, steps: int, only_final: bool, generator: Path | None,
                          encoder: Path | None, refiner: Path | None, model: str | None) -> None:
    """sketch -> E -> G, then T refinement steps of H; write the strip or the final x̂."""
    import torch
    from PIL import Image

    from s2m_retrieval.model.files import bundle_or_given
    from s2m_retrieval.errors import CheckpointError
    from s2m_retrieval.networks.refiner import refine
    from s2m_retrieval.model.pipeline import Sketch2MedI, sketch_batch, to_uint8
    from s2m_retrieval.query.engine import check_sketch, read_sketch
    from s2m_retrieval.query.options import check_steps
    from s2m_retrieval.viz import contact_sheet

    check_steps(steps)
    drawing = check_sketch(read_sketch(sketch), sketch)
    paths = {"generator": generator, "encoder": encoder} | ({"refiner": refiner} if steps > 0 else {})
    for name, given in paths.items():
        try:
            paths[name] = bundle_or_given(given, model, name, "generating from a sketch")
        except CheckpointError as exc:
            hint = " (or generate with --steps 0: E alone)" if name == "refiner" else ""
            raise CheckpointError(f"{exc}{hint}") from exc
    model = Sketch2MedI.from_checkpoints(paths["generator"], paths["encoder"], paths.get("refiner"), None,
                                         perceptual=None)
    x = sketch_batch(drawing, model.resolution)
    with torch.no_grad():
        _, images = refine(model.refiner, model.G, model.encoder(x), x, steps)
    out.parent.mkdir(parents=True, exist_ok=True)
    if only_final:
        Image.fromarray(to_uint8(images[-1])[0]).save(out)
        typer.echo(f"wrote {out} (x̂ after E and {steps} refinement step{'s' if steps != 1 else ''})")
        return
    tiles = [drawing] + [to_uint8(image)[0] for image in images]
    captions = ["sketch", "E"] + [f"H step {t}" for t in range(1, steps + 1)]
    contact_sheet(tiles, captions, cols=len(tiles), tile_size=max(128, model.resolution), pad=2).save(out)
    typer.echo(f"wrote {out} (sketch | x̂ after E" + (f" | after each of {steps} H steps)" if steps else ")"))

